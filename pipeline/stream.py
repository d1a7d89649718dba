"""Streaming the per-image steps so that the device never waits on CPU work.

:func:`process_images` runs every image of a run through :mod:`desra.pipeline.steps` at once, within bounds:

* **One device thread** (:class:`Device`) runs the model calls (MSE-SR, GAN-SR, segmentation) back to back,
  the earliest image first. It does nothing else: decoding, encoding, detection, pseudo-GT and publishing
  happen on the image threads, so while it holds the ``gpu`` slot the device is only ever given model work.
* **CPU stages on every core**: each image has its own thread; a gate of ``workers`` permits (default: the
  cores this process may use) bounds how many run CPU work at once. There is no barrier between images:
  an image is detected as soon as its own results are there, while the device works on the next ones.
* **Bounded memory**: at most ``workers + lookahead`` images are in flight (their bytes, at most
  ``DESRA_MAX_INPUT_MB`` each, and pixels in memory), whatever the size of the drop; the rest wait as small
  records.
* **One failing image fails alone**: its steps raise, its row says why, the others go on.

Entry points wrap what they need around it: the flows run each image as a Prefect task (``wrap``) and
hold the ``gpu`` concurrency slot on the device thread (``slot``); ``desra detect`` runs it as it is.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import contextvars
import functools
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from desra.pipeline.remote import bucket_of, read_through_limit, trim, work_root
from desra.pipeline.steps import ImageJob, Item, Run, failed_row, published_row

__all__ = ["Device", "default_workers", "process_image", "process_images"]


def default_workers() -> int:
    """CPU stages at once: ``DESRA_CPU_WORKERS`` when set, else the cores this process may run on."""
    value = os.environ.get("DESRA_CPU_WORKERS", "").strip()
    if value:
        return max(int(value), 1)
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


class Device:
    """One thread that runs model calls back to back, lowest ``order`` (earliest image) first.

    ``slot``: a context manager factory (e.g. the flows' ``gpu`` concurrency slot) entered by the device
    thread before its first call and left when the device closes; only model calls run inside it.
    ``busy_seconds`` adds up the time spent in calls (device occupancy = busy / wall time).
    """

    def __init__(self, slot: Callable[[], contextlib.AbstractContextManager[object]] | None = None) -> None:
        self._slot = slot or contextlib.nullcontext
        # (order, sequence, call, its future); a None call (with no future) ends the thread
        self._queue: queue.PriorityQueue[tuple[float, int, Callable[[], object] | None, cf.Future[object] | None]] = (
            queue.PriorityQueue())
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failed: BaseException | None = None
        self.busy_seconds = 0.0
        self.calls = 0

    def submit(self, order: int, fn: Callable[[], object]) -> cf.Future[object]:
        """Queue ``fn`` for the device thread, after the calls of earlier images; its future."""
        future: cf.Future[object] = cf.Future()
        with self._lock:
            if self._failed is not None:
                raise RuntimeError(f"the device could not be acquired: {self._failed}") from self._failed
            if self._thread is None:
                context = contextvars.copy_context()
                self._thread = threading.Thread(target=context.run, args=(self._loop,), name="desra-device",
                                                daemon=True)
                self._thread.start()
            self._queue.put((order, next(self._seq), fn, future))
        return future

    def _loop(self) -> None:
        try:
            with self._slot():
                while True:
                    _, _, fn, future = self._queue.get()
                    if fn is None or future is None:
                        return
                    if not future.set_running_or_notify_cancel():
                        continue
                    start = time.perf_counter()
                    try:
                        result = fn()
                    except BaseException as e:  # the image's own failure: it goes back to its thread
                        future.set_exception(e)
                    else:
                        future.set_result(result)
                    finally:
                        self.busy_seconds += time.perf_counter() - start
                        self.calls += 1
        except BaseException as e:  # the slot itself failed: every waiting image learns why
            with self._lock:
                self._failed = e
            while True:
                try:
                    _, _, fn, future = self._queue.get_nowait()
                except queue.Empty:
                    return
                if fn is not None and future is not None:
                    future.set_exception(RuntimeError(f"the device could not be acquired: {e}"))

    def close(self) -> None:
        """Let the device thread finish its calls, leave the slot and end."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put((float("inf"), next(self._seq), None, None))
        if thread is not None:
            thread.join()


class _OnTheCPU:
    """A :class:`Device` whose "device" is the CPU itself: each model call also takes one of the CPU gate's
    permits, so model calls and CPU steps together never ask for more cores than the gate allows."""

    def __init__(self, device: Device, gate: contextlib.AbstractContextManager[object]) -> None:
        self.device, self.gate = device, gate

    def submit(self, order: int, fn: Callable[[], object]) -> cf.Future[object]:
        def shared() -> object:
            with self.gate:
                return fn()
        return self.device.submit(order, shared)


def process_image(job: ImageJob, cpu: contextlib.AbstractContextManager[object],
                  device: Device | _OnTheCPU) -> dict[str, Any]:
    """Every step of one image, each where it belongs (CPU steps inside ``cpu``, model calls on ``device``);
    returns the image's row. A failing step fails this image only: its row says why."""
    run, item = job.run, job.item
    queued: list[cf.Future[object]] = []
    try:
        with job.claims:  # released when the image is done (or failed)
            job.plan()
            if not job.sr_needed and not job.segment_needed:  # e.g. another worker published it while this one
                row = published_row(run, job.item)            # waited for the claims: nothing to write again
                if row is not None:
                    return row
            with cpu:
                job.read()
            # Both SR passes queue at once: the MSE result is encoded while the GAN model runs, the GAN
            # result while the segmenter runs.
            queued = [device.submit(job.order, functools.partial(job.super_resolve, role)) for role in job.sr_needed]
            segmenting, store_error = None, None
            for role, future in zip(job.sr_needed, list(queued), strict=True):  # a copy: segmenting joins queued
                future.result()
                if role == "gan" and job.segment_needed and store_error is None:
                    segmenting = device.submit(job.order, job.segment)
                    queued.append(segmenting)
                try:
                    with cpu:
                        job.store_sr(role)
                except OSError as e:  # e.g. a full disk: the other result is still stored, so no re-run redoes it
                    store_error = store_error or e
            if store_error is not None:
                raise store_error
            job.done_with_lr()
            if job.segment_needed:
                if segmenting is None:  # the GAN result came from the store: decode it here, not on the device
                    with cpu:
                        job.load_sr("gan")
                    segmenting = device.submit(job.order, job.segment)
                    queued.append(segmenting)
                segmenting.result()
                with cpu:
                    job.store_labels()
            with cpu:
                job.detect()
            with cpu:
                job.pseudo_gt()
            row = job.finish_row()
            with cpu:  # still holding the claims: in a bucket, the entries become visible as they are published
                return job.publish(row)
    except Exception as e:  # reported in the image's row; the others go on
        for future in queued:  # model calls of this image still waiting: not worth the device's time
            future.cancel()
        row = failed_row(run, item, e, job.size)
        try:
            with cpu:
                job.publish_failure(row)
        except OSError as write_error:  # e.g. a full disk: the row still reaches the run report
            row["error"] += f"; its report could not be written: {write_error}"
        return row


def process_images(items: Iterable[Item], run: Run, *, device: Device | None = None, workers: int | None = None,
                   lookahead: int = 2,
                   wrap: Callable[[Item, Callable[[], dict[str, Any]]], dict[str, Any]] | None = None,
                   on_row: Callable[[dict[str, Any]], None] | None = None,
                   on_load: Callable[[int, Item], None] | None = None) -> list[dict[str, Any]]:
    """Run ``items`` through the steps, streamed; returns one row per item, in the items' order.

    ``device``: where model calls run (default: a new :class:`Device`, closed at the end). ``workers``:
    CPU stages at once (default :func:`default_workers`); ``lookahead``: images in flight beyond that, so
    that the device always has the next image's input ready. ``wrap(item, work) -> row`` runs ``work``
    for one image (the flows make it a Prefect task run); ``on_row(row)`` sees each row as it is done.
    Each image's files are read once, on its own thread (:meth:`ImageJob.load`); an image whose published
    outputs already come from the current store keys then stops there, without ``wrap``. ``on_load(i,
    item)`` sees each item as loaded (its ``sha256`` and label map digest filled in).
    """
    items = list(items)
    workers = workers or default_workers()
    own_device = device is None
    device = device or Device()
    gate = threading.BoundedSemaphore(workers)
    calls = _OnTheCPU(device, gate) if getattr(run.models, "device", None) == "cpu" else device
    rows: dict[int, dict[str, Any]] = {}
    try:
        with cf.ThreadPoolExecutor(max_workers=max(1, min(len(items), workers + lookahead)),
                                   thread_name_prefix="desra-image") as pool:
            futures = {}
            for i, item in enumerate(items):
                def work(i: int = i, item: Item = item) -> dict[str, Any]:
                    job = ImageJob(run, item, order=i)
                    if job.recall():  # objects read before, unchanged: their digests without a download
                        row = published_row(run, job.item)
                        if row is not None:
                            return row
                    with gate:
                        job.load()  # the one read of its files: their digests give the store keys
                    job.remember()
                    if on_load is not None:
                        on_load(i, job.item)
                    if job.load_error is None:
                        row = published_row(run, job.item)
                        if row is not None:  # nothing to do, not even a task run
                            return row

                    def steps() -> dict[str, Any]:
                        return process_image(job, gate, calls)
                    return steps() if wrap is None else wrap(job.item, steps)
                futures[pool.submit(contextvars.copy_context().run, work)] = (i, item)
            for future in cf.as_completed(futures):
                i, item = futures[future]
                try:
                    rows[i] = future.result()
                except Exception as e:  # the wrapper itself failed: still one row
                    rows[i] = failed_row(run, item, e)
                if on_row is not None:
                    on_row(rows[i])
    finally:
        if own_device:
            device.close()
    return [rows[i] for i in range(len(items))]


def process_into(output_dir: str, items: Iterable[Item], *, settings: Any, run_id: str, models: Any,
                 device: Device, wrap: Callable[[Item, Callable[[], dict[str, Any]]], dict[str, Any]] | None = None,
                 on_row: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[dict[str, Any]], Run]:
    """:func:`process_images` of ``items`` into the output root ``output_dir``, a folder or a bucket URL (then
    worked on in this worker's local copy, :func:`~desra.pipeline.remote.work_root`, trimmed to
    ``DESRA_OUTPUT_CACHE_MB`` at the end): what one ``desra-batch`` run does with its images, without Prefect
    (``wrap`` makes each image a task run there). The rows, and the run (its ``output_dir`` is the local copy)."""
    remote = bucket_of(output_dir)
    run = Run(settings=settings, output_dir=work_root(output_dir), run_id=run_id, models=models, remote=remote)
    try:
        rows = process_images(items, run, device=device, wrap=wrap, on_row=on_row)
    finally:
        if remote is not None:
            trim(run.output_dir, read_through_limit())
    return rows, run
