"""Heartbeats sent on behalf of a flow run (``desra.tasks.heartbeat``), as the parent ``desra/full`` run sends them
for a ``desra-batch`` run it takes over. No server here: the events are compared with the ones Prefect's own engine
builds, and sending goes through an injected ``send``. ``tests/faults/test_worker_killed.py`` sends them to a real
server and has its automation crash the batch run once they stop."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest
from prefect.client.schemas.objects import FlowRun

from desra.automations import HEARTBEAT_EVENT as AUTOMATION_EVENT
from desra.tasks.heartbeat import HEARTBEAT_EVENT, MINIMUM_INTERVAL, heartbeat_event, heartbeat_interval, heartbeats
from desra_core import ConfigError

WAIT = 30.0  # an upper bound for the beating thread to get going on a loaded machine, never a timing assertion


def _batch_run(tags=("nightly",), deployment=True) -> FlowRun:
    return FlowRun(id=uuid.uuid4(), name="batch 2/3", flow_id=uuid.uuid4(), tags=list(tags),
                   deployment_id=uuid.uuid4() if deployment else None)


def _heartbeat_threads(run: FlowRun) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"heartbeats of flow run {run.id}"]


class Recorder:
    """A ``send`` that keeps what it is given, fails on the calls listed in ``fail_on`` (1-based), and sets
    ``reached`` once it has been called ``until`` times."""

    def __init__(self, fail_on=(), until: int = 3) -> None:
        self.events, self.calls, self.fail_on, self.until = [], 0, set(fail_on), until
        self.reached = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        with self._lock:
            self.calls += 1
            calls = self.calls
        if calls >= self.until:
            self.reached.set()
        if calls in self.fail_on:
            raise ConnectionError(f"API unreachable (call {calls})")
        self.events.append(event)


@pytest.mark.parametrize("tags, deployment", [(("nightly", "gpu"), True), ((), False)])
def test_the_event_is_the_one_prefects_engine_emits(tags, deployment):
    from prefect import flow
    from prefect.flow_engine import FlowRunEngine

    @flow(name="desra-batch")
    def desra_batch():
        pass

    run = _batch_run(tags, deployment)
    resource, related = FlowRunEngine(flow=desra_batch, flow_run=run)._build_heartbeat_event_template()
    event = heartbeat_event(run, "desra-batch")
    assert event.event == HEARTBEAT_EVENT == AUTOMATION_EVENT == "prefect.flow-run.heartbeat"
    assert dict(event.resource) == resource
    assert [dict(r) for r in event.related] == [dict(r) for r in related]
    assert event.resource.id == f"prefect.flow-run.{run.id}"  # what the automation's for_each keys on
    assert heartbeat_event(run, "desra-batch").id != event.id  # each beat is an event of its own


def test_interval_is_prefects(monkeypatch):
    from prefect.flow_engine import MINIMUM_HEARTBEAT_INTERVAL
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    assert MINIMUM_INTERVAL == MINIMUM_HEARTBEAT_INTERVAL
    for value, expected in [(45, 45), (30, 30), (None, None)]:  # Prefect refuses values under 30
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: value}):
            assert heartbeat_interval() == expected, value


def test_the_first_heartbeat_is_sent_before_the_block_runs():
    run, send = _batch_run(), Recorder()
    with heartbeats(run, "desra-batch", interval=3600, send=send):
        assert [e.resource.id for e in send.events] == [f"prefect.flow-run.{run.id}"]
        assert len(_heartbeat_threads(run)) == 1
    assert send.calls == 1 and _heartbeat_threads(run) == []


def test_no_block_runs_when_the_first_heartbeat_cannot_be_sent():
    run, send, ran = _batch_run(), Recorder(fail_on={1}), []
    with pytest.raises(ConnectionError, match="API unreachable"):
        with heartbeats(run, "desra-batch", interval=3600, send=send):
            ran.append(True)
    assert ran == [] and _heartbeat_threads(run) == []


def test_beats_while_the_block_runs_and_none_after_it():
    run, send = _batch_run(), Recorder(until=4)
    with heartbeats(run, "desra-batch", interval=0.01, send=send):
        assert send.reached.wait(WAIT), f"only {send.calls} heartbeat(s) sent"
    after = send.calls
    assert _heartbeat_threads(run) == []  # joined: nothing can follow the final state the caller sets next
    assert send.calls == after >= 4
    assert {e.resource.id for e in send.events} == {f"prefect.flow-run.{run.id}"}
    assert len({e.id for e in send.events}) == len(send.events)


def test_a_failed_later_heartbeat_is_logged_and_the_next_one_is_sent():
    run, send = _batch_run(), Recorder(fail_on={2}, until=3)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("prefect.desra.heartbeat")  # no flow-run context here: the module's logger
    logger.addHandler(handler)
    try:
        with heartbeats(run, "desra-batch", interval=0.01, send=send):
            assert send.reached.wait(WAIT), f"only {send.calls} heartbeat(s) sent"
    finally:
        logger.removeHandler(handler)
    assert send.calls >= 3 and len(send.events) == send.calls - 1
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == [f"could not send a heartbeat for flow run {run.id} (batch 2/3): ConnectionError: "
                        "API unreachable (call 2)"]


def test_no_heartbeats_when_they_are_off():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    run, send = _batch_run(), Recorder()
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        with heartbeats(run, "desra-batch", send=send):
            assert _heartbeat_threads(run) == []
    assert send.calls == 0


@pytest.mark.parametrize("interval", [0, -1.0])
def test_a_bad_interval_is_refused_before_anything_is_sent(interval):
    send = Recorder()
    with pytest.raises(ConfigError, match=rf"expected a heartbeat interval of more than 0 s, got {interval!r}"):
        with heartbeats(_batch_run(), "desra-batch", interval=interval, send=send):
            pass
    assert send.calls == 0
