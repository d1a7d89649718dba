"""GPU-bound task: DeSRA's delete step (fine-tune the GAN-SR model on pseudo-GT) with its loss curves."""

import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from desra_core import DesraError, DetectionConfig
from desra_core.finetune.losses import LossWeights
from desra_core.finetune.pipeline import build_pairs, label_source
from desra_core.finetune.trainer import FinetuneConfig, finetune, save_generator
from desra_core.image import atomic_path, read_image
from desra_core.listing import list_images
from desra_core.models.sr import load_sr_model
from tasks.models import gpu_slot, resolve_device

__all__ = ["finetune_generator"]


def _curve_markdown(log: list[dict], rows: int = 20) -> str:
    every = max(len(log) // rows, 1)
    lines = ["| step | L1 | perceptual | GAN | D |", "|---:|---:|---:|---:|---:|"]
    for r in log[every - 1::every]:
        lines.append(f"| {r['step']} | {r['l1']:.4f} | {r['perceptual']:.4f} | {r['gan']:.4f} | {r['d_loss']:.4f} |")
    return "\n".join(lines)


@task(name="finetune", cache_policy=NO_CACHE, persist_result=False)
def finetune_generator(input_dir: str, output_dir: str, mse_model: str, gan_model: str, segmenter: str | None,
                       labels_dir: str | None, detection: dict, settings: dict, device: str = "auto",
                       stems: list[str] | None = None) -> dict:
    """Fine-tune ``gan_model`` on pseudo-GT pairs from ``input_dir``; writes ``OUT/finetune/<time>/``
    (``generator.safetensors``, ``train_log.parquet``, ``checkpoint.pt``) and a loss-curve artifact."""
    logger = get_run_logger()
    device = resolve_device(device)
    images = {}
    for stem, path in list_images(input_dir).items():
        if stems is None or stem in stems:
            try:
                images[stem] = read_image(path).pixels
            except DesraError as e:
                logger.warning("left out of fine-tuning: %s", e)
    if not images:
        raise DesraError(f"expected readable images to fine-tune on in {input_dir}, got none")
    work = Path(output_dir) / "finetune" / time.strftime("%Y%m%dT%H%M%S")
    config = FinetuneConfig(**{**settings, "weights": LossWeights(**settings.get("weights", {}))})
    with gpu_slot(device):
        gan = load_sr_model(gan_model, device=device)
        mse = load_sr_model(mse_model, expected_scale=gan.scale, device=device)
        pairs, scores = build_pairs(images, mse, gan, label_source(labels_dir, segmenter, device),
                                    DetectionConfig(**detection))
        result = finetune(gan.descriptor.model, pairs, config, work_dir=work, device=device)
    generator = save_generator(result.generator, work / "generator.safetensors")
    with atomic_path(work / "train_log.parquet") as tmp:
        pd.DataFrame(result.log).to_parquet(tmp, index=False)
    create_markdown_artifact(
        f"# Fine-tuning `{gan_model}`\n\n{len(pairs)} pair(s), mean artifact fraction before "
        f"{sum(s.artifact_fraction for s in scores) / len(scores):.4f}\n\nGenerator: `{generator}`\n\n"
        + _curve_markdown(result.log), key="desra-finetune-losses", description="fine-tuning loss curves")
    return {"generator": str(generator), "log": str(work / "train_log.parquet"), "pairs": len(pairs)}
