"""The page's picture cache: writing the page again over unchanged files encodes no picture, and a
changed file is encoded again; the page is the same either way; a picture file that has gone from beside
the page is written again."""

from __future__ import annotations

import re

import numpy as np

import desra.pipeline.review as review
from desra_core.image import write_image
from tests.review.conftest import PageParser, make_image, photo


def _count_encodes(monkeypatch) -> dict:
    calls = {"jpeg": 0}
    real = review._jpeg_bytes

    def counted(pixels):
        calls["jpeg"] += 1
        return real(pixels)

    monkeypatch.setattr(review, "_jpeg_bytes", counted)
    return calls


def _body(pages: list[tuple[str, str]]) -> str:
    (name, page), = pages
    assert name == "report.html"
    return re.sub(r"written [^;]+;", "", page)  # the time of writing differs


def test_unchanged_files_are_not_encoded_again(tmp_path, monkeypatch):
    out, fragments = tmp_path / "out", tmp_path / "out" / ".desra" / "review"
    rows = [make_image(out, f"img{i}", 40, 56, seed=i) for i in range(3)]
    calls = _count_encodes(monkeypatch)
    first = review.render_review_pages(rows, out, title="t", fragments=fragments)
    assert calls["jpeg"] == 3 * 6  # four panels and the two halves of the comparison
    again = review.render_review_pages(rows, out, title="t", fragments=fragments)
    assert calls["jpeg"] == 18 and _body(again) == _body(first)
    assert _body(review.render_review_pages(rows, out, title="t")) == _body(first)  # no cache, same page

    write_image(out / "pseudo_gt" / "img1.png", photo(40, 56, seed=99))  # a new file (new inode, new mtime)
    changed = review.render_review_pages(rows, out, title="t", fragments=fragments)
    assert calls["jpeg"] == 2 * 18 + 6 and _body(changed) != _body(first)  # only img1 again


def test_a_missing_picture_is_not_cached(tmp_path, monkeypatch):
    out, fragments = tmp_path / "out", tmp_path / "fragments"
    rows = [make_image(out, "img", 40, 56, seed=0)]
    (out / "masks" / "img.png").unlink()
    calls = _count_encodes(monkeypatch)
    review.render_review_pages(rows, out, title="t", fragments=fragments)
    review.render_review_pages(rows, out, title="t", fragments=fragments)
    assert calls["jpeg"] == 2 * 5 and not list(fragments.rglob("*.html"))
    assert np.all([p.suffix != ".tmp" for p in fragments.rglob("*")])


def test_a_picture_file_that_has_gone_is_written_again(tmp_path, monkeypatch):
    out, fragments = tmp_path / "out", tmp_path / "out" / ".desra" / "review"
    rows = [make_image(out, f"img{i}", 40, 56, seed=i) for i in range(2)]
    review.prepare_pictures(rows[0], out, fragments=fragments)  # as the pipeline does when img0 is published
    calls = _count_encodes(monkeypatch)
    first = review.render_review_pages(rows, out, title="t", fragments=fragments)
    assert calls["jpeg"] == 6  # img0's pictures were ready, img1's were encoded
    srcs = {a["src"] for a in PageParser(first[0][1]).imgs() if a["alt"].endswith(" img0")}
    gone = out / sorted(srcs)[0]
    gone.unlink()  # e.g. the picture folder was pruned by hand
    again = review.render_review_pages(rows, out, title="t", fragments=fragments)
    assert _body(again) == _body(first) and gone.is_file()
    assert calls["jpeg"] == 6 + 6  # only img0, whose cached section lost a picture, was encoded again
