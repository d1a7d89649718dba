"""DeSRA's "delete" step: fine-tune a GAN-SR generator on (LR, pseudo-GT) pairs (Real-ESRGAN recipe).

Per iteration: a batch of scale-aligned crops (biased towards artifact pixels) → generator loss
``l1·L1 + perceptual·VGG19 + gan·vanilla-GAN + texture·texture_loss`` (the adversarial term only after a
discriminator warm-up) → Adam step → discriminator step on real pseudo-GT crops against detached generator output →
EMA update of the generator. Every ``validate_every`` steps (and at the last) a :class:`Validator` scores
the trained weights (and the EMA's, when on) on images never trained on; the log gets those columns and
the best qualifying checkpoint (:func:`~desra_core.finetune.validation.choose_checkpoint`) is kept.
Checkpoints (generator, EMA, discriminator, both optimisers, step, the
sampler's and torch's RNG states) are written atomically every ``checkpoint_every`` steps; a run started
again in the same folder resumes from the last one and follows the same trajectory.

The generator is trained in place through spandrel's ``descriptor.model``, so any architecture spandrel
loads can be fine-tuned, and the result is saved as ``.safetensors`` with the original key names so that
spandrel loads it like the original.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .data import CropConfig, PairSampler, TrainingPair
from .ema import EMA
from .losses import TEXTURE_MIN_SIDE, LossWeights, PerceptualLoss, discriminator_loss, gan_loss_vanilla, texture_loss
from .networks import UNetDiscriminatorSN, load_discriminator
from .options import DEFAULTS
from .validation import Candidate, Evidence, ValidationScore, Validator, choose_checkpoint, worst_detail

__all__ = ["CHECKPOINT_NAME", "VALIDATION_COLUMNS", "FinetuneConfig", "FinetuneResult", "finetune", "save_generator"]

CHECKPOINT_NAME = "checkpoint.pt"
VALIDATION_COLUMNS = ("val_artifact_fraction", "val_detail_ratio", "val_worst_detail_ratio",
                      "ema_val_artifact_fraction", "ema_val_detail_ratio", "ema_val_worst_detail_ratio")
"""Log columns of the validation figures (NaN on steps without validation; ``ema_*`` NaN without EMA):
the mean artifact fraction, the mean detail ratio and the detail ratio of the image that keeps the least."""


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Settings of a fine-tuning run. The defaults are desra's only ones,
    :data:`~desra_core.finetune.options.DEFAULTS` (batch 4, HR crop 128, EMA off; the loss weights those of its
    automatic objective on the CPU, :meth:`~desra_core.finetune.options.FinetuneOptions.objective`: perceptual 1
    where VGG19 weights are available, else L1 + texture); Real-ESRGAN's recipe is batch 12, crop 256, EMA 0.999
    and ``LossWeights()`` (perceptual 1, GAN 0.1).

    ``ema`` 0 turns the EMA off (the saved generator is then the trained one); ``discriminator_warmup``
    steps train the discriminator while the generator learns without the adversarial term (used only
    with a fresh discriminator); ``weights.perceptual`` 0 skips VGG entirely; ``weights.texture`` > 0 needs a
    ``crop`` of at least :data:`~desra_core.finetune.losses.TEXTURE_MIN_SIDE`. ``validate_every``: steps
    between validations (with a validator); ``min_detail_ratio``: the least detail, relative to the
    original model's, that a checkpoint must keep on every validation image to be chosen;
    ``min_artifact_images``: the validation images with artifacts beyond the measured noise that the
    shipping rule needs (:func:`~desra_core.finetune.validation.choose_checkpoint`).
    """

    iterations: int = DEFAULTS.iterations
    batch: int = DEFAULTS.batch
    crop: int = DEFAULTS.crop
    artifact_fraction: float = DEFAULTS.artifact_share
    lr: float = DEFAULTS.lr
    betas: tuple[float, float] = (0.9, 0.99)
    ema: float = DEFAULTS.ema
    weights: LossWeights = field(default_factory=lambda: DEFAULTS.loss_weights("cpu"))
    discriminator_warmup: int = 100
    checkpoint_every: int = DEFAULTS.checkpoint_every
    validate_every: int = DEFAULTS.validate_every
    min_detail_ratio: float = DEFAULTS.min_detail_ratio
    min_artifact_images: int = DEFAULTS.min_artifact_images
    seed: int = DEFAULTS.seed
    vgg_weights_path: str | None = None
    precision: str = "auto"  # on CUDA: "auto" (bf16, else fp16), "bf16", "fp16" or "fp32"; the CPU runs fp32

    def __post_init__(self) -> None:
        for name in ("iterations", "batch", "crop", "checkpoint_every", "validate_every", "min_artifact_images"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"expected {name} to be a whole number ≥ 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"expected lr > 0, got {self.lr}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"expected precision auto, bf16, fp16 or fp32, got {self.precision!r}")
        if not 0.0 < self.ema < 1.0 and self.ema != 0.0:
            raise ConfigError(f"expected ema 0 (off) or in (0, 1), got {self.ema}")
        if not 0.0 <= self.artifact_fraction <= 1.0:
            raise ConfigError(f"expected artifact_fraction in [0, 1], got {self.artifact_fraction}")
        if not 0.0 <= self.min_detail_ratio:
            raise ConfigError(f"expected min_detail_ratio ≥ 0, got {self.min_detail_ratio}")
        if self.discriminator_warmup < 0:
            raise ConfigError(f"expected discriminator_warmup ≥ 0, got {self.discriminator_warmup}")
        if self.weights.texture > 0 and self.crop < TEXTURE_MIN_SIDE:
            raise ConfigError(f"expected crop ≥ {TEXTURE_MIN_SIDE} with the texture term on (or texture 0), "
                              f"got crop {self.crop}")


