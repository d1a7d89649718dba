"""The Prefect face of :mod:`desra.pipeline.stream`: each image a task run, the device holding the ``gpu`` slot.

:func:`process` runs a drop's images through the pipeline's streamed steps and adds what users see in the
Prefect UI: one ``image <stem>`` task run per image that needed work (Failed, with its error, when the
image failed; the others go on), a progress artifact, and one log line per failed image: a WARNING without
a traceback when desra expected the failure (a :class:`~desra_core.DesraError`: bad input, a size limit…),
an ERROR with the traceback when it did not (a bug, or an environment fault such as a full disk). Names and
errors in those texts pass through :func:`desra.pipeline.text.inert`. The device thread holds one slot of the
``gpu`` global concurrency limit while it runs model calls, so two runs on one machine never share a GPU
by accident.
"""

import logging
import threading
from collections.abc import Callable
from typing import ClassVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.states import Failed

from desra.pipeline.drop import drop_items
from desra.pipeline.models import Models
from desra.pipeline.report import batch_rows_key, write_batch_rows
from desra.pipeline.settings import Settings
from desra.pipeline.steps import Item
from desra.pipeline.stream import Device, process_into
from desra.pipeline.text import inert
from desra.tasks.models import gpu_slot
from desra.tasks.progress import Progress
from desra_core import DesraError

__all__ = ["ImageFailureLogged", "process"]


class ImageFailureLogged(logging.Filter):
    """Drops Prefect's own ERROR records of a failed image task run ("Task run failed with state: Failed(…)",
    with an empty traceback, then "Finished in state Failed(…)"): :func:`process` logs that failure once
    itself, with the image's name and, for a bug, the bug's own traceback. Every other record passes.
    Installed on the ``prefect.task_runs`` logger when this module is imported."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _failed: ClassVar[set[str]] = set()  # ids of image task runs that returned a Failed state

    @classmethod
    def add(cls, task_run_id: str) -> None:
        with cls._lock:
            cls._failed.add(task_run_id)

    def filter(self, record: logging.LogRecord) -> bool:
        task_run_id = getattr(record, "task_run_id", None)
        if record.levelno < logging.ERROR or task_run_id not in self._failed:
            return True
        if str(record.msg).startswith("Finished in state"):  # the engine's last word on the task run
            with self._lock:
                self._failed.discard(task_run_id)
        return False


_TASK_RUN_LOGGER = logging.getLogger("prefect.task_runs")
if not any(isinstance(f, ImageFailureLogged) for f in _TASK_RUN_LOGGER.filters):
    _TASK_RUN_LOGGER.addFilter(ImageFailureLogged())


@task(name="image", cache_policy=NO_CACHE, persist_result=False, task_run_name="image {stem}", retries=0)
def image_task(stem: str, work: Callable[[], dict]):
    """One image through every step; a ``Failed`` state (the image's error its message) when the image
    failed, returned rather than raised: :func:`process` logs the failure once (:class:`ImageFailureLogged`),
    with the bug's own traceback when there is one. ``stem`` only names the task run."""
    row = work()
    if row.get("status") != "ok":
        context = TaskRunContext.get()
        if context is not None:  # None when called as .fn(), outside a task run: no engine records to drop
            ImageFailureLogged.add(str(context.task_run.id))
        return Failed(message=inert(row.get("error") or "failed"))
    return row


def _as_task(item: Item, work: Callable[[], dict]) -> dict:
    done: dict = {}

    def body() -> dict:
        done["row"] = work()
        return done["row"]

    image_task(inert(item.stem), body, return_state=True)
    if "row" not in done:  # the task could not even start its work
        raise DesraError(f"the task run of image {item.stem} ended before its work started")
    return done["row"]


def process(settings: Settings, input_dir: str, output_dir: str, run_id: str, stems: list[str] | None = None,
            progress: Progress | None = None, batch: str | None = None) -> list[dict]:
    """Every image of ``input_dir`` (or only ``stems``), streamed through the pipeline; one row per image.
    ``progress`` moves from 0 to 100 percent as images finish. Either folder may be a bucket URL: an output
    URL is worked on in this worker's local copy (:mod:`desra.pipeline.remote`), trimmed to
    ``DESRA_OUTPUT_CACHE_MB`` when the run is done. ``batch``: this is one batch of run ``run_id``, named so;
    its rows are kept for that run (:func:`desra.pipeline.report.write_batch_rows`)."""
    logger = get_run_logger()
    if batch is not None:
        batch_rows_key(run_id, batch)  # names that cannot leave the output root, refused before any work
    items = drop_items(input_dir, stems, settings.labels_dir)
    models = Models(settings)
    finished = [0]

    def on_row(row: dict) -> None:
        finished[0] += 1
        if row.get("status") != "ok":
            bug = row.pop("traceback", None)  # not a DesraError: the one case that earns a traceback
            if bug is None:
                logger.warning("%s failed: %s", inert(row["stem"]), inert(row.get("error")))
            else:
                logger.error("%s failed: %s\n%s", inert(row["stem"]), inert(row.get("error")), bug)
        if progress is not None and items:
            progress.update(100.0 * finished[0] / len(items))

    device = Device(slot=lambda: gpu_slot(models.device))
    try:
        rows, run = process_into(output_dir, items, settings=settings, run_id=run_id, models=models, device=device,
                                 wrap=_as_task, on_row=on_row)
    finally:
        device.close()
    if batch is not None:
        write_batch_rows(rows, run.output_dir, run_id, batch, run.remote)
    cached = sum(bool(r.get("cached")) for r in rows)
    logger.info("%d image(s): %d from the store, model calls %d (device busy %.1f s)", len(rows), cached,
                device.calls, device.busy_seconds)
    return rows
