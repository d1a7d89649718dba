"""``desra watch``: the bridge from a bucket's object-created notifications (S3 → SQS) to debounced
``desra.drop.landed`` events on a Prefect server, so that a burst of uploads starts one desra/on-drop run.

Self-hosted Prefect has no webhooks, so something must turn the bucket's notifications into events: this command,
run beside the server (or anywhere that reaches both the queue and the Prefect API). The loop itself, the
parsing and the debouncing are :mod:`desra.pipeline.watch`; this module adds the command line, the Prefect
emitter and the signals.

The emitter sends each event with Prefect's own events client and waits until the server has confirmed it (a
websocket checkpoint), and raises when it could not. ``prefect.events.emit_event`` is not used: it queues the
event for a background thread and returns at once, and a failed send there is only logged, so the queue's
messages would be deleted for an event that never arrived. With the confirmation, a message is deleted only
after its event reached the server (at least once; a repeated event costs no model work).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from desra.pipeline.text import inert
from desra.pipeline.watch import MAX_WAIT_S, Bridge, DropEvent, DropWatch, SQSQueue
from desra_core.errors import ConfigError

__all__ = ["add_arguments", "prefect_emitter", "run_watch"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``desra watch``."""
    p.add_argument("--queue-url", required=True,
                   help="the SQS queue that the bucket's object-created notifications go to "
                        "(https://sqs.<region>.amazonaws.com/<account>/<name>; AWS_ENDPOINT_URL picks an "
                        "S3-compatible endpoint; credentials only from the environment and the standard AWS chain)")
    p.add_argument("--drop", required=True, metavar="s3://BUCKET/PREFIX",
                   help="the watched drops: each folder directly under it is one drop "
                        "(s3://drops/in/<drop>/x.png starts a run over s3://drops/in/<drop>)")
    p.add_argument("--out", required=True,
                   help="the runs' output root, sent as the event's output_dir (a URL, or an absolute path "
                        "on the workers)")
    p.add_argument("--quiet", type=float, default=10.0, metavar="SECONDS",
                   help="emit a drop's event once it has had no new object for this long (default: %(default)s)")
    p.add_argument("--max-wait", type=float, default=120.0, metavar="SECONDS",
                   help="emit it at the latest this long after its first new object, even while uploads go on "
                        "(default: %(default)s)")
    p.add_argument("--poll", type=int, default=MAX_WAIT_S, metavar="SECONDS",
                   help=f"longest SQS long poll, 1 to {MAX_WAIT_S}; also the longest a stop waits "
                        "(default: %(default)s)")


async def _send(drop: DropEvent, reconnection_attempts: int) -> None:
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    # checkpoint_every=1: after the event the client pings and waits for the pong, so the server has read it
    async with get_events_client(reconnection_attempts=reconnection_attempts, checkpoint_every=1) as client:
        await client.emit(Event(event=drop.event, resource=drop.resource, payload=drop.payload))


def prefect_emitter(reconnection_attempts: int = 3) -> Callable[[DropEvent], None]:
    """An emitter that sends each event to the Prefect API (``PREFECT_API_URL``, with
    ``PREFECT_API_AUTH_STRING`` where the server wants credentials) and returns once the server has it; it
    raises when the event could not be delivered."""
    def emit(drop: DropEvent) -> None:
        asyncio.run(_send(drop, reconnection_attempts))
    return emit


def _stamp(line: str) -> str:
    return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} desra watch: {line}"


def _say(line: str) -> None:
    print(_stamp(line), flush=True)


def _warn(line: str) -> None:
    print(_stamp(f"warning: {line}"), file=sys.stderr, flush=True)


def _check_out(out: str) -> str:
    if "://" in out:
        if not out.startswith(("s3://", "file://")):
            raise ConfigError(f"expected --out as an s3:// URL or an absolute path, got {out!r}")
        return out.rstrip("/")
    if not os.path.isabs(out):
        raise ConfigError(f"expected --out as an absolute path (the workers read it, not this process) or a "
                          f"URL, got {out!r}")
    return out


def _on_signals(stop: threading.Event, poll_s: int) -> None:
    """SIGTERM or SIGINT: stop after the current long poll; a second one stops at once."""
    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _say(f"{signal.Signals(signum).name}: stopping within {poll_s} s (again to stop at once)")

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _no_emitter(drop: DropEvent) -> None:
    raise RuntimeError("no emitter")


def run_watch(args: argparse.Namespace, emit: Callable[[DropEvent], None] | None = None) -> int:
    """``desra watch``: check the arguments and the queue, then bridge until a signal (``emit``: another emitter
    than Prefect's). The Prefect API is first reached with the first event; while it cannot be, the events'
    messages go back to the queue and are tried again."""
    import desra.tasks  # noqa: F401  (Prefect environment defaults before Prefect loads)

    out = _check_out(str(args.out))
    watch = DropWatch(str(args.drop), out)
    queue = SQSQueue(str(args.queue_url))
    stop = threading.Event()
    bridge = Bridge(queue, watch, out, emit or _no_emitter, quiet_s=args.quiet, max_wait_s=args.max_wait,
                    poll_s=args.poll, stop=stop, say=_say, warn=_warn)  # checks the periods
    if emit is None:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise ConfigError("expected PREFECT_API_URL naming the Prefect server whose desra/on-drop deployment "
                              "the events should start, got none")
        bridge.emit = prefect_emitter()
    arn = queue.arn()  # the queue exists and these credentials may read it
    if threading.current_thread() is threading.main_thread():
        _on_signals(stop, args.poll)
    _say(f"watching {watch.url} through {inert(arn or queue.url)}: one desra.drop.landed event per drop folder "
         f"after {args.quiet:g} s without new objects (at most {args.max_wait:g} s), output_dir {inert(out)}")
    try:
        bridge.run()
    except KeyboardInterrupt:
        _say("stopped at once; messages not yet deleted come back to the queue")
        return 130
    _say("stopped")
    return 0
