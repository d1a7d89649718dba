"""Fixtures of the review-page tests: runs made of small real images, a headless Chromium driven by
Selenium (skipped, naming what is missing, when Chromium, its driver or Selenium is absent), and the
Prefect test harness with the tiny models of tests/flows for a real ``desra`` flow run."""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from desra_core.image import write_image
from tests.flows.conftest import tiny_models, write_lr  # noqa: F401  (fixture and helper reused)

# Debian's packages; DESRA_CHROMIUM / DESRA_CHROMEDRIVER point elsewhere.
CHROMIUM = Path(os.environ.get("DESRA_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DESRA_CHROMEDRIVER", "/usr/bin/chromedriver"))
HOSTILE_STEM = "x<img src=x onerror=\"document.title='pwned'\">é'&%2e%2e..%2f.."  # a legal file name


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth ``uint8 (H, W, 3)`` RGB picture (bicubic upsampling of random colours)."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def make_image(out: Path, stem: str, height: int, width: int, seed: int) -> dict:
    """Write ``sr/gan``, ``sr/mse``, ``masks`` and ``pseudo_gt`` files for ``stem`` the way the flow
    publishes them (the GAN image has a noisy block, the mask marks it, the pseudo-GT takes the MSE
    pixels there); return the run-report row."""
    mse = photo(height, width, seed)
    gan = mse.copy()
    rng = np.random.default_rng(seed + 100)
    y0, y1, x0, x1 = height // 4, height // 2, width // 4, width // 2
    gan[y0:y1, x0:x1] = rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    pseudo = np.where(mask[..., None], mse, gan)
    for folder, pixels in (("sr/gan", gan), ("sr/mse", mse), ("masks", mask), ("pseudo_gt", pseudo)):
        write_image(out / folder / f"{stem}.png", pixels)
    return {"stem": stem, "status": "ok", "error": None, "artifact_fraction": float(mask.mean()), "region_count": 1,
            "height": height, "width": width, "min_area": 10, "notes": "", "sr_seconds": 1.25,
            "detect_seconds": 0.5, "cached": False, "run_id": "run-1", "config_hash": "0123abcd",
            "mse_model": "mse_tiny.pth", "gan_model": "gan_tiny.pth"}


class PageParser(HTMLParser):
    """What the tests look at in a page: every tag's attributes, the stems in section order, the error
    texts, and the text of the whole page."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.stems: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self._into: list | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "span" and attrs.get("class") == "stem":
            self._into = self.stems
        elif tag == "pre" and attrs.get("class") == "error":
            self._into = self.errors
        if self._into is not None:
            self._into.append("")

    def handle_endtag(self, tag):
        if tag in ("span", "pre"):
            self._into = None

    def handle_data(self, data):
        self.text.append(data)
        if self._into is not None:
            self._into[-1] += data

    def imgs(self) -> list[dict]:
        return [a for t, a in self.tags if t == "img"]


@pytest.fixture(scope="session")
def review_prefect_api():
    """The Prefect test harness, for the tests that run a flow (not autouse: the page tests need none)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _missing_browser_parts() -> list[str]:
    missing = [f"{what} ({path})" for what, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER))
               if not (path.is_file() and os.access(path, os.X_OK))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    return missing


@pytest.fixture(scope="session")
def start_browser(tmp_path_factory):
    """A factory of headless Chromium sessions (``javascript=False`` turns scripts off); all are quit at the
    end. Selenium Manager is kept out: the driver and browser paths are given, and a call to it fails."""
    missing = _missing_browser_parts()
    if missing:
        reason = ("headless browser test needs " + " and ".join(missing)
                  + "; on Debian/Ubuntu: apt-get install chromium chromium-driver")
        if os.environ.get("CI") == "true":  # .ci/run installs them: a missing part there is a failure, not a skip
            pytest.fail(reason + " (CI=true, where .ci/run installs them)")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import selenium_manager

    manager_calls = []

    def no_selenium_manager(self, args):
        manager_calls.append(args)
        raise RuntimeError(f"Selenium Manager must not run in the tests (asked for {args})")

    drivers = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(selenium_manager.SeleniumManager, "binary_paths", no_selenium_manager)
        mp.setenv("SE_OFFLINE", "true")  # should it run after all, it would not go online

        def start(javascript: bool = True):
            options = webdriver.ChromeOptions()
            options.binary_location = str(CHROMIUM)
            for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                         "--window-size=1400,1000",
                         f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
                options.add_argument(flag)
            if not javascript:
                options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
            options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
            driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
            drivers.append(driver)
            assert not manager_calls, f"Selenium Manager was asked for a driver: {manager_calls}"
            return driver

        try:
            yield start
        finally:
            for driver in drivers:
                driver.quit()
    assert not manager_calls, f"Selenium Manager was asked for a driver: {manager_calls}"


@pytest.fixture
def browser(start_browser):
    return start_browser()


def open_page(driver, page: Path | str, *, every_picture: bool = True) -> None:
    """Load ``page`` (a file, or a URL) and wait until it has loaded; with ``every_picture``, then scroll each
    picture into view (they load lazily) and wait until it has loaded or failed, and scroll back to the top."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")
    for kind in ("performance", "browser"):  # forget what the start page did
        driver.get_log(kind)
    driver.get(page if isinstance(page, str) else page.resolve().as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState === 'complete'"))
    if every_picture:
        load_every_picture(driver)


def load_every_picture(driver) -> None:
    """Scroll each ``<img>`` into view in turn, waiting until it has loaded (or failed); then back to the top."""
    from selenium.webdriver.support.ui import WebDriverWait

    for i in range(driver.execute_script("return document.images.length")):
        driver.execute_script(
            "document.images[arguments[0]].scrollIntoView({block: 'center', behavior: 'instant'})", i)
        WebDriverWait(driver, 30).until(
            lambda d, i=i: d.execute_script("return document.images[arguments[0]].complete", i))
    driver.execute_script("window.scrollTo({top: 0, behavior: 'instant'})")


def image_failures(driver) -> tuple[int, list[str]]:
    """How many ``<img>`` the page has, and a description of each one that did not load."""
    count, bad = driver.execute_script(
        "const imgs = [...document.images];"
        "return [imgs.length, imgs.filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => (i.alt || '(no alt)') + ' src=' + i.getAttribute('src').slice(0, 40))];")
    return count, bad


def network_requests(driver) -> list[str]:
    """URLs the page asked the network stack for (from the DevTools performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def severe_console_messages(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def copy_page(page: Path, folder: Path) -> Path:
    """The pages of ``page`` (``report.html``, ``report-2.html``…) and their picture folder, alone in another
    folder (as a bucket would hold them): they must not need anything else. Returns the first page's copy."""
    from desra.pipeline.review import PICTURE_FOLDER

    folder.mkdir(parents=True, exist_ok=True)
    for sibling in page.parent.glob(f"{page.stem}*{page.suffix}"):
        shutil.copy(sibling, folder / sibling.name)
    if (page.parent / PICTURE_FOLDER).is_dir():
        shutil.copytree(page.parent / PICTURE_FOLDER, folder / PICTURE_FOLDER)
    return folder / page.name
