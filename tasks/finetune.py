"""GPU-bound task: DeSRA's delete step (fine-tune the GAN-SR model on pseudo-GT), judged on images it never
trained on, with its loss and validation curves."""

import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from desra_core import DesraError, DetectionConfig
from desra_core.finetune.losses import LossWeights
from desra_core.finetune.pipeline import label_source
from desra_core.finetune.trainer import FinetuneConfig
from desra_core.finetune.validation import split_images
from desra_core.image import atomic_path, read_image
from desra_core.listing import list_images
from desra_core.models.sr import load_sr_model
from pipeline.delivery import finetune_and_deliver
from pipeline.models import resolve_device
from tasks.models import gpu_slot

__all__ = ["finetune_generator"]


def _curve_markdown(log: list[dict], rows: int = 20) -> str:
    every = max(len(log) // rows, 1)
    lines = ["| step | L1 | perceptual | GAN | D |", "|---:|---:|---:|---:|---:|"]
    for r in log[every - 1::every]:
        lines.append(f"| {r['step']} | {r['l1']:.4f} | {r['perceptual']:.4f} | {r['gan']:.4f} | {r['d_loss']:.4f} |")
    return "\n".join(lines)


def _validation_markdown(card: dict) -> str:
    lines = ["| step | weights | validation artifact fraction | detail ratio |", "|---:|---|---:|---:|"]
    for c in card["checkpoints"]:
        ratio = c["validation_detail_ratio"]
        lines.append(f"| {c['step']} | {c['weights']} | {c['validation_artifact_fraction']:.4f} | "
                     f"{'—' if ratio is None else f'{ratio:.3f}'} |")
    return "\n".join(lines)


def _read(folder: str, stems: list[str] | None, logger) -> tuple[dict, dict]:
    images, files = {}, {}
    for stem, path in list_images(folder).items():
        if stems is None or stem in stems:
            try:
                images[stem] = read_image(path).pixels
                files[stem] = path
            except DesraError as e:
                logger.warning("left out of fine-tuning: %s", e)
    return images, files


@task(name="finetune", cache_policy=NO_CACHE, persist_result=False)
def finetune_generator(input_dir: str, output_dir: str, mse_model: str, gan_model: str, segmenter: str | None,
                       labels_dir: str | None, detection: dict, settings: dict, device: str = "auto",
                       stems: list[str] | None = None, validation: dict | None = None) -> dict:
    """Fine-tune ``gan_model`` on pseudo-GT pairs from ``input_dir``, validated on images never trained on:
    ``validation`` is ``{"dir": …, "labels_dir": …}`` (a folder) or ``{"holdout": 0.25, "seed": 0}`` (a
    held-out share of the images, at least one). Writes ``OUT/finetune/<time>/``: ``train_log.parquet``,
    ``model_card.json``, ``report.html``, ``checkpoint.pt`` and, only when a validated checkpoint beats the
    original, ``generator.safetensors``; and a summary artifact that says which checkpoint was chosen and why.
    Returns ``generator`` (None when nothing qualified), ``log``, ``card``, ``report``, ``pairs``, ``chosen_step``
    and ``reason``."""
    logger = get_run_logger()
    device = resolve_device(device)
    validation = validation or {"holdout": 0.25, "seed": 0}
    images, files = _read(input_dir, stems, logger)
    if not images:
        raise DesraError(f"expected readable images to fine-tune on in {input_dir}, got none")
    folder_images, folder_files = None, None
    if validation.get("dir"):
        folder_images, folder_files = _read(validation["dir"], None, logger)
        if not folder_images:
            raise DesraError(f"expected readable validation images in {validation['dir']}, got none")
    split = split_images(images, files, holdout=validation.get("holdout", 0.25), seed=validation.get("seed", 0),
                         folder=validation.get("dir") or None, folder_images=folder_images, folder_files=folder_files)
    work = Path(output_dir) / "finetune" / time.strftime("%Y%m%dT%H%M%S")
    config = FinetuneConfig(**{**settings, "weights": LossWeights(**settings.get("weights", {}))})
    with gpu_slot(device):
        gan = load_sr_model(gan_model, device=device)
        mse = load_sr_model(mse_model, expected_scale=gan.scale, device=device)
        labels = label_source(labels_dir, segmenter, device)
        val_labels = label_source(validation["labels_dir"], None, device) if validation.get("labels_dir") else labels
        delivery = finetune_and_deliver(
            gan=gan, mse=mse, train_images=split.train_images, train_files=split.train_files,
            validation_images=split.validation_images, validation_files=split.validation_files,
            validation_split=split.how, labels=labels,
            validation_labels=val_labels, detection=DetectionConfig(**detection), config=config, out_dir=work,
            device=str(device), settings={"device": str(device), "gan": gan_model, "mse": mse_model})
    result = delivery.result
    with atomic_path(work / "train_log.parquet") as tmp:
        pd.DataFrame(result.log).to_parquet(tmp, index=False)
    card = delivery.card
    before = card["train"]["artifact_fraction"]["original"]
    val = card["validation"]
    outcome = (f"**Chosen: step {result.chosen.step} ({result.chosen.weights} weights).** Generator: "
               f"`{delivery.generator}`" if result.chosen is not None
               else "**No checkpoint qualified: no generator was written.**")
    after = val["artifact_fraction"]["fine_tuned"]
    if result.chosen is None:
        logger.warning("fine-tuning shipped nothing: %s", result.reason)
    create_markdown_artifact(
        f"# Fine-tuning `{gan_model}`\n\n{outcome}\n\n{result.reason}.\n\n"
        f"{len(split.train_images)} training image(s) (mean artifact fraction {before:.4f}); validation on "
        f"{', '.join(sorted(split.validation_images))} ({split.how['mode']}): artifact fraction "
        f"{val['artifact_fraction']['original']:.4f} → "
        f"{'—' if after is None else format(after, '.4f')}"
        f".\n\nModel card: `{delivery.card_path}`; report: `{delivery.report}`\n\n## Validated checkpoints\n\n"
        + _validation_markdown(card) + "\n\n## Losses\n\n" + _curve_markdown(result.log),
        key="desra-finetune-losses", description="fine-tuning: the chosen checkpoint, validation and loss curves")
    return {"generator": None if delivery.generator is None else str(delivery.generator),
            "log": str(work / "train_log.parquet"), "card": str(delivery.card_path), "report": str(delivery.report),
            "pairs": len(split.train_images), "chosen_step": None if result.chosen is None else result.chosen.step,
            "reason": result.reason}
