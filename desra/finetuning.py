"""``desra finetune`` and ``desra evaluate``: DeSRA's delete step and its measured effect, on folders.

``desra finetune`` exits with :data:`NO_BETTER_MODEL` (3) when no validated checkpoint qualifies: nothing
is shipped then, only the training log, the model card and the report say what was tried.

Both run the pipeline (:mod:`pipeline.pairs`) with one :class:`~pipeline.settings.Settings` from their
options and its store in ``--out``: results a run there has already computed are read, not recomputed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from desra_core import DesraError
from desra_core.finetune.pipeline import detail_kept
from desra_core.image import atomic_path

__all__ = ["NO_BETTER_MODEL", "run_evaluate", "run_finetune"]

NO_BETTER_MODEL = 3
"""Exit code of ``desra finetune`` when no checkpoint beats the original on the validation images."""


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _settings(args, device: str, gan: str):
    """The one Settings of a ``desra finetune``/``desra evaluate`` command line (as ``desra run`` builds it)."""
    from pipeline.models import Models, check_models
    from pipeline.settings import Settings

    settings = Settings.from_options(
        mse_model=str(args.mse), gan_model=str(gan), segmenter=None if args.no_semantic else args.segmenter,
        labels_dir=str(args.labels) if args.labels else None, threshold=args.threshold, min_area=args.min_area,
        min_area_fraction=args.min_area_fraction, tile=args.tile, overlap=args.overlap, feather=args.feather,
        device=device)
    check_models(Models(settings).files)  # both models load and share a scale, before any image is touched
    return settings


def _report_failed(rows: list[dict], what: str = "") -> None:
    for row in rows:
        print(f"skipped{what}: {row['stem']}: {row.get('error')}", file=sys.stderr)


def run_finetune(args, device: str, progress_factory) -> int:
    from desra_core.finetune.losses import LossWeights
    from desra_core.finetune.trainer import FinetuneConfig
    from desra_core.models.sr import load_sr_model
    from pipeline.delivery import finetune_and_deliver
    from pipeline.models import Models
    from pipeline.pairs import prepare_finetuning

    config = FinetuneConfig(iterations=args.iterations, batch=args.batch, crop=args.crop, lr=args.lr, ema=args.ema,
                            artifact_fraction=args.artifact_share,
                            weights=LossWeights(perceptual=1.0 if args.perceptual else 0.0,
                                                gan=0.1 if args.adversarial else 0.0),
                            seed=args.seed, vgg_weights_path=args.vgg_weights, checkpoint_every=args.checkpoint_every,
                            validate_every=args.validate_every, min_detail_ratio=args.min_detail_ratio)
    settings = _settings(args, device, args.gan)
    # The pipeline with these settings, its store in --out: what a run there has computed is not computed again.
    # The --labels folder (by stem) or the segmenter serve the validation images too, unless told otherwise.
    data = prepare_finetuning(settings, args.images, args.out, run_id=f"finetune-{time.strftime('%Y%m%dT%H%M%S')}",
                              holdout=args.holdout, seed=args.split_seed, validate_dir=args.validate,
                              validate_labels_dir=args.validate_labels)
    _report_failed(data.failed)
    print(f"validation image(s): {', '.join(sorted(data.validation_files))} ({data.how['mode']})")
    scores = data.train_scores
    flagged = sum(s.artifact_fraction > 0 for s in scores)
    print(f"{len(scores)} training pair(s), {flagged} with artifacts (mean artifact fraction "
          f"{np.mean([s.artifact_fraction for s in scores]):.4f})", flush=True)
    gan = load_sr_model(settings.gan_model, device=device)  # a private copy: training changes it
    mse = Models(settings).sr_model("mse")
    bar = progress_factory(config.iterations)
    try:
        delivery = finetune_and_deliver(
            gan=gan, mse=mse, data=data, config=config, out_dir=args.out, device=device,
            discriminator_path=args.discriminator, progress=bar,
            record={"device": device, "discriminator": args.discriminator, "gan": args.gan, "mse": args.mse})
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
    """Each GAN model through the pipeline (one Settings per model, the store in ``--out``: the MSE results
    are computed once): the artifact fraction from the rows, the detail kept from the stored pixels and mask."""
    from pipeline.drop import drop_items
    from pipeline.models import Models
    from pipeline.pairs import process_stored, read_stored
    from pipeline.steps import Run

    base = _settings(args, device, args.gan[0])
    run_id = f"evaluate-{time.strftime('%Y%m%dT%H%M%S')}"
    records = []
    for gan in args.gan:
        settings = base.replace(gan_model=str(gan))
        run = Run(settings=settings, output_dir=str(args.out), run_id=run_id, models=Models(settings))
        ok, failed = process_stored(run, drop_items(str(args.images), None, settings.labels_dir))
        _report_failed(failed, f" under {gan}")
        for item, row in ok:
            image = read_stored(run, item, row)
            records.append({"image": item.stem, "model": str(gan), "artifact_fraction": image.artifact_fraction,
                            "detail_kept": detail_kept(image.gan, image.mse, image.mask)})
    if not records:
        raise DesraError(f"expected at least one image the pipeline could process in {args.images}, got none")
    table = pd.DataFrame(records, columns=["image", "model", "artifact_fraction", "detail_kept"])
    _write_parquet(table, args.out / "evaluation.parquet")
    summary = table.groupby("model", sort=False)[["artifact_fraction", "detail_kept"]].mean()
    print(table.pivot(index="image", columns="model", values="artifact_fraction").to_string(
        float_format=lambda v: f"{v:.4f}"))
    print("\nmean per model:\n" + summary.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\nevaluation: {args.out / 'evaluation.parquet'}")
    return 0
