"""Flow ``finetune``: DeSRA's delete step on a folder of real-world images."""

from typing import Annotated

from prefect import flow
from pydantic import Field

from flows.batch import detection_config
from tasks.finetune import finetune_generator

__all__ = ["finetune"]


@flow(name="finetune", flow_run_name="finetune {gan_model}", validate_parameters=True)
def finetune(
    input_dir: str,
    output_dir: str,
    mse_model: str = "realesrnet_x4plus",
    gan_model: str = "realesrgan_x4plus",
    segmenter: str | None = None,
    labels_dir: str | None = None,
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7,
    min_area: Annotated[int, Field(ge=0)] = 4000,
    iterations: Annotated[int, Field(ge=1)] = 1000,
    batch: Annotated[int, Field(ge=1)] = 12,
    crop: Annotated[int, Field(ge=8)] = 256,
    lr: Annotated[float, Field(gt=0)] = 1e-4,
    ema: Annotated[float, Field(ge=0, lt=1)] = 0.999,
    perceptual: Annotated[float, Field(ge=0)] = 1.0,
    gan: Annotated[float, Field(ge=0)] = 0.1,
    device: str = "auto",
    stems: list[str] | None = None,
) -> dict:
    """Fine-tune ``gan_model`` on pseudo-GT built from ``mse_model`` where artifacts are detected."""
    settings = {"iterations": iterations, "batch": batch, "crop": crop, "lr": lr, "ema": ema,
                "weights": {"perceptual": perceptual, "gan": gan}}
    return finetune_generator(input_dir, output_dir, mse_model, gan_model, segmenter or None, labels_dir or None,
                              detection_config(threshold, min_area, None), settings, device, stems)
