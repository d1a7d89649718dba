"""Nothing a file name can forge, on a real server and a process worker (issue 16, item 4): a
``desra/full`` deployment run over a drop with forged names; its state message, artifacts and logs, read
back through the API, hold the names only as inert text, and each failed image is logged once, without a
traceback. (``tests/flows/test_inert_text.py`` checks the same in process, and a bug's traceback.)"""

from __future__ import annotations

import json
import logging

import pytest

from tests.flows.test_inert_text import FORGED, SPELLED, assert_inert
from tests.integration.conftest import Stack, make_drop

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 180.0


def test_forged_names_reach_the_api_only_as_inert_text_from_a_worker(stack: Stack, tmp_path):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    drop, out = tmp_path / "drop", tmp_path / "out"
    make_drop(drop, 1)
    (drop / FORGED).write_bytes(b"\x89PNG\r\n\x1a\n forged name")
    (drop / SPELLED).write_bytes(b"not an image at all")
    flow_run_id = stack.run_deployment("desra/full", {"input_dir": str(drop), "output_dir": str(out),
                                                      "min_area": 10})

    def final():
        with stack.client() as client:
            run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    run = stack.wait_for(f"flow run {flow_run_id} to finish", final, RUN_TIMEOUT)
    assert run.state.is_failed() and "1 ok, 2 failed of 3" in run.state.message, (run.state, stack.logs())
    assert_inert(run.state.message, "the run's state message")

    def finished_logs():  # the run's process sends its last logs as it exits
        with stack.client() as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    sort=LogSort.TIMESTAMP_ASC)
        return logs if any(log.message.startswith("Finished in state Failed") for log in logs) else None

    logs = stack.wait_for("the run's last log", finished_logs, 60)
    with stack.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    by_key = {a.key: a for a in artifacts if a.key}
    assert_inert(by_key["desra-summary"].data, "summary artifact", own_headings=("# desra run ", "## Failed"))
    table = by_key["desra-images"].data
    rows = json.loads(table) if isinstance(table, str) else table
    for row in rows:
        for value in row.values():
            if isinstance(value, str):
                assert_inert(value, f"table cell {value!r}")
    for log in logs:
        assert_inert(log.message, f"log {log.name}")
    assert not [log.message for log in logs if "Traceback" in log.message or "NoneType: None" in log.message]
    failures = [log for log in logs if " failed: expected " in log.message]
    assert sorted(log.level for log in failures) == [logging.WARNING] * 2, [log.message for log in logs]
    errors = [log.message for log in logs if log.level >= logging.ERROR]
    assert not errors, errors
