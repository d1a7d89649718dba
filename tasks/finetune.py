"""GPU-bound task: DeSRA's delete step (fine-tune the GAN-SR model on pseudo-GT), judged on images it never
trained on, with its loss and validation curves."""

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from desra.pipeline.finetuning import run_finetuning
from desra.pipeline.settings import Settings
from desra.pipeline.text import inert
from desra.tasks.models import gpu_slot
from desra_core.finetune.options import FinetuneOptions

__all__ = ["finetune_generator"]


def _curve_markdown(log: list[dict], rows: int = 20) -> str:
    every = max(len(log) // rows, 1)
    lines = ["| step | L1 | perceptual | GAN | texture | D |", "|---:|---:|---:|---:|---:|---:|"]
    for r in log[every - 1::every]:
        lines.append(f"| {r['step']} | {r['l1']:.4f} | {r['perceptual']:.4f} | {r['gan']:.4f} | "
                     f"{r.get('texture', 0.0):.4f} | {r['d_loss']:.4f} |")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _validation_markdown(card: dict) -> str:
    lines = ["| step | weights | validation artifact fraction | detail ratio (mean) | worst image: detail ratio |",
             "|---:|---|---:|---:|---|"]
    for c in card["checkpoints"]:
        image = c.get("validation_worst_detail_image")
        worst = "—" if image is None else f"{image}: {_ratio(c.get('validation_worst_detail_ratio'))}"
        lines.append(f"| {c['step']} | {c['weights']} | {c['validation_artifact_fraction']:.4f} | "
                     f"{_ratio(c['validation_detail_ratio'])} | {worst} |")
    return "\n".join(lines)


@task(name="finetune", cache_policy=NO_CACHE, persist_result=False)
def finetune_generator(input_dir: str, output_dir: str, settings: Settings, options: FinetuneOptions,
                       stems: list[str] | None = None) -> dict:
    """Fine-tune ``settings.gan_model`` on pseudo-GT pairs of ``input_dir`` with ``options``, validated on
    images never trained on: :func:`desra.pipeline.finetuning.run_finetuning`, the function ``desra finetune``
    runs too (same folder ``OUT/finetune/<gan>-<key>/``, so a run started again resumes from its checkpoint).

    The pairs and validation images come from the pipeline with ``settings`` exactly: after a ``desra`` run
    with the same settings on ``output_dir`` they are read from its store. Publishes a summary artifact that
    says which checkpoint was chosen and why, or what evidence was missing. Returns ``generator`` (None when
    nothing qualified), ``folder``, ``log``, ``card``, ``report``, ``pairs``, ``chosen_step`` and ``reason``."""
    logger = get_run_logger()
    with gpu_slot(settings.device):  # admitted settings: the device is resolved
        run = run_finetuning(settings, input_dir, output_dir, options, stems=stems, say=logger.info,
                             warn=logger.warning)
    result, card, data = run.delivery.result, run.delivery.card, run.data
    before = card["train"]["artifact_fraction"]["original"]
    val = card["validation"]
    outcome = (f"**Chosen: step {result.chosen.step} ({result.chosen.weights} weights).** Generator: "
               f"`{run.generator}`" if result.chosen is not None
               else "**No checkpoint qualified: no generator was written.**")
    after = val["artifact_fraction"]["fine_tuned"]
    if result.chosen is None:
        logger.warning("fine-tuning shipped nothing: %s", result.reason)
    evidence = card.get("evidence") or {}
    objective = (card["settings"].get("objective") or {}).get("why")
    create_markdown_artifact(
        f"# Fine-tuning `{settings.gan_model}`\n\n{outcome}\n\n{result.reason}.\n\n"
        + (f"Objective: {inert(objective)}.\n\n" if objective else "") +
        f"{len(data.pairs)} training image(s) (mean artifact fraction {before:.4f}); validation on "
        f"{', '.join(sorted(data.validation_files))} ({data.how['mode']}; "
        f"{evidence.get('images_with_artifacts', '?')} with artifacts, "
        f"{evidence.get('images_above_noise', '?')} above the measured noise): artifact fraction "
        f"{val['artifact_fraction']['original']:.4f} → "
        f"{'—' if after is None else format(after, '.4f')}"
        f".\n\nFolder: `{run.folder}`; model card: `{run.delivery.card_path}`; report: `{run.delivery.report}`"
        "\n\n## Validated checkpoints\n\n" + _validation_markdown(card) + "\n\n## Losses\n\n"
        + _curve_markdown(result.log),
        key="desra-finetune-losses", description="fine-tuning: the chosen checkpoint, validation and loss curves")
    return {"generator": None if run.generator is None else str(run.generator), "folder": str(run.folder),
            "log": str(run.log), "card": str(run.delivery.card_path), "report": str(run.delivery.report),
            "pairs": len(data.pairs), "chosen_step": run.chosen_step, "reason": run.reason}
