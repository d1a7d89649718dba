"""A process worker SIGKILLed (with the flow-run process it started) while the ``desra/full`` run is
inside a task: no half-written file is trusted, the zombie automation of ``desra deploy`` marks the dead run
Crashed within 2 minutes of the kill (desra's defaults: heartbeat every 30 s, window 90 s), which also frees
the pool's only slot, and a new worker's run completes every image without redoing the finished ones."""

from __future__ import annotations

import os
import signal
import time

import pytest

from desra.automations import HEARTBEAT_MULTIPLE, HEARTBEAT_SECONDS, crash_message, ensure_zombie_automation
from tests.faults.conftest import latest_run, store_files, untrustworthy_files
from tests.flows.conftest import write_lr
from tests.integration.conftest import POOL, Stack, _descendants

pytestmark = pytest.mark.integration

IMAGES = 8
RUN_TIMEOUT = 300.0  # the re-run waits for the crash: until then the dead run holds the pool's only slot
ZOMBIE_WITHIN = HEARTBEAT_MULTIPLE * HEARTBEAT_SECONDS  # 90 s: what desra deploy creates by default
CRASH_WITHIN = 120.0  # from the kill until the run's Crashed state: at most the window after the last
                      # heartbeat (≤ 30 s before the kill), plus the server's 5 s proactive evaluation period
                      # and the lag of its event pipeline


def _start_worker(stack: Stack, name: str):
    return stack.start(name, "worker", "start", "--pool", POOL, "--type", "process", "--name", name, "--limit", "1")


def _sigkill_tree(stack: Stack, proc) -> list[int]:
    """SIGKILL ``proc``'s process group and every descendant (the flow-run process has its own session)."""
    victims = _descendants(proc.popen.pid)
    os.killpg(proc.popen.pid, signal.SIGKILL)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.stop(grace=0)  # reaps it and closes its log
    stack.procs.remove(proc)  # a dead process that wait_for should not complain about
    return victims


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
    victims = _sigkill_tree(stack, worker)
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
