"""A large run's review: pages of at most ``page_size`` images with pictures (every failure on the first),
linked to each other, a few KB of page per image, written atomically with the first page last, and the
further pages of an earlier, larger run removed. In Chromium: test_browser.py."""

from __future__ import annotations

import re

import pytest

import desra.pipeline.review as review
from desra.pipeline.review import PICTURE_FOLDER, write_review_page
from tests.review.conftest import PageParser, make_image


def _failure(stem: str) -> dict:
    return {"stem": stem, "status": "failed", "error": f"InputImageError: {stem} is truncated"}


@pytest.fixture
def big_run(tmp_path):
    """Seven ok images (fractions 0.7, 0.6 … 0.1, so ``ok6`` is the worst) and three failures."""
    out = tmp_path / "out"
    rows = []
    for i in range(7):
        row = make_image(out, f"ok{i}", 24, 32, seed=i)
        row["artifact_fraction"] = (i + 1) / 10
        rows.append(row)
    return out, rows + [_failure(f"bad{i}") for i in range(3)]


def _pages(out) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.glob("report*.html"))}


def _links(page: str) -> dict[str, str]:
    """The pager's links of a page: visible text → href (the first pager; the second repeats it)."""
    nav = page[page.index('<nav class="pages"'):page.index("</nav>")]
    return {text: href for href, text in re.findall(r'<a (?:rel="\w+" )?href="([^"]+)"[^>]*>([^<]+)</a>', nav)}


def test_a_large_run_is_paged_with_every_failure_on_the_first_page(big_run):
    out, rows = big_run
    assert write_review_page(rows, out, title="t", page_size=3) == out / "report.html"
    pages = _pages(out)
    assert sorted(pages) == ["report-2.html", "report-3.html", "report.html"]
    stems = {name: PageParser(text).stems for name, text in pages.items()}
    assert stems["report.html"] == ["bad0", "bad1", "bad2", "ok6", "ok5", "ok4"]  # every failure + the worst 3
    assert stems["report-2.html"] == ["ok3", "ok2", "ok1"] and stems["report-3.html"] == ["ok0"]
    ranks = {name: [int(r) for r in re.findall(r'<section class="image[^"]*" id="img-(\d+)"', text)]
             for name, text in pages.items()}
    assert ranks == {"report.html": [1, 2, 3, 4, 5, 6], "report-2.html": [7, 8, 9], "report-3.html": [10]}
    # the index of each page lists that page's images, linking to their sections on it
    assert re.findall(r'<a href="#img-(\d+)">', pages["report-2.html"]) == ["7", "8", "9"]
    # pictures only for the ok images of each page: four panels and two in the comparison each
    assert [len(PageParser(pages[n]).imgs()) for n in ("report.html", "report-2.html", "report-3.html")] == [18, 18, 6]


def test_each_page_links_to_every_other_and_to_its_neighbours(big_run):
    out, rows = big_run
    write_review_page(rows, out, title="run <1>", page_size=3)
    pages = _pages(out)
    first, second, last = pages["report.html"], pages["report-2.html"], pages["report-3.html"]
    assert _links(first) == {"2": "report-2.html", "3": "report-3.html", "next page →": "report-2.html"}
    assert _links(second) == {"1": "report.html", "3": "report-3.html", "← previous page": "report.html",
                              "next page →": "report-3.html"}
    assert _links(last) == {"1": "report.html", "2": "report-2.html", "← previous page": "report-2.html"}
    assert 'aria-current="page" title="images #7–#9">2</span>' in second
    assert "Page 2 of 3: images #7–#9 of 10" in second and second.count('<nav class="pages"') == 2
    assert "<title>run &lt;1&gt; (page 1 of 3)</title>" in first
    assert "<title>run &lt;1&gt; (page 2 of 3)</title>" in second
    for text in pages.values():  # the run's numbers are on every page
        assert "<dt>Images</dt><dd>10</dd>" in text and "<dt>Failed</dt><dd>3</dd>" in text


def test_a_run_that_fits_one_page_has_no_pager(big_run):
    out, rows = big_run
    write_review_page(rows, out, title="t")
    pages = _pages(out)
    assert list(pages) == ["report.html"] and '<nav class="pages"' not in pages["report.html"]
    assert len(PageParser(pages["report.html"]).stems) == 10