@dataclass(frozen=True)
class FinetuneResult:
    """The outcome of a run.

    ``generator``: the last weights (EMA weights when the EMA is on); ``log``: one record per step. With a
    validator: ``original`` is the original model's validation score, ``evidence`` what the validation
    can tell (its noise), ``candidates`` every validated checkpoint, ``chosen`` the one to ship (None when
    none qualifies), ``chosen_generator`` a module with its weights, ``reason`` why it (or nothing) was chosen.
    """

    generator: torch.nn.Module
    log: list[dict[str, float]]
    original: ValidationScore | None = None
    evidence: Evidence | None = None
    candidates: tuple[Candidate, ...] = ()
    chosen: Candidate | None = None
    chosen_generator: torch.nn.Module | None = None
    reason: str = ""


def _score_to_dict(score: ValidationScore) -> dict[str, object]:
    return {"artifact_fraction": score.artifact_fraction, "detail": score.detail, "detail_ratio": score.detail_ratio,
            "per_image": {k: list(v) for k, v in score.per_image.items()}}


def _score_from_dict(d: dict[str, Any]) -> ValidationScore:
    return ValidationScore(d["artifact_fraction"], d["detail"], d["detail_ratio"],
                           {k: tuple(v) for k, v in d["per_image"].items()})


def _save_atomic(obj: dict[str, object], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finetune(generator: torch.nn.Module, pairs: Sequence[TrainingPair], config: FinetuneConfig, *,
             work_dir: str | Path, device: str | torch.device = "cpu", discriminator_path: str | Path | None = None,
             progress: Callable[[dict[str, float]], None] | None = None,
             validator: Validator | None = None) -> FinetuneResult:
    """Fine-tune ``generator`` (an SR ``torch.nn.Module``, e.g. ``SRModel.descriptor.model``) in place.

    Args:
        generator: the GAN-SR network; its scale must match the pairs'.
        pairs: (LR, pseudo-GT) training pairs, e.g. from :func:`desra_core.finetune.data.make_pair`.
        config: the recipe's settings.
        work_dir: where ``checkpoint.pt`` is written and resumed from.
        device: torch device; on CUDA the forward passes run under bf16 autocast (fp16 with gradient
            scaling where bf16 is unavailable) with channels-last tensors.
        discriminator_path: a pretrained U-Net discriminator (e.g. ``RealESRGAN_x4plus_netD.pth``);
            ``None`` starts a fresh one, with the warm-up.
        progress: called with each step's log record.
        validator: scores weights on validation images every ``config.validate_every`` steps and at the
            last; the best qualifying checkpoint is kept (and saved in the checkpoint, for resuming).

    Returns:
        :class:`FinetuneResult`; ``log`` holds ``step``, ``l1``, ``perceptual``, ``gan``, ``texture``, ``d_loss``,
        ``lr``, ``seconds`` and :data:`VALIDATION_COLUMNS` per step (resumed steps included, read from
        the checkpoint).
    """
    device = torch.device(device)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    sampler = PairSampler(pairs, CropConfig(crop=config.crop, artifact_fraction=config.artifact_fraction),
                          seed=config.seed)
    w = config.weights
    use_gan = w.gan > 0
    generator.to(device).train()
    disc: UNetDiscriminatorSN | None = None
    if use_gan:
        disc = load_discriminator(discriminator_path) if discriminator_path else UNetDiscriminatorSN()
    warmup = 0 if discriminator_path else config.discriminator_warmup
    perceptual = PerceptualLoss(weights_path=config.vgg_weights_path).to(device) if w.perceptual > 0 else None
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    opt_d: torch.optim.Adam | None = None  # set exactly when disc is
    if disc is not None:
        disc.to(device).train()
        opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=config.betas)
    ema = EMA(generator, decay=config.ema) if config.ema > 0 else None

    cuda = device.type == "cuda"
    amp_dtype = torch.float32
    if cuda and config.precision != "fp32":
        auto = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        amp_dtype = {"auto": auto, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]
    amp = amp_dtype != torch.float32
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    if cuda:
        torch.backends.cudnn.benchmark = True
        generator.to(memory_format=torch.channels_last)

    step, log = 0, list[dict[str, float]]()
    candidates: list[Candidate] = []
    best: Candidate | None = None
    best_state: dict[str, torch.Tensor] | None = None
    ckpt_path = work / CHECKPOINT_NAME
    if ckpt_path.exists():  # resume
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        generator.load_state_dict(ckpt["generator"])
        opt_g.load_state_dict(ckpt["opt_g"])
        if disc is not None and opt_d is not None and ckpt.get("discriminator") is not None:
            disc.load_state_dict(ckpt["discriminator"])
            opt_d.load_state_dict(ckpt["opt_d"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        sampler.set_state(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, log = ckpt["step"], ckpt["log"]
        candidates = [Candidate(c["step"], c["weights"], _score_from_dict(c["score"]))
                      for c in ckpt.get("candidates", [])]
        if ckpt.get("best") is not None:
            key = (ckpt["best"]["step"], ckpt["best"]["weights"])
            best = next(c for c in candidates if (c.step, c.weights) == key)
            best_state = ckpt["best"]["state"]

    while step < config.iterations:
        start = time.perf_counter()
        lr_batch, hr_batch = (t.to(device) for t in sampler.sample(config.batch))
        if cuda:
            lr_batch = lr_batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            sr = generator(lr_batch).float()
            l1 = torch.nn.functional.l1_loss(sr, hr_batch)
            l_perc = perceptual(sr, hr_batch) if perceptual is not None else sr.new_zeros(())
            l_gan = gan_loss_vanilla(disc(sr), True) if disc is not None and step >= warmup else sr.new_zeros(())
            l_tex = texture_loss(sr, hr_batch) if w.texture > 0 else sr.new_zeros(())
            loss_g = w.l1 * l1 + w.perceptual * l_perc + w.gan * l_gan + w.texture * l_tex
        opt_g.zero_grad(set_to_none=True)
        if disc is not None:
            disc.requires_grad_(False)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        d_loss = float("nan")
        if disc is not None and opt_d is not None:
            disc.requires_grad_(True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss_d = discriminator_loss(disc(hr_batch), disc(sr.detach()))
            opt_d.zero_grad(set_to_none=True)
            scaler.scale(loss_d).backward()
            scaler.step(opt_d)
            d_loss = loss_d.item()
        scaler.update()
        if ema is not None:
            ema.update(generator)
        step += 1
        record = {"step": step, "l1": l1.item(), "perceptual": l_perc.item(), "gan": l_gan.item(),
                  "texture": l_tex.item(), "d_loss": d_loss, "lr": config.lr, "seconds": time.perf_counter() - start,
                  **dict.fromkeys(VALIDATION_COLUMNS, float("nan"))}
        if validator is not None and (step % config.validate_every == 0 or step == config.iterations):
            variants = [("trained", generator, "")] + ([("ema", ema.shadow, "ema_")] if ema is not None else [])
            for weights, module, prefix in variants:
                score = validator(module)
                record[f"{prefix}val_artifact_fraction"] = score.artifact_fraction
                record[f"{prefix}val_detail_ratio"] = score.detail_ratio
                record[f"{prefix}val_worst_detail_ratio"] = worst_detail(score, validator.original)[1]
                candidate = Candidate(step, weights, score)
                candidates.append(candidate)
                chosen, _ = choose_checkpoint(candidates, validator.evidence(),
                                              min_detail_ratio=config.min_detail_ratio,
                                              min_artifact_images=config.min_artifact_images)
                if chosen is candidate:
                    best, best_state = candidate, {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            generator.train()
        log.append(record)
        if progress is not None:
            progress(record)
        if step % config.checkpoint_every == 0 or step == config.iterations:
            _save_atomic({"generator": generator.state_dict(), "opt_g": opt_g.state_dict(),
                          "discriminator": None if disc is None else disc.state_dict(),
                          "opt_d": None if opt_d is None else opt_d.state_dict(),
                          "ema": None if ema is None else ema.state_dict(), "sampler": sampler.state(),
                          "torch_rng": torch.get_rng_state(), "step": step, "log": log,
                          "candidates": [{"step": c.step, "weights": c.weights, "score": _score_to_dict(c.score)}
                                         for c in candidates],
                          "best": None if best is None else {"step": best.step, "weights": best.weights,
                                                             "state": best_state}}, ckpt_path)
    result = (ema.shadow if ema is not None else generator).eval()
    if validator is None:
        return FinetuneResult(generator=result, log=log)
    chosen, reason = choose_checkpoint(candidates, validator.evidence(), min_detail_ratio=config.min_detail_ratio,
                                       min_artifact_images=config.min_artifact_images)
    chosen_generator = None
    if chosen is not None:
        if best is None or best_state is None or (best.step, best.weights) != (chosen.step, chosen.weights):
            kept = "none" if best is None else f"step {best.step} ({best.weights} weights)"
            raise ConfigError(f"expected the chosen checkpoint, step {chosen.step} ({chosen.weights} weights), to be "
                              f"the one whose weights were kept, got {kept}: was the run resumed with other "
                              f"validation settings or images? Remove {ckpt_path} to train afresh")
        chosen_generator = copy.deepcopy(result)
        chosen_generator.load_state_dict(best_state)
    return FinetuneResult(generator=result, log=log, original=validator.original, evidence=validator.evidence(),
                          candidates=tuple(candidates), chosen=chosen, chosen_generator=chosen_generator,
                          reason=reason)


def save_generator(module: torch.nn.Module, path: str | Path) -> Path:
    """Save a generator's weights as ``.safetensors`` with its own key names (spandrel loads it), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # like any file the user writes, not private
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
