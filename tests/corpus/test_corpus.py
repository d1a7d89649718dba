"""The hostile-input corpus through every level: ``read_image``, the ``desra`` flow and ``desra detect``.

Each corpus file either processes correctly or becomes a report row whose error names the file and the
problem; the run completes with one row per file, and nothing is written outside the output root.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import desra_core.image as image_module
from desra.cli import main
from desra_core.errors import InputImageError
from desra_core.image import printable_path, read_image
from desra_core.listing import list_image_entries, stem_problem
from tests.corpus.make_corpus import HEIGHT, WIDTH, make_corpus

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or os.name != "posix",
                                reason="the corpus needs POSIX file names, symbolic links and FIFOs")


@pytest.fixture
def corpus(tmp_path):
    drop = tmp_path / "drop"
    return drop, make_corpus(drop, tmp_path / "outside")


def _tree(root: Path) -> dict[bytes, tuple[int, int]]:
    """Every path under ``root`` (bytes: names need not be UTF-8), without following links, with its
    (size, mtime) so that changed files count as well as new ones."""
    out = {}
    for top, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            out[path] = (st.st_size, st.st_mtime_ns)
    return out


def _assert_written_only_under(out: Path, before: dict, after: dict) -> None:
    changed = [p for p, meta in after.items() if before.get(p) != meta]
    assert changed, "the run wrote nothing"
    root = os.fsencode(out.resolve())
    outside = [p for p in changed if os.path.realpath(p) != root and not os.path.realpath(p).startswith(root + b"/")]
    assert not outside, f"written outside the output root {out}: {outside}"
    assert set(before) <= set(after), f"removed: {set(before) - set(after)}"


# --- (a) core: read_image on each file -------------------------------------------------------------------


def test_read_image_on_each_corpus_file(corpus, monkeypatch):
    drop, expected = corpus
    for name, expect in expected.items():
        path = os.path.join(os.fsencode(drop), os.fsencode(name))  # bytes: the name may not be UTF-8
        if expect.read is None:
            image = read_image(path)
            assert image.pixels.shape == (*expect.shape, 3), name
            assert image.pixels.dtype == (np.uint16 if expect.bit_depth == 16 else np.uint8), name
            assert image.bit_depth == expect.bit_depth, name
            if expect.pixels is not None:
                np.testing.assert_array_equal(image.pixels, expect.pixels, err_msg=ascii(name))
            if expect.check is not None:
                assert expect.check(image.pixels), name
        else:
            with pytest.raises(InputImageError) as info:
                read_image(path)
            message = str(info.value)
            assert expect.read in message, (name, message)
            assert printable_path(name) in message and message.startswith("expected"), message
            message.encode("utf-8")  # printable: fit for reports and logs


def test_exif_rotation_is_applied(corpus):
    drop, _ = corpus
    image = read_image(drop / "rotated.jpg")
    assert (image.height, image.width) == (WIDTH, HEIGHT)  # stored 32 wide × 24 tall, shown rotated
    assert "EXIF orientation 6 applied" in image.notes
    stored = read_image(drop / "jpeg_named.png").pixels  # the same pixels without the tag
    turned = np.rot90(stored, -1)
    assert np.abs(image.pixels.astype(int) - turned).mean() < np.abs(image.pixels.astype(int)
                                                                   - np.rot90(stored, 1)).mean() / 4


def test_bomb_is_refused_from_its_header_without_allocating(corpus, monkeypatch):
    drop, _ = corpus
    monkeypatch.setattr(image_module.cv2, "imdecode", lambda *a: pytest.fail("decoded a bomb"))
    monkeypatch.setattr(image_module.Image.Image, "load", lambda *a: pytest.fail("decoded a bomb"))
    tracemalloc.start()
    try:
        with pytest.raises(InputImageError, match="refused before decoding"):
            read_image(drop / "bomb.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


def test_listing_gives_each_file_a_safe_stem_and_its_problem(corpus):
    drop, expected = corpus
    entries = list_image_entries(drop)
    assert sorted(entries) == sorted(e.stem for e in expected.values())
    by_stem = {e.stem: e for e in expected.values()}
    for stem, entry in entries.items():
        assert stem_problem(stem) is None, stem
        want = by_stem[stem].listing
        if want is None:
            assert entry.problem is None, (stem, entry.problem)
        else:
            assert want in entry.problem and entry.shown in entry.problem, (stem, entry.problem)


# --- (b) the desra flow over a drop holding the whole corpus ------------------------------------------------


def test_desra_flow_over_the_corpus(tmp_path, corpus, tiny_models):
    from desra.flows.full import desra

    drop, expected = corpus
    out = tmp_path / "out"
    before = _tree(tmp_path)
    state = desra(input_dir=str(drop), output_dir=str(out), mse_model=tiny_models[0], gan_model=tiny_models[1],
                  segmenter=None, min_area=10, batch_size=8, return_state=True)
    errors = {e.stem: e.error(scale=4) for e in expected.values()}

    runs = list((out / "runs").glob("*.parquet"))
    assert len(runs) == 1
    report = pd.read_parquet(runs[0])
    assert len(report) == len(expected) and report["stem"].is_unique
    report = report.set_index("stem")
    assert set(report.index) == set(errors)
    for stem, error in errors.items():
        row = report.loc[stem]
        if error is None:
            assert row["status"] == "ok" and pd.isna(row["error"]), (stem, row["error"])
            assert (out / "masks" / f"{stem}.png").is_file() and (out / "pseudo_gt" / f"{stem}.png").is_file()
        else:
            assert row["status"] == "failed" and error in row["error"], (stem, row["error"])
            assert not (out / "masks" / f"{stem}.png").exists()
        assert (out / "reports" / f"{stem}.parquet").is_file(), stem
    for name, expect in expected.items():  # errors about the file name the file
        if expect.read is not None or expect.listing is not None:
            assert printable_path(name) in report.loc[expect.stem, "error"], name
    n_failed = sum(v is not None for v in errors.values())
    assert state.is_failed(), state  # some images failed; the run itself completed with every row
    assert f"{len(errors) - n_failed} ok, {n_failed} failed of {len(errors)} image(s)" in state.message
    ok = report[report["status"] == "ok"]
    assert (ok.loc["rotated", ["height", "width"]] == [4 * WIDTH, 4 * HEIGHT]).all()
    assert cv2.imread(str(out / "sr" / "gan" / "deep16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    _assert_written_only_under(out, before, _tree(tmp_path))


# --- (c) desra detect with the corpus as the GAN folder -----------------------------------------------------


def _mse_partners(drop: Path, expected: dict, mse: Path) -> None:
    """For each corpus entry, a plain file of the same name: the corpus image's own pixels when it reads,
    else any valid image (so that the GAN side's problem is what the row reports)."""
    mse.mkdir()
    filler = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    for name, expect in expected.items():
        if expect.read is None:
            pixels = read_image(os.path.join(os.fsencode(drop), os.fsencode(name))).pixels
        else:
            pixels = filler
        data = cv2.imencode(".png", np.ascontiguousarray(pixels[..., ::-1]))[1].tobytes()
        with open(os.path.join(os.fsencode(mse), os.fsencode(name)), "wb") as fh:
            fh.write(data)


def test_detect_cli_over_the_corpus(tmp_path, corpus, capsys):
    drop, expected = corpus
    mse, out = tmp_path / "mse", tmp_path / "out"
    _mse_partners(drop, expected, mse)
    before = _tree(tmp_path)
    rc = main(["detect", "--mse", str(mse), "--gan", str(drop), "--out", str(out), "--no-semantic",
               "--min-area", "10"])
    captured = capsys.readouterr()
    assert rc == 1
    report = pd.read_parquet(out / "report.parquet")
    assert len(report) == len(expected) and report["stem"].is_unique
    report = report.set_index("stem")
    errors = {e.stem: e.error(scale=1) for e in expected.values()}
    assert set(report.index) == set(errors)
    for stem, error in errors.items():
        row = report.loc[stem]
        if error is None:
            assert row["status"] == "ok", (stem, row["error"])
            for folder in ("masks", "pseudo_gt", "reports"):
                suffix = ".parquet" if folder == "reports" else ".png"
                assert (out / folder / f"{stem}{suffix}").is_file(), (folder, stem)
        else:
            assert row["status"] == "failed" and error in row["error"], (stem, row["error"])
            assert f"failed: {stem}: " in captured.err
    assert f"{sum(e is None for e in errors.values())} ok, {sum(e is not None for e in errors.values())} failed" \
        in captured.out
    _assert_written_only_under(out, before, _tree(tmp_path))


# --- the listing's users: scan_drop, match_labels and desra upscale ------------------------------------------


def test_scan_drop_items_are_safe_and_printable(corpus):
    from desra.pipeline.drop import match_labels, scan_drop

    drop, expected = corpus
    items = scan_drop(str(drop))
    assert [i["stem"] for i in items] == sorted(e.stem for e in expected.values())
    by_stem = {e.stem: e for e in expected.values()}
    for item in items:
        want = by_stem[item["stem"]].listing
        assert (item["error"] is None) == (want is None) == (item["file"] is not None), item
        assert want is None or want in item["error"]
        str(item).encode("utf-8")  # no surrogate escapes anywhere: fit for Parquet and the Prefect API
    # Stems asked for by a caller (e.g. a deployment's parameters) that would escape as file names.
    asked = scan_drop(str(drop), ["../../etc/passwd", "..", "gray", "gray"])
    assert [i["stem"] for i in asked] == ["%2E%2E%2F..%2Fetc%2Fpasswd", "%2E%2E", "gray"]
    assert "found none" in asked[0]["error"] and asked[2]["error"] is None
    labels = match_labels(items, str(drop))
    for item, rec in zip(items, labels, strict=True):
        assert rec["stem"] == item["stem"] and (rec["error"] is None) == (item["error"] is None), rec


def test_upscale_over_the_corpus(tmp_path, corpus, tiny_models):
    from desra.batch import run_upscale
    from desra_core.models.sr import load_sr_model

    drop, expected = corpus
    out = tmp_path / "up"
    before = _tree(tmp_path)
    rows = {r["stem"]: r for r in run_upscale(load_sr_model(tiny_models[1], device="cpu"), drop, out, tile=None,
                                              overlap=0, batch_size=1)}
    assert set(rows) == {e.stem for e in expected.values()}
    for expect in expected.values():
        row = rows[expect.stem]
        want = expect.listing or expect.read
        if want is None:
            assert row["status"] == "ok", row
            assert read_image(row["path"]).pixels.shape == (4 * expect.shape[0], 4 * expect.shape[1], 3)
        else:
            assert row["status"] == "failed" and want in row["error"], row
    assert read_image(out / "deep16.png").bit_depth == 16
    _assert_written_only_under(out, before, _tree(tmp_path))
