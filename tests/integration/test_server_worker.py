"""The deployments of ``deployments/prefect.yaml`` on a real Prefect server with process workers.

One server, the ``desra`` process pool, the three deployments and two workers serve every test of this
module (see ``conftest.py``). The models are tiny random RRDBNet (MSE) and Compact (GAN) networks; no
segmenter (``DESRA_SEGMENTER=""``); ``min_area=10`` so that the 40×40 inputs have detections.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.integration.conftest import POOL, WORKER_NAMES, Stack, make_drop

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 180.0
OUTPUT_FOLDERS = ("masks", "pseudo_gt", "sr/mse", "sr/gan")


def check_outputs(output_dir: Path, stems: list[str], tiny_models: dict[str, str]) -> pd.DataFrame:
    """The run report (one file in ``runs/``), the per-image reports and the published files."""
    runs = sorted((output_dir / "runs").glob("*.parquet"))
    assert len(runs) == 1, f"expected one run report in {output_dir / 'runs'}, got {[p.name for p in runs]}"
    report = pd.read_parquet(runs[0])
    assert sorted(report["stem"]) == stems, report
    assert (report["status"] == "ok").all(), report[["stem", "status", "error"]]
    assert report["artifact_fraction"].notna().all() and report["artifact_fraction"].between(0, 1).all(), report
    assert (report["mse_model"] == tiny_models["mse"]).all() and (report["gan_model"] == tiny_models["gan"]).all()
    assert report["segmenter"].isna().all(), report["segmenter"]  # "" from the deployment means none
    assert (report["region_count"] > 0).any(), report[["stem", "artifact_fraction", "region_count"]]
    for stem in stems:
        per_image = pd.read_parquet(output_dir / "reports" / f"{stem}.parquet")
        assert (per_image["stem"] == stem).all() and (per_image["status"] == "ok").all(), per_image
        assert per_image["artifact_fraction"].notna().all(), per_image
        assert per_image["run_id"].iloc[0] == report["run_id"].iloc[0]
        for folder in OUTPUT_FOLDERS:
            assert (output_dir / folder / f"{stem}.png").is_file(), f"missing {folder}/{stem}.png in {output_dir}"
    return report


def test_deployments_are_registered_from_the_prefect_file(stack: Stack, tiny_models):
    with stack.client() as client:
        # Other tests of the session may register deployments of their own (tests/integration/test_confinement.py):
        # only those of the prefect file are checked here.
        deployments = {d.name: d for d in client.read_deployments() if d.name in {"full", "on-drop", "desra-batch"}}
        assert deployments.keys() == {"full", "on-drop", "desra-batch"}, stack.deploy_output
        for d in deployments.values():
            assert d.work_pool_name == POOL, d
        full = deployments["full"]
        expected = {"input_dir": str(stack.drop_dir), "output_dir": str(stack.output_dir),  # from DESRA_* at deploy
                    "mse_model": tiny_models["mse"], "gan_model": tiny_models["gan"], "segmenter": ""}
        assert {k: full.parameters.get(k) for k in expected} == expected, full.parameters
        assert [s.schedule.interval.total_seconds() for s in full.schedules] == [600.0]
        # The installed package, from any folder: module entrypoints, and no folder of the deploying machine
        assert {d.name: d.entrypoint for d in deployments.values()} == {
            "full": "desra.flows.full:desra", "on-drop": "desra.flows.full:desra",
            "desra-batch": "desra.flows.batch:desra_batch"}
        for d in deployments.values():
            assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "."}}], d
            assert d.path is None, d.path
        on_drop = [a for a in client.read_automations() if a.actions
                   and getattr(a.actions[0], "deployment_id", None) == deployments["on-drop"].id]
        assert len(on_drop) == 1, client.read_automations()
        assert on_drop[0].trigger.expect == {"desra.drop.landed"}


def test_full_deployment_on_a_worker(stack: Stack, tiny_models, tmp_path):
    drop, out = tmp_path / "drop", tmp_path / "out"
    stems = make_drop(drop, 3)
    run_id = stack.run_deployment("desra/full", {"input_dir": str(drop), "output_dir": str(out), "min_area": 10})
    run = stack.wait_for_flow_run(run_id, RUN_TIMEOUT)

    assert run.parameters["input_dir"] == str(drop) and run.parameters["min_area"] == 10
    assert run.parameters["mse_model"] == tiny_models["mse"]  # the deployment's default, from DESRA_MSE_MODEL
    assert run.state.message == "3 ok, 0 failed of 3 image(s)"
    table = stack.table_artifact("desra-images", run_id)
    assert sorted(row["image"] for row in table) == stems, table
    assert all(row["status"] == "ok" and row["artifact %"] is not None for row in table), table
    check_outputs(out, stems, tiny_models)


def test_batches_spread_over_two_workers(stack: Stack, tiny_models, tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    drop, out = tmp_path / "drop", tmp_path / "out"
    stems = make_drop(drop, 5, seed=10)
    run_id = stack.run_deployment("desra/full", {"input_dir": str(drop), "output_dir": str(out), "min_area": 10,
                                                 "batch_size": 2})
    run = stack.wait_for_flow_run(run_id, RUN_TIMEOUT)
    assert run.state.message == "5 ok, 0 failed of 5 image(s)"

    with stack.client() as client:
        batch_deployment = client.read_deployment_by_name("desra-batch/desra-batch")
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
    batches = [r for r in children if r.deployment_id == batch_deployment.id]
    assert len(batches) == 3, [(r.name, r.deployment_id) for r in children]
    assert all(r.state.is_completed() for r in batches), [(r.name, r.state) for r in batches]
    assert sorted(s for r in batches for s in r.parameters["stems"]) == stems

    def picked_by() -> dict[str, str] | None:
        """Batch run id → the worker that submitted it (each worker logs it to the run's logs)."""
        found = {}
        for r in batches:
            m = re.search(r"Worker '([^']+)' submitting flow run", stack.run_logs(r.id, lines=1000))
            if m:
                found[str(r.id)] = m.group(1)
        return found if len(found) == len(batches) else None

    workers = stack.wait_for("each batch run's 'Worker … submitting' log line", picked_by, 30)
    assert set(workers.values()) == set(WORKER_NAMES), f"batch runs by worker: {workers}\n{stack.logs()}"
    for r in batches:  # the worker's own log agrees
        assert str(r.id) in (stack.root / f"{workers[str(r.id)]}.log").read_text(), r.id
    assert all(r.infrastructure_pid for r in batches), [r.infrastructure_pid for r in batches]

    report = check_outputs(out, stems, tiny_models)
    assert report["run_id"].nunique() == 1
    table = stack.table_artifact("desra-images", run_id)
    assert sorted(row["image"] for row in table) == stems, table


def test_drop_event_triggers_the_on_drop_deployment(stack: Stack, tiny_models, tmp_path):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

    drop, out = tmp_path / "event-drop", tmp_path / "event-out"
    stems = make_drop(drop, 2, seed=20)
    with stack.client() as client:
        on_drop = client.read_deployment_by_name("desra/on-drop")

    def on_drop_runs():
        with stack.client() as client:
            return client.read_flow_runs(flow_run_filter=FlowRunFilter(),
                                         deployment_filter=DeploymentFilter(name=DeploymentFilterName(
                                             any_=["on-drop"])))

    before = {r.id for r in on_drop_runs()}
    stack.cli("event", "emit", "desra.drop.landed", "--resource-id", "desra.drop.integration-test",
              "--payload", json.dumps({"folder": str(drop), "output_dir": str(out)}))
    new_runs = stack.wait_for("a desra/on-drop run started by the desra.drop.landed event",
                              lambda: [r for r in on_drop_runs() if r.id not in before], 60)
    assert len(new_runs) == 1, new_runs
    assert new_runs[0].deployment_id == on_drop.id
    run = stack.wait_for_flow_run(new_runs[0].id, RUN_TIMEOUT)
    assert run.parameters["input_dir"] == str(drop) and run.parameters["output_dir"] == str(out)
    assert run.parameters["gan_model"] == tiny_models["gan"]  # the rest from the deployment's defaults
    assert run.state.message == "2 ok, 0 failed of 2 image(s)"
    # the deployment's default min_area (4000) leaves no region on a 160×160 result: check files, not regions
    runs = list((out / "runs").glob("*.parquet"))
    assert len(runs) == 1
    report = pd.read_parquet(runs[0])
    assert sorted(report["stem"]) == stems and (report["status"] == "ok").all(), report
    for stem in stems:
        for folder in OUTPUT_FOLDERS:
            assert (out / folder / f"{stem}.png").is_file(), f"missing {folder}/{stem}.png in {out}"