def test_page_bytes_per_image_stay_small_for_large_detailed_images(tmp_path):
    # Large results whose GAN-SR has a noisy block: embedded as data: URIs, as the page used to, their
    # previews alone made about 0.5 MB of page per image.
    out = tmp_path / "out"
    rows = [make_image(out, f"img{i}", 1024, 1024, seed=i) for i in range(2)]
    rows += [_failure("bad")]
    page = write_review_page(rows, out, title="t")
    per_image = page.stat().st_size / len(rows)
    pictures = sum(p.stat().st_size for p in (out / PICTURE_FOLDER).rglob("*.jpg"))
    assert pictures > 2 * 100_000  # the previews themselves are not small ...
    assert per_image < 10_000, per_image  # ... but they are files beside the page, not in it
    assert "data:image" not in page.read_text(encoding="utf-8")


def test_the_further_pages_of_an_earlier_larger_run_are_removed(big_run):
    out, rows = big_run
    write_review_page(rows, out, title="t", page_size=2)
    assert sorted(_pages(out)) == ["report-2.html", "report-3.html", "report-4.html", "report.html"]
    for name in ("report-1.html", "report-notes.html", "other-4.html", "report-04.html"):  # not desra's pages
        (out / name).write_text("keep me")
    write_review_page(rows[:3], out, title="t", page_size=2)  # three ok images: two pages
    kept = sorted(p.name for p in out.glob("*.html"))
    assert kept == ["other-4.html", "report-04.html", "report-1.html", "report-2.html", "report-notes.html",
                    "report.html"]
    assert PageParser(_pages(out)["report-2.html"]).stems == ["ok0"]
    assert "report-3.html" not in _pages(out)["report.html"]
    # a page written elsewhere under another name pages and cleans up under its own name
    target = out / "elsewhere" / "review.html"
    write_review_page(rows, out, title="t", page_size=4, path=target)
    write_review_page(rows[:1], out, title="t", page_size=4, path=target)
    assert sorted(p.name for p in target.parent.glob("*.html")) == ["review.html"]
    assert (out / "report-2.html").is_file()  # the other page set is not touched


def test_the_first_page_is_written_last_so_a_failed_write_leaves_the_previous_pages(big_run, monkeypatch):
    out, rows = big_run
    write_review_page(rows, out, title="earlier", page_size=3)
    before = _pages(out)
    written = []
    real = review.atomic_write_bytes

    def failing_on_page_2(path, data):  # the disk fills up while the pages are being written
        if path.name.endswith(".html") and path.parent == out:
            written.append(path.name)
            if path.name == "report-2.html":
                raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(review, "atomic_write_bytes", failing_on_page_2)
    with pytest.raises(OSError, match="No space left"):
        write_review_page(rows[:4] + rows[7:], out, title="later", page_size=1)
    assert written == ["report-4.html", "report-3.html", "report-2.html"]  # the first page was to come last
    after = _pages(out)
    assert after["report.html"] == before["report.html"]  # still the earlier run's, linking to its pages
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name]  # no temporary file left
    monkeypatch.setattr(review, "atomic_write_bytes", real)
    write_review_page(rows[:4] + rows[7:], out, title="later", page_size=1)
    assert sorted(_pages(out)) == ["report-2.html", "report-3.html", "report-4.html", "report.html"]
    assert "Page 1 of 4" in _pages(out)["report.html"]


def test_two_runs_writing_pages_into_one_folder_at_once_leave_one_whole_set(big_run, monkeypatch):
    """Run A (four pages) is about to write its first page, its further pages written, when run B (one
    page) writes its pages into the same folder: B waits for A's set to be whole, then replaces it whole.
    Without the folder lock, B would remove A's further pages before A's first page links to them."""
    import fcntl
    import threading

    out, rows = big_run
    other = threading.Event()  # B has started and is waiting for the lock, or has finished
    b_rows = rows[:1]
    real_write, real_flock = review.atomic_write_bytes, fcntl.flock
    started = []

    def flock(fd, operation):
        if threading.current_thread().name == "run-b" and operation == fcntl.LOCK_EX:
            other.set()  # B asks for the lock now: it blocks there while A holds it
        return real_flock(fd, operation)

    def run_b():
        try:
            write_review_page(b_rows, out, title="B", page_size=2)
        finally:
            other.set()

    def write(path, data):
        if path.name == "report.html" and b"<title>A" in data and not started:  # A's first page: comes last
            started.append(threading.Thread(target=run_b, name="run-b"))
            started[0].start()
            other.wait()
        return real_write(path, data)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(review, "atomic_write_bytes", write)
    write_review_page(rows, out, title="A", page_size=2)
    started[0].join()
    pages = _pages(out)
    linked = set(re.findall(r'href="(report[^"#/]*\.html)"', pages["report.html"]))
    assert not [name for name in linked if name not in pages]  # no link to a page that is not there
    assert list(pages) == ["report.html"] and "<title>B</title>" in pages["report.html"]  # B's whole set
    assert PageParser(pages["report.html"]).stems == ["ok0"]
