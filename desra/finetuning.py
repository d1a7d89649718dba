"""``desra finetune`` and ``desra evaluate``: DeSRA's delete step and its measured effect, on folders.

``desra finetune`` exits with :data:`NO_BETTER_MODEL` (3) when no validated checkpoint qualifies: nothing
is shipped then, only the training log, the model card and the report say what was tried.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from desra_core import DesraError, DetectionConfig
from desra_core.finetune.pipeline import label_source
from desra_core.image import atomic_path, read_image
from desra_core.listing import list_images

__all__ = ["NO_BETTER_MODEL", "load_images", "run_evaluate", "run_finetune"]

NO_BETTER_MODEL = 3
"""Exit code of ``desra finetune`` when no checkpoint beats the original on the validation images."""


def load_images(folder: Path, *, with_files: bool = False):
    """Low-resolution RGB images by stem; unreadable ones are reported on stderr and left out.

    With ``with_files``, returns ``(images, files)``: also stem → path of each readable image.
    """
    images, files = {}, {}
    for stem, path in list_images(folder).items():
        try:
            images[stem] = read_image(path).pixels
            files[stem] = path
        except DesraError as e:
            print(f"skipped: {e}", file=sys.stderr)
    if not images:
        raise DesraError(f"expected at least one readable image in {folder}, got none")
    return (images, files) if with_files else images


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def run_finetune(args, device: str, progress_factory) -> int:
    from desra_core.finetune.losses import LossWeights
    from desra_core.finetune.trainer import FinetuneConfig
    from desra_core.finetune.validation import split_images
    from desra_core.models.sr import load_sr_model
    from pipeline.delivery import finetune_and_deliver

    config = FinetuneConfig(iterations=args.iterations, batch=args.batch, crop=args.crop, lr=args.lr, ema=args.ema,
                            artifact_fraction=args.artifact_share,
                            weights=LossWeights(perceptual=1.0 if args.perceptual else 0.0,
                                                gan=0.1 if args.adversarial else 0.0),
                            seed=args.seed, vgg_weights_path=args.vgg_weights, checkpoint_every=args.checkpoint_every,
                            validate_every=args.validate_every, min_detail_ratio=args.min_detail_ratio)
    images, files = load_images(args.images, with_files=True)
    labels = label_source(args.labels, args.segmenter, device)
    folder_images, folder_files = load_images(args.validate, with_files=True) if args.validate else (None, None)
    split = split_images(images, files, holdout=args.holdout, seed=args.split_seed, folder=args.validate,
                         folder_images=folder_images, folder_files=folder_files)
    # the --labels folder (by stem) or the segmenter serve the validation images too, unless told otherwise
    val_labels = label_source(args.validate_labels, None, device) if args.validate_labels else labels
    print(f"validation image(s): {', '.join(sorted(split.validation_images))} ({split.how['mode']})")
    gan = load_sr_model(args.gan, device=device)
    mse = load_sr_model(args.mse, expected_scale=gan.scale, device=device)
    detection = DetectionConfig(threshold=args.threshold, min_area=args.min_area)

    def announce(scores) -> None:
        flagged = sum(s.artifact_fraction > 0 for s in scores)
        print(f"{len(scores)} training pair(s), {flagged} with artifacts (mean artifact fraction "
              f"{np.mean([s.artifact_fraction for s in scores]):.4f})", flush=True)

    bar = progress_factory(config.iterations)
    try:
        delivery = finetune_and_deliver(
            gan=gan, mse=mse, train_images=split.train_images, train_files=split.train_files,
            validation_images=split.validation_images, validation_files=split.validation_files,
            validation_split=split.how, labels=labels, validation_labels=val_labels,
            detection=detection, config=config, out_dir=args.out, device=device, tile=args.tile,
            discriminator_path=args.discriminator, progress=bar, on_pairs=announce,
            settings={"device": device, "discriminator": args.discriminator, "gan": args.gan, "mse": args.mse})
    finally:
        if hasattr(bar, "close"):
            bar.close()
    _write_parquet(pd.DataFrame(delivery.result.log), args.out / "train_log.parquet")
    print(f"training log: {args.out / 'train_log.parquet'}\nmodel card: {delivery.card_path}\n"
          f"report: {delivery.report}")
    if delivery.generator is None:
        print(f"no fine-tuned generator written: {delivery.result.reason}", file=sys.stderr)
        return NO_BETTER_MODEL
    print(f"chosen: {delivery.result.reason}\nfine-tuned generator: {delivery.generator}")
    return 0


def run_evaluate(args, device: str) -> int:
    from desra_core.finetune.pipeline import evaluate_models
    from desra_core.models.sr import load_sr_model

    gans = [load_sr_model(g, device=device) for g in args.gan]
    mse = load_sr_model(args.mse, expected_scale=gans[0].scale, device=device)
    scores = evaluate_models(load_images(args.images), mse, gans, label_source(args.labels, args.segmenter, device),
                             DetectionConfig(threshold=args.threshold, min_area=args.min_area), tile=args.tile)
    table = pd.DataFrame([{"image": s.image, "model": s.model, "artifact_fraction": s.artifact_fraction,
                           "detail_kept": s.detail_kept} for s in scores])
    _write_parquet(table, args.out / "evaluation.parquet")
    summary = table.groupby("model", sort=False)[["artifact_fraction", "detail_kept"]].mean()
    print(table.pivot(index="image", columns="model", values="artifact_fraction").to_string(
        float_format=lambda v: f"{v:.4f}"))
    print("\nmean per model:\n" + summary.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\nevaluation: {args.out / 'evaluation.parquet'}")
    return 0
