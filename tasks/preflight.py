"""Checks that a run makes before it reads any image or creates anything: fail fast, fail clearly.

:func:`confine` applies the allowed roots (:mod:`desra.pipeline.roots`) to a run's paths; the ``preflight`` task
checks the device, loads and checks the SR models and the segmenter, and makes sure that the output
root can be created and written. A refusal that desra expects (a :class:`~desra_core.DesraError`) is one
sentence: :func:`refuse` logs it at WARNING, without a traceback, and turns it into the run's ``Failed``
state; tracebacks are left to bugs.

Under a worker, Prefect's engine re-raises a flow run's returned ``Failed`` state as ``FailedRun`` and logs
"Engine execution exited with unexpected exception" with that traceback, for a refusal as for a drop
with failed images. Importing this module installs :class:`ReturnedFailedState` on the
``prefect.flow_runs`` logger, which drops exactly those records: the run's own WARNING and Prefect's
"Finished in state Failed(…)" already say why. An exception that a flow raises is not a ``FailedRun``
and keeps its traceback.
"""

import logging
import os
import tempfile
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.exceptions import FailedRun
from prefect.states import Failed

from desra.pipeline.drop import admit_folder
from desra.pipeline.leftovers import LOCK_NAME, attend
from desra.pipeline.models import (
    SEG_VERSION,
    SR_VERSION,
    check_device,
    check_models,
    model_digest,
    segmenter_id,
)
from desra.pipeline.models import load_segmenter_cached as _segmenter
from desra.pipeline.roots import (
    ROOTS_VARIABLE,
    Roots,
    check_apart,
    check_confined,
    parse_roots,
    registered_roots,
    run_paths,
)
from desra.pipeline.settings import Settings
from desra.pipeline.store import Store, step_key
from desra.pipeline.text import inert
from desra_core import ConfigError, DesraError, ModelLoadError
from desra_core.models.weights import KNOWN_WEIGHTS, cache_dir

__all__ = ["ReturnedFailedState", "admit", "admit_folders", "allowed_roots", "check_device", "confine",
           "ensure_output_root", "preflight", "refuse"]


class ReturnedFailedState(logging.Filter):
    """Drops the engine's traceback of a ``Failed`` state that the flow returned on purpose (``FailedRun``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], FailedRun))


_FLOW_RUN_LOGGER = logging.getLogger("prefect.flow_runs")
if not any(isinstance(f, ReturnedFailedState) for f in _FLOW_RUN_LOGGER.filters):
    _FLOW_RUN_LOGGER.addFilter(ReturnedFailedState())


def allowed_roots() -> Roots | None:
    """The roots that confine this run: ``DESRA_ALLOWED_ROOTS``, else (under a deployment) the paths its
    deployment was registered with, read from the deployment record through the API; ``None``: unconfined."""
    roots = parse_roots(os.environ.get(ROOTS_VARIABLE, ""))
    if roots is not None:
        return roots
    from prefect.runtime import deployment as runtime_deployment

    deployment_id = runtime_deployment.id
    if deployment_id is None:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        record = client.read_deployment(deployment_id)
        name = f"{client.read_flow(record.flow_id).name}/{record.name}"
    return registered_roots(record.parameters or {}, KNOWN_WEIGHTS, name)


def confine(parameters: dict) -> None:
    """Refuse a run whose paths (``input_dir``, ``output_dir``, ``labels_dir``, model files, segmenter
    folder) do not all lie inside the allowed roots. Reads nothing and creates nothing.

    Raises:
        ConfigError: naming the parameter and the roots.
    """
    roots = allowed_roots()
    if roots is not None:
        check_confined(run_paths(parameters, KNOWN_WEIGHTS), roots, model_cache=cache_dir())


def ensure_output_root(output_dir: str) -> Path:
    """Create the output root if needed and prove that a file can be written in it (the probe file is
    removed). Raises :class:`ConfigError` naming the folder and the system's reason."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"expected output_dir to be a folder, got a file that is not one ({output_dir})") from None
    except OSError as e:
        raise ConfigError(f"expected an output root that can be created, got {e.strerror or e} for "
                          f"{output_dir}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=root, prefix=".desra-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"expected an output root that can be written, got {e.strerror or e} for "
                          f"{output_dir}") from None
    return root


def _attend(output_dir: str) -> list[Path]:
    """:func:`desra.pipeline.leftovers.attend`: this process works in the output root from now on, and the
    temporary files that killed runs left there go (all of them when no other run works there)."""
    try:
        return attend(output_dir)
    except OSError as e:
        raise ConfigError(f"expected an output root where desra can lock {LOCK_NAME}, got {e.strerror or e} "
                          f"for {output_dir}") from None


