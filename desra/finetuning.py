"""``desra finetune`` and ``desra evaluate``: DeSRA's delete step and its measured effect, on folders.

``desra finetune`` exits with :data:`NO_BETTER_MODEL` (3) when no validated checkpoint qualifies, or when
the validation images cannot show an improvement (then nothing is trained): nothing is shipped, only the
training log, the model card and the report say what was tried or what was missing.

Both run the pipeline (:mod:`desra.pipeline.pairs`) with one :class:`~desra.pipeline.settings.Settings` from their
options and its store in ``--out``: results a run there has already computed are read, not recomputed.
``desra finetune`` is :func:`desra.pipeline.finetuning.run_finetuning`, as the ``finetune`` flow is: its files go
to ``OUT/finetune/<gan>-<key>/``, where running the same command (or the flow) again resumes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from desra.pipeline.options import FinetuneFields, RunOptions, options_of
from desra_core import DesraError
from desra_core.finetune.options import FinetuneOptions
from desra_core.finetune.pipeline import detail_kept
from desra_core.image import atomic_path

__all__ = ["NO_BETTER_MODEL", "finetune_options", "run_evaluate", "run_finetune"]

NO_BETTER_MODEL = 3
"""Exit code of ``desra finetune`` when nothing is shipped (no checkpoint qualifies, or too little evidence)."""


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _settings(args, gan: str, more_paths: dict[str, str | None] | None = None):
    """The admitted Settings of a ``desra finetune``/``desra evaluate`` command line with the GAN model ``gan``:
    :func:`desra.pipeline.admission.admit`, the admission of every run (paths confined where
    ``DESRA_ALLOWED_ROOTS`` is set, the device resolved, both models loaded and of one scale, the segmenter, the
    output root), before any image is touched. ``more_paths``: the fine-tuning's own paths."""
    from desra.pipeline.admission import admit

    return admit(str(args.images), str(args.out), {**options_of(RunOptions, vars(args)), "gan_model": str(gan)},
                 more_paths=more_paths).settings


def _report_failed(rows: list[dict], what: str = "") -> None:
    for row in rows:
        print(f"skipped{what}: {row['stem']}: {row.get('error')}", file=sys.stderr)


def finetune_options(args) -> FinetuneOptions:
    """The command line's options as the one :class:`~desra_core.finetune.options.FinetuneOptions` (the options
    have its fields' names; ``--perceptual`` and ``--adversarial`` alone set the recipe's weights, 1.0 and 0.1)."""
    return FinetuneOptions(**options_of(FinetuneFields, vars(args)))


def run_finetune(args, progress_factory) -> int:
    """``desra finetune``: :func:`desra.pipeline.finetuning.run_finetuning` with the command line's settings and
    options, the store and the run's folder under ``--out``."""
    from desra.pipeline.admission import FINETUNE_PATHS
    from desra.pipeline.finetuning import run_finetuning

    options = finetune_options(args)
    options.config()  # bad options fail before any model or image is touched
    settings = _settings(args, args.gan_model, {name: getattr(options, name) for name in FINETUNE_PATHS})
    bar = progress_factory(options.iterations)
    try:
        run = run_finetuning(settings, args.images, args.out, options, progress=bar, say=print,
                             warn=lambda line: print(line, file=sys.stderr))
    finally:
        if hasattr(bar, "close"):
            bar.close()
    print(f"training log: {run.log}\nmodel card: {run.delivery.card_path}\nreport: {run.delivery.report}")
    if run.generator is None:
        print(f"no fine-tuned generator written: {run.reason}", file=sys.stderr)
        return NO_BETTER_MODEL
    print(f"chosen: {run.reason}\nfine-tuned generator: {run.generator}")
    return 0


def run_evaluate(args) -> int:
    """Each GAN model through the pipeline (one Settings per model, the store in ``--out``: the MSE results
    are computed once): the artifact fraction from the rows, the detail kept from the stored pixels and mask."""
    from desra.pipeline.drop import drop_items
    from desra.pipeline.models import Models
    from desra.pipeline.pairs import process_stored, read_stored
    from desra.pipeline.steps import Run

    admitted = [_settings(args, gan) for gan in args.gan_model]  # every GAN model checked before any image
    run_id = f"evaluate-{time.strftime('%Y%m%dT%H%M%S')}"
    records = []
    for gan, settings in zip(args.gan_model, admitted, strict=True):
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
