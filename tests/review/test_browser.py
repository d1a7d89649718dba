"""The review page in a real headless Chromium: every picture decodes, nothing is fetched from the network,
hostile names stay text, the divider follows the keyboard and the mouse, the page reads without
JavaScript, pictures load only as they are scrolled to, the pages of a large run link to each other, and
the pages work moved to another folder and served over HTTP as from a bucket. Skipped, naming what is
missing, without Chromium, chromedriver or Selenium."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from desra.pipeline.review import write_review_page
from tests.review.conftest import (
    HOSTILE_STEM,
    copy_page,
    image_failures,
    load_every_picture,
    make_image,
    network_requests,
    open_page,
    severe_console_messages,
)

TITLE = "desra run <b>&</b>"


@pytest.fixture
def page(tmp_path):
    """A page of three ok images (one large, one with a hostile name), one failed, one without files,
    copied with its pictures (and nothing else) into a folder of its own."""
    out = tmp_path / "out"
    rows = [make_image(out, "large", 900, 1600, 1), make_image(out, HOSTILE_STEM, 64, 64, 2),
            make_image(out, "small", 96, 128, 3),
            {"stem": "broken", "status": "failed", "error": "<img src=x onerror=alert(1)> bad file"},
            {"stem": "vanished", "status": "ok", "artifact_fraction": 0.0, "region_count": 0}]
    written = write_review_page(rows, out, title=TITLE, run_numbers={"Threshold": 0.7})
    return copy_page(written, tmp_path / "alone")


def _divider(driver, index: int = 0) -> dict:
    """Where the ``index``-th comparison's divider is: the range value, the overlay's computed clip-path,
    the visible width of the GAN-SR overlay (from the clip) and the line's offset, in CSS pixels."""
    return driver.execute_script("""
        const fig = document.querySelectorAll('.compare')[arguments[0]];
        const frame = fig.querySelector('.compare-frame').getBoundingClientRect();
        const top = fig.querySelector('.compare-top');
        const clip = getComputedStyle(top).clipPath;
        const right = clip.match(/^inset\\(\\S+ (\\S+)/)[1];
        const hidden = right.endsWith('%') ? parseFloat(right) / 100 * frame.width : parseFloat(right);
        return {value: parseFloat(fig.querySelector('input').value), clip: clip, frame: frame.width,
                visible: frame.width - hidden,
                line: fig.querySelector('.compare-line').getBoundingClientRect().left + 1 - frame.left};
    """, index)


def test_every_picture_loads_offline_and_hostile_names_stay_text(browser, page):
    open_page(browser, page)
    count, failures = image_failures(browser)
    assert count == 3 * 6 and not failures, failures
    assert browser.title == TITLE  # not 'pwned': no injected handler ran
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"], [onerror]').length") == 0
    assert HOSTILE_STEM in browser.execute_script(
        "return [...document.querySelectorAll('.stem')].map(s => s.textContent)")
    requests = network_requests(browser)
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
    assert not severe_console_messages(browser)  # e.g. no Content-Security-Policy violation
    assert browser.execute_script("return document.querySelectorAll('.compare-range').length") == 3


def test_the_divider_follows_the_keyboard(browser, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(browser, page)
    slider = browser.find_elements(By.CSS_SELECTOR, ".compare-range")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)
    start = _divider(browser)
    assert start["value"] == 50 and start["visible"] == pytest.approx(start["frame"] / 2, abs=1)
    assert start["line"] == pytest.approx(start["visible"], abs=1.5)

    slider.send_keys(Keys.END)
    end = _divider(browser)
    assert end["value"] == 100 and end["clip"] != start["clip"]
    assert end["visible"] == pytest.approx(end["frame"], abs=1) and end["line"] == pytest.approx(end["frame"], abs=1.5)

    slider.send_keys(Keys.HOME)
    for _ in range(10):
        slider.send_keys(Keys.ARROW_RIGHT)
    stepped = _divider(browser)
    assert 0 < stepped["value"] < 50
    assert stepped["visible"] == pytest.approx(stepped["frame"] * stepped["value"] / 100, abs=1)
    assert browser.execute_script("return arguments[0].getAttribute('aria-valuetext')", slider).endswith("GAN-SR")


def test_the_divider_follows_a_drag_and_a_scripted_change(browser, page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_page(browser, page)
    slider = browser.find_elements(By.CSS_SELECTOR, ".compare-range")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)
    start = _divider(browser)
    # drag the divider from the middle to a quarter of the picture
    ActionChains(browser).move_to_element(slider).click_and_hold() \
        .move_by_offset(-round(start["frame"] / 4), 0).release().perform()
    dragged = _divider(browser)
    assert dragged["clip"] != start["clip"]
    assert dragged["visible"] == pytest.approx(start["frame"] / 4, abs=start["frame"] * 0.02)
    assert dragged["line"] == pytest.approx(dragged["visible"], abs=1.5)

    browser.execute_script("const r = arguments[0]; r.value = 80; r.dispatchEvent(new Event('input'))", slider)
    scripted = _divider(browser)
    assert scripted["visible"] == pytest.approx(scripted["frame"] * 0.8, abs=1)
    # the other comparisons did not move
    assert _divider(browser, 1)["value"] == 50


