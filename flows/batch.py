"""Flow ``desra-batch``: the DeSRA pipeline for one batch of a drop's images.

The ``desra`` flow runs a whole drop in its own process; under a deployment, for a drop larger than one
batch, it starts one run of this flow's ``desra-batch`` deployment per batch, so that any worker of the
pool can take one. Each run streams its images through :mod:`desra.pipeline.stream`
(:func:`desra.tasks.images.process`): model calls back to back on the device, CPU stages on every core, an
``image <stem>`` task run per image.
"""

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run as runtime_flow_run

from desra.pipeline.options import RunOptions, with_options
from desra.tasks.images import process
from desra.tasks.preflight import admit
from desra.tasks.progress import Progress

__all__ = ["desra_batch"]


@flow(name="desra-batch", flow_run_name="desra-batch {input_dir} ({run_id})", validate_parameters=True)
@with_options(RunOptions)
def desra_batch(
    input_dir: str,
    output_dir: str,
    stems: list[str] | None = None,
    run_id: str = "adhoc",
    **options: Any,
) -> list[dict[str, Any]] | State:
    """Process ``stems`` of ``input_dir`` (all images when ``None``); returns one row per image.

    The run's settings are the ``desra`` flow's: one keyword parameter per option of
    :class:`~desra.pipeline.options.RunOptions`, arriving here in ``options``.

    Refused (a ``Failed`` state, nothing read or created) when a path lies outside the allowed roots
    (``DESRA_ALLOWED_ROOTS``, or the folders the deployment was registered with), or when the device,
    the models, the segmenter or the output root do not pass the preflight checks. The parent ``desra`` run was
    admitted on its own machine; this run is admitted again, through the same one admission
    (:func:`desra.tasks.preflight.admit`, :func:`desra.pipeline.admission.admit`), because the worker that runs it
    has its own device, model files and roots: ``device="auto"`` is resolved here."""
    settings = admit(input_dir=input_dir, output_dir=output_dir, **options)
    if isinstance(settings, State):  # refused
        return settings
    progress = Progress(f"desra-batch: {len(stems) if stems is not None else 'all'} image(s)")
    rows = process(settings, input_dir, output_dir, run_id, stems, progress,
                   batch=str(runtime_flow_run.id or "adhoc"))
    progress.done()
    return rows