@task(name="preflight", cache_policy=NO_CACHE, persist_result=False)
def preflight(mse_model: str, gan_model: str, segmenter: str | None, output_dir: str, device: str = "auto") -> dict:
    """Every check a run makes before it touches an image, in this order: the device; both SR models
    (loaded on the CPU, same scale; see :func:`desra.pipeline.models.check_models`); the segmenter, when there is one
    (loaded on the run's device, its ADE20K class order checked); the output root (created, written; the
    temporary files that killed runs left there are removed, see :mod:`desra.pipeline.leftovers`).

    The verdict on the models and the segmenter is remembered in the output root's store by the files'
    digests (and the segmenter's id, or its folder's digest), so a re-run does not load them again.
    Returns ``{"refusal": None, "device": …}``, or ``{"refusal": sentence, "kind": error class name}``:
    an expected refusal is a result, not an exception, so that it is not logged as a crash.
    """
    try:
        resolved = check_device(device)
        models = {role: model_digest(spec) for role, spec in (("mse", mse_model), ("gan", gan_model))}
        store = Store(output_dir)
        key = step_key("preflight", f"{SR_VERSION}+{SEG_VERSION}", **{role: d for role, (_, d) in models.items()},
                       segmenter=None if not segmenter else segmenter_id(segmenter))
        verdict = store.read_json("preflight", key)
        fresh = verdict is None
        if fresh:
            verdict = {"models": check_models(models), "segmenter": segmenter or None}
            if segmenter:
                _segmenter(segmenter, resolved)
        ensure_output_root(output_dir)
        swept = _attend(output_dir)
        if fresh:
            store.write_json("preflight", key, verdict)
    except DesraError as e:
        return {"refusal": str(e), "kind": type(e).__name__}
    return {"refusal": None, "device": resolved, "swept": len(swept), **verdict}


def refuse(error: DesraError | str, kind: str | None = None):
    """Log an expected refusal at WARNING (no traceback) and return the run's ``Failed`` state; the paths it
    names pass through :func:`desra.pipeline.text.inert`."""
    message, kind = (error, kind) if isinstance(error, str) else (str(error), type(error).__name__)
    message = inert(message)
    prefix = "refused the models" if kind == ModelLoadError.__name__ else "refused"
    get_run_logger().warning("%s: %s", prefix, message)
    return Failed(message=f"{prefix}: {message}")


def admit(*, input_dir: str, output_dir: str, more_paths: dict[str, str | None] | None = None,
          **options) -> tuple[Settings | None, State | None]:
    """What every flow does first, before it reads or creates anything: :func:`confine` its paths (and
    ``more_paths``) and refuse an output root that overlaps an input folder (:func:`desra.pipeline.roots.check_apart`),
    validate ``options`` (the flow's settings parameters) into one :class:`Settings`, then
    the :func:`preflight` checks. Returns ``(settings, None)`` when the run may go on, else ``(None, the
    Failed state to return)`` (logged by :func:`refuse`). A segmenter is ignored when label maps are given."""
    labels_dir = options.get("labels_dir") or None
    try:
        paths = dict(input_dir=input_dir, output_dir=output_dir, labels_dir=labels_dir,
                     mse_model=options.get("mse_model"), gan_model=options.get("gan_model"),
                     segmenter=None if labels_dir else options.get("segmenter") or None, **(more_paths or {}))
        confine(paths)
        check_apart(paths)
        settings = Settings.from_options(**options)
    except DesraError as e:
        return None, refuse(e)
    verdict = preflight(settings.mse_model, settings.gan_model, settings.segmenter_in_use, output_dir, settings.device)
    if verdict["refusal"] is not None:
        return None, refuse(verdict["refusal"], verdict["kind"])
    if verdict["swept"]:
        get_run_logger().info("removed %d temporary file(s) that killed runs left in %s", verdict["swept"],
                              output_dir)
    try:
        admit_folders({"input_dir": input_dir, "labels_dir": labels_dir,
                       **{k: v for k, v in (more_paths or {}).items() if k in _FOLDER_PARAMETERS}})
    except DesraError as e:
        return None, refuse(e)
    return settings, None


_FOLDER_PARAMETERS = ("validate_dir", "validate_labels_dir")


def admit_folders(folders: dict[str, str | None]) -> None:
    """Open a run's input folders once (parameter name → path; ``None`` skipped) and check on each open
    descriptor that it lies inside the allowed roots: the run lists them through these descriptors
    (:func:`desra.pipeline.drop.admit_folder`), so a folder swapped for a link after :func:`confine` is refused,
    never listed.

    Raises:
        InputImageError: a folder is missing or unreadable. ConfigError: one lies outside the roots.
    """
    roots = allowed_roots()
    for name, path in folders.items():
        if path:
            admit_folder(path, roots, name)
