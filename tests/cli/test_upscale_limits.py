"""`desra upscale`: the output-pixel limit per image, and results written straight at the input's bit depth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import desra_core.image
from desra.cli import main
from desra_core.image import read_image, to_bit_depth
from desra_core.models.sr import MAX_OUTPUT_VARIABLE, load_sr_model, upscale
from tests.core.models.test_sr import tiny_rrdbnet


@pytest.fixture(scope="module")
def rrdb(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny_x4.pth"
    torch.save({"params_ema": tiny_rrdbnet()}, path)
    return path


def test_upscale_refuses_an_image_over_the_limit_from_its_header_and_does_the_rest(tmp_path, rrdb, capsys,
                                                                                    monkeypatch):
    # Tiny x4 model, limit 0.0256 Mpx = 160×160 outputs: 40×40 inputs are exactly at it, 41×40 is over.
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    eight = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    sixteen = rng.integers(0, 65536, (40, 40, 3), dtype=np.uint16)
    cv2.imwrite(str(src / "eight.png"), eight[..., ::-1])
    cv2.imwrite(str(src / "sixteen.png"), sixteen[..., ::-1])
    cv2.imwrite(str(src / "over.png"), rng.integers(0, 256, (40, 41, 3), dtype=np.uint8))
    monkeypatch.setenv(MAX_OUTPUT_VARIABLE, "0.0256")
    decoded = []
    real_decode = desra_core.image._decode
    monkeypatch.setattr(desra_core.image, "_decode",
                        lambda src_, error: decoded.append(src_.path) or real_decode(src_, error))

    rc = main(["upscale", "--model", str(rrdb), str(src), str(tmp_path / "out"), "--tile", "16", "--overlap", "4",
               "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1 and "2 ok, 1 failed" in captured.out, captured
    line = next(x for x in captured.err.splitlines() if "over" in x)
    for part in ("over.png", "41×40", "164×160", "0.0256 megapixels", MAX_OUTPUT_VARIABLE, "refused before decoding"):
        assert part in line, line
    assert not (tmp_path / "out" / "over.png").exists()
    assert not any(p.endswith("over.png") for p in decoded)  # refused from the header alone

    # The written files hold what the float path gives, converted to the input's bit depth.
    monkeypatch.delenv(MAX_OUTPUT_VARIABLE)
    model = load_sr_model(rrdb)
    for name, pixels, bits in (("eight", eight, 8), ("sixteen", sixteen, 16)):
        written = read_image(tmp_path / "out" / f"{name}.png")
        expected = to_bit_depth(upscale(model, pixels, tile=16, overlap=4), bits)
        assert written.pixels.dtype == expected.dtype and written.bit_depth == bits
        assert np.array_equal(written.pixels, expected), name


def test_upscale_with_an_invalid_limit_says_so(tmp_path, rrdb, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    monkeypatch.setenv(MAX_OUTPUT_VARIABLE, "a lot")
    rc = main(["upscale", "--model", str(rrdb), str(tmp_path / "in"), str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc != 0 and MAX_OUTPUT_VARIABLE in captured.err and "'a lot'" in captured.err, captured
    assert not (tmp_path / "out" / "a.png").exists()
