"""The zombie flow-run automation of ``desra.automations`` and its use by ``desra deploy``.

No server here: the automation object is inspected as built, ``ensure_zombie_automation`` is checked only on
the paths that never reach an API, and ``desra deploy`` runs with its subprocesses and the automation call
replaced. ``tests/faults/test_worker_killed.py`` runs the automation on a real server.
"""

import subprocess
from datetime import timedelta

import pytest

from desra import automations, cli, pool
from desra.automations import (
    FINAL_STATE_EVENTS,
    HEARTBEAT_EVENT,
    MIN_HEARTBEAT_SECONDS,
    ZOMBIE_AUTOMATION_NAME,
    ZombieAutomationResult,
    build_zombie_automation,
    crash_message,
    default_within_seconds,
    ensure_zombie_automation,
)
from desra_core import ConfigError

MESSAGE_90 = ("no heartbeat for 90 s: its worker or machine probably died; run the deployment again — finished "
              "images are kept in the store")


# --- build_zombie_automation -------------------------------------------------------------------------

def test_trigger_crashes_runs_whose_heartbeats_stop():
    from prefect.events.schemas.automations import EventTrigger, Posture

    trigger = build_zombie_automation(90).trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.posture == Posture.Proactive
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert trigger.expect == {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                              "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "prefect.flow-run.*"}
    assert trigger.match_related.model_dump() == {}
    assert trigger.for_each == {"prefect.resource.id"}  # one window per flow run
    assert trigger.threshold == 1
    assert trigger.within == timedelta(seconds=90)


def test_action_sets_crashed_with_a_message_that_says_what_to_do():
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState

    automation = build_zombie_automation(90)
    assert automation.name == ZOMBIE_AUTOMATION_NAME == "desra: crash unresponsive flow runs"
    assert automation.enabled
    assert len(automation.actions) == 1
    action = automation.actions[0]
    assert isinstance(action, ChangeFlowRunState)
    assert action.state == StateType.CRASHED
    assert action.message == crash_message(90) == MESSAGE_90
    assert not action.force  # Running -> Crashed is allowed; a run that finished meanwhile stays finished
    assert automation.actions_on_trigger == [] and automation.actions_on_resolve == []


def test_the_automation_survives_the_trip_to_the_api():
    """What ``Automation.create`` sends (``AutomationCore`` as JSON) parses back to the same automation."""
    from prefect.events.schemas.automations import AutomationCore

    automation = build_zombie_automation(120, name="other")
    sent = AutomationCore(**automation.model_dump(exclude={"id"})).model_dump(mode="json")
    assert sent["trigger"]["type"] == "event" and sent["trigger"]["posture"] == "Proactive"
    assert sent["trigger"]["within"] == 120.0
    assert sent["actions"] == [{"type": "change-flow-run-state", "name": None, "state": "CRASHED",
                                "message": crash_message(120), "force": False}]
    assert AutomationCore.model_validate(sent) == AutomationCore(**automation.model_dump(exclude={"id"}))
    assert sent["name"] == "other"


@pytest.mark.parametrize("within", [0, -5, 10, 30, 45.0, True, "90", None])
def test_a_window_that_would_crash_healthy_runs_is_refused(within):
    with pytest.raises(ConfigError, match=rf"expected within_seconds, an int of more than 30 .*got {within!r}"):
        build_zombie_automation(within)


def test_shortest_window_is_just_over_prefects_shortest_heartbeat_interval():
    from prefect.flow_engine import MINIMUM_HEARTBEAT_INTERVAL

    assert MIN_HEARTBEAT_SECONDS == MINIMUM_HEARTBEAT_INTERVAL
    assert build_zombie_automation(MIN_HEARTBEAT_SECONDS + 1).trigger.within == timedelta(seconds=31)


def test_event_names_are_the_ones_prefect_emits():
    import inspect

    from prefect.client.schemas.objects import StateType
    from prefect.flow_engine import FlowRunEngine

    assert f'event="{HEARTBEAT_EVENT}"' in inspect.getsource(FlowRunEngine._emit_flow_run_heartbeat)
    final = {"prefect.flow-run." + t.value.title() for t in (StateType.COMPLETED, StateType.FAILED,
                                                              StateType.CANCELLED, StateType.CRASHED)}
    assert set(FINAL_STATE_EVENTS) == final


# --- default window and the no-API paths of ensure_zombie_automation -----------------------------------

@pytest.mark.parametrize("heartbeat, within", [(180, 540), (30, 90), (45, 135), (10, 90), (None, None)])
def test_default_window_is_three_heartbeats(heartbeat, within):
    assert default_within_seconds(heartbeat) == within


def _no_api(*args, **kwargs):
    raise AssertionError("the Prefect API was called")


def test_ensure_does_nothing_when_heartbeats_are_off(monkeypatch):
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    monkeypatch.setattr("prefect.get_client", _no_api)
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_API_URL: "http://x:1/api"}):
        result = ensure_zombie_automation()
    assert result == ZombieAutomationResult(status="heartbeats-off", name=ZOMBIE_AUTOMATION_NAME)
    assert not result.created
    assert "heartbeats are off" in result.summary() and "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in result.summary()


