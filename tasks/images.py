"""The Prefect face of :mod:`pipeline.stream`: each image a task run, the device holding the ``gpu`` slot.

:func:`process` runs a drop's images through the pipeline's streamed steps and adds what users see in the
Prefect UI: one ``image <stem>`` task run per image that needed work (Failed, with its error, when the
image failed; the others go on), a progress artifact, and a warning per failed image. The device thread
holds one slot of the ``gpu`` global concurrency limit while it runs model calls, so two runs on one
machine never share a GPU by accident.
"""

from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from desra_core import DesraError
from pipeline.drop import drop_items
from pipeline.models import Models
from pipeline.settings import Settings
from pipeline.steps import Item, Run
from pipeline.stream import Device, process_images
from tasks.models import gpu_slot
from tasks.progress import Progress

__all__ = ["ImageFailed", "process"]


class ImageFailed(DesraError):
    """An image of the run failed; its row (with the reason) is in the run report."""


@task(name="image", cache_policy=NO_CACHE, persist_result=False, task_run_name="image {stem}", retries=0)
def image_task(stem: str, work: Callable[[], dict]) -> dict:
    """One image through every step; Failed (with the image's error) when the image failed."""
    row = work()
    if row.get("status") != "ok":
        raise ImageFailed(row.get("error") or "failed")
    return row


def _as_task(item: Item, work: Callable[[], dict]) -> dict:
    done: dict = {}

    def body() -> dict:
        done["row"] = work()
        return done["row"]

    image_task(item.stem, body, return_state=True)
    if "row" not in done:  # the task could not even start its work
        raise DesraError(f"the task run of image {item.stem} ended before its work started")
    return done["row"]


def process(settings: Settings, input_dir: str, output_dir: str, run_id: str, stems: list[str] | None = None,
            progress: Progress | None = None, share: tuple[float, float] = (0.0, 100.0)) -> list[dict]:
    """Every image of ``input_dir`` (or only ``stems``), streamed through the pipeline; one row per image.
    ``progress`` moves from ``share[0]`` to ``share[1]`` percent as images finish."""
    logger = get_run_logger()
    items = drop_items(input_dir, stems, settings.labels_dir)
    models = Models(settings)
    run = Run(settings=settings, output_dir=output_dir, run_id=run_id, models=models)
    finished = [0]

    def on_row(row: dict) -> None:
        finished[0] += 1
        if row.get("status") != "ok":
            logger.warning("%s failed: %s", row["stem"], row.get("error"))
        if progress is not None and items:
            progress.update(share[0] + (share[1] - share[0]) * finished[0] / len(items))

    device = Device(slot=lambda: gpu_slot(models.device))
    try:
        rows = process_images(items, run, device=device, wrap=_as_task, on_row=on_row)
    finally:
        device.close()
    cached = sum(bool(r.get("cached")) for r in rows)
    logger.info("%d image(s): %d from the store, model calls %d (device busy %.1f s)", len(rows), cached,
                device.calls, device.busy_seconds)
    return rows
