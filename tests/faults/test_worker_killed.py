"""A process worker SIGKILLed (with the flow-run process it started) while the ``desra/full`` run is
inside a task: no half-written file is trusted, the zombie automation of ``desra deploy`` marks the dead run
Crashed within 2 minutes of the kill (desra's defaults: heartbeat every 30 s, window 90 s), which also frees
the pool's only slot, and a new worker's run completes every image without redoing the finished ones."""

from __future__ import annotations

import time

import pytest

from desra.automations import HEARTBEAT_MULTIPLE, HEARTBEAT_SECONDS, crash_message, ensure_zombie_automation
from tests.faults.conftest import latest_run, store_files, untrustworthy_files
from tests.flows.conftest import write_lr
from tests.integration.conftest import POOL, Stack, sigkill_tree

pytestmark = pytest.mark.integration

IMAGES = 8
RUN_TIMEOUT = 300.0  # the re-run waits for the crash: until then the dead run holds the pool's only slot
ZOMBIE_WITHIN = HEARTBEAT_MULTIPLE * HEARTBEAT_SECONDS  # 90 s: what desra deploy creates by default
CRASH_WITHIN = 120.0  # from the kill until the run's Crashed state: at most the window after the last
                      # heartbeat (≤ 30 s before the kill), plus the server's 5 s proactive evaluation period
                      # and the lag of its event pipeline


def _start_worker(stack: Stack, name: str):
    return stack.start(name, "worker", "start", "--pool", POOL, "--type", "process", "--name", name, "--limit", "1")


def _check_zombie_automation(stack: Stack) -> None:
    """``desra deploy`` created the automation with desra's window; asking again finds it unchanged."""
    assert f"flow runs without a heartbeat for {ZOMBIE_WITHIN} s are marked Crashed" in stack.deploy_output
    with stack.settings():
        again = ensure_zombie_automation(ZOMBIE_WITHIN)
    assert again.status == "present", again
    with stack.client() as client:
        [automation] = client.read_automations_by_name(again.name)
    assert str(automation.id) == again.automation_id
    assert automation.trigger.within.total_seconds() == ZOMBIE_WITHIN


def _wait_crashed(stack: Stack, flow_run_id: str, deadline: float):  # deadline: time.monotonic()
    """Poll the API until the flow run is final; it must be Crashed by then. Returns its state."""
    with stack.client() as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state.is_final() or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    if not state.is_crashed():
        pytest.fail(f"the killed run {flow_run_id} is {state.name} ({state.message}), not Crashed, "
                    f"{CRASH_WITHIN:.0f} s after the kill\n{stack.logs()}")
    return state


def test_worker_killed_mid_task_then_a_new_worker_finishes_the_drop(server_stack: Stack, tmp_path):
    stack = server_stack
    assert stack.env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS)  # workers pass it to their runs
    drop, out = tmp_path / "drop", tmp_path / "out"
    stems = [f"img{i}" for i in range(IMAGES)]
    for i, stem in enumerate(stems):
        write_lr(drop / f"{stem}.png", i, size=96)
    stack.deploy_output = stack.deploy()  # the defaults: locked pool, limit 1, automation with a 90-s window
    _check_zombie_automation(stack)
    worker = _start_worker(stack, "worker-1")
    params = {"input_dir": str(drop), "output_dir": str(out), "min_area": 10, "batch_size": 2, "scale_out": False}
    killed_run = stack.run_deployment("desra/full", params)

    detect = out / ".desra" / "store" / "detect"
    stack.wait_for("two finished detections in the store", lambda: len(list(detect.rglob("*.json"))) >= 2,
                   RUN_TIMEOUT, interval=0.1)
    with stack.client() as client:
        assert client.read_flow_run(killed_run).state.is_running(), "the run is not inside its tasks"
    victims = sigkill_tree(stack, worker)
    killed_at, crash_deadline = time.time(), time.monotonic() + CRASH_WITHIN
    assert victims, "the worker had no flow-run process to kill"

    finished = store_files(out)
    assert finished, "nothing was stored before the kill"
    assert len(list(detect.rglob("*.json"))) < IMAGES, "the run finished before the kill"
    assert untrustworthy_files(out, temp_allowed=True) == []
    with stack.client() as client:
        state = client.read_flow_run(killed_run).state
    # Prefect 3 is not told of the kill: the run reads Running until the zombie automation crashes it. It
    # must never read as Completed.
    assert not state.is_completed(), state

    _start_worker(stack, "worker-2")
    rerun = stack.wait_for_flow_run(stack.run_deployment("desra/full", params), RUN_TIMEOUT)
    assert rerun.state.message == f"{IMAGES} ok, 0 failed of {IMAGES} image(s)"
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was redone although it was finished"
    assert untrustworthy_files(out, temp_allowed=True) == []
    run = latest_run(out)
    assert sorted(run.index) == stems and (run["status"] == "ok").all(), run[["status", "error"]]
    done_before = {p.stem for p in finished if p.parent.parent.name == "detect" and p.suffix == ".json"}
    assert len(done_before) >= 2

    crashed = _wait_crashed(stack, killed_run, crash_deadline)
    assert crashed.message == crash_message(ZOMBIE_WITHIN)
    detected_after = crashed.timestamp.timestamp() - killed_at
    print(f"marked Crashed {detected_after:.0f} s after the kill")
    assert 0 < detected_after <= CRASH_WITHIN, (crashed.timestamp, killed_at)
    assert crashed.message == ("no heartbeat for 90 s: its worker or machine probably died; run the deployment "
                               "again — finished images are kept in the store")
    with stack.client() as client:
        assert client.read_flow_run(rerun.id).state.is_completed(), "the automation crashed a healthy run"


