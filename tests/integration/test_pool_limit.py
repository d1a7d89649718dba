"""The default deployment: ``desra deploy`` (pool limit 1) and one worker at ``--limit 1``.

On a server of this module's own (the session stack has a larger pool): a backlog never runs more than one
flow run at once, and a ``desra/full`` run that splits its drop into ``desra-batch`` runs does not deadlock
although its own run holds the only slot: it processes the batches that no worker picks up itself
(``flows/full.py``, ``_run_batches_on_workers``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import POOL, Stack, make_drop

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory, tiny_models) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("one-slot-stack"))
    s.drop_dir.mkdir()
    s.output_dir.mkdir()
    s.env.update({"DESRA_ALLOWED_ROOTS": str(tmp_path_factory.getbasetemp()),
                  "DESRA_DROP_DIR": str(s.drop_dir), "DESRA_OUTPUT_DIR": str(s.output_dir),
                  "DESRA_MSE_MODEL": tiny_models["mse"], "DESRA_GAN_MODEL": tiny_models["gan"],
                  "DESRA_SEGMENTER": ""})
    try:
        server = s.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(s.port),
                         "--no-scheduler", "--no-ui", "--analytics-off")
        s.wait_healthy(server)
        s.deploy_output = s.deploy()  # the defaults: pool limit 1
        s.start("worker", "worker", "start", "--pool", POOL, "--type", "process", "--name", "only", "--limit", "1")
        yield s
    finally:
        s.stop_all()


class RunningSampler:
    """Counts, twice a second, the flow runs of the pool that are Running; keeps the largest count."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.most, self.samples = stack, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
            WorkPoolFilter,
            WorkPoolFilterName,
        )
        from prefect.client.schemas.objects import StateType

        running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
        with self.stack.client() as client:
            while not self._stop.is_set():
                try:
                    count = len(client.read_flow_runs(flow_run_filter=running, work_pool_filter=WorkPoolFilter(
                        name=WorkPoolFilterName(any_=[POOL]))))
                except Exception:  # a hiccup: skip this sample
                    continue
                self.most, self.samples = max(self.most, count), self.samples + 1
                self._stop.wait(0.5)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def test_one_slot_runs_a_backlog_one_at_a_time_and_a_scaled_out_run_completes(one_slot: Stack, tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    assert "pool limit:               1 flow run(s) at once in pool 'desra'" in one_slot.deploy_output
    with one_slot.client() as client:
        assert client.read_work_pool(POOL).concurrency_limit == 1
    big, small = tmp_path / "big", tmp_path / "small"
    stems = make_drop(big, 5, seed=50)
    make_drop(small, 1, seed=60)
    started = time.monotonic()
    with RunningSampler(one_slot) as sampler:
        scaled = one_slot.run_deployment("desra/full", {"input_dir": str(big), "output_dir": str(tmp_path / "o1"),
                                                        "min_area": 10, "batch_size": 2})
        queued = one_slot.run_deployment("desra/full", {"input_dir": str(small), "output_dir": str(tmp_path / "o2"),
                                                        "min_area": 10})
        run = one_slot.wait_for_flow_run(scaled, RUN_TIMEOUT)
        other = one_slot.wait_for_flow_run(queued, RUN_TIMEOUT)
    assert run.state.message == "5 ok, 0 failed of 5 image(s)", run.state.message
    assert other.state.message == "1 ok, 0 failed of 1 image(s)", other.state.message
    assert sampler.samples > 10 and sampler.most == 1, (sampler.samples, sampler.most)

    with one_slot.client() as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[scaled])))
    batches = [r for r in children if r.name.startswith("batch ")]
    assert len(batches) == 3, [(r.name, r.state_name) for r in children]
    assert sorted(s for r in batches for s in r.parameters["stems"]) == stems
    for r in batches:  # none ran on the worker: its only slot was the parent's
        assert r.state.is_completed() and r.state.message.startswith("processed in parent run"), r.state
        assert not r.infrastructure_pid, r
    print(f"scaled-out run and a queued run on one slot: {time.monotonic() - started:.0f} s")
