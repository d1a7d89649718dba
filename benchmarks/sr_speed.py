"""Throughput of SR inference, untiled against tiled, in one process.

    python benchmarks/sr_speed.py [--model realesrgan_x4plus|PATH] [--size 384] [--tile 256] [--overlap 16]

Reports megapixels of *output* per second for the whole image in one pass and for the tiled path of
:func:`desra_core.models.sr.upscale`, and the tiling cost (target ≤ 15 % on the CPU). On a machine with
CUDA it also compares fp32 against the reduced precision that ``precision="auto"`` picks (bf16 or
fp16, with channels-last). Without the real weights file it builds a randomly initialised
RRDBNet x4plus (same architecture, same compute) so the numbers are still meaningful.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from desra_core.models.sr import SRModel, load_sr_model, upscale

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "models" / "realesrgan_x4plus.gan.safetensors"


def _model(spec: str, device: str) -> SRModel:
    if spec != "realesrgan_x4plus":
        return load_sr_model(spec, device=device)
    if SHARED_WEIGHTS.exists():
        return load_sr_model(SHARED_WEIGHTS, device=device)
    import tempfile

    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    path = Path(tempfile.mkdtemp()) / "rrdbnet_x4plus_random.safetensors"
    save_file({k: v.contiguous() for k, v in ESRGAN(num_filters=64, num_blocks=23, scale=4).state_dict().items()},
              path)
    return load_sr_model(path, device=device)


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesrgan_x4plus")
    parser.add_argument("--size", type=int, default=384, help="LR side in pixels")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _model(args.model, device)
    rng = np.random.default_rng(0)
    image = rng.random((args.size, args.size, 3), dtype=np.float32)
    out_mpx = (args.size * model.scale) ** 2 / 1e6
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{model.architecture} x{model.scale} ({model.source}) on {name}; {args.size}² LR -> "
          f"{args.size * model.scale}² output")

    precisions = ["fp32", "auto"] if device == "cuda" else ["fp32"]
    for precision in precisions:
        whole = _time(lambda p=precision: upscale(model, image, tile=None, precision=p), args.repeat)
        tiled = _time(lambda p=precision: upscale(model, image, tile=args.tile, overlap=args.overlap,
                                                  batch_size=args.batch, precision=p), args.repeat)
        print(f"[{precision}] untiled: {out_mpx / whole:7.3f} Mpx/s   tiled (tile {args.tile}, overlap "
              f"{args.overlap}, batch {args.batch}): {out_mpx / tiled:7.3f} Mpx/s   "
              f"tiling cost: {(tiled / whole - 1) * 100:+.1f}% (target <= 15%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
