"""``desra finetune`` and ``desra evaluate``: DeSRA's delete step and its measured effect, on folders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from desra_core import DesraError, DetectionConfig
from desra_core.finetune.pipeline import label_source
from desra_core.image import atomic_path, read_image
from desra_core.listing import list_images

__all__ = ["load_images", "run_evaluate", "run_finetune"]


def load_images(folder: Path) -> dict[str, np.ndarray]:
    """Low-resolution RGB images by stem; unreadable ones are reported on stderr and left out."""
    images = {}
    for stem, path in list_images(folder).items():
        try:
            images[stem] = read_image(path).pixels
        except DesraError as e:
            print(f"skipped: {e}", file=sys.stderr)
    if not images:
        raise DesraError(f"expected at least one readable image in {folder}, got none")
    return images


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def run_finetune(args, device: str, progress_factory) -> int:
    from desra_core.finetune.losses import LossWeights
    from desra_core.finetune.pipeline import build_pairs
    from desra_core.finetune.trainer import FinetuneConfig, finetune, save_generator
    from desra_core.models.sr import load_sr_model

    config = FinetuneConfig(iterations=args.iterations, batch=args.batch, crop=args.crop, lr=args.lr, ema=args.ema,
                            weights=LossWeights(perceptual=0.0 if args.no_perceptual else 1.0,
                                                gan=0.0 if args.no_gan else 0.1),
                            seed=args.seed, vgg_weights_path=args.vgg_weights, checkpoint_every=args.checkpoint_every)
    gan = load_sr_model(args.gan, device=device)
    mse = load_sr_model(args.mse, expected_scale=gan.scale, device=device)
    detection = DetectionConfig(threshold=args.threshold, min_area=args.min_area)
    images = load_images(args.images)
    labels = label_source(args.labels, args.segmenter, device)
    pairs, scores = build_pairs(images, mse, gan, labels, detection, tile=args.tile)
    flagged = sum(s.artifact_fraction > 0 for s in scores)
    print(f"{len(pairs)} training pair(s), {flagged} with artifacts (mean artifact fraction "
          f"{np.mean([s.artifact_fraction for s in scores]):.4f})")
    bar = progress_factory(config.iterations)
    result = finetune(gan.descriptor.model, pairs, config, work_dir=args.out, device=device,
                      discriminator_path=args.discriminator, progress=bar)
    if hasattr(bar, "close"):
        bar.close()
    out = save_generator(result.generator, args.out / "generator.safetensors")
    _write_parquet(pd.DataFrame(result.log), args.out / "train_log.parquet")
    print(f"fine-tuned generator: {out}\ntraining log: {args.out / 'train_log.parquet'}")
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
