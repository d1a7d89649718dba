"""The ``desra`` process work pool, locked so that whoever creates a flow run cannot choose what it runs.

Prefect's default process-pool template (``prefect work-pool get-default-base-job-template --type process``)
turns the job variables ``command``, ``env`` and ``working_dir`` of a flow run into the process that the
worker starts: anyone allowed to create a run could make the worker execute any command, or set
``PYTHONPATH``/``LD_PRELOAD`` for the flow's own command. :func:`locked_base_job_template` keeps only the
harmless variables (``name``, ``labels``, ``stream_output``) and closes the variables schema
(``additionalProperties: false``), so the server refuses a run that names any other job variable with
HTTP 422. Its ``job_configuration`` has no ``command``, ``env`` or ``working_dir`` at all, so even a run
created through an endpoint that does not validate job variables (``POST /flow_runs/``) gets the worker's
normal command (``python -m prefect.engine``), the worker's environment and a fresh temporary folder:
Prefect's ``BaseJobConfiguration.from_template_and_values`` fills in only the placeholders the template
has, and merges a run's ``env`` only into an ``env`` dict that the template itself holds.

:func:`ensure_pool` creates the pool with that template and a concurrency limit, or brings an existing
pool to both. ``python -m desra.pool`` does the same from a shell (the compose worker runs it).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from desra_core import ConfigError

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_POOL_LIMIT",
    "LOCKED_JOB_VARIABLES",
    "OPEN_JOB_VARIABLES",
    "PoolResult",
    "ensure_pool",
    "is_locked",
    "locked_base_job_template",
    "main",
]

DEFAULT_POOL = "desra"
DEFAULT_POOL_LIMIT = 1  # flow runs at once in the whole pool: one worker with one GPU
OPEN_JOB_VARIABLES = ("name", "labels", "stream_output")  # what a run's creator may still set
LOCKED_JOB_VARIABLES = ("command", "env", "working_dir")  # what it may not


def _default_process_template() -> dict[str, Any]:
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def locked_base_job_template(default: dict[str, Any] | None = None) -> dict[str, Any]:
    """The process worker's default base job template (``default``; by default Prefect's own) without the
    job variables ``command``, ``env`` and ``working_dir``, in the variables schema and in the job
    configuration alike, and with a closed variables schema. Pure: ``default`` is not modified.

    Raises :class:`ConfigError` when ``default`` is not a process template (a variable of
    ``OPEN_JOB_VARIABLES`` is missing).
    """
    template = copy.deepcopy(default if default is not None else _default_process_template())
    try:
        properties = template["variables"]["properties"]
        job_configuration = template["job_configuration"]
    except (KeyError, TypeError) as e:
        raise ConfigError(f"expected a base job template with variables.properties and job_configuration, "
                          f"got keys {sorted(template) if isinstance(template, dict) else type(template).__name__}"
                          ) from e
    missing = [name for name in OPEN_JOB_VARIABLES if name not in properties]
    if missing:
        raise ConfigError(f"expected the process worker's base job template (variables {OPEN_JOB_VARIABLES}), "
                          f"got one without {missing}")
    template["variables"]["properties"] = {k: v for k, v in properties.items() if k in OPEN_JOB_VARIABLES}
    template["variables"]["additionalProperties"] = False
    template["variables"]["required"] = [r for r in template["variables"].get("required", [])
                                         if r in OPEN_JOB_VARIABLES]
    template["job_configuration"] = {k: v for k, v in job_configuration.items() if k not in LOCKED_JOB_VARIABLES}
    return template


def is_locked(template: dict[str, Any] | None) -> bool:
    """True when ``template`` lets no run set ``command``, ``env`` or ``working_dir``: none of them is in its
    job configuration, and its variables schema is closed to them."""
    if not template:
        return False
    variables = template.get("variables") or {}
    configuration = template.get("job_configuration") or {}
    return (not any(k in configuration for k in LOCKED_JOB_VARIABLES)
            and not any(k in (variables.get("properties") or {}) for k in LOCKED_JOB_VARIABLES)
            and variables.get("additionalProperties") is False)


@dataclass(frozen=True, kw_only=True)
class PoolResult:
    """What :func:`ensure_pool` did with the pool ``name``."""

    status: Literal["created", "updated", "unchanged"]
    name: str
    limit: int | None
    changes: tuple[str, ...] = ()

    def summary(self) -> str:
        limit = "no limit" if self.limit is None else f"at most {self.limit} flow run(s) at once"
        locked = f"runs cannot set {', '.join(LOCKED_JOB_VARIABLES)}"
        if self.status == "created":
            return f"created work pool {self.name!r} (type process; {locked}; {limit})"
        if self.status == "updated":
            return f"updated work pool {self.name!r}: {'; '.join(self.changes)} ({locked}; {limit})"
        return f"work pool {self.name!r} already locked ({locked}; {limit})"


def _check_limit(limit: int | None) -> None:
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ConfigError(f"expected a pool concurrency limit of at least 1 (or none), got {limit!r}")


def ensure_pool(name: str = DEFAULT_POOL, *, limit: int | None = DEFAULT_POOL_LIMIT, client=None) -> PoolResult:
    """Create the process work pool ``name`` with :func:`locked_base_job_template` and the concurrency
    ``limit`` (None: none) on the Prefect API, or bring an existing process pool to both: an open template
    is replaced (the result says so). Raises :class:`ConfigError` for a bad limit or a pool of another type;
    API errors propagate. ``client``: a sync Prefect client (default: one for ``PREFECT_API_URL``).
    """
    _check_limit(limit)
    if client is None:
        from prefect import get_client

        with get_client(sync_client=True) as own:
            return ensure_pool(name, limit=limit, client=own)
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    template = locked_base_job_template()
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template,
                                                   concurrency_limit=limit))
            return PoolResult(status="created", name=name, limit=limit)
        except ObjectAlreadyExists:  # another worker created it a moment ago: bring it to ours below
            pool = client.read_work_pool(name)
    if pool.type != "process":
        raise ConfigError(f"expected work pool {name!r} to be of type 'process', got {pool.type!r}; delete it "
                          f"(prefect work-pool delete {name}) or choose another pool name")
    changes = []
    if pool.base_job_template != template:
        if is_locked(pool.base_job_template):
            changes.append("base job template updated")
        else:
            configured = (pool.base_job_template or {}).get("job_configuration", {})
            open_ = [k for k in LOCKED_JOB_VARIABLES if k in configured]
            changes.append(f"open base job template replaced (runs could set {', '.join(open_) or 'any variable'})")
    if pool.concurrency_limit != limit:
        changes.append(f"concurrency limit {pool.concurrency_limit} → {limit}")
    if not changes:
        return PoolResult(status="unchanged", name=name, limit=limit)
    # fields passed explicitly are sent (exclude_unset), so a None limit clears the pool's limit
    client.update_work_pool(name, WorkPoolUpdate(base_job_template=template, concurrency_limit=limit))
    return PoolResult(status="updated", name=name, limit=limit, changes=tuple(changes))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m desra.pool [--name desra] [--limit 1]``: :func:`ensure_pool`, its summary on stdout."""
    parser = argparse.ArgumentParser(prog="python -m desra.pool", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=DEFAULT_POOL, help="work pool name (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=DEFAULT_POOL_LIMIT,
                        help="flow runs at once in the whole pool; 0 = no limit (default: %(default)s)")
    args = parser.parse_args(argv)
    import desra.tasks.env

    desra.tasks.env.configure()
    try:
        print(ensure_pool(args.name, limit=args.limit or None).summary())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
