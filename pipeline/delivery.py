"""One fine-tuning run from images to shipped files: train, validate, choose, and write what qualifies.

:func:`finetune_and_deliver` builds the training pairs, prepares the validation images, fine-tunes with
validation (:func:`~desra_core.finetune.trainer.finetune`), and in ``out_dir`` writes

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

import numpy as np

from desra_core.detection import DetectionConfig
from desra_core.finetune.card import build_model_card, write_model_card
from desra_core.finetune.pipeline import ImageScore, LabelSource, build_pairs, evaluate_models
from desra_core.finetune.trainer import FinetuneConfig, FinetuneResult, finetune, save_generator
from desra_core.finetune.validation import prepare_validation
from desra_core.models.sr import SRModel
from pipeline.review import write_finetune_page

__all__ = ["CARD_NAME", "GENERATOR_NAME", "REPORT_NAME", "Delivery", "finetune_and_deliver"]

GENERATOR_NAME = "generator.safetensors"
CARD_NAME = "model_card.json"
REPORT_NAME = "report.html"


@dataclass(frozen=True)
class Delivery:
    """What a run produced: the training outcome, the card, the written files (``generator`` None when no
    checkpoint qualified) and the training images' scores under the original model."""

    result: FinetuneResult
    card: dict
    generator: Path | None
    card_path: Path
    report: Path
    train_scores: tuple[ImageScore, ...]


def finetune_and_deliver(*, gan: SRModel, mse: SRModel, train_images: Mapping[str, np.ndarray],
                         train_files: Mapping[str, str | Path], validation_images: Mapping[str, np.ndarray],
                         validation_files: Mapping[str, str | Path], validation_split: Mapping[str, object],
                         labels: LabelSource, validation_labels: LabelSource, detection: DetectionConfig,
                         config: FinetuneConfig, out_dir: str | Path, device: str = "cpu", tile: int | None = 512,
                         discriminator_path: str | Path | None = None, settings: Mapping[str, object] | None = None,
                         progress: Callable[[dict], None] | None = None,
                         on_pairs: Callable[[list[ImageScore]], None] | None = None) -> Delivery:
    """Fine-tune ``gan`` (in place) on ``train_images``, judged on ``validation_images``; write the results.

    Args:
        gan, mse: the GAN model to tune and the MSE reference (same scale).
        train_images, validation_images: stem → low-resolution RGB array; the two must not share a stem.
        train_files, validation_files: stem → file, for the card's digests.
        validation_split: how the validation images were chosen (recorded in the card).
        labels, validation_labels: label sources for the two sets.
        detection, config: detection and training settings.
        out_dir: where the checkpoint, generator, card and report go.
        settings: further settings to record (tile, device, discriminator…), beside ``config`` and ``detection``.
        progress: per-step callback (log records, validation columns included).
        on_pairs: called with the training images' scores once the pairs are built.

    Raises:
        ConfigError: a stem in both sets, or the trainer's own checks.
    """
    from desra_core.errors import ConfigError

    shared = sorted(set(train_images) & set(validation_images))
    if shared:
        raise ConfigError(f"expected validation images that are not trained on, got {shared} in both sets")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs, train_before = build_pairs(train_images, mse, gan, labels, detection, tile=tile)
    if on_pairs is not None:
        on_pairs(train_before)
    validator = prepare_validation(validation_images, mse, gan, validation_labels, detection, tile=tile)
    result = finetune(gan.descriptor.model, pairs, config, work_dir=out, device=device,
                      discriminator_path=discriminator_path, progress=progress, validator=validator)
    generator_path = out / GENERATOR_NAME
    val_before = [ImageScore(name, str(gan.source), f, d) for name, (f, d) in validator.original.per_image.items()]
    train_after = val_after = None
    pictures = []
    if result.chosen is not None:
        gan.descriptor.model.load_state_dict(result.chosen_generator.state_dict())
        gan.descriptor.model.eval()
        tuned = SRModel(descriptor=gan.descriptor, source="fine-tuned", path=gan.path)
        train_after = evaluate_models(train_images, mse, [tuned], labels, detection, tile=tile)
        val_after = [ImageScore(name, "fine-tuned", f, d) for name, (f, d) in result.chosen.score.per_image.items()]
        save_generator(result.chosen_generator, generator_path)
        pictures = [(im.name, im.gan_sr, validator.super_resolve(result.chosen_generator, im))
                    for im in validator.images]
    else:
        generator_path.unlink(missing_ok=True)
    card = build_model_card(
        base=gan, mse=mse, train_files=train_files, validation_files=validation_files,
        validation_split=validation_split,
        settings={"training": config, "detection": detection, "tile": tile, **(settings or {})}, result=result,
        train_before=train_before, train_after=train_after, validation_before=val_before, validation_after=val_after,
        generator_file=GENERATOR_NAME if result.chosen is not None else None)
    card_path = write_model_card(card, out / CARD_NAME)
    report = write_finetune_page(card, pictures, out / REPORT_NAME, title=f"desra fine-tuning of {gan.source}")
    return Delivery(result=result, card=card, generator=generator_path if result.chosen is not None else None,
                    card_path=card_path, report=report, train_scores=tuple(train_before))
