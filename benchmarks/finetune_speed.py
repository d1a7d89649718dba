"""Fine-tuning speed: iterations per second of the DeSRA recipe, in one process.

    python benchmarks/finetune_speed.py [--iterations 20]

On a CUDA machine: RRDBNet x4plus (Real-ESRGAN's generator), batch 12, HR crop 256, full recipe
(L1 + perceptual + GAN against the U-Net discriminator), fp32 against bf16 autocast. On the CPU:
SRVGGNetCompact (realesr-general-x4v3's architecture), batch 8, crop 192, L1 only. Randomly initialised
networks (same compute as the real ones); VGG19 uses random weights from a temporary file so that no
download is needed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

from desra_core.finetune.data import make_pair
from desra_core.finetune.losses import LossWeights
from desra_core.finetune.trainer import FinetuneConfig, finetune


def _pairs(scale: int, hr: int, n: int = 4):
    rng = np.random.default_rng(0)
    lr = [rng.random((hr // scale, hr // scale, 3), dtype=np.float32) for _ in range(n)]
    out = []
    for i, x in enumerate(lr):
        up = np.kron(x, np.ones((scale, scale, 1), np.float32))
        mask = np.zeros(up.shape[:2], bool)
        mask[: hr // 2, : hr // 2] = True
        out.append(make_pair(x, np.clip(up + rng.normal(0, 0.1, up.shape), 0, 1).astype(np.float32), up, mask,
                             name=f"p{i}"))
    return out


def _rate(generator, pairs, config, device) -> float:
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as work:
        finetune(generator, pairs, FinetuneConfig(**{**config.__dict__, "iterations": 2}), work_dir=warm,
                 device=device)
        start = time.perf_counter()
        finetune(generator, pairs, config, work_dir=work, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        return config.iterations / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    if torch.cuda.is_available():
        vgg = Path(tempfile.mkdtemp()) / "vgg19.pth"
        torch.save({k: v for k, v in torchvision.models.vgg19().state_dict().items() if k.startswith("features.")}, vgg)
        pairs = _pairs(4, 512)
        print(f"GPU: {torch.cuda.get_device_name()}; RRDBNet x4plus, batch 12, crop 256, full recipe")
        for name, precision in (("fp32", "fp32"), ("bf16 autocast", "bf16")):
            cfg = FinetuneConfig(iterations=args.iterations, batch=12, crop=256, vgg_weights_path=str(vgg),
                                 weights=LossWeights(), ema=0.999,  # the recipe (desra's defaults are L1 only)
                                 checkpoint_every=10**6, discriminator_warmup=0, precision=precision)
            print(f"  {name}: {_rate(ESRGAN(scale=4), pairs, cfg, 'cuda'):.2f} it/s")
    pairs = _pairs(4, 384)
    cfg = FinetuneConfig(iterations=args.iterations, batch=8, crop=192, ema=0.0, checkpoint_every=10**6,
                         weights=LossWeights(perceptual=0.0, gan=0.0))
    rate = _rate(Compact(num_feat=64, num_conv=32, upscale=4), pairs, cfg, "cpu")
    print(f"CPU ({torch.get_num_threads()} threads): SRVGGNetCompact x4 (64 feat, 32 convs), batch 8, crop 192, "
          f"L1 only: {rate:.2f} it/s ({1000 / rate / 60:.1f} min per 1000 iterations)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
