"""The DeSRA pipeline, free of any orchestrator: settings, the per-image steps, the streaming scheduler,
the content store (with its claims and in-memory pixels), the report schema and the review page.

Every entry point (``desra run``, ``desra detect``, ``desra finetune``, ``desra evaluate``, the Prefect
flows) runs these; the science they call is :mod:`desra_core`.
"""

__all__: list[str] = []
