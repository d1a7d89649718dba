"""Confinement on a real server (issue 10, items 3 and 5): deployment runs and ``desra.drop.landed`` events
whose paths lie outside the allowed roots are refused before they read or create anything.

The session's workers run with ``DESRA_ALLOWED_ROOTS`` set to pytest's temporary folder (see
``conftest.py``); the forbidden folder of each test is a fresh folder outside it. A refused run must end
``Failed`` with the sentence that names the parameter, have run no task at all (confinement comes before
the first one, so nothing was listed, hashed or loaded), and leave the forbidden folder and the output
root exactly as they were (the output root not even created). One more worker, on a pool of its own and
without ``DESRA_ALLOWED_ROOTS``, shows the default: the folders its deployment was registered with.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import file_tree
from tests.integration.conftest import Proc, Stack, _prefect_cli, make_drop

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 180.0




@pytest.fixture
def outside(tiny_models):
    """A folder outside the session's temporary folder (so outside the workers' roots): a drop, label maps
    and a model file that no run may read."""
    folder = Path(tempfile.mkdtemp(prefix="desra-outside-"))
    try:
        make_drop(folder / "drop", 2, seed=40)
        make_drop(folder / "labels", 2, seed=40)  # named like the drop's images
        shutil.copy(tiny_models["mse"], folder / "mse.pth")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def wait_final(stack: Stack, flow_run_id, timeout: float = RUN_TIMEOUT):
    def final():
        with stack.client() as client:
            run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    return stack.wait_for(f"flow run {flow_run_id} to finish", final, timeout)


def task_runs(stack: Stack, flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with stack.client() as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def assert_refused(stack: Stack, run, parameter: str, roots: str) -> None:
    assert not run.state.is_completed(), run.state
    assert run.state.is_failed(), (run.state.name, run.state.message, stack.run_logs(run.id))
    assert run.state.message.startswith(f"refused: expected {parameter} inside the allowed roots, {roots}"), \
        run.state.message
    assert task_runs(stack, run.id) == [], "a refused run started tasks"
    logs = stack.run_logs(run.id, lines=200)
    assert "Traceback" not in logs and "unexpected exception" not in logs, logs


@pytest.mark.parametrize("parameter", ["input_dir", "output_dir", "labels_dir", "mse_model"])
def test_a_deployment_run_with_a_path_outside_the_roots_is_refused(stack: Stack, tiny_models, tmp_path, outside,
                                                                    parameter):
    drop, out = tmp_path / "drop", tmp_path / "out"
    make_drop(drop, 2)
    params = {"input_dir": str(drop), "output_dir": str(out), "min_area": 10}
    params[parameter] = str({"input_dir": outside / "drop", "output_dir": outside / "out",
                             "labels_dir": outside / "labels", "mse_model": outside / "mse.pth"}[parameter])
    before, inside_before = file_tree(outside), file_tree(tmp_path)
    run = wait_final(stack, stack.run_deployment("desra/full", params))
    assert_refused(stack, run, parameter, f"DESRA_ALLOWED_ROOTS ({stack.env['DESRA_ALLOWED_ROOTS']})")
    assert file_tree(outside) == before  # nothing created (no outside/out), nothing changed
    assert file_tree(tmp_path) == inside_before and not out.exists()  # no output derived from anything


def _on_drop_runs(stack: Stack) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

    with stack.client() as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(), deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=["on-drop"])))


@pytest.mark.parametrize("parameter", ["input_dir", "output_dir"])
def test_a_drop_event_naming_a_folder_outside_the_roots_is_refused(stack: Stack, tmp_path, outside, parameter):
    drop, out = tmp_path / "drop", tmp_path / "out"
    make_drop(drop, 2, seed=50)
    payload = {"folder": str(drop), "output_dir": str(out)}
    if parameter == "input_dir":
        payload["folder"] = str(outside / "drop")
    else:
        payload["output_dir"] = str(outside / "out")
    before, inside_before = file_tree(outside), file_tree(tmp_path)
    known = {r.id for r in _on_drop_runs(stack)}
    stack.cli("event", "emit", "desra.drop.landed", "--resource-id", f"desra.drop.confinement-{parameter}",
              "--payload", json.dumps(payload))
    (new,) = stack.wait_for("the desra/on-drop run of the event",
                            lambda: [r for r in _on_drop_runs(stack) if r.id not in known], 60)
    run = wait_final(stack, new.id)
    assert run.parameters["input_dir"] == payload["folder"] and run.parameters["output_dir"] == payload["output_dir"]
    assert_refused(stack, run, parameter, f"DESRA_ALLOWED_ROOTS ({stack.env['DESRA_ALLOWED_ROOTS']})")
    assert file_tree(outside) == before
    assert file_tree(tmp_path) == inside_before and not out.exists()


def test_an_empty_desra_segmenter_deployment_runs_without_semantic_adjustment(stack: Stack, tiny_models, tmp_path):
    with stack.client() as client:
        full = client.read_deployment_by_name("desra/full")
    assert full.parameters["segmenter"] == ""  # DESRA_SEGMENTER="" at `desra deploy` is kept, not the hub id
    drop, out = tmp_path / "drop", tmp_path / "out"
    stems = make_drop(drop, 2, seed=60)
    run = stack.wait_for_flow_run(stack.run_deployment("desra/full", {"input_dir": str(drop), "output_dir": str(out),
                                                                      "min_area": 10}), RUN_TIMEOUT)
    assert run.parameters["segmenter"] == ""
    assert run.state.message == "2 ok, 0 failed of 2 image(s)"
    (report,) = [pd.read_parquet(p) for p in (out / "runs").glob("*.parquet")]
    assert sorted(report["stem"]) == stems and report["segmenter"].isna().all(), report
    assert not (out / "labels").exists()  # nothing segmented (offline, the hub default could not even load)
    verdicts = [json.loads(p.read_text()) for p in (out / ".desra" / "store" / "preflight").rglob("*.json")]
    assert verdicts and all(v["segmenter"] is None for v in verdicts), verdicts


# -- the default: no DESRA_ALLOWED_ROOTS on the worker ------------------------------------------------------

CONFINED_POOL = "desra-confined-it"


@pytest.fixture(scope="module")
def registered(stack: Stack, tiny_models, tmp_path_factory):
    """A pool, a worker without DESRA_ALLOWED_ROOTS, and a ``desra`` deployment registered with a drop and an
    output root of its own (as ``desra deploy`` registers DESRA_DROP_DIR and DESRA_OUTPUT_DIR)."""
    root = tmp_path_factory.mktemp("registered")
    drop, out = root / "drop", root / "out"
    make_drop(drop, 1, seed=70)
    stack.cli("work-pool", "create", CONFINED_POOL, "--type", "process")
    env = {k: v for k, v in stack.env.items() if k != "DESRA_ALLOWED_ROOTS"}
    worker = Proc("worker-unconfigured", [*_prefect_cli(), "worker", "start", "--pool", CONFINED_POOL, "--type",
                                          "process", "--name", "desra-it-unconfigured", "--limit", "1"],
                  env, stack.root / "worker-unconfigured.log")
    stack.procs.append(worker)  # stopped with the stack
    with stack.client() as client:
        flow_id = client.create_flow_from_name("desra")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name="confined", work_pool_name=CONFINED_POOL, entrypoint="desra.flows.full:desra",
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": "."}}],  # as desra deploy
            parameters={"input_dir": str(drop), "output_dir": str(out), "mse_model": tiny_models["mse"],
                        "gan_model": tiny_models["gan"], "segmenter": "", "min_area": 10})
    stack.wait_for("the unconfigured worker to poll its pool", lambda: _online(stack, CONFINED_POOL), 90)
    return {"deployment_id": deployment_id, "drop": drop, "out": out, "root": root}


def _online(stack: Stack, pool: str) -> bool:
    with stack.client() as client:
        return any(w.status == "ONLINE" for w in client.read_workers_for_work_pool(pool))


def _run_registered(stack: Stack, registered: dict, parameters: dict):
    with stack.client() as client:
        run = client.create_flow_run_from_deployment(registered["deployment_id"], parameters=parameters)
    return wait_final(stack, run.id)


def test_without_the_variable_a_deployment_is_confined_to_its_registered_folders(stack: Stack, registered,
                                                                                 tiny_models, tmp_path):
    run = _run_registered(stack, registered, {})  # the registered drop and output root: allowed
    assert run.state.is_completed(), (run.state, stack.run_logs(run.id))
    assert (registered["out"] / "masks" / "img70.png").is_file()

    # tmp_path is inside the stack workers' DESRA_ALLOWED_ROOTS, but not among this deployment's folders
    drop, out = tmp_path / "drop", tmp_path / "out"
    make_drop(drop, 1, seed=71)
    roots = (f"the folders that deployment desra/confined was registered with ({registered['drop']}, "
             f"{registered['out']}, {tiny_models['mse']}, {tiny_models['gan']})")
    before = file_tree(tmp_path)
    for parameters, parameter in (({"input_dir": str(drop)}, "input_dir"),
                                  ({"output_dir": str(out)}, "output_dir"),
                                  ({"output_dir": f"{registered['out']}2"}, "output_dir"),  # a shared prefix
                                  ({"output_dir": f"{registered['drop']}/../elsewhere"}, "output_dir")):
        run = _run_registered(stack, registered, parameters)
        assert_refused(stack, run, parameter, roots)
        assert run.state.message.endswith("; set DESRA_ALLOWED_ROOTS on the worker to allow other folders")
    assert file_tree(tmp_path) == before and not out.exists()
    assert sorted(p.name for p in registered["root"].iterdir()) == ["drop", "out"]  # no out2, no elsewhere


def test_a_drop_event_whose_output_root_lies_inside_the_drop_is_refused(stack: Stack, tmp_path):
    """Issue 16: the allowed roots are pooled over the parameters, so an output root inside the drop passed
    confinement and put the store where the drop's writers can edit it; the output root must lie apart."""
    drop = tmp_path / "drop"
    make_drop(drop, 2, seed=70)
    payload = {"folder": str(drop), "output_dir": str(drop / "out")}
    before = file_tree(tmp_path)
    known = {r.id for r in _on_drop_runs(stack)}
    stack.cli("event", "emit", "desra.drop.landed", "--resource-id", "desra.drop.overlap",
              "--payload", json.dumps(payload))
    (new,) = stack.wait_for("the desra/on-drop run of the event",
                            lambda: [r for r in _on_drop_runs(stack) if r.id not in known], 60)
    run = wait_final(stack, new.id)
    assert run.state.is_failed(), (run.state.name, run.state.message, stack.run_logs(run.id))
    assert run.state.message == (f"refused: expected output_dir apart from input_dir, neither inside the other, got "
                                 f"output_dir {drop / 'out'}, which lies inside input_dir {drop}; choose an output "
                                 "root outside the folders that a run reads"), run.state.message
    assert task_runs(stack, run.id) == [], "a refused run started tasks"
    assert file_tree(tmp_path) == before and not (drop / "out").exists()
