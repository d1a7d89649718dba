"""Opening the review page of a large drop in headless Chromium: the paged page with its pictures in files
beside it (today's) against the page that embedded every picture (the structure before).

    python benchmarks/review_page.py [--images 2000] [--side 128] [--repeats 3] [--no-old] [--keep]

**Inputs: real photos.** ``--images`` distinct results of ``--side``×``--side`` pixels, cut at seeded
places from the non-injected parity cases in ``../shared/parity`` (or ``$DESRA_SHARED/parity``): their
``gan.png``, ``mse.png`` and ``mask_default.png``, the pseudo-GT being the MSE result where the mask is set
and the GAN result elsewhere. They are written as a run's output folder (``sr/gan``, ``sr/mse``,
``masks``, ``pseudo_gt``) in a temporary folder (removed at the end unless ``--keep``); each row gets a
distinct artifact fraction.

**What is measured.**

* *prepare*: :func:`desra.pipeline.review.prepare_pictures` for every image, as the pipeline calls it when it
  publishes an image (on a CPU worker): CPU and wall time per image.
* *write*: :func:`desra.pipeline.review.write_review_page` with every image prepared (what the run does at
  its end): wall time.
* *bytes per image*: the first page's size over the images on it, all pages' size over all images, and
  the picture files' size over all images.
* *open*: a fresh headless Chromium (the flags of ``tests/review``; Debian ``chromium`` +
  ``chromedriver``) per repeat loads the first page from disk (``file:``): the wall time of
  ``driver.get`` (it returns at the ``load`` event), and from the Navigation Timing entry the time to
  ``DOMContentLoaded``, to ``load``, and the first contentful paint. Median of ``--repeats``.
* *old structure*: the same images on one page, every picture inlined as a ``data:`` URI (the files'
  bytes, base64) with no lazy loading, as ``report.html`` was before; built from today's page for all
  images (``page_size`` = ``--images``), so only the structure differs. ``--no-old`` skips it.

Target: the first page opens in under 2 s for 2000 images; at most ~100 KB of page per image.
"""

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("DESRA_SHARED", REPO.parent / "shared"))  # ../shared
CHROMIUM = Path(os.environ.get("DESRA_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DESRA_CHROMEDRIVER", "/usr/bin/chromedriver"))


