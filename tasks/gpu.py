"""The ``gpu`` global concurrency limit that GPU-bound tasks hold while they run models."""

from prefect import get_client

from desra.tasks.models import GPU_LIMIT

__all__ = ["ensure_gpu_limit"]


def ensure_gpu_limit(slots: int | None = None) -> int:
    """Create the ``gpu`` limit if it does not exist (one slot per visible GPU, at least 1); return its size."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    if slots is None:
        import torch

        slots = max(torch.cuda.device_count(), 1)
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))
            return slots
