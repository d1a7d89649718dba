"""Flow ``finetune``: DeSRA's delete step on a folder of real-world images, shipped only when it generalizes."""

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State

from desra.pipeline.admission import FINETUNE_PATHS
from desra.pipeline.options import FinetuneFields, RunOptions, options_of, with_options
from desra.tasks.finetune import finetune_generator
from desra.tasks.preflight import admit
from desra_core.finetune.options import FinetuneOptions

__all__ = ["finetune"]


@flow(name="finetune", flow_run_name="finetune {gan_model}", validate_parameters=True)
@with_options(RunOptions, FinetuneFields)
def finetune(
    input_dir: str,
    output_dir: str,
    stems: list[str] | None = None,
    **options: Any,
) -> dict[str, Any] | State:
    """Fine-tune ``gan_model`` on pseudo-GT built from ``mse_model`` where artifacts are detected.

    Its keyword parameters are the options of a run and of fine-tuning, one per field of
    :class:`~desra.pipeline.options.RunOptions` and of :class:`~desra_core.finetune.options.FinetuneOptions`
    (their types, bounds, defaults and help are written there once; they arrive here in ``options``).

    The detection, tiling and pseudo-GT parameters are those of a ``desra`` run (the same names): the pairs
    come from the pipeline with these settings, so after a ``desra`` run on ``output_dir`` with the same
    settings they are read from its store and nothing is super-resolved or detected again.

    The fine-tuning options are :class:`~desra_core.finetune.options.FinetuneOptions` (the same names, the
    same defaults as ``desra finetune``, no EMA); ``perceptual`` and ``gan`` weight the Real-ESRGAN recipe's
    other terms (1.0 and 0.1 there), ``texture`` a texture term that needs no pretrained network. Left empty
    (None) they are automatic (:meth:`~desra_core.finetune.options.FinetuneOptions.objective`): the recipe where
    VGG19 weights are available (``vgg_weights`` or torchvision's cache; the adversarial term on CUDA only),
    else L1 + texture; the model card records the weights used and why. The run is ``desra finetune``'s own
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
    tuning = options_of(FinetuneFields, options)
    tuning.update({name: tuning[name] or None for name in FINETUNE_PATHS})  # empty (the UI form's): none
    settings = admit(input_dir=input_dir, output_dir=output_dir,
                     more_paths={name: tuning[name] for name in FINETUNE_PATHS},
                     **options_of(RunOptions, options))
    if isinstance(settings, State):  # refused
        return settings
    return finetune_generator(input_dir, output_dir, settings, FinetuneOptions(**tuning), stems)
