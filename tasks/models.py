"""The ``gpu`` slot: one slot of a global concurrency limit, held by a run's device thread while it runs
model calls, so two flows on one machine never share a GPU by accident. The models themselves, their
digests and their device calls are :mod:`desra.pipeline.models`."""

import contextlib

from prefect.concurrency.sync import concurrency

__all__ = ["GPU_LIMIT", "gpu_slot"]

GPU_LIMIT = "gpu"


def gpu_slot(device: str):
    """The ``gpu`` slot for work on a CUDA device (nothing to hold on the CPU). ``strict=False`` lets a run
    proceed where the limit does not exist."""
    if device.startswith("cuda"):
        return concurrency(GPU_LIMIT, occupy=1, strict=False)
    return contextlib.nullcontext()
