"""Flow ``finetune``: DeSRA's delete step on a folder of real-world images, shipped only when it generalizes."""

from typing import Annotated

from prefect import flow
from pydantic import Field

from desra.tasks.finetune import finetune_generator
from desra.tasks.preflight import admit
from desra_core.finetune.options import DEFAULTS, FinetuneOptions

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
    min_area_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None,
    tile: Annotated[int, Field(ge=16)] = 512,
    overlap: Annotated[int, Field(ge=0)] = 32,
    feather: Annotated[float, Field(ge=0.0)] = 0.0,
    iterations: Annotated[int, Field(ge=1)] = DEFAULTS.iterations,
    batch: Annotated[int, Field(ge=1)] = DEFAULTS.batch,
    crop: Annotated[int, Field(ge=8)] = DEFAULTS.crop,
    lr: Annotated[float, Field(gt=0)] = DEFAULTS.lr,
    ema: Annotated[float, Field(ge=0, lt=1)] = DEFAULTS.ema,
    perceptual: Annotated[float, Field(ge=0)] = DEFAULTS.perceptual,
    gan: Annotated[float, Field(ge=0)] = DEFAULTS.gan,
    artifact_share: Annotated[float, Field(ge=0, le=1)] = DEFAULTS.artifact_share,
    seed: int = DEFAULTS.seed,
    vgg_weights: str | None = DEFAULTS.vgg_weights,
    discriminator: str | None = DEFAULTS.discriminator,
    checkpoint_every: Annotated[int, Field(ge=1)] = DEFAULTS.checkpoint_every,
    validate_dir: str | None = DEFAULTS.validate_dir,
    validate_labels_dir: str | None = DEFAULTS.validate_labels_dir,
    holdout: Annotated[float, Field(gt=0, lt=1)] = DEFAULTS.holdout,
    split_seed: int = DEFAULTS.split_seed,
    validate_every: Annotated[int, Field(ge=1)] = DEFAULTS.validate_every,
    min_detail_ratio: Annotated[float, Field(ge=0)] = DEFAULTS.min_detail_ratio,
    min_artifact_images: Annotated[int, Field(ge=1)] = DEFAULTS.min_artifact_images,
    device: str = "auto",
    stems: list[str] | None = None,
) -> dict:
    """Fine-tune ``gan_model`` on pseudo-GT built from ``mse_model`` where artifacts are detected.

    The detection, tiling and pseudo-GT parameters are those of a ``desra`` run (the same names): the pairs
    come from the pipeline with these settings, so after a ``desra`` run on ``output_dir`` with the same
    settings they are read from its store and nothing is super-resolved or detected again.

    The fine-tuning options are :class:`~desra_core.finetune.options.FinetuneOptions` (the same names, the
    same defaults as ``desra finetune``: the best row of the README's measured table, L1 only, no EMA);
    ``perceptual`` and ``gan`` weight the Real-ESRGAN recipe's other terms (1.0 and 0.1 there) where their
    weights are available (``vgg_weights``, ``discriminator``). The run is ``desra finetune``'s own
    (:func:`desra.pipeline.finetuning.run_finetuning`): its files go to ``OUT/finetune/<gan>-<key>/``, and a run
    started again with the same inputs resumes from its checkpoint.

    Validation images (``validate_dir``, or a ``holdout`` share of the images chosen with ``split_seed``) are
    never trained on; every ``validate_every`` steps they are re-detected, and the generator is written only
    when the validation holds at least ``min_artifact_images`` images with artifacts beyond the measured noise,
    and a checkpoint lowers the artifacts beyond that noise on a majority of them and keeps
    ≥ ``min_detail_ratio`` of the detail on every validation image. The result's ``generator`` is None
    otherwise, and ``reason`` says why.

    Refused (a ``Failed`` state, nothing read or created) when a path lies outside the allowed roots
    (``DESRA_ALLOWED_ROOTS``) or the device, models, segmenter or output root fail the preflight checks.
    """
    settings, refused = admit(input_dir=input_dir, output_dir=output_dir,
                              more_paths={"validate_dir": validate_dir, "validate_labels_dir": validate_labels_dir,
                                          "vgg_weights": vgg_weights, "discriminator": discriminator},
                              mse_model=mse_model, gan_model=gan_model, segmenter=segmenter, labels_dir=labels_dir,
                              threshold=threshold, min_area=min_area, min_area_fraction=min_area_fraction, tile=tile,
                              overlap=overlap, feather=feather, device=device)
    if refused is not None:
        return refused
    options = FinetuneOptions(
        iterations=iterations, batch=batch, crop=crop, lr=lr, ema=ema, perceptual=perceptual, gan=gan,
        artifact_share=artifact_share, seed=seed, vgg_weights=vgg_weights, discriminator=discriminator,
        checkpoint_every=checkpoint_every, validate_every=validate_every, min_detail_ratio=min_detail_ratio,
        min_artifact_images=min_artifact_images, validate_dir=validate_dir or None,
        validate_labels_dir=validate_labels_dir or None, holdout=holdout, split_seed=split_seed)
    return finetune_generator(input_dir, output_dir, settings, options, stems)
