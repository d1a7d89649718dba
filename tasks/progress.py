"""A Prefect progress artifact that is cheap to update from a loop.

Each update of a progress artifact is a request to the API (about 30 ms on a small machine), so a
loop over hundreds of images that updated it every step would spend more time reporting progress than
detecting artifacts. :class:`Progress` sends at most one update per ``interval`` seconds, plus the
final one.
"""

import time
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

__all__ = ["Progress"]


class Progress:
    """A progress artifact (0–100 %) whose updates are sent at most every ``interval`` seconds."""

    def __init__(self, description: str, interval: float = 2.0) -> None:
        created = create_progress_artifact(0.0, description=description)
        if not isinstance(created, UUID):  # a coroutine: what Prefect's async_dispatch gives in an event loop
            created.close()
            raise RuntimeError("expected Progress to be created from synchronous code, got a running event loop")
        self.id = created
        self.interval = interval
        self.sent = 0.0
        self._last = time.monotonic()

    def update(self, percent: float, force: bool = False) -> None:
        now = time.monotonic()
        if percent == self.sent or not (force or percent >= 100.0 or now - self._last >= self.interval):
            return
        try:
            update_progress_artifact(self.id, percent)
        except Exception as e:  # progress is a courtesy: losing the API for a moment must not fail the run
            get_run_logger().warning("could not update the progress artifact: %s: %s", type(e).__name__, e)
        self.sent, self._last = percent, now

    def done(self) -> None:
        self.update(100.0)
