"""DeSRA's "delete" step: fine-tune a GAN-SR generator on (LR, pseudo-GT) pairs (Real-ESRGAN recipe).

Per iteration: a batch of scale-aligned crops (biased towards artifact pixels) → generator loss
``l1·L1 + perceptual·VGG19 + gan·vanilla-GAN`` (the adversarial term only after a discriminator
warm-up) → Adam step → discriminator step on real pseudo-GT crops against detached generator output →
EMA update of the generator. Checkpoints (generator, EMA, discriminator, both optimisers, step, the
sampler's and torch's RNG states) are written atomically every ``checkpoint_every`` steps; a run started
again in the same folder resumes from the last one and follows the same trajectory.

The generator is trained in place through spandrel's ``descriptor.model``, so any architecture spandrel
loads can be fine-tuned, and the result is saved as ``.safetensors`` with the original key names so that
spandrel loads it like the original.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError
from .data import CropConfig, PairSampler, TrainingPair
from .ema import EMA
from .losses import LossWeights, PerceptualLoss, discriminator_loss, gan_loss_vanilla
from .networks import UNetDiscriminatorSN, load_discriminator

__all__ = ["CHECKPOINT_NAME", "FinetuneConfig", "FinetuneResult", "finetune", "save_generator"]

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Settings of a fine-tuning run; the defaults are Real-ESRGAN's (batch 12 suits a GPU).

    ``ema`` 0 turns the EMA off (the saved generator is then the trained one); ``discriminator_warmup``
    steps train the discriminator while the generator learns without the adversarial term (used only
    with a fresh discriminator); ``weights.perceptual`` 0 skips VGG entirely.
    """

    iterations: int = 1000
    batch: int = 12
    crop: int = 256
    artifact_fraction: float = 0.5
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    ema: float = 0.999
    weights: LossWeights = field(default_factory=LossWeights)
    discriminator_warmup: int = 100
    checkpoint_every: int = 100
    seed: int = 0
    vgg_weights_path: str | None = None
    precision: str = "auto"  # on CUDA: "auto" (bf16, else fp16), "bf16", "fp16" or "fp32"; the CPU runs fp32

    def __post_init__(self) -> None:
        for name in ("iterations", "batch", "crop", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"expected {name} to be a whole number ≥ 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"expected lr > 0, got {self.lr}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"expected precision auto, bf16, fp16 or fp32, got {self.precision!r}")
        if self.discriminator_warmup < 0:
            raise ConfigError(f"expected discriminator_warmup ≥ 0, got {self.discriminator_warmup}")


@dataclass(frozen=True)
class FinetuneResult:
    """The trained generator module (EMA weights when the EMA is on) and one log record per step."""

    generator: torch.nn.Module
    log: list[dict]


def _save_atomic(obj: dict, path: Path) -> None:
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
             progress: Callable[[dict], None] | None = None) -> FinetuneResult:
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

    Returns:
        :class:`FinetuneResult`; ``log`` holds ``step``, ``l1``, ``perceptual``, ``gan``, ``d_loss``,
        ``lr`` and ``seconds`` per step (resumed steps included, read from the checkpoint).
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
    disc = None
    if use_gan:
        disc = load_discriminator(discriminator_path) if discriminator_path else UNetDiscriminatorSN()
    warmup = 0 if discriminator_path else config.discriminator_warmup
    perceptual = PerceptualLoss(weights_path=config.vgg_weights_path).to(device) if w.perceptual > 0 else None
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    opt_d = None
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

    step, log = 0, []
    ckpt_path = work / CHECKPOINT_NAME
    if ckpt_path.exists():  # resume
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        generator.load_state_dict(ckpt["generator"])
        opt_g.load_state_dict(ckpt["opt_g"])
        if disc is not None and ckpt.get("discriminator") is not None:
            disc.load_state_dict(ckpt["discriminator"])
            opt_d.load_state_dict(ckpt["opt_d"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        sampler.set_state(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, log = ckpt["step"], ckpt["log"]

    while step < config.iterations:
        start = time.perf_counter()
        lr_batch, hr_batch = (t.to(device) for t in sampler.sample(config.batch))
        if cuda:
            lr_batch = lr_batch.contiguous(memory_format=torch.channels_last)
        adversarial = disc is not None and step >= warmup
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            sr = generator(lr_batch).float()
            l1 = torch.nn.functional.l1_loss(sr, hr_batch)
            l_perc = perceptual(sr, hr_batch) if perceptual is not None else sr.new_zeros(())
            l_gan = gan_loss_vanilla(disc(sr), True) if adversarial else sr.new_zeros(())
            loss_g = w.l1 * l1 + w.perceptual * l_perc + w.gan * l_gan
        opt_g.zero_grad(set_to_none=True)
        if disc is not None:
            disc.requires_grad_(False)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        d_loss = float("nan")
        if disc is not None:
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
                  "d_loss": d_loss, "lr": config.lr, "seconds": time.perf_counter() - start}
        log.append(record)
        if progress is not None:
            progress(record)
        if step % config.checkpoint_every == 0 or step == config.iterations:
            _save_atomic({"generator": generator.state_dict(), "opt_g": opt_g.state_dict(),
                          "discriminator": None if disc is None else disc.state_dict(),
                          "opt_d": None if opt_d is None else opt_d.state_dict(),
                          "ema": None if ema is None else ema.state_dict(), "sampler": sampler.state(),
                          "torch_rng": torch.get_rng_state(), "step": step, "log": log}, ckpt_path)
    result = ema.shadow if ema is not None else generator
    return FinetuneResult(generator=result.eval(), log=log)


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
