"""Flow-run heartbeats sent on behalf of a flow run whose work another process does.

A flow run's own engine emits a ``prefect.flow-run.heartbeat`` event for it every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (at least 30), and the automation of ``desra deploy``
(``desra/automations.py``) marks a run Crashed when neither another heartbeat nor a final state follows
its last heartbeat within the window. A ``desra-batch`` run that a ``desra/full`` run takes over
(``flows/full.py``) has no engine: the parent does its work. :func:`heartbeats` sends the same events for
it from that process, so that when the process dies the batch run's heartbeats stop with the parent's and
the automation crashes both, which frees the pool slot the batch run holds.

Events go to the API with a plain ``POST /events`` (the route Prefect's clients use for a batch of
events), not through Prefect's background events queue, so that the first heartbeat has reached the
server when :func:`heartbeats` starts the block it guards.
"""

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator

from prefect.client.schemas.objects import FlowRun
from prefect.events import Event, RelatedResource
from prefect.events.related import tags_as_related_resources

from desra_core import ConfigError

__all__ = ["HEARTBEAT_EVENT", "MINIMUM_INTERVAL", "heartbeat_event", "heartbeat_interval", "heartbeats",
           "post_event"]

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"  # what prefect.flow_engine emits, and desra's automation waits for
MINIMUM_INTERVAL = 30  # prefect.flow_engine.MINIMUM_HEARTBEAT_INTERVAL: Prefect's engine never beats faster


def heartbeat_interval() -> int | None:
    """Seconds between heartbeats as Prefect's engine spaces them in this process:
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, raised to :data:`MINIMUM_INTERVAL`; None when heartbeats are off."""
    from prefect.settings import get_current_settings

    value = get_current_settings().flows.heartbeat_frequency
    return None if value is None else max(int(value), MINIMUM_INTERVAL)


def heartbeat_event(flow_run: FlowRun, flow_name: str) -> Event:
    """The heartbeat event of ``flow_run`` (of the flow ``flow_name``), shaped as Prefect's engine shapes it:
    the run as the resource, its flow, deployment and tags as related resources."""
    from prefect import __version__

    related = [RelatedResource.model_validate({"prefect.resource.id": f"prefect.flow.{flow_run.flow_id}",
                                               "prefect.resource.role": "flow", "prefect.resource.name": flow_name})]
    if flow_run.deployment_id:
        related.append(RelatedResource.model_validate({
            "prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}",
            "prefect.resource.role": "deployment"}))
    related += tags_as_related_resources(set(flow_run.tags or []))
    return Event(event=HEARTBEAT_EVENT, related=related,
                 resource={"prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                           "prefect.resource.name": flow_run.name or "", "prefect.version": __version__})


def post_event(event: Event) -> None:
    """Send ``event`` to the Prefect API of this process's settings; returns once the server has accepted it.
    Raises on an HTTP error or when the API cannot be reached (after the client's retries)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[event.model_dump(mode="json")]).raise_for_status()


@contextlib.contextmanager
def heartbeats(flow_run: FlowRun, flow_name: str, *, interval: float | None = None,
               send: Callable[[Event], None] = post_event) -> Iterator[None]:
    """Heartbeats for ``flow_run`` while the block runs: one sent (and accepted) before the block starts, then
    one every ``interval`` seconds (default :func:`heartbeat_interval`; with heartbeats off, none at all) from
    a daemon thread, which is stopped and joined when the block ends, so no heartbeat follows the final state
    that the caller sets afterwards.

    The first heartbeat's failure raises (the caller has not started the work yet); a later one's is logged
    as a warning and the next is tried on time: the automation crashes the run only after several missed in a
    row, and a run whose process is alive would rather go on.
    """
    if interval is None:
        interval = heartbeat_interval()
        if interval is None:
            yield
            return
    if not interval > 0:
        raise ConfigError(f"expected a heartbeat interval of more than 0 s, got {interval!r}")
    logger = _logger()
    send(heartbeat_event(flow_run, flow_name))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                send(heartbeat_event(flow_run, flow_name))
            except Exception as e:  # logged; the next beat is tried on time
                logger.warning("could not send a heartbeat for flow run %s (%s): %s: %s", flow_run.id,
                               flow_run.name, type(e).__name__, e)

    # The thread gets this thread's context: the same Prefect settings (API URL, credentials) and run logger.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True,
                              name=f"heartbeats of flow run {flow_run.id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _logger():
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("desra.heartbeat")