def test_the_page_reads_without_javascript(start_browser, page):
    driver = start_browser(javascript=False)
    open_page(driver, page)
    count, failures = image_failures(driver)
    assert count == 3 * 6 and not failures, failures
    assert driver.execute_script is not None
    # scripts are off: the divider control stays hidden, the comparison shows half of each picture
    ranges = driver.find_elements("css selector", ".compare-range")
    assert len(ranges) == 3 and not any(r.is_displayed() for r in ranges)
    stems = [e.text for e in driver.find_elements("css selector", ".stem")]
    assert stems[0] == "broken" and HOSTILE_STEM in stems


def _stems(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('.stem')].map(s => s.textContent)")


def _loaded(driver, stem: str) -> list[bool]:
    """Whether each picture of ``stem``'s section has loaded."""
    return driver.execute_script(
        "return [...document.images].filter(i => i.alt.endsWith(' of ' + arguments[0]))"
        ".map(i => i.complete && i.naturalWidth > 0)", stem)


def test_pictures_load_only_as_they_are_scrolled_to(browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "out"
    stems = [f"a{i:02d}" for i in range(12)]  # equal fractions: shown in this order, a11 about 10 screens down
    written = write_review_page([make_image(out, stem, 64, 64, i) for i, stem in enumerate(stems)], out, title="t")
    open_page(browser, written, every_picture=False)
    WebDriverWait(browser, 30).until(lambda d: all(_loaded(d, "a00")))  # the first section is on screen
    srcs = browser.execute_script(
        "return [...document.images].filter(i => i.alt.endsWith(' of a11')).map(i => i.src)")
    assert len(srcs) == 6 and _loaded(browser, "a11") == [False] * 6
    assert not set(srcs) & set(network_requests(browser))  # not even asked for
    browser.execute_script("document.getElementById('img-12').scrollIntoView({behavior: 'instant'})")
    WebDriverWait(browser, 30).until(lambda d: all(_loaded(d, "a11")))
    assert set(srcs) <= set(network_requests(browser))
    assert not severe_console_messages(browser)


@pytest.fixture
def paged(tmp_path):
    """Five ok images and two failures with two images per page: three pages, moved to another folder."""
    out = tmp_path / "out"
    rows = [make_image(out, f"ok{i}", 48 + 8 * i, 64, i) for i in range(5)]
    for i, row in enumerate(rows):
        row["artifact_fraction"] = (i + 1) / 10
    rows += [{"stem": f"bad{i}", "status": "failed", "error": f"bad file {i}"} for i in range(2)]
    written = write_review_page(rows, out, title=TITLE, page_size=2)
    return copy_page(written, tmp_path / "moved")


def test_the_pages_of_a_large_run_link_to_each_other(browser, paged):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def follow(text: str, page: str) -> None:
        browser.find_element(By.LINK_TEXT, text).click()
        WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/" + page)
                                         and d.execute_script("return document.readyState") == "complete")
        load_every_picture(browser)
        count, failures = image_failures(browser)
        assert count and not failures, failures

    open_page(browser, paged)
    assert _stems(browser) == ["bad0", "bad1", "ok4", "ok3"]  # every failure on the first page
    assert browser.title == TITLE + " (page 1 of 3)"
    follow("next page →", "report-2.html")
    assert _stems(browser) == ["ok2", "ok1"]
    follow("3", "report-3.html")
    assert _stems(browser) == ["ok0"]
    follow("← previous page", "report-2.html")
    follow("1", "report.html")
    assert _stems(browser) == ["bad0", "bad1", "ok4", "ok3"]
    # the index links to a section on the same page
    browser.find_element(By.LINK_TEXT, "ok3").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("report.html#img-4"))


def test_the_divider_works_on_a_further_page(browser, paged):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(browser, paged.with_name("report-2.html"))
    assert browser.execute_script("return document.querySelectorAll('.compare-range').length") == 2
    slider = browser.find_elements(By.CSS_SELECTOR, ".compare-range")[1]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", slider)
    start = _divider(browser, 1)
    assert start["value"] == 50 and start["visible"] == pytest.approx(start["frame"] / 2, abs=1)
    slider.send_keys(Keys.END)
    end = _divider(browser, 1)
    assert end["value"] == 100 and end["visible"] == pytest.approx(end["frame"], abs=1)
    assert _divider(browser, 0)["value"] == 50


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def test_the_pages_work_served_over_http_as_from_a_bucket(browser, paged):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(paged.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        origin = f"http://127.0.0.1:{server.server_address[1]}/"
        open_page(browser, origin + "report.html")
        count, failures = image_failures(browser)
        assert count == 2 * 6 and not failures, failures
        requests = network_requests(browser)
        assert any(u.startswith(origin + "report-files/") for u in requests)
        assert all(u.startswith((origin, "data:")) for u in requests), requests
        assert not severe_console_messages(browser)  # the Content-Security-Policy allows the page's own pictures
        open_page(browser, origin + "report-3.html")
        count, failures = image_failures(browser)
        assert count == 6 and not failures, failures
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