def make_run(out: Path, images: int, side: int) -> list[dict]:
    """Write ``images`` results cut from the parity photos into ``out``; return their run-report rows."""
    import cv2
    import numpy as np

    cases = []
    for case in sorted((SHARED / "parity").iterdir()):
        if case.is_dir() and not case.name.endswith("_injected") and (case / "mask_default.png").is_file():
            gan, mse = cv2.imread(str(case / "gan.png")), cv2.imread(str(case / "mse.png"))
            mask = cv2.imread(str(case / "mask_default.png"), cv2.IMREAD_GRAYSCALE) > 127
            if min(gan.shape[:2]) >= side:
                cases.append((gan, mse, mask))
    if not cases:
        raise SystemExit(f"no parity case of at least {side} px in {SHARED / 'parity'}")
    rng = np.random.default_rng(0)
    png = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    for folder in ("sr/gan", "sr/mse", "masks", "pseudo_gt"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        gan, mse, mask = cases[i % len(cases)]
        y, x = (int(rng.integers(0, n - side + 1)) for n in gan.shape[:2])
        crop = (slice(y, y + side), slice(x, x + side))
        g, m, k = gan[crop], mse[crop], mask[crop]
        stem = f"img{i:05d}"
        cv2.imwrite(str(out / "sr/gan" / f"{stem}.png"), g, png)
        cv2.imwrite(str(out / "sr/mse" / f"{stem}.png"), m, png)
        cv2.imwrite(str(out / "masks" / f"{stem}.png"), k.astype(np.uint8) * 255, png)
        cv2.imwrite(str(out / "pseudo_gt" / f"{stem}.png"), np.where(k[..., None], m, g), png)
        rows.append({"stem": stem, "status": "ok", "error": None, "artifact_fraction": float(k.mean()) + i * 1e-9,
                     "region_count": 1, "height": side, "width": side, "min_area": 500, "run_id": "bench"})
    return rows


def old_structure(out: Path, rows: list[dict], path: Path) -> Path:
    """One page with every image and every picture inlined as a ``data:`` URI, no lazy loading."""
    from desra.pipeline.review import PICTURE_FOLDER, write_review_page

    single = write_review_page(rows, out, title="old structure", path=path, page_size=len(rows),
                               fragments=out / ".desra" / "review")
    text = single.read_text(encoding="utf-8")

    def inline(match: re.Match) -> str:
        data = (out / match.group(1)).read_bytes()
        return 'src="data:image/jpeg;base64,' + base64.b64encode(data).decode("ascii") + '"'

    text = re.sub(r'src="(' + PICTURE_FOLDER + r'/[^"]+)"', inline, text)
    text = text.replace(' loading="lazy"', "")
    single.write_text(text, encoding="utf-8")
    return single


def open_times(page: Path, repeats: int, profile_root: Path, sections: int) -> dict[str, list[float]]:
    """Wall time of ``driver.get`` and the Navigation Timing marks of each repeat, fresh Chromium each; a
    repeat whose page does not show its ``sections`` images (e.g. the tab crashed) stops the benchmark."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    marks: dict[str, list[float]] = {"get (wall)": [], "DOMContentLoaded": [], "load": [], "first paint": []}
    for r in range(repeats):
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", f"--user-data-dir={profile_root / f'{page.stem}-{r}'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.set_page_load_timeout(600)
            driver.get("about:blank")
            started = time.perf_counter()
            driver.get(page.resolve().as_uri())
            marks["get (wall)"].append(time.perf_counter() - started)
            shown = driver.execute_script("return document.querySelectorAll('section.image').length")
            if shown != sections:
                raise SystemExit(f"{page.name}: the browser shows {shown} of {sections} images ({driver.title!r})")
            timing = json.loads(driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                "return JSON.stringify({dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd,"
                " paint: p ? p.startTime : null});"))
            marks["DOMContentLoaded"].append(timing["dcl"] / 1000)
            marks["load"].append(timing["load"] / 1000)
            if timing["paint"] is not None:
                marks["first paint"].append(timing["paint"] / 1000)
        finally:
            driver.quit()
    return {k: v for k, v in marks.items() if v}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-old", action="store_true", help="skip the old structure")
    parser.add_argument("--keep", action="store_true", help="keep the temporary output folder")
    args = parser.parse_args()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager is not needed: the paths are given
    root = Path(tempfile.mkdtemp(prefix="desra-bench-review-"))
    try:
        return measure(root, args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def measure(root: Path, args: argparse.Namespace) -> int:
    from desra.pipeline.review import PICTURE_FOLDER, prepare_pictures, write_review_page

    out = root / "out"
    started = time.perf_counter()
    rows = make_run(out, args.images, args.side)
    print(f"{args.images} results of {args.side}×{args.side} px written in {time.perf_counter() - started:.1f} s "
          f"({root}); load average {os.getloadavg()[0]:.1f}")

    fragments = out / ".desra" / "review"
    cpu, wall = time.process_time(), time.perf_counter()
    for row in rows:
        prepare_pictures(row, out, fragments=fragments)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"prepare (per image, as published): {1000 * cpu / len(rows):.1f} ms CPU, {1000 * wall / len(rows):.1f} ms "
          "wall")
    wall = time.perf_counter()
    first = write_review_page(rows, out, title="desra benchmark", fragments=fragments)
    print(f"write the pages with every image prepared: {time.perf_counter() - wall:.2f} s")

    pages = sorted(out.glob("report*.html"))
    on_first = len(re.findall(r'<section class="image', first.read_text(encoding="utf-8")))
    pictures = sum(p.stat().st_size for p in (out / PICTURE_FOLDER).rglob("*.jpg"))
    print(f"new: {len(pages)} pages; first page {first.stat().st_size / 1e6:.2f} MB for {on_first} images = "
          f"{first.stat().st_size / on_first / 1e3:.1f} KB/image; all pages "
          f"{sum(p.stat().st_size for p in pages) / len(rows) / 1e3:.1f} KB/image; pictures (files, loaded as "
          f"scrolled to) {pictures / len(rows) / 1e3:.1f} KB/image")
    results = {"new, first page": open_times(first, args.repeats, root / "profiles", on_first)}
    if not args.no_old:
        old = old_structure(out, rows, out / "old.html")
        print(f"old: 1 page, {old.stat().st_size / 1e6:.1f} MB = {old.stat().st_size / len(rows) / 1e3:.1f} KB/image")
        results["old, one page"] = open_times(old, args.repeats, root / "profiles", len(rows))
    print(f"\nopen in headless Chromium, seconds: median (fastest–slowest) of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.1f}")
    names = list(next(iter(results.values())))
    print(f"{'':18}" + "".join(f"{n:>22}" for n in names))
    for label, marks in results.items():
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f})" if (v := marks.get(n)) else "—"
                 for n in names]
        print(f"{label:18}" + "".join(f"{c:>22}" for c in cells))
    if args.keep:
        print(f"(outputs kept in {root})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
