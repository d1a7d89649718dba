"""Nothing a file name can forge (issue 16, item 4): names, paths and errors reach the Prefect UI (markdown
and table artifacts, logs, state messages) only as inert text, and a failed image logs one line.

The drop holds a file whose name carries newlines, a heading, a ``javascript:`` link, an HTML tag, ESC and
a right-to-left override (refused for its name), and one whose name is a valid stem that spells a heading,
a link and a tag (refused for its bytes). The flow runs against the session's Prefect API (a server in a
subprocess); artifacts and logs are read back through the API, as the UI reads them.
"""

from __future__ import annotations

import json
import logging
import re

import pandas as pd
import pytest

from desra.flows.full import desra
from tests.flows.conftest import write_lr

FORGED = ("g\n\n# All images OK, nothing failed\n\n[open report](javascript:alert(1)) "
          "<img src=x onerror=alert(1)>\x1b[2J\u202eevil.png")  # refused: control characters in the name
SPELLED = "# [x](javascript:alert(1)) <img src=x onerror=alert(1)>.png"  # a valid stem; not an image
BUG = "bug.png"  # a good image whose detection hits an injected bug


def _api_records(flow_run_id) -> tuple[list, list]:
    """The run's artifacts and log records (its own and its task runs'), read through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # the handler sends logs in batches: send what is queued
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                sort=LogSort.TIMESTAMP_ASC)
    return artifacts, logs


def assert_inert(text: str, where: str, own_headings: tuple[str, ...] = ()) -> None:
    """No line of ``text`` starts a heading (but ``own_headings``), no link to ``javascript:``, no raw tag."""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            assert line.startswith(own_headings), f"{where}: a forged heading: {line!r}"
    assert "](javascript:" not in text, f"{where}: a javascript: link: {text!r}"
    assert "<img" not in text and "\x1b" not in text and "\u202e" not in text, f"{where}: {text!r}"


def _inject_bug(monkeypatch) -> None:
    from desra.pipeline.steps import ImageJob

    real = ImageJob.detect

    def detect(job: ImageJob) -> None:
        if job.item.stem == "bug":
            raise ZeroDivisionError("an injected bug")
        real(job)

    monkeypatch.setattr(ImageJob, "detect", detect)


@pytest.mark.parametrize("with_bug", [False, True], ids=["expected-failures", "and-a-bug"])
def test_a_forged_file_name_reaches_artifacts_and_logs_only_as_inert_text(tmp_path, tiny_models, monkeypatch,
                                                                        with_bug):
    drop, out = tmp_path / "drop", tmp_path / "out"
    write_lr(drop / "fine.png", 0)
    (drop / FORGED).write_bytes(b"\x89PNG\r\n\x1a\n forged name")
    (drop / SPELLED).write_bytes(b"not an image at all")
    if with_bug:
        write_lr(drop / BUG, 1)
        _inject_bug(monkeypatch)
    state = desra(input_dir=str(drop), output_dir=str(out), mse_model=tiny_models[0], gan_model=tiny_models[1],
                  segmenter=None, min_area=10, return_state=True)

    failed = 3 if with_bug else 2
    assert state.is_failed() and f"1 ok, {failed} failed of {failed + 1}" in state.message, state.message
    assert_inert(state.message, "the run's state message")
    artifacts, logs = _api_records(state.state_details.flow_run_id)

    # The artifacts: the summary (markdown) and the table (each string cell is rendered as markdown).
    by_key = {a.key: a for a in artifacts if a.key}
    summary = by_key["desra-summary"].data
    assert_inert(summary, "summary artifact", own_headings=("# desra run ", "## Failed"))
    forged_lines = [line for line in summary.splitlines() if "All images OK" in line]
    assert len(forged_lines) == 1 and forged_lines[0].startswith("* "), summary  # inside its bullet
    assert "[open report]\\(javascript:alert(1))" in forged_lines[0]  # shown, as text
    assert "&lt;img src=x onerror=alert(1)>" in forged_lines[0]
    assert "\\n\\n# All images OK" in forged_lines[0] and "\\x1b[2J\\u202eevil" in forged_lines[0]
    table = by_key["desra-images"].data
    rows = json.loads(table) if isinstance(table, str) else table
    cells = [value for row in rows for value in row.values() if isinstance(value, str)]
    for cell in cells:
        assert_inert(cell, f"table cell {cell!r}")
    assert "\\# [x]\\(javascript:alert(1)) &lt;img src=x onerror=alert(1)>" in cells  # the spelled stem
    assert sum(row["status"] == "failed" for row in rows) == failed

    # The logs: inert, one line per failed image, a traceback only for the bug.
    messages = [log.message for log in logs]
    for message in messages:
        assert_inert(message, "log")
    spoken = [log for log in logs if log.level >= logging.WARNING]
    forged_stem = next(row["image"] for row in rows if "All images OK" in row["image"])
    for stem in (forged_stem, "\\# [x]\\(javascript:alert(1)) &lt;img src=x onerror=alert(1)>"):
        about = [log for log in spoken if log.message.startswith(f"{stem} failed: ")]
        assert len(about) == 1 and about[0].level == logging.WARNING, [log.message for log in spoken]
        assert "Traceback" not in about[0].message
    with_traceback = [log for log in spoken if "Traceback" in log.message]
    if with_bug:  # a bug: one ERROR, with the bug's own traceback
        assert [(log.level, log.message.splitlines()[0]) for log in with_traceback] == [
            (logging.ERROR, f"bug failed: ZeroDivisionError: an injected bug (input: {drop / BUG}, 40×40 pixels)")]
        assert "in detect" in with_traceback[0].message  # the bug's own frames, not a wrapper's
    else:
        assert not with_traceback, [log.message for log in with_traceback]
    assert len(spoken) == failed, [log.message for log in spoken]  # nothing else above INFO

    # The reports keep the raw values: they are data.
    run = pd.read_parquet(next((out / "runs").glob("*.parquet"))).set_index("stem")
    raw = run.loc[run.index.str.contains("All images OK"), "error"].iloc[0]
    assert "\n\n# All images OK, nothing failed\n\n[open report](javascript:alert(1)) <img" in raw
    # The review page escapes them as HTML.
    page = (out / "report.html").read_text()
    assert "<img src=x" not in page and 'href="javascript:' not in page and "&lt;img src=x onerror" in page
    assert re.search(r"<[^>]*onerror", page) is None
