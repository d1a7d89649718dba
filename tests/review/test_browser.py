"""The review page in a real headless Chromium: every picture decodes, nothing is fetched from the network,
hostile names stay text, the divider follows the keyboard and the mouse, and the page reads without
JavaScript. Skipped, naming what is missing, without Chromium, chromedriver or Selenium."""

from __future__ import annotations

import pytest

from pipeline.review import write_review_page
from tests.review.conftest import (
    HOSTILE_STEM,
    copy_page,
    image_failures,
    make_image,
    network_requests,
    open_page,
    severe_console_messages,
)

TITLE = "desra run <b>&</b>"


@pytest.fixture
def page(tmp_path):
    """A page of three ok images (one large, one with a hostile name), one failed, one without files,
    copied alone into a folder of its own."""
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
