"""The ``desra`` work pool (process or Kubernetes), locked so that whoever creates a flow run cannot choose
what it runs.

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

The Kubernetes pool (``pool_type="kubernetes"``, Prefect's own worker from ``prefect-kubernetes``, the
``k8s`` extra) is locked the same way, and more tightly, because Prefect's default Kubernetes template lets
a run choose far more: the ``image``, ``command`` (the container's ``args``), ``env``,
``service_account_name`` (what the pod may do in the cluster), ``namespace``, ``labels`` and
``annotations`` (which select NetworkPolicies and Services, and on some clusters the cloud IAM role or
the sidecars a pod gets), resource requests and limits, and ``cluster_config`` (a kubeconfig, whose
``exec`` credential plugin runs a command on the worker itself). :func:`locked_kubernetes_job_template`
keeps Prefect's default template (its job manifest, its ``generateName``, restart policy and the rest)
but writes the operator's choices into the manifest as constants: the image (``--image``; default
:data:`DEFAULT_IMAGE`, the image that ``docker-compose.yml`` builds), the namespace, an optional
service account, an optional fixed environment and secret, ``backoffLimit: 0`` and one GPU
(``resources.limits: {"nvidia.com/gpu": 1}``). The container has no ``args``, so the worker gives it its
normal command (``prefect flow-run execute``), and no ``env`` placeholder, so the pod's environment is
the worker's Prefect settings plus what the operator fixed. The variables schema is closed and keeps only
:data:`KUBERNETES_OPEN_JOB_VARIABLES`, the only placeholders left in its ``job_configuration``.

:func:`ensure_pool` creates the pool (process by default, or Kubernetes) with its locked template and a
concurrency limit, or brings an existing pool of that type to both. ``desra deploy`` calls it first (the
compose worker runs ``desra deploy``); ``python -m desra.pool`` does the same from a shell, e.g.
``python -m desra.pool --type kubernetes --image registry.example/desra-worker:1.0``.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from desra_core import ConfigError

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_NAMESPACE",
    "DEFAULT_POOL",
    "DEFAULT_POOL_LIMIT",
    "GPU_RESOURCE",
    "KUBERNETES_LOCKED_JOB_VARIABLES",
    "KUBERNETES_OPEN_JOB_VARIABLES",
    "LOCKED_JOB_VARIABLES",
    "OPEN_JOB_VARIABLES",
    "POOL_TYPES",
    "KubernetesJob",
    "PoolResult",
    "PoolType",
    "add_kubernetes_arguments",
    "ensure_pool",
    "is_locked",
    "kubernetes_job_from_args",
    "locked_base_job_template",
    "locked_kubernetes_job_template",
    "main",
]

DEFAULT_POOL = "desra"
DEFAULT_POOL_LIMIT = 1  # flow runs at once in the whole pool: one worker with one GPU
OPEN_JOB_VARIABLES = ("name", "labels", "stream_output")  # what a run's creator may still set
LOCKED_JOB_VARIABLES = ("command", "env", "working_dir")  # what it may not

PoolType = Literal["process", "kubernetes"]
POOL_TYPES: tuple[PoolType, ...] = ("process", "kubernetes")
DEFAULT_IMAGE = "desra-worker:latest"  # the image docker-compose.yml builds from the Dockerfile
DEFAULT_NAMESPACE = "default"
GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's resource: one per flow run's pod
# What a run's creator may still set on the Kubernetes pool: the job's name and how the worker watches it.
KUBERNETES_OPEN_JOB_VARIABLES = ("name", "stream_output", "pod_watch_timeout_seconds", "job_watch_timeout_seconds")
# Prefect's default Kubernetes variables that it may not (every other one, present or future, is dropped too).
KUBERNETES_LOCKED_JOB_VARIABLES = ("image", "command", "env", "service_account_name", "namespace", "labels",
                                   "annotations", "cluster_config", "image_pull_policy", "backoff_limit",
                                   "finished_job_ttl", "cpu_request", "cpu_limit", "memory_request", "memory_limit")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a namespace
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# An image reference: no blanks, no template braces, nothing a shell or YAML would read specially.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


def _default_process_template() -> dict[str, Any]:
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def _default_kubernetes_template() -> dict[str, Any]:
    try:
        from prefect_kubernetes.worker import KubernetesWorker
    except ImportError as e:
        raise ConfigError("expected prefect-kubernetes for a Kubernetes work pool, got none installed; "
                          "pip install 'desra[k8s]'") from e
    return KubernetesWorker.get_default_base_job_template()


def _close_variables(template: dict[str, Any], open_names: Sequence[str]) -> None:
    """Keep only ``open_names`` in ``template``'s variables schema (properties and required) and close it
    (``additionalProperties: false``), so that the server refuses a run naming any other job variable."""
    variables = template["variables"]
    variables["properties"] = {k: v for k, v in variables["properties"].items() if k in open_names}
    variables["additionalProperties"] = False
    variables["required"] = [r for r in variables.get("required", []) if r in open_names]


def _placeholders(value: Any) -> set[str]:
    """The names of the ``{{ … }}`` placeholders in ``value``, found by Prefect's own templating code (the
    server's check of a base job template and the worker's rendering use it)."""
    from prefect.utilities.templating import find_placeholders

    return {p.name for p in find_placeholders(value)}
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
    _close_variables(template, OPEN_JOB_VARIABLES)
    template["job_configuration"] = {k: v for k, v in job_configuration.items() if k not in LOCKED_JOB_VARIABLES}
    return template


@dataclass(frozen=True, kw_only=True)
class KubernetesJob:
    """What the operator fixes in the Kubernetes pool's template; a flow run can change none of it.

    ``image``: the desra worker image (the Dockerfile's, pushed where the cluster can pull it);
    ``namespace``: where the jobs run; ``service_account``: the pods' service account (None: the
    namespace's default), e.g. one bound to a cloud role for the bucket; ``env``: fixed environment
    variables (not secrets: they are stored in the pool's template), e.g. ``AWS_ENDPOINT_URL`` or
    ``DESRA_ALLOWED_ROOTS``; ``env_secret``: a Kubernetes Secret in ``namespace`` whose keys become
    environment variables (``envFrom``), for credentials.
    """

    image: str = DEFAULT_IMAGE
    namespace: str = DEFAULT_NAMESPACE
    service_account: str | None = None
    env: tuple[tuple[str, str], ...] = field(default=())
    env_secret: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image, str) or not _IMAGE.fullmatch(self.image):
            raise ConfigError(f"expected an image reference such as registry.example/desra-worker:1.0, "
                              f"got {self.image!r}")
        if not isinstance(self.namespace, str) or not _DNS_LABEL.fullmatch(self.namespace):
            raise ConfigError(f"expected a Kubernetes namespace (lower-case letters, digits and '-', at most 63), "
                              f"got {self.namespace!r}")
        for what, value in (("service account", self.service_account), ("secret", self.env_secret)):
            if value is not None and (not isinstance(value, str) or not _DNS_SUBDOMAIN.fullmatch(value)):
                raise ConfigError(f"expected a Kubernetes {what} name (lower-case letters, digits, '-' and '.'), "
                                  f"got {value!r}")
        names = [name for name, _ in self.env]
        bad = [name for name in names if not isinstance(name, str) or not _ENV_NAME.fullmatch(name)]
        if bad:
            raise ConfigError(f"expected environment variable names (letters, digits, '_'), got {bad}")
        if len(set(names)) != len(names):
            raise ConfigError(f"expected each environment variable once, got {sorted(names)}")
        if any(not isinstance(value, str) or _placeholders(value) for _, value in self.env):
            raise ConfigError("expected environment values without {{ … }} placeholders: a run could fill them in")

    def describe(self) -> str:
        parts = [f"image {self.image}", f"namespace {self.namespace}"]
        if self.service_account:
            parts.append(f"service account {self.service_account}")
        if self.env:
            parts.append(f"env {', '.join(name for name, _ in self.env)}")
        if self.env_secret:
            parts.append(f"env from secret {self.env_secret}")
        return ", ".join(parts)


def locked_kubernetes_job_template(job: KubernetesJob | None = None,
                                   default: dict[str, Any] | None = None) -> dict[str, Any]:
    """prefect-kubernetes's default base job template (``default``; by default the installed worker's own)
    with ``job`` written into its job manifest as constants: the image, the namespace, the service account
    (or none), a fixed environment (or none), ``backoffLimit: 0`` and ``resources.limits`` of one
    :data:`GPU_RESOURCE`. The container has no ``args`` and no ``env`` placeholder, and the
    ``job_configuration`` has no ``command``, ``env``, ``labels``, ``annotations`` or ``cluster_config``,
    so the worker runs its normal command with its own Prefect settings. The variables schema keeps only
    :data:`KUBERNETES_OPEN_JOB_VARIABLES` and is closed. Pure: ``default`` is not modified.

    Raises :class:`ConfigError` when ``default`` is not a Kubernetes template, or when any placeholder other
    than the open variables would be left (a newer prefect-kubernetes that templates more of the manifest:
    refused rather than left open).
    """
    job = job or KubernetesJob()
    template = copy.deepcopy(default if default is not None else _default_kubernetes_template())
    try:
        properties = template["variables"]["properties"]
        configuration = template["job_configuration"]
        manifest = configuration["job_manifest"]
        pod = manifest["spec"]["template"]["spec"]
        [container, *others] = pod["containers"]
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError("expected prefect-kubernetes's base job template (job_configuration.job_manifest with "
                          "one container, variables.properties), got another") from e
    missing = [name for name in KUBERNETES_OPEN_JOB_VARIABLES if name not in properties]
    if missing or others:
        raise ConfigError(f"expected prefect-kubernetes's base job template (variables "
                          f"{KUBERNETES_OPEN_JOB_VARIABLES}, one container), got one without {missing or 'that'}")

    _close_variables(template, KUBERNETES_OPEN_JOB_VARIABLES)
    template["variables"].pop("definitions", None)  # only cluster_config's block schema was defined there

    for key in ("command", "env", "labels", "annotations", "cluster_config"):
        configuration.pop(key, None)
    configuration["namespace"] = job.namespace  # where the worker creates the job

    metadata = manifest.setdefault("metadata", {})
    metadata.pop("labels", None)  # the worker adds Prefect's own labels (flow run id, …)
    metadata.pop("annotations", None)
    metadata["namespace"] = job.namespace
    manifest["spec"]["backoffLimit"] = 0  # a pod evicted: Prefect reschedules the run, Kubernetes does not retry
    manifest["spec"].pop("ttlSecondsAfterFinished", None)
    if job.service_account:
        pod["serviceAccountName"] = job.service_account
    else:
        pod.pop("serviceAccountName", None)
    for key in ("args", "command", "env", "envFrom"):
        container.pop(key, None)  # no args: the worker's own `prefect flow-run execute`
    container["image"] = job.image
    container["imagePullPolicy"] = "IfNotPresent"
    container["resources"] = {"limits": {GPU_RESOURCE: 1}}
    if job.env:
        container["env"] = [{"name": name, "value": value} for name, value in job.env]
    if job.env_secret:
        container["envFrom"] = [{"secretRef": {"name": job.env_secret}}]

    left = _placeholders(configuration) - set(KUBERNETES_OPEN_JOB_VARIABLES)
    if left:
        raise ConfigError(f"expected no placeholders but {KUBERNETES_OPEN_JOB_VARIABLES} in the Kubernetes job "
                          f"template, got {sorted(left)} (a prefect-kubernetes this module does not know; "
                          f"install the version in constraints.txt)")
    return template


def _pool_type_of(template: Mapping[str, Any]) -> PoolType:
    return "kubernetes" if "job_manifest" in (template.get("job_configuration") or {}) else "process"


def is_locked(template: dict[str, Any] | None) -> bool:
    """True when ``template`` lets no run choose what the worker runs: its variables schema is closed and
    declares only the open variables of its pool type, and its job configuration has no placeholder for
    anything else. A process template (:data:`LOCKED_JOB_VARIABLES`) has no ``command``, ``env`` or
    ``working_dir`` at all; a Kubernetes one (it has a ``job_manifest``) has no ``command``, ``env``,
    ``labels``, ``annotations`` or ``cluster_config``, and its container has no ``args``/``command``."""
    if not template:
        return False
    variables = template.get("variables") or {}
    configuration = template.get("job_configuration") or {}
    properties = set(variables.get("properties") or {})
    if variables.get("additionalProperties") is not False:
        return False
    if _pool_type_of(template) == "process":
        return (not any(k in configuration for k in LOCKED_JOB_VARIABLES)
                and not any(k in properties for k in LOCKED_JOB_VARIABLES)
                and _placeholders(configuration) <= set(OPEN_JOB_VARIABLES))
    try:
        [container] = configuration["job_manifest"]["spec"]["template"]["spec"]["containers"]
    except (KeyError, TypeError, ValueError):
        return False
    return (properties <= set(KUBERNETES_OPEN_JOB_VARIABLES)
            and _placeholders(configuration) <= set(KUBERNETES_OPEN_JOB_VARIABLES)
            and not any(k in configuration for k in ("command", "env", "labels", "annotations", "cluster_config"))
            and isinstance(container, dict) and "args" not in container and "command" not in container)


@dataclass(frozen=True, kw_only=True)
class PoolResult:
    """What :func:`ensure_pool` did with the pool ``name``."""

    status: Literal["created", "updated", "unchanged"]
    name: str
    limit: int | None
    changes: tuple[str, ...] = ()
    pool_type: PoolType = "process"
    job: KubernetesJob | None = None  # a Kubernetes pool's fixed job

    def summary(self) -> str:
        limit = "no limit" if self.limit is None else f"at most {self.limit} flow run(s) at once"
        if self.pool_type == "kubernetes":
            locked = (f"{(self.job or KubernetesJob()).describe()}, 1 {GPU_RESOURCE} per run; runs cannot set "
                      f"the image, command, env, service account, namespace or anything but "
                      f"{', '.join(KUBERNETES_OPEN_JOB_VARIABLES)}")
            kind = "type kubernetes; "
        else:
            locked, kind = f"runs cannot set {', '.join(LOCKED_JOB_VARIABLES)}", "type process; "
        if self.status == "created":
            return f"created work pool {self.name!r} ({kind}{locked}; {limit})"
        if self.status == "updated":
            return f"updated work pool {self.name!r}: {'; '.join(self.changes)} ({locked}; {limit})"
        return f"work pool {self.name!r} already locked ({locked}; {limit})"


def _check_limit(limit: int | None) -> None:
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ConfigError(f"expected a pool concurrency limit of at least 1 (or none), got {limit!r}")


def ensure_pool(name: str = DEFAULT_POOL, *, limit: int | None = DEFAULT_POOL_LIMIT, client=None,
                pool_type: PoolType = "process", kubernetes: KubernetesJob | None = None) -> PoolResult:
    """Create the work pool ``name`` of ``pool_type`` with its locked template (:func:`locked_base_job_template`
    for ``"process"``, :func:`locked_kubernetes_job_template` of ``kubernetes`` for ``"kubernetes"``) and the
    concurrency ``limit`` (None: none) on the Prefect API, or bring an existing pool of that type to both: an
    open or different template is replaced (the result says so). Raises :class:`ConfigError` for a bad limit,
    type or Kubernetes job, or a pool of another type; API errors propagate. ``client``: a sync Prefect
    client (default: one for ``PREFECT_API_URL``).
    """
    _check_limit(limit)
    if pool_type not in POOL_TYPES:
        raise ConfigError(f"expected a pool type of {' or '.join(POOL_TYPES)}, got {pool_type!r}")
    if kubernetes is not None and pool_type != "kubernetes":
        raise ConfigError(f"expected pool type 'kubernetes' with a Kubernetes job, got {pool_type!r}")
    job = (kubernetes or KubernetesJob()) if pool_type == "kubernetes" else None
    template = locked_kubernetes_job_template(job) if job is not None else locked_base_job_template()
    if client is None:
        from prefect import get_client

        with get_client(sync_client=True) as own:
            return ensure_pool(name, limit=limit, client=own, pool_type=pool_type, kubernetes=kubernetes)
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound


    def result(status: Literal["created", "updated", "unchanged"], changes: tuple[str, ...] = ()) -> PoolResult:
        return PoolResult(status=status, name=name, limit=limit, changes=changes, pool_type=pool_type, job=job)

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template,
                                                   concurrency_limit=limit))
            return result("created")
        except ObjectAlreadyExists:  # another worker created it a moment ago: bring it to ours below
            pool = client.read_work_pool(name)
    if pool.type != pool_type:
        raise ConfigError(f"expected work pool {name!r} to be of type {pool_type!r}, got {pool.type!r}; delete it "
                          f"(prefect work-pool delete {name}) or choose another pool name")
    changes = []
    if pool.base_job_template != template:
        if is_locked(pool.base_job_template):
            changes.append("base job template updated")
        elif pool_type == "process":
            configured = (pool.base_job_template or {}).get("job_configuration", {})
            open_ = [k for k in LOCKED_JOB_VARIABLES if k in configured]
            changes.append(f"open base job template replaced (runs could set {', '.join(open_) or 'any variable'})")
        else:
            configured = (pool.base_job_template or {}).get("job_configuration", {})
            open_ = sorted(_placeholders(configured) - set(KUBERNETES_OPEN_JOB_VARIABLES))
            changes.append(f"open base job template replaced (runs could set {', '.join(open_) or 'any variable'})")
    if pool.concurrency_limit != limit:
        changes.append(f"concurrency limit {pool.concurrency_limit} → {limit}")
    if not changes:
        return result("unchanged")
    # fields passed explicitly are sent (exclude_unset), so a None limit clears the pool's limit
    client.update_work_pool(name, WorkPoolUpdate(base_job_template=template, concurrency_limit=limit))
    return result("updated", tuple(changes))


def add_kubernetes_arguments(parser: argparse.ArgumentParser, type_flag: str = "--type") -> None:
    """The pool type and the Kubernetes job's options (``python -m desra.pool``, ``desra deploy``);
    :func:`kubernetes_job_from_args` reads them back."""
    parser.add_argument(type_flag, dest="pool_type", choices=POOL_TYPES, default="process",
                        help="work pool type: process (workers run flow runs as local processes) or kubernetes "
                             "(prefect-kubernetes's worker starts one GPU job per flow run; pip install "
                             "'desra[k8s]') (default: %(default)s)")
    group = parser.add_argument_group("Kubernetes pool (fixed in the pool's template; runs cannot change them)")
    group.add_argument("--image", default=None,
                       help=f"the desra worker image the jobs run (default: {DEFAULT_IMAGE})")
    group.add_argument("--namespace", default=None, help=f"namespace of the jobs (default: {DEFAULT_NAMESPACE})")
    group.add_argument("--service-account", default=None, help="the pods' service account (default: the "
                                                                "namespace's default)")
    group.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                       help="a fixed environment variable of the pods, not a secret (repeatable)")
    group.add_argument("--env-secret", default=None, metavar="SECRET",
                       help="a Secret in the namespace whose keys become the pods' environment (credentials)")


def kubernetes_job_from_args(args: argparse.Namespace) -> KubernetesJob | None:
    """The :class:`KubernetesJob` of :func:`add_kubernetes_arguments`' options; None for a process pool.
    Raises :class:`ConfigError` for a Kubernetes option given with a process pool, or a bad value."""
    given = [flag for flag, value in (("--image", args.image), ("--namespace", args.namespace),
                                      ("--service-account", args.service_account), ("--env", args.env),
                                      ("--env-secret", args.env_secret)) if value]
    if args.pool_type != "kubernetes":
        if given:
            raise ConfigError(f"expected {', '.join(given)} only with a kubernetes pool, got pool type "
                              f"{args.pool_type!r}")
        return None
    env = []
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected --env NAME=VALUE, got {item!r}")
        env.append((name, value))
    return KubernetesJob(image=args.image or DEFAULT_IMAGE, namespace=args.namespace or DEFAULT_NAMESPACE,
                         service_account=args.service_account, env=tuple(env), env_secret=args.env_secret)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m desra.pool [--name desra] [--limit 1] [--type kubernetes --image REF …]``:
    :func:`ensure_pool`, its summary on stdout."""
    parser = argparse.ArgumentParser(prog="python -m desra.pool", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=DEFAULT_POOL, help="work pool name (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=DEFAULT_POOL_LIMIT,
                        help="flow runs at once in the whole pool; 0 = no limit (default: %(default)s)")
    add_kubernetes_arguments(parser)
    args = parser.parse_args(argv)
    import desra.tasks.env

    desra.tasks.env.configure()
    try:
        job = kubernetes_job_from_args(args)
        print(ensure_pool(args.name, limit=args.limit or None, pool_type=args.pool_type, kubernetes=job).summary())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