def test_ensure_needs_a_server_url(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr("prefect.get_client", _no_api)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = ensure_zombie_automation()
    assert result.status == "no-api" and not result.created
    assert "PREFECT_API_URL is not set" in result.summary()


def test_ensure_checks_the_window_before_any_api_call(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr("prefect.get_client", _no_api)
    with temporary_settings(updates={PREFECT_API_URL: "http://x:1/api"}), pytest.raises(ConfigError):
        ensure_zombie_automation(20)


def test_summaries_say_created_or_present():
    created = ZombieAutomationResult(status="created", name="a", within_seconds=90, automation_id="1")
    present = ZombieAutomationResult(status="present", name="a", automation_id="1")
    assert created.created and not present.created
    assert created.summary() == "created automation 'a': flow runs without a heartbeat for 90 s are marked Crashed"
    assert present.summary() == "automation 'a' already present (left unchanged)"


# --- desra deploy ----------------------------------------------------------------------------------------

@pytest.fixture
def deploy(tmp_path, monkeypatch):
    """``desra deploy`` with every ``prefect`` command succeeding at once and no API to list deployments."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("DESRA_DROP_DIR", str(tmp_path / "drop"))
    monkeypatch.setenv("DESRA_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 0, "", ""))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached: the API calls are replaced
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    monkeypatch.setattr(cli, "_print_registered", lambda pool, names: None)
    monkeypatch.setattr(pool, "ensure_pool", lambda name, limit: pool.PoolResult(status="created", name=name,
                                                                                   limit=limit))
    calls = []

    def ensure(within_seconds=None):
        calls.append(within_seconds)
        return ZombieAutomationResult(status="created", name=ZOMBIE_AUTOMATION_NAME, within_seconds=540,
                                      automation_id="x")

    monkeypatch.setattr(automations, "ensure_zombie_automation", ensure)
    return calls


def test_deploy_creates_the_automation_and_says_so(deploy, capsys):
    assert cli.main(["deploy"]) == 0
    assert deploy == [90]  # the default window: three of desra's 30-s heartbeat intervals
    out = capsys.readouterr().out
    assert f"created automation {ZOMBIE_AUTOMATION_NAME!r}: flow runs without a heartbeat for 540 s" in out
    assert out.index("registered from") < out.index("created automation") < out.index("start each worker")
    assert "PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 prefect worker start --pool desra --limit 1" in out


def test_deploy_sets_the_window_from_the_workers_heartbeat(deploy, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "45")
    assert cli.main(["deploy"]) == 0
    assert deploy == [135]
    assert "PREFECT_FLOWS_HEARTBEAT_FREQUENCY=45 prefect worker start" in capsys.readouterr().out
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "soon")
    assert cli.main(["deploy"]) == 2
    assert "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in capsys.readouterr().err


def test_deploy_can_leave_the_automation_out(deploy, capsys):
    assert cli.main(["deploy", "--no-zombie-automation"]) == 0
    assert deploy == []
    assert "automation" not in capsys.readouterr().out


def test_deploy_fails_when_the_automation_cannot_be_created(deploy, monkeypatch, capsys):
    def refused(within_seconds=None):
        raise RuntimeError("HTTP 500")

    monkeypatch.setattr(automations, "ensure_zombie_automation", refused)
    assert cli.main(["deploy"]) == 1
    err = capsys.readouterr().err
    assert "the deployments are registered" in err and "HTTP 500" in err and ZOMBIE_AUTOMATION_NAME in err
