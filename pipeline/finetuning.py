"""Fine-tuning, written once: ``desra finetune``, the ``finetune`` flow and ``desra(finetune=True)`` all call
:func:`run_finetuning` with one :class:`~desra_core.finetune.options.FinetuneOptions` (one set of defaults,
the same options everywhere).

A run takes its pairs and validation images from the pipeline (:func:`desra.pipeline.pairs.prepare_finetuning`,
the store under ``output_dir``), trains, validates and ships what the rule accepts
(:func:`desra.pipeline.delivery.finetune_and_deliver`), and writes everything in one folder,
:func:`finetune_folder`: ``OUT/finetune/<gan>-<key>/``, where the key is a digest of what decides the
training (the GAN weights' sha256, the run's settings, the options but ``iterations`` and
``checkpoint_every``, and the train and validation images with the sha256 of their files). So the same
run started again, from any entry point, finds its ``checkpoint.pt`` and resumes (with more
``iterations``, it goes on), and a run that differs in anything that matters starts afresh in its own
folder instead of resuming weights that are not its own. The validation folder's pipeline outputs go to
``OUT/finetune/validation``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from desra.pipeline.delivery import Delivery, finetune_and_deliver
from desra.pipeline.models import Models
from desra.pipeline.pairs import FinetuneData, prepare_finetuning
from desra.pipeline.settings import Settings
from desra_core.finetune.card import file_sha256
from desra_core.finetune.options import FinetuneOptions
from desra_core.finetune.trainer import VALIDATION_COLUMNS
from desra_core.image import atomic_path
from desra_core.models.sr import SRModel, load_sr_model

__all__ = ["FOLDER", "LOG_NAME", "FinetuneOptions", "FinetuneRun", "finetune_folder", "run_finetuning"]

FOLDER = "finetune"
"""The fine-tuning runs' folder under the output root."""
LOG_NAME = "train_log.parquet"


@dataclass(frozen=True)
class FinetuneRun:
    """What a run produced: its ``folder``, the prepared ``data``, the ``delivery`` (card, report, generator or
    None) and the training ``log`` file."""

    folder: Path
    data: FinetuneData
    delivery: Delivery
    log: Path

    @property
    def generator(self) -> Path | None:
        return self.delivery.generator

    @property
    def reason(self) -> str:
        return self.delivery.result.reason

    @property
    def chosen_step(self) -> int | None:
        chosen = self.delivery.result.chosen
        return None if chosen is None else chosen.step


def finetune_folder(output_dir: str | Path, settings: Settings, options: FinetuneOptions, gan: SRModel,
                    data: FinetuneData) -> Path:
    """``OUT/finetune/<gan>-<key>``: the folder of the run that these inputs define (see the module docstring)."""
    training = {k: v for k, v in options.as_dict().items() if k not in ("iterations", "checkpoint_every")}
    # the loss weights as resolved on this device: automatic ones differ by device and by whether VGG19 weights
    # are at hand, and a checkpoint trained under one objective must not be resumed under another
    objective = {k: v for k, v in options.objective(str(settings.device)).items() if k != "why"}
    facts = {"gan_sha256": gan.file_sha256(), "training": training, "objective": objective,
             "settings": {k: v for k, v in settings.options().items() if k != "device"},
             "train": {s: file_sha256(p) for s, p in sorted(data.train_files.items())},
             "validation": {s: file_sha256(p) for s, p in sorted(data.validation_files.items())}}
    key = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(settings.gan_model)).stem)[:40] or "gan"
    return Path(output_dir) / FOLDER / f"{name}-{key}"


def _write_log(log: list[dict[str, Any]], path: Path) -> None:
    frame = pd.DataFrame(log, columns=None if log else ["step", "l1", "perceptual", "gan", "texture", "d_loss", "lr",
                                                          "seconds", *VALIDATION_COLUMNS])
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def run_finetuning(settings: Settings, input_dir: str | Path, output_dir: str | Path, options: FinetuneOptions, *,
                   stems: list[str] | None = None, progress: Callable[[dict[str, Any]], None] | None = None,
                   say: Callable[[str], None] = lambda message: None,
                   warn: Callable[[str], None] = lambda message: None) -> FinetuneRun:
    """Fine-tune ``settings.gan_model`` on the pseudo-GT of ``input_dir`` (all images, or only ``stems``), judged
    on images it never trained on, and write the results in :func:`finetune_folder`. ``settings`` are admitted
    (:func:`desra.pipeline.admission.admit`): their device, resolved there, is used as it is, also to resolve the
    automatic loss weights (:meth:`~desra_core.finetune.options.FinetuneOptions.objective`, recorded in the model
    card's settings as ``objective``).

    ``say`` and ``warn`` receive one line each about the data (the CLI prints them, a flow logs them); images the
    pipeline fails on are left out with a ``warn``. ``progress`` gets each step's log record.

    Raises:
        ConfigError: bad options (before anything is computed), a split that leaves nothing to train on.
        DesraError: no image the pipeline could process.
    """
    device = settings.device  # admitted: resolved by desra.pipeline.admission
    objective = options.objective(str(device))
    # resolved once: the folder key, the trainer and the card all see these weights, even if VGG19 weights appear
    # in (or leave) torchvision's cache while the run prepares its data
    options = options.replace(**{name: objective[name] for name in ("perceptual", "gan", "texture")})
    config = options.config(device=str(device))
    output_dir = Path(output_dir)
    data = prepare_finetuning(settings, input_dir, output_dir, run_id=f"finetune-{time.strftime('%Y%m%dT%H%M%S')}",
                              stems=stems, holdout=options.holdout, seed=options.split_seed,
                              validate_dir=options.validate_dir, validate_labels_dir=options.validate_labels_dir,
                              validation_output=output_dir / FOLDER / "validation")
    for row in data.failed:
        warn(f"left out of fine-tuning: {row['stem']}: {row.get('error')}")
    flagged = sum(s.artifact_fraction > 0 for s in data.train_scores)
    computed = sorted({r["stem"] for r in data.rows if r.get("computed")})
    say(f"{len(data.pairs)} training pair(s), {flagged} with artifacts; validation image(s): "
        f"{', '.join(sorted(data.validation_files))} ({data.how['mode']}); "
        + (f"computed for {', '.join(computed)}" if computed else "all from the store"))
    gan = load_sr_model(settings.gan_model, device=device)  # a private copy: training changes it
    folder = finetune_folder(output_dir, settings, options, gan, data)
    say(f"fine-tuning folder: {folder}")
    delivery = finetune_and_deliver(
        gan=gan, mse=Models(settings).sr_model("mse"), data=data, config=config, out_dir=folder, device=str(device),
        discriminator_path=options.discriminator, progress=progress,
        record={"device": str(device), "gan": settings.gan_model, "mse": settings.mse_model,
                "discriminator": options.discriminator, "options": options.as_dict(), "objective": objective})
    log = folder / LOG_NAME
    _write_log(delivery.result.log, log)
    return FinetuneRun(folder=folder, data=data, delivery=delivery, log=log)
