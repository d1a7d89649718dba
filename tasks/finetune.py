"""GPU-bound task: DeSRA's delete step (fine-tune the GAN-SR model on pseudo-GT), judged on images it never
trained on, with its loss and validation curves."""

import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from desra_core.finetune.losses import LossWeights
from desra_core.finetune.trainer import FinetuneConfig
from desra_core.image import atomic_path
from desra_core.models.sr import load_sr_model
from pipeline.delivery import finetune_and_deliver
from pipeline.models import Models, resolve_device
from pipeline.pairs import prepare_finetuning
from pipeline.settings import Settings
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


@task(name="finetune", cache_policy=NO_CACHE, persist_result=False)
def finetune_generator(input_dir: str, output_dir: str, settings: Settings, training: dict,
                       stems: list[str] | None = None, validation: dict | None = None) -> dict:
    """Fine-tune ``settings.gan_model`` on pseudo-GT pairs of ``input_dir``, validated on images never
    trained on: ``validation`` is ``{"dir": …, "labels_dir": …}`` (a folder) or ``{"holdout": 0.25, "seed": 0}``
    (a held-out share of the images, at least one).

    The pairs and validation images come from the pipeline with ``settings`` exactly (detection, tile,
    overlap, feather, labels): after a ``desra`` run with the same settings on ``output_dir`` they are read
    from its store, nothing is super-resolved or detected again. Writes ``OUT/finetune/<time>/``:
    ``train_log.parquet``, ``model_card.json``, ``report.html``, ``checkpoint.pt`` and, only when a validated
    checkpoint beats the original, ``generator.safetensors``; and a summary artifact that says which
    checkpoint was chosen and why. Returns ``generator`` (None when nothing qualified), ``log``, ``card``,
    ``report``, ``pairs``, ``chosen_step`` and ``reason``."""
    logger = get_run_logger()
    device = resolve_device(settings.device)
    settings = settings.replace(device=device)
    validation = validation or {"holdout": 0.25, "seed": 0}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    work = Path(output_dir) / "finetune" / stamp
    config = FinetuneConfig(**{**training, "weights": LossWeights(**training.get("weights", {}))})
    with gpu_slot(device):
        data = prepare_finetuning(settings, input_dir, output_dir, run_id=f"finetune-{stamp}", stems=stems,
                                  holdout=validation.get("holdout", 0.25), seed=validation.get("seed", 0),
                                  validate_dir=validation.get("dir") or None,
                                  validate_labels_dir=validation.get("labels_dir") or None,
                                  validation_output=Path(output_dir) / "finetune" / "validation")
        for row in data.failed:
            logger.warning("left out of fine-tuning: %s: %s", row["stem"], row.get("error"))
        computed = [r["stem"] for r in data.rows if r.get("computed")]
        logger.info("%d training pair(s), %d validation image(s) from the pipeline; %s", len(data.pairs),
                    len(data.validation), f"computed for {', '.join(computed)}" if computed
                    else "all from the store")
        gan = load_sr_model(settings.gan_model, device=device)  # a private copy: training changes it
        mse = Models(settings).sr_model("mse")
        delivery = finetune_and_deliver(
            gan=gan, mse=mse, data=data, config=config, out_dir=work, device=str(device),
            record={"device": str(device), "gan": settings.gan_model, "mse": settings.mse_model})
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
        f"# Fine-tuning `{settings.gan_model}`\n\n{outcome}\n\n{result.reason}.\n\n"
        f"{len(data.pairs)} training image(s) (mean artifact fraction {before:.4f}); validation on "
        f"{', '.join(sorted(data.validation_files))} ({data.how['mode']}): artifact fraction "
        f"{val['artifact_fraction']['original']:.4f} → "
        f"{'—' if after is None else format(after, '.4f')}"
        f".\n\nModel card: `{delivery.card_path}`; report: `{delivery.report}`\n\n## Validated checkpoints\n\n"
        + _validation_markdown(card) + "\n\n## Losses\n\n" + _curve_markdown(result.log),
        key="desra-finetune-losses", description="fine-tuning: the chosen checkpoint, validation and loss curves")
    return {"generator": None if delivery.generator is None else str(delivery.generator),
            "log": str(work / "train_log.parquet"), "card": str(delivery.card_path), "report": str(delivery.report),
            "pairs": len(data.pairs), "chosen_step": None if result.chosen is None else result.chosen.step,
            "reason": result.reason}
