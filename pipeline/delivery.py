"""One fine-tuning run from prepared data to shipped files: train, validate, choose, and write what qualifies.

:func:`finetune_and_deliver` takes the training pairs and validation images that
:func:`desra.pipeline.pairs.prepare_finetuning` read from the pipeline's store, fine-tunes with validation
(:func:`~desra_core.finetune.trainer.finetune`; the weights under test run with the run's tile and overlap
and are detected with its detection settings), and in ``out_dir`` writes what follows. When the validation
cannot show an improvement (:func:`~desra_core.finetune.validation.evidence_gap`: too few validation images
with artifacts beyond the noise of validating the original model again) nothing is trained: the card and
the report say what is missing, and no generator is written.

* ``generator.safetensors``: the chosen checkpoint's weights, only when one qualifies (a generator left
  by an earlier run in the folder is removed otherwise, so the folder never offers a model that failed);
* ``model_card.json``: :func:`~desra_core.finetune.card.build_model_card`;
* ``report.html``: the choice and its figures, with original-vs-fine-tuned sliders of the validation images.

The caller writes the training log (``result.log``) where it wants it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desra.pipeline.pairs import FinetuneData
from desra.pipeline.review import write_finetune_page
from desra_core.finetune.card import build_model_card, write_model_card
from desra_core.finetune.pipeline import ImageScore
from desra_core.finetune.trainer import FinetuneConfig, FinetuneResult, finetune, save_generator
from desra_core.finetune.validation import Validator, evidence_gap
from desra_core.image import to_bit_depth, to_float32
from desra_core.models.sr import SRModel

__all__ = ["CARD_NAME", "GENERATOR_NAME", "REPORT_NAME", "Delivery", "finetune_and_deliver"]

GENERATOR_NAME = "generator.safetensors"
CARD_NAME = "model_card.json"
REPORT_NAME = "report.html"


@dataclass(frozen=True)
class Delivery:
    """What a run produced: the training outcome, the card, the written files (``generator`` None when no
    checkpoint qualified) and the training images' scores under the original model."""

    result: FinetuneResult
    card: dict[str, Any]
    generator: Path | None
    card_path: Path
    report: Path
    train_scores: tuple[ImageScore, ...]


def _uint8(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else to_bit_depth(to_float32(image), 8)


def finetune_and_deliver(*, gan: SRModel, mse: SRModel, data: FinetuneData, config: FinetuneConfig,
                         out_dir: str | Path, device: str = "cpu", discriminator_path: str | Path | None = None,
                         record: Mapping[str, object] | None = None,
                         progress: Callable[[dict[str, Any]], None] | None = None) -> Delivery:
    """Fine-tune ``gan`` (in place) on ``data.pairs``, judged on ``data.validation``; write the results.

    Args:
        gan, mse: the GAN model to tune (a private copy: it is changed) and the MSE reference (for the card).
        data: the prepared pairs, scores and validation images, with the run's ``settings``
            (:func:`desra.pipeline.pairs.prepare_finetuning`).
        config: training settings.
        out_dir: where the checkpoint, generator, card and report go.
        record: further settings to record in the card (device, discriminator, model specs…).
        progress: per-step callback (log records, validation columns included).

    Raises:
        ConfigError: a stem in both sets, or the trainer's own checks.
    """
    from desra_core.errors import ConfigError

    settings = data.settings
    shared = sorted(set(data.train_files) & set(data.validation_files))
    if shared:
        raise ConfigError(f"expected validation images that are not trained on, got {shared} in both sets")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    validator = Validator(gan, data.validation, settings.detection, tile=settings.tile, overlap=settings.overlap,
                          original=data.validation_original)
    gap = evidence_gap(validator.evidence(), config.min_artifact_images)
    if gap is not None:  # refused up front: no training could ship anything
        result = FinetuneResult(generator=gan.descriptor.model, log=[], original=validator.original,
                                evidence=validator.evidence(), reason=gap)
    else:
        result = finetune(gan.descriptor.model, data.pairs, config, work_dir=out, device=device,
                          discriminator_path=discriminator_path, progress=progress, validator=validator)
    generator_path = out / GENERATOR_NAME
    model = str(settings.gan_model)
    val_before = [ImageScore(name, model, f, d) for name, (f, d) in validator.original.per_image.items()]
    train_after = val_after = None
    pictures = []
    if result.chosen is not None and result.chosen_generator is not None:  # the trainer sets both or neither
        tuned = validator.score(result.chosen_generator, list(data.train_images()))
        train_after = [ImageScore(name, "fine-tuned", f, d) for name, (f, d) in tuned.per_image.items()]
        val_after = [ImageScore(name, "fine-tuned", f, d) for name, (f, d) in result.chosen.score.per_image.items()]
        save_generator(result.chosen_generator, generator_path)
        pictures = [(im.name, _uint8(im.gan_sr), _uint8(validator.super_resolve(result.chosen_generator, im)))
                    for im in validator.images]
    else:
        generator_path.unlink(missing_ok=True)
    card = build_model_card(
        base=gan, mse=mse, train_files=data.train_files, validation_files=data.validation_files,
        validation_split=data.how,
        settings={"training": config, "detection": settings.detection, "tile": settings.tile,
                  "overlap": settings.overlap, "feather": settings.feather, "segmenter": settings.segmenter_in_use,
                  "labels_dir": settings.labels_dir, **(record or {})},
        result=result, train_before=data.train_scores, train_after=train_after, validation_before=val_before,
        validation_after=val_after, generator_file=GENERATOR_NAME if result.chosen is not None else None,
        min_artifact_images=config.min_artifact_images)
    card_path = write_model_card(card, out / CARD_NAME)
    report = write_finetune_page(card, pictures, out / REPORT_NAME, title=f"desra fine-tuning of {gan.source}")
    return Delivery(result=result, card=card, generator=generator_path if result.chosen is not None else None,
                    card_path=card_path, report=report, train_scores=tuple(data.train_scores))
