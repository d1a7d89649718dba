"""The flows' admission: :mod:`desra.pipeline.admission` with Prefect's part, fail fast, fail clearly.

:func:`admit` is what every flow does first: :func:`desra.pipeline.admission.admit`, the one admission that the
command line uses too, with the roots that a deployment was registered with (:func:`deployment_roots`, read
through the API) and its checks of the device, models, segmenter and output root run as the ``preflight``
task. A refusal that desra expects (a :class:`~desra_core.DesraError`) is one sentence: :func:`refuse` logs it
at WARNING, without a traceback, and turns it into the run's ``Failed`` state; tracebacks are left to bugs.

Under a worker, Prefect's engine re-raises a flow run's returned ``Failed`` state as ``FailedRun`` and logs
"Engine execution exited with unexpected exception" with that traceback, for a refusal as for a drop
with failed images. Importing this module installs :class:`ReturnedFailedState` on the
``prefect.flow_runs`` logger, which drops exactly those records: the run's own WARNING and Prefect's
"Finished in state Failed(…)" already say why. An exception that a flow raises is not a ``FailedRun``
and keeps its traceback.
"""

import logging
from collections.abc import Mapping
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.exceptions import FailedRun
from prefect.states import Failed

from desra.pipeline import admission
from desra.pipeline.roots import Roots, registered_roots
from desra.pipeline.settings import Settings
from desra.pipeline.text import inert
from desra_core import DesraError, ModelLoadError
from desra_core.finetune.options import FinetuneOptions
from desra_core.models.weights import KNOWN_WEIGHTS

__all__ = ["ReturnedFailedState", "admit", "admit_finetuning", "deployment_roots", "preflight", "refuse"]


class ReturnedFailedState(logging.Filter):
    """Drops the engine's traceback of a ``Failed`` state that the flow returned on purpose (``FailedRun``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], FailedRun))


_FLOW_RUN_LOGGER = logging.getLogger("prefect.flow_runs")
if not any(isinstance(f, ReturnedFailedState) for f in _FLOW_RUN_LOGGER.filters):
    _FLOW_RUN_LOGGER.addFilter(ReturnedFailedState())


def deployment_roots() -> Roots | None:
    """Under a deployment, the paths that its deployment was registered with, read from the deployment record
    through the API (:func:`desra.pipeline.roots.registered_roots`); ``None`` outside a deployment. Consulted
    only when ``DESRA_ALLOWED_ROOTS`` is unset (:func:`desra.pipeline.admission.allowed_roots`)."""
    from prefect.runtime import deployment as runtime_deployment

    deployment_id = runtime_deployment.id
    if deployment_id is None:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        record = client.read_deployment(deployment_id)
        name = f"{client.read_flow(record.flow_id).name}/{record.name}"
    return registered_roots(record.parameters or {}, KNOWN_WEIGHTS, name)


@task(name="preflight", cache_policy=NO_CACHE, persist_result=False)
def preflight(settings: Settings, output_dir: str, sr: bool = True) -> dict[str, Any]:
    """:func:`desra.pipeline.admission.check_run` as a task run: the device, the SR models, the segmenter and the
    output root, before any image is touched. Returns its verdict, or ``{"refusal": the DesraError}``: an
    expected refusal is a result, not an exception, so that it is not logged as a crash."""
    try:
        return admission.check_run(settings, output_dir, sr)
    except DesraError as e:
        return {"refusal": e}


def _checked(settings: Settings, output_dir: str, sr: bool) -> dict[str, Any]:
    verdict = preflight(settings, output_dir, sr)
    if "refusal" in verdict:
        raise verdict["refusal"]
    return verdict


def refuse(error: DesraError) -> State:
    """Log an expected refusal at WARNING (no traceback) and return the run's ``Failed`` state; the paths it
    names pass through :func:`desra.pipeline.text.inert`."""
    message = inert(str(error))
    prefix = "refused the models" if isinstance(error, ModelLoadError) else "refused"
    get_run_logger().warning("%s: %s", prefix, message)
    return Failed(message=f"{prefix}: {message}")


def admit(*, input_dir: str, output_dir: str, more_paths: dict[str, str | None] | None = None,
          **options) -> Settings | State:
    """What every flow does first, before it reads or creates anything: :func:`desra.pipeline.admission.admit`
    of its paths (and ``more_paths``) and ``options`` (the flow's settings parameters), with the roots of
    :func:`deployment_roots` and the :func:`preflight` task. Returns the admitted settings when the run may go
    on (their device resolved on this machine), else the Failed state to return (logged by :func:`refuse`).

    ``desra-batch`` runs call it too, on the worker that runs them: each is admitted on its own machine."""
    try:
        admitted = admission.admit(input_dir, output_dir, options, more_paths=more_paths,
                                   deployment_roots=deployment_roots, check=_checked)
    except DesraError as e:
        return refuse(e)
    if admitted.swept:
        get_run_logger().info("removed %d temporary file(s) that killed runs left in %s", admitted.swept,
                              output_dir)
    return admitted.settings


def admit_finetuning(output_dir: str, values: Mapping[str, Any] | None) -> FinetuneOptions | State:
    """What fine-tuning adds to a ``desra`` run (``desra(finetune=True)``, before :func:`admit` admits the run):
    its options (``finetune_settings``) and their paths, see :func:`desra.pipeline.admission.admit_finetuning`.
    The fine-tuning then takes the run's admitted settings whole, not admitted again. Returns the options or
    the Failed state."""
    try:
        return admission.admit_finetuning(output_dir, values, deployment_roots=deployment_roots)
    except DesraError as e:
        return refuse(e)
