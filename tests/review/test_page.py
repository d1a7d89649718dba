"""The review page as HTML: order, escaping, failures, downscaled previews in files beside the page, loaded
lazily, no network, and the two writers that produce it (``desra detect`` here, the ``desra`` flow in
test_flow_page.py). Paging: test_pages.py."""

from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from desra.cli import main
from desra.pipeline.review import (
    PICTURE_FOLDER,
    mask_overlay,
    order_rows,
    preview,
    render_review_pages,
    write_review_page,
)
from desra_core import ConfigError, ShapeError
from desra_core.image import write_image
from tests.review.conftest import HOSTILE_STEM, PageParser, make_image, photo


def _decode(src: str, page_dir: Path) -> np.ndarray:
    """The picture at ``src`` (relative to the page, in its picture folder), decoded; it must be a JPEG."""
    assert src.startswith(f"{PICTURE_FOLDER}/") and src.endswith(".jpg"), src
    data = (page_dir / src).read_bytes()
    assert data[:3] == b"\xff\xd8\xff", src
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _page(tmp_path, rows, **kwargs) -> tuple[str, PageParser]:
    path = write_review_page(rows, tmp_path / "out", title="run <1>", **kwargs)
    text = path.read_text(encoding="utf-8")
    return text, PageParser(text)


@pytest.fixture
def run(tmp_path):
    """Three ok images (one large, one with a hostile name), one failed, one ok without any files."""
    out = tmp_path / "out"
    rows = [make_image(out, "small", 60, 80, 0), make_image(out, "large", 1500, 2000, 1),
            make_image(out, HOSTILE_STEM, 48, 48, 2)]
    rows[0]["artifact_fraction"], rows[1]["artifact_fraction"], rows[2]["artifact_fraction"] = 0.10, 0.05, 0.30
    rows.append({"stem": "broken", "status": "failed", "error": "InputImageError: <b>truncated</b> & gone",
                 "run_id": "run-1"})
    rows.append({"stem": "vanished", "status": "ok", "artifact_fraction": float("nan"), "region_count": 0,
                 "run_id": "run-1"})
    return rows


def test_images_are_listed_failed_first_then_worst_artifacts(tmp_path, run):
    _, parsed = _page(tmp_path, run)
    assert parsed.stems == ["broken", HOSTILE_STEM, "small", "large", "vanished"]


def test_order_rows_puts_failures_first_and_missing_fractions_last():
    rows = [{"stem": "b", "status": "ok", "artifact_fraction": 0.2}, {"stem": "n", "status": "ok"},
            {"stem": "f2", "status": "failed"}, {"stem": "a", "status": "ok", "artifact_fraction": 0.2},
            {"stem": "z", "status": "ok", "artifact_fraction": 0.9}, {"stem": "f1", "status": None}]
    assert [r["stem"] for r in order_rows(rows)] == ["f1", "f2", "z", "a", "b", "n"]


def test_hostile_names_and_errors_are_escaped(tmp_path, run):
    run.append({"stem": "<script>alert('stem')</script>", "status": "failed",
                "error": "</pre><script>alert('error')</script>"})
    text, parsed = _page(tmp_path, run)
    assert text.count("<script") == 1 and text.count("</script>") == 1  # the page's own script only
    assert "<img src=x" not in text and "onerror=" not in re.sub(r"onerror=&quot;", "", text)
    assert "&lt;img src=x onerror=&quot;document.title=&#x27;pwned&#x27;&quot;&gt;é" in text
    assert HOSTILE_STEM in parsed.stems and "<script>alert('stem')</script>" in parsed.stems
    assert "</pre><script>alert('error')</script>" in parsed.errors
    assert [t for t, _ in parsed.tags].count("script") == 1
    assert "<title>run &lt;1&gt;</title>" in text
    # The hostile stem still finds its files: its four panels and the comparison's two pictures are there.
    assert sum(HOSTILE_STEM in (a.get("alt") or "") for a in parsed.imgs()) == 6


def test_a_stem_that_climbs_out_of_its_folder_gets_no_picture(tmp_path):
    out = tmp_path / "out"
    write_image(out / "leak.png", photo(20, 20, 0))  # what sr/gan/../../leak.png would reach
    text, parsed = _page(tmp_path, [{"stem": "../../leak", "status": "ok", "artifact_fraction": 0.0}])
    assert parsed.imgs() == [] and text.count("not available") == 4


