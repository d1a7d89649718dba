"""Flow ``desra-batch``: the DeSRA pipeline for one batch of a drop's images.

The ``desra`` flow runs a whole drop in its own process; under a deployment, for a drop larger than one
batch, it starts one run of this flow's ``desra-batch`` deployment per batch, so that any worker of the
pool can take one. Each run streams its images through :mod:`desra.pipeline.stream`
(:func:`desra.tasks.images.process`): model calls back to back on the device, CPU stages on every core, an
``image <stem>`` task run per image.
"""

from typing import Annotated

from prefect import flow
from pydantic import Field

from desra.tasks.images import process
from desra.tasks.preflight import admit
from desra.tasks.progress import Progress
from desra_core.models.segmentation import DEFAULT_SEGMENTER

__all__ = ["desra_batch"]

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


@flow(name="desra-batch", flow_run_name="desra-batch {input_dir} ({run_id})", validate_parameters=True)
def desra_batch(
    input_dir: str,
    output_dir: str,
    stems: list[str] | None = None,
    mse_model: str = "realesrnet_x4plus",
    gan_model: str = "realesrgan_x4plus",
    segmenter: str | None = DEFAULT_SEGMENTER,
    labels_dir: str | None = None,
    threshold: Fraction = 0.7,
    min_area: Annotated[int, Field(ge=0)] = 4000,
    min_area_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None,
    tile: Annotated[int, Field(ge=16)] = 512,
    overlap: Annotated[int, Field(ge=0)] = 32,
    feather: Annotated[float, Field(ge=0.0)] = 0.0,
    device: str = "auto",
    run_id: str = "adhoc",
) -> list[dict]:
    """Process ``stems`` of ``input_dir`` (all images when ``None``); returns one row per image.

    Refused (a ``Failed`` state, nothing read or created) when a path lies outside the allowed roots
    (``DESRA_ALLOWED_ROOTS``, or the folders the deployment was registered with), or when the device,
    the models, the segmenter or the output root do not pass the preflight checks."""
    settings, refused = admit(input_dir=input_dir, output_dir=output_dir, mse_model=mse_model, gan_model=gan_model,
                              segmenter=segmenter, labels_dir=labels_dir, threshold=threshold, min_area=min_area,
                              min_area_fraction=min_area_fraction, tile=tile, overlap=overlap, feather=feather,
                              device=device)
    if refused is not None:
        return refused
    progress = Progress(f"desra-batch: {len(stems) if stems is not None else 'all'} image(s)")
    rows = process(settings, input_dir, output_dir, run_id, stems, progress)
    progress.done()
    return rows