def _batch_runs(stack: Stack, parent_id: str) -> list:
    """The ``desra-batch`` runs that the ``desra/full`` run ``parent_id`` started."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with stack.client() as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
    return [r for r in children if r.name.startswith("batch ")]


@pytest.mark.slow
def test_worker_killed_while_its_run_processes_a_batch_itself_never_wedges_the_pool(server_stack: Stack, tmp_path,
                                                                                   tmp_path_factory):
    """The default deployment (pool limit 1, one worker at ``--limit 1``): the ``desra/full`` run holds the only
    slot, so it takes over its own ``desra-batch`` runs (``flows/full.py``). Its worker and flow-run process are
    SIGKILLed while it processes one: the batch run it took over is marked Crashed by the zombie automation
    within 2 minutes of the kill, like the parent, so a new worker runs the queued run with nobody cancelling
    anything. (Before the batch run got heartbeats from its parent, it stayed Pending for ever, holding the slot.)
    """
    from prefect.client.schemas.objects import StateType

    stack = server_stack
    drop, small, out = tmp_path / "drop", tmp_path / "small", tmp_path / "out"
    for i in range(12):  # two batches of 6: the kill comes after the first image of the first one taken over
        write_lr(drop / f"img{i}.png", i, size=96)
    write_lr(small / "late.png", 99, size=40)
    stack.env["DESRA_ALLOWED_ROOTS"] = str(tmp_path_factory.getbasetemp())  # the tests' folders, small/ too
    stack.deploy_output = stack.deploy()  # the defaults: locked pool, limit 1, automation with a 90-s window
    _check_zombie_automation(stack)
    worker = _start_worker(stack, "worker-1")
    parent = stack.run_deployment("desra/full", {"input_dir": str(drop), "output_dir": str(out), "min_area": 10,
                                                 "batch_size": 6})
    # Waiting for the slot, as a scheduled or event run would: it must run once the dead runs are crashed.
    queued = stack.run_deployment("desra/full", {"input_dir": str(small), "output_dir": str(tmp_path / "out-late"),
                                                 "min_area": 10})

    def taken_over():  # a batch run that the parent claimed, once images of it are in the store
        with stack.client() as client:
            state = client.read_flow_run(parent).state
        if state.is_final():
            pytest.fail(f"the desra/full run ended {state.name} ({state.message}) before the kill\n"
                        f"{stack.run_logs(parent)}")
        claimed = [r for r in _batch_runs(stack, parent) if r.state.type in (StateType.PENDING, StateType.RUNNING)]
        return claimed if claimed and any((out / ".desra" / "store" / "detect").rglob("*.json")) else None

    stack.wait_for("the desra/full run to process a batch run itself", taken_over, RUN_TIMEOUT, interval=0.1)
    victims = sigkill_tree(stack, worker)
    killed_at, crash_deadline = time.time(), time.monotonic() + CRASH_WITHIN
    assert victims, "the worker had no flow-run process to kill"

    batches = _batch_runs(stack, parent)
    claimed = [r for r in batches if r.state.type in (StateType.PENDING, StateType.RUNNING)]
    assert len(claimed) == 1, [(r.name, r.state_name) for r in batches]  # the kill came during its processing
    [batch] = claimed
    assert not batch.infrastructure_pid, batch  # no worker ever ran it: its parent did

    _start_worker(stack, "worker-2")
    crashed = {}
    for name, run_id in (("batch", batch.id), ("parent", parent)):
        crashed[name] = _wait_crashed(stack, run_id, crash_deadline)
        assert crashed[name].message == crash_message(ZOMBIE_WITHIN), crashed[name]
        detected_after = crashed[name].timestamp.timestamp() - killed_at
        print(f"{name} run marked Crashed {detected_after:.0f} s after the kill")
        assert 0 < detected_after <= CRASH_WITHIN, (name, crashed[name].timestamp, killed_at)

    late = stack.wait_for_flow_run(queued, RUN_TIMEOUT)  # nobody touched the API: no cancel, no state set
    assert late.state.message == "1 ok, 0 failed of 1 image(s)", late.state.message
    with stack.client() as client:
        for r in batches:
            if r.id != batch.id:  # the dead parent's other batch: Completed (by it, or by the new worker)
                assert stack.wait_for(f"{r.name} to finish", lambda r=r: client.read_flow_run(r.id).state.is_final(),
                                      RUN_TIMEOUT), r
                assert client.read_flow_run(r.id).state.is_completed(), client.read_flow_run(r.id).state
        assert client.read_flow_run(batch.id).state.is_crashed()  # nothing revived it
        history = [(st.type, st.message) for st in client.read_flow_run_states(batch.id)]
    assert (StateType.PENDING, f"processed in parent run {parent} (desra {drop}): no worker was free") in history, \
        history
