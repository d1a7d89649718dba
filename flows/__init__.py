"""Prefect flows: ``desra`` (the full pipeline), ``desra-batch`` (one batch of a drop), ``finetune``."""

import desra.tasks  # noqa: F401  (sets the Prefect environment before Prefect is imported)

__all__: list[str] = []