def test_failed_rows_show_their_error_and_no_pictures(tmp_path, run):
    text, parsed = _page(tmp_path, run)
    assert parsed.errors == ["InputImageError: <b>truncated</b> & gone"]
    broken = text[text.index('id="img-1"'):text.index('id="img-2"')]
    assert "failed" in broken and "<img" not in broken


def test_missing_files_show_placeholders(tmp_path, run):
    text, _ = _page(tmp_path, run)
    vanished = text[text.index('id="img-5"'):]
    assert vanished.count("not available") == 4 and "<img" not in vanished
    assert "does not exist" in vanished and 'class="compare' not in vanished


def test_every_picture_is_a_lazy_file_beside_the_page_and_nothing_is_fetched(tmp_path, run):
    text, parsed = _page(tmp_path, run)
    imgs = parsed.imgs()
    assert len(imgs) == 3 * 6  # three ok images with files: four panels + two in the comparison
    assert "data:image" not in text  # nothing embedded: the page stays small
    for a in imgs:  # each a JPEG in report-files/, loaded lazily, its box sized before it loads
        picture = _decode(a["src"], tmp_path / "out")
        assert a["loading"] == "lazy" and a["decoding"] == "async"
        shown = (int(a["height"]), int(a["width"]))
        zoom = shown[0] // picture.shape[0]
        assert zoom >= 1 and shown == (picture.shape[0] * zoom, picture.shape[1] * zoom), a
    names = {p.relative_to(tmp_path / "out" / PICTURE_FOLDER).as_posix()
             for p in (tmp_path / "out" / PICTURE_FOLDER).rglob("*") if p.is_file()}
    assert names == {a["src"].removeprefix(f"{PICTURE_FOLDER}/") for a in imgs}  # no stray or temporary file
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE)
    for tag, attrs in parsed.tags:  # nothing else that a browser would load
        assert tag not in ("iframe", "object", "embed", "video", "audio", "source", "base")
        if tag in ("script", "link", "style"):
            assert "src" not in attrs and attrs.get("href", "data:").startswith("data:"), (tag, attrs)
    csp = next(a["content"] for t, a in parsed.tags if a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "img-src 'self' data:;" in csp


def test_previews_are_downscaled_and_small_images_are_not_enlarged(tmp_path, run):
    text, parsed = _page(tmp_path, run)
    out = tmp_path / "out"
    large = [a for a in parsed.imgs() if a["alt"].endswith(" large")]
    sizes = sorted({_decode(a["src"], out).shape[:2] for a in large})
    assert sizes == [(384, 512), (768, 1024)]  # panels ≤ 512, comparison ≤ 1024, aspect kept
    assert "at most 512 px" in text and "at most 1024 px" in text  # the page says so
    small = {_decode(a["src"], out).shape[:2] for a in parsed.imgs() if a["alt"].endswith(" small")}
    assert small == {(60, 80)}
    _, parsed = _page(tmp_path, run, panel_side=64, compare_side=100)
    assert {_decode(a["src"], out).shape[:2] for a in parsed.imgs()
            if a["alt"].endswith(" large")} == {(48, 64), (75, 100)}


def test_comparison_shows_gan_over_pseudo_gt_at_one_size(tmp_path, run):
    _, parsed = _page(tmp_path, run)
    by_alt = {a["alt"]: a for a in parsed.imgs()}
    out = tmp_path / "out"
    gan, pseudo = _decode(by_alt["GAN-SR of large"]["src"], out), _decode(by_alt["Pseudo-GT of large"]["src"], out)
    assert gan.shape == pseudo.shape == (768, 1024, 3)
    ranges = [a for t, a in parsed.tags if t == "input"]
    assert len(ranges) == 3 and all(a["type"] == "range" and a["aria-label"] for a in ranges)


def test_run_numbers_are_on_top(tmp_path, run):
    text, _ = _page(tmp_path, run, run_numbers={"Threshold": 0.7, "Skipped": None})
    top = text[:text.index('class="index"')]
    for label, value in (("Images", "5"), ("OK", "4"), ("Failed", "1"), ("With artifacts", "3"),
                         ("Threshold", "0.7"), ("Min area (px)", "10"), ("Config hash", "0123abcd"),
                         ("MSE model", "mse_tiny.pth"), ("GAN model", "gan_tiny.pth"), ("Run id", "run-1"),
                         ("SR time, total", "3.75 s"), ("Detection time, total", "1.50 s"),
                         ("Output folder", str((tmp_path / "out").resolve()))):
        assert f"<dt>{label}</dt><dd>{value}</dd>" in top, label
    assert "Skipped" not in top


def test_write_is_atomic_and_returns_the_path(tmp_path, run):
    target = tmp_path / "elsewhere" / "review.html"
    assert write_review_page(run, tmp_path / "out", title="t", path=target) == target
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    # the pictures beside the page, no temporary file left
    assert sorted(p.name for p in target.parent.iterdir()) == [PICTURE_FOLDER, "review.html"]
    assert all(p.suffix == ".jpg" for p in (target.parent / PICTURE_FOLDER).rglob("*") if p.is_file())
    assert not list((tmp_path / "out").glob(PICTURE_FOLDER))  # they are beside the page, not the output
    # links to the full-resolution files are relative to where the page is
    assert 'href="../out/sr/gan/small.png"' in target.read_text(encoding="utf-8")


def test_rows_from_pandas_with_missing_values_render(tmp_path, run):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(run).astype({"region_count": "Int64", "height": "Int64", "width": "Int64"})
    _, parsed = _page(tmp_path, frame.to_dict("records"))
    assert parsed.stems == ["broken", HOSTILE_STEM, "small", "large", "vanished"]


def test_bad_preview_sides_are_refused(tmp_path, run):
    with pytest.raises(ConfigError, match="panel_side"):
        render_review_pages(run, tmp_path, title="t", panel_side=0)
    with pytest.raises(ConfigError, match="expected page_size to be a whole number of images of at least 1, got 0"):
        write_review_page(run, tmp_path, title="t", page_size=0)
    with pytest.raises(ConfigError, match="page_size"):
        write_review_page(run, tmp_path, title="t", page_size=2.5)
    assert not (tmp_path / "report.html").exists()


def test_preview_keeps_aspect_and_checks_its_input():
    assert preview(np.zeros((300, 1200, 3), np.uint8), 600).shape == (150, 600, 3)
    small = np.zeros((10, 20, 3), np.uint8)
    assert preview(small, 600) is small
    with pytest.raises(ShapeError):
        preview(np.zeros((10, 10), np.uint8), 5)
    with pytest.raises(ConfigError):
        preview(small, 0)


def test_mask_overlay_tints_and_outlines_only_the_regions():
    image = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = mask_overlay(image, mask)
    assert out.shape == image.shape and out.dtype == np.uint8 and (image == 100).all()
    assert (out[20, 20] == np.rint(100 * 0.55 + np.array([255, 32, 32]) * 0.45)).all()  # tinted inside
    assert (out[:5] == 100).all() and (out[:, 35:] == 100).all()  # untouched away from the region
    assert (out[10, 10:30] == (255, 214, 10)).all()  # outlined on its border
    # a mask of another size is resampled to the image's
    assert (mask_overlay(image, cv2.resize(mask.astype(np.uint8), (20, 20)) > 0)[20, 20] != 100).any()
    with pytest.raises(ShapeError):
        mask_overlay(image[..., 0], mask)


def _detect_folders(tmp_path):
    for stem, seed in (("painted", 0), ("clean", 1)):
        rng = np.random.default_rng(seed)
        mse = (120 + rng.integers(0, 2, (96, 96, 3))).astype(np.uint8)
        gan = mse.copy()
        if stem == "painted":
            gan[20:76, 20:76, :][:, 1::2] = 200
        write_image(tmp_path / "mse" / f"{stem}.png", mse)
        write_image(tmp_path / "gan" / f"{stem}.png", gan)


def test_desra_detect_writes_the_review_page_and_prints_its_path(tmp_path, capsys):
    _detect_folders(tmp_path)
    (tmp_path / "gan" / "orphan.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    rc = main(["detect", "--mse", str(tmp_path / "mse"), "--gan", str(tmp_path / "gan"), "--out", str(out),
               "--min-area", "500", "--no-semantic"])
    assert rc == 1  # the orphan fails
    page = out / "report.html"
    assert f"review page: {page}" in capsys.readouterr().out
    parsed = PageParser(page.read_text(encoding="utf-8"))
    assert parsed.stems == ["orphan", "painted", "clean"]
    assert len(parsed.imgs()) == 2 * 6
    assert all(a["src"].startswith(f"{PICTURE_FOLDER}/") and (out / a["src"]).is_file() for a in parsed.imgs())
    assert "expected an MSE result with stem 'orphan'" in parsed.errors[0]
    text = "".join(parsed.text)
    assert "Threshold" in text and str(tmp_path / "gan") in text
