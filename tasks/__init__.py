"""Prefect tasks: thin adapters that run :mod:`pipeline` steps as task runs and pass paths and small records."""

from desra.tasks.env import configure as _configure

_configure()  # before anything imports prefect

__all__: list[str] = []
