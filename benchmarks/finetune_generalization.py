"""Does fine-tuning generalize? Tune realesr-general-x4v3 on some parity photos, validate on others.

Needs ``../shared`` (real weights and parity photos). One run = one row of the README's table: the
settings, then the original and the chosen checkpoint's validation artifact fraction and detail ratio,
and the artifact fraction on near-clean photos before and after. Photos, not crops, are split: the
training photos (hubble, coffee, motorcycle; every crop of them, with or without artifacts) never appear
in validation (rocket, astronaut_1, camera) or in the near-clean check (brick, astronaut_0).

    python benchmarks/finetune_generalization.py --iterations 600 --batch 4 --crop 128 --lr 1e-4 --ema 0
    python benchmarks/finetune_generalization.py --sweep --iterations 100 --validate-every 20

Prints progress lines and, per run, one JSON line with the figures. ``--sweep`` prepares the pairs and the
validation images once and runs the README's rows one after the other (each from the original weights).
The photos go through the pipeline (``desra.pipeline.pairs``) as a drop with their label maps, the way
``desra finetune`` takes them; the store lives in a temporary folder (``--work`` keeps it between runs).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from desra.pipeline.drop import drop_items
from desra.pipeline.models import Models
from desra.pipeline.pairs import prepare_finetuning, process_stored, read_stored
from desra.pipeline.settings import Settings
from desra.pipeline.steps import Run
from desra_core import DetectionConfig
from desra_core.finetune.losses import LossWeights
from desra_core.finetune.trainer import FinetuneConfig, finetune
from desra_core.finetune.validation import Validator
from desra_core.models.sr import load_sr_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
TRAIN = ("hubble_0", "hubble_0_big", "coffee_0", "coffee_1", "coffee_0_big", "motorcycle_0", "motorcycle_1",
         "motorcycle_0_big")
TRAIN_FLAGGED = ("hubble_0", "coffee_1", "motorcycle_1")
VALIDATION = ("rocket_0", "rocket_1", "astronaut_1", "camera_0")
CLEAN = ("brick_0", "astronaut_0")


def parity_drop(parity: Path, folder: Path, cases, labels: Path) -> Path:
    """Parity cases as a drop of ``<case>.png``, their label maps as ``labels/<case>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for c in cases:
        shutil.copyfile(parity / c / "lr.png", folder / f"{c}.png")
        shutil.copyfile(parity / c / "labels.png", labels / f"{c}.png")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ema", type=float, default=0.0)
    ap.add_argument("--artifact-share", type=float, default=0.5)
    ap.add_argument("--train", choices=["all", "flagged"], default="all")
    ap.add_argument("--validate-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--min-area", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="folder for the drops and the store (default: a temporary one)")
    ap.add_argument("--sweep", action="store_true", help="run the README's rows (other options: the base row)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_and_run(args, args.work or Path(tmp))


def prepare_and_run(args, work: Path) -> None:
    parity, models = SHARED / "parity", SHARED / "models"
    gan_path, mse_path = models / "realesr_general_x4v3.gan.safetensors", models / "span_x4_ch52.mse.safetensors"
    labels = work / "labels"
    settings = Settings(mse_model=str(mse_path), gan_model=str(gan_path), labels_dir=str(labels), device="cpu",
                        detection=DetectionConfig(threshold=args.threshold, min_area=args.min_area))
    start = time.perf_counter()
    data = prepare_finetuning(settings, parity_drop(parity, work / "train", TRAIN, labels), work / "out",
                              run_id="benchmark", validate_dir=parity_drop(parity, work / "validation", VALIDATION,
                                                                           labels), validate_labels_dir=labels)
    gan = load_sr_model(gan_path)
    validator = Validator(gan, data.validation, settings.detection, tile=settings.tile, overlap=settings.overlap,
                          original=data.validation_original)
    clean_run = Run(settings=settings, output_dir=str(work / "out"), run_id="benchmark", models=Models(settings))
    ok, _ = process_stored(clean_run, drop_items(str(parity_drop(parity, work / "clean", CLEAN, labels)), None,
                                                 str(labels)))
    clean = [read_stored(clean_run, item, row) for item, row in ok]
    print(f"prepared in {time.perf_counter() - start:.0f}s; validation original "
          f"{validator.original.artifact_fraction:.4f}", flush=True)
    original_state = copy.deepcopy(gan.descriptor.model.state_dict())
    base = {k: v for k, v in vars(args).items() if k not in ("threads", "sweep", "work")}
    rows = [base]
    if args.sweep:
        rows += [{**base, **change} for change in (
            {"train": "flagged"}, {"lr": 3e-5}, {"ema": 0.99}, {"artifact_share": 0.2}, {"artifact_share": 0.9},
            {"lr": 3e-4})]
    for row in rows:
        gan.descriptor.model.load_state_dict(original_state)
        run(row, gan, data.pairs, validator, clean, start)


def run(row, gan, pairs, validator, clean, start) -> None:
    if row["train"] == "flagged":
        pairs = [p for p in pairs if p.name in TRAIN_FLAGGED]
    config = FinetuneConfig(iterations=row["iterations"], batch=row["batch"], crop=row["crop"], lr=row["lr"],
                            ema=row["ema"], artifact_fraction=row["artifact_share"],
                            weights=LossWeights(perceptual=0.0, gan=0.0), validate_every=row["validate_every"],
                            checkpoint_every=row["iterations"], seed=row["seed"])

    def progress(rec: dict) -> None:
        if not np.isnan(rec["val_artifact_fraction"]):
            print(f"step {rec['step']}: l1 {rec['l1']:.4f} val {rec['val_artifact_fraction']:.4f} "
                  f"detail {rec['val_detail_ratio']:.3f} ema {rec['ema_val_artifact_fraction']:.4f} "
                  f"{rec['ema_val_detail_ratio']:.3f} ({time.perf_counter() - start:.0f}s)", flush=True)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        result = finetune(gan.descriptor.model, pairs, config, work_dir=work, progress=progress, validator=validator)
    out = {"settings": row, "original_val_fraction": validator.original.artifact_fraction, "reason": result.reason,
           "minutes": (time.perf_counter() - began) / 60,
           "checkpoints": [(c.step, c.weights, round(c.score.artifact_fraction, 5), round(c.score.detail_ratio, 4))
                           for c in result.candidates]}
    if result.chosen is not None:
        before = np.mean([image.artifact_fraction for image in clean])  # the pipeline's rows
        after = validator.score(result.chosen_generator, [image.validation_image() for image in clean])
        out.update(chosen_step=result.chosen.step, chosen_weights=result.chosen.weights,
                   val_fraction=result.chosen.score.artifact_fraction,
                   val_detail_ratio=result.chosen.score.detail_ratio,
                   val_drop=1 - result.chosen.score.artifact_fraction / validator.original.artifact_fraction,
                   clean_before=float(before), clean_after=float(after.artifact_fraction))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
