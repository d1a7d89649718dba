"""The Prefect automation that marks "zombie" flow runs Crashed.

A flow run whose worker or machine dies (SIGKILL, OOM killer, power loss) cannot report its end, so the
server shows it ``Running`` for ever. Prefect's remedy for self-hosted servers ("How to detect and respond
to zombie flows"): every flow run emits a ``prefect.flow-run.heartbeat`` event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds, and a proactive automation crashes each run after whose
last heartbeat neither another heartbeat nor a final state arrives in time.

:func:`build_zombie_automation` builds that automation (pure, no API call);
:func:`ensure_zombie_automation` creates it on the Prefect API unless one of the same name exists.
Prefect is imported inside the functions, after ``desra.tasks.env`` has set its environment defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from desra_core import ConfigError

if TYPE_CHECKING:
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.events.schemas.automations import AutomationCore

__all__ = [
    "FINAL_STATE_EVENTS",
    "HEARTBEAT_EVENT",
    "HEARTBEAT_MULTIPLE",
    "HEARTBEAT_SECONDS",
    "MIN_HEARTBEAT_SECONDS",
    "ZOMBIE_AUTOMATION_NAME",
    "ZombieAutomationResult",
    "build_zombie_automation",
    "crash_message",
    "default_within_seconds",
    "ensure_zombie_automation",
    "worker_heartbeat_seconds",
]

ZOMBIE_AUTOMATION_NAME = "desra: crash unresponsive flow runs"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
FINAL_STATE_EVENTS = tuple(f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed"))
HEARTBEAT_MULTIPLE = 3  # heartbeats a run may miss before it counts as dead
# Prefect never sends heartbeats more often than this (prefect.flow_engine.MINIMUM_HEARTBEAT_INTERVAL), so a
# shorter window would crash healthy runs.
MIN_HEARTBEAT_SECONDS = 30
# desra's heartbeat for flow runs under workers: Prefect's shortest, so that with HEARTBEAT_MULTIPLE a dead
# worker's run is marked Crashed within 3 × 30 = 90 s of its last heartbeat (at most about 100 s after the
# kill: the last heartbeat came up to 30 s before it, the server checks proactive triggers every 5 s). The
# workers must run with PREFECT_FLOWS_HEARTBEAT_FREQUENCY set to the same value (the compose worker does; desra
# deploy prints the command), since a run takes it from its worker's environment.
HEARTBEAT_SECONDS = 30


@dataclass(frozen=True, kw_only=True)
class ZombieAutomationResult:
    """What :func:`ensure_zombie_automation` did: ``created`` it, found it ``present`` (left as it is), or
    nothing because flow-run heartbeats are off (``heartbeats-off``) or no Prefect server is configured
    (``no-api``)."""

    status: Literal["created", "updated", "present", "heartbeats-off", "no-api"]
    name: str
    within_seconds: int | None = None  # the window of the automation created; None otherwise
    automation_id: str | None = None

    @property
    def created(self) -> bool:
        return self.status == "created"

    def summary(self) -> str:
        """One line for the user."""
        if self.status == "created":
            return (f"created automation {self.name!r}: flow runs without a heartbeat for {self.within_seconds} s "
                    "are marked Crashed")
        if self.status == "updated":
            return (f"updated automation {self.name!r}: flow runs without a heartbeat for {self.within_seconds} s "
                    "are marked Crashed")
        if self.status == "present":
            return f"automation {self.name!r} already present (left unchanged)"
        if self.status == "no-api":
            return (f"automation {self.name!r} not created: PREFECT_API_URL is not set (no Prefect server to "
                    "create it on); set it and run desra deploy again")
        return (f"automation {self.name!r} not created: flow-run heartbeats are off "
                "(set PREFECT_FLOWS_HEARTBEAT_FREQUENCY, in seconds, to detect runs whose worker died)")


def crash_message(within_seconds: int) -> str:
    """The message of the Crashed state that the automation sets: what happened and what to do."""
    return (f"no heartbeat for {within_seconds} s: its worker or machine probably died; run the deployment again "
            "— finished images are kept in the store")


def worker_heartbeat_seconds(environ: dict[str, str] | None = None) -> int | None:
    """The flow-run heartbeat interval that desra's workers use: ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` of
    ``environ`` (default: this process's environment) when set (empty: heartbeats off, None), else
    :data:`HEARTBEAT_SECONDS`. Raises :class:`ConfigError` for a value that is not a whole number of seconds."""
    import os

    value = (os.environ if environ is None else environ).get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
    if value is None:
        return HEARTBEAT_SECONDS
    if not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"expected PREFECT_FLOWS_HEARTBEAT_FREQUENCY in whole seconds, got {value!r}") from None


def default_within_seconds(heartbeat_seconds: int | None) -> int | None:
    """``HEARTBEAT_MULTIPLE`` heartbeat intervals (Prefect raises intervals below 30 s to 30 s); None when
    heartbeats are off (``heartbeat_seconds`` None)."""
    if heartbeat_seconds is None:
        return None
    return HEARTBEAT_MULTIPLE * max(heartbeat_seconds, MIN_HEARTBEAT_SECONDS)


def build_zombie_automation(within_seconds: int, *, name: str = ZOMBIE_AUTOMATION_NAME) -> Automation:
    """The automation (not yet created): after a flow run's heartbeat, expect another heartbeat or a final
    state of the same run (``for_each`` its resource id) within ``within_seconds``, else set the run Crashed.

    ``within_seconds`` must be more than 30 (the shortest heartbeat interval Prefect uses) and should be a few
    times the workers' ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``: a window shorter than the workers' interval
    crashes healthy runs.
    """
    if type(within_seconds) is not int or within_seconds <= MIN_HEARTBEAT_SECONDS:
        raise ConfigError(f"expected within_seconds, an int of more than {MIN_HEARTBEAT_SECONDS} (Prefect's shortest "
                          f"heartbeat interval), got {within_seconds!r}")
    from datetime import timedelta

    from prefect.automations import Automation, ChangeFlowRunState, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType

    return Automation(
        name=name,
        description=(f"Marks a flow run Crashed when no heartbeat ({HEARTBEAT_EVENT}) or final state arrives "
                     f"within {within_seconds} s of its last heartbeat: its worker or machine died. "
                     "Created by `desra deploy`."),
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            after={HEARTBEAT_EVENT},
            expect={HEARTBEAT_EVENT, *FINAL_STATE_EVENTS},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=crash_message(within_seconds))],
    )


def ensure_zombie_automation(within_seconds: int | None = None, *,
                             name: str = ZOMBIE_AUTOMATION_NAME) -> ZombieAutomationResult:
    """Create the zombie automation on the Prefect server at ``PREFECT_API_URL`` unless one named ``name``
    exists there; nothing when ``PREFECT_API_URL`` is not set.

    ``within_seconds`` defaults to ``HEARTBEAT_MULTIPLE`` times this process's
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (Prefect's default: 180 s), which should be the workers' too; when
    that setting is off (None) and no ``within_seconds`` is given, nothing is created. An existing automation
    of that name with the same window is left unchanged; one with another window is updated to this one, so
    that the window follows the workers' heartbeat. Raises :class:`ConfigError` for a bad ``within_seconds``;
    API errors propagate.
    """
    from prefect import get_client
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings import PREFECT_API_URL, get_current_settings

    if within_seconds is None:
        within_seconds = default_within_seconds(get_current_settings().flows.heartbeat_frequency)
        if within_seconds is None:
            return ZombieAutomationResult(status="heartbeats-off", name=name)
    automation = build_zombie_automation(within_seconds, name=name)  # validates before any API call
    if not PREFECT_API_URL.value():  # else get_client would start an ephemeral server of its own
        return ZombieAutomationResult(status="no-api", name=name)
    with get_client(sync_client=True) as client:
        existing = [a for a in client.read_automations_by_name(name) if a.name == name]
        if existing and _window(existing[0]) != _window(automation):
            client.update_automation(existing[0].id, automation)
            return ZombieAutomationResult(status="updated", name=name, within_seconds=within_seconds,
                                          automation_id=str(existing[0].id))
        if existing:
            return ZombieAutomationResult(status="present", name=name, automation_id=str(existing[0].id))
        # What Automation.create() does on its synchronous path, through this client.
        created_id = client.create_automation(AutomationCore(**automation.model_dump(exclude={"id"})))
    return ZombieAutomationResult(status="created", name=name, within_seconds=within_seconds,
                                  automation_id=str(created_id))


def _window(automation: AutomationCore) -> timedelta | None:
    """The trigger's time window; None for a trigger that has none (a metric trigger)."""
    window: timedelta | None = getattr(automation.trigger, "within", None)
    return window


if __name__ == "__main__":  # `python -m desra.automations`: only this step of `desra deploy`
    print(ensure_zombie_automation(default_within_seconds(worker_heartbeat_seconds())).summary())
