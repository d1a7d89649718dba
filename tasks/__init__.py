"""Prefect tasks: thin adapters over :mod:`desra_core` that pass paths and small records."""

from tasks.env import configure as _configure

_configure()  # before anything imports prefect

__all__: list[str] = []
