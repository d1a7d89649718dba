"""`desra upscale` with a tiny SR model and `desra detect --segmenter` with a tiny SegFormer."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import SegformerImageProcessor

from desra.cli import main
from desra.pipeline.settings import Settings
from desra_core import ConfigError
from desra_core.models.segmentation import load_segmenter, segment
from tests.core.models.test_segmentation import ADE, _save_tiny
from tests.core.models.test_sr import tiny_rrdbnet


@pytest.fixture(scope="module")
def rrdb(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny_x4.pth"
    torch.save({"params_ema": tiny_rrdbnet()}, path)
    return path


def test_upscale_folder_keeps_bit_depth(tmp_path, rrdb, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(src / "eight.png"), rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    cv2.imwrite(str(src / "sixteen.png"), rng.integers(0, 65536, (12, 10, 3), dtype=np.uint16))
    (src / "broken.png").write_bytes(b"nope")
    rc = main(["upscale", "--model", str(rrdb), str(src), str(tmp_path / "out"), "--tile", "16",
               "--overlap", "4", "--device", "cpu"])
    assert rc == 1  # the broken file
    eight = cv2.imread(str(tmp_path / "out" / "eight.png"), cv2.IMREAD_UNCHANGED)
    sixteen = cv2.imread(str(tmp_path / "out" / "sixteen.png"), cv2.IMREAD_UNCHANGED)
    assert eight.shape == (80, 120, 3) and eight.dtype == np.uint8
    assert sixteen.shape == (48, 40, 3) and sixteen.dtype == np.uint16
    captured = capsys.readouterr()
    assert "2 ok, 1 failed" in captured.out and "broken.png" in captured.err


def test_upscale_unknown_model_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    rc = main(["upscale", "--model", "no_such_model", str(tmp_path / "in"), str(tmp_path / "out")])
    assert rc == 1 and "no_such_model" in capsys.readouterr().err


def test_detect_with_segmenter_writes_and_uses_label_maps(tmp_path):
    seg_dir = _save_tiny(tmp_path / "seg", ADE, processor=SegformerImageProcessor(size={"height": 64, "width": 64}))
    rng = np.random.default_rng(1)
    for sub in ("mse", "gan"):
        (tmp_path / sub).mkdir()
    mse = rng.integers(100, 110, (80, 90, 3), dtype=np.uint8)
    gan = mse.copy()
    gan[:, 1::2] = 200
    for sub, img in (("mse", mse), ("gan", gan)):
        cv2.imwrite(str(tmp_path / sub / "a.png"), img)
    out = tmp_path / "out"
    rc = main(["detect", "--mse", str(tmp_path / "mse"), "--gan", str(tmp_path / "gan"), "--segmenter",
               str(seg_dir), "--out", str(out), "--min-area", "100", "--device", "cpu"])
    assert rc == 0
    report = pd.read_parquet(out / "report.parquet").set_index("stem")
    labels = cv2.imread(str(out / "labels" / "a.png"), cv2.IMREAD_UNCHANGED)
    # the pipeline's segmentation step (desra.pipeline.models.Models.segment) segments an 8-bit result as uint8
    expected = segment(load_segmenter(str(seg_dir)), cv2.cvtColor(gan, cv2.COLOR_BGR2RGB))
    assert np.array_equal(labels, expected)
    assert report.loc["a", "status"] == "ok" and report.loc["a", "segmenter"] == str(seg_dir)
    assert report.loc["a", ["mse_model", "gan_model", "mse_model_sha256"]].isna().all()  # no SR model
    assert "labels" in report.loc["a", "computed"].split(",")


def test_detect_with_segmenter_needs_no_sr_weights(tmp_path, monkeypatch):
    """Every SR result is given: only the segmenter is loaded; the SR weights are neither resolved nor hashed."""
    import desra.pipeline.models

    def no_weights(spec):
        raise AssertionError(f"desra detect resolved SR weights {spec!r}")

    monkeypatch.setattr(desra.pipeline.models, "resolve_weights", no_weights)
    seg_dir = _save_tiny(tmp_path / "seg", ADE, processor=SegformerImageProcessor(size={"height": 64, "width": 64}))
    rng = np.random.default_rng(2)
    for sub in ("mse", "gan"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "b.png"), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    out = tmp_path / "out"
    rc = main(["detect", "--mse", str(tmp_path / "mse"), "--gan", str(tmp_path / "gan"), "--segmenter",
               str(seg_dir), "--out", str(out), "--min-area", "10", "--device", "cpu"])
    assert rc == 0 and (out / "labels" / "b.png").is_file()
    with pytest.raises(ConfigError, match="SR results given"):
        _ = desra.pipeline.models.Models(Settings(segmenter=str(seg_dir), device="cpu"), sr=False).scale
