"""The review page that a real ``desra`` flow run writes (tiny real SR models, Prefect test harness): the
page covers the run's images, the summary artifact links to it, and Chromium shows every picture."""

from __future__ import annotations

from pathlib import Path

import pytest

from desra.flows.full import desra
from tests.review.conftest import (
    PageParser,
    copy_page,
    image_failures,
    network_requests,
    open_page,
    severe_console_messages,
    write_lr,
)

pytestmark = pytest.mark.usefixtures("review_prefect_api")


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, tiny_models):
    """One run over two good images and one broken file; returns (state, output folder)."""
    root = tmp_path_factory.mktemp("flow-run")
    drop, out = root / "drop", root / "out"
    for i in range(2):
        write_lr(drop / f"img{i}.png", i)
    (drop / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    state = desra(input_dir=str(drop), output_dir=str(out), mse_model=tiny_models[0], gan_model=tiny_models[1],
                  segmenter=None, min_area=10, threshold=0.65, batch_size=2, return_state=True)
    return state, out


def test_the_flow_writes_a_review_page_and_links_it_from_the_summary(flow_run):
    from prefect.artifacts import Artifact

    state, out = flow_run
    assert state.is_failed() and "2 ok, 1 failed of 3" in state.message
    page = out / "report.html"
    html = page.read_text(encoding="utf-8")
    parsed = PageParser(html)
    assert parsed.stems[0] == "broken" and sorted(parsed.stems[1:]) == ["img0", "img1"]
    assert "broken.png" in parsed.errors[0]
    assert len(parsed.imgs()) == 2 * 6
    assert all(a["src"].startswith("report-files/") and (out / a["src"]).is_file() for a in parsed.imgs())
    assert "<dt>Threshold</dt><dd>0.65</dd>" in html and "<dt>Images</dt><dd>3</dd>" in html
    assert f"<dt>Output folder</dt><dd>{Path(out).resolve()}</dd>" in html
    summary = Artifact.get("desra-summary")
    assert summary is not None
    assert f"[report.html]({page.resolve().as_uri()})" in summary.data and str(page.resolve()) in summary.data


def test_the_flow_page_renders_in_chromium(flow_run, browser, tmp_path):
    _, out = flow_run
    page = copy_page(out / "report.html", tmp_path / "alone")  # nothing but its pictures is needed
    open_page(browser, page)
    count, failures = image_failures(browser)
    assert count == 2 * 6 and not failures, failures
    sizes = browser.execute_script("return [...document.querySelectorAll('.compare img')]"
                                   ".map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[160, 160]] * 4  # GAN-SR and pseudo-GT of each image at the SR size (40 px × 4)
    assert all(u.startswith(("file:", "data:")) for u in network_requests(browser))
    assert not severe_console_messages(browser)

