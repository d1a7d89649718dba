"""Peak host memory of the SR step per output pixel: the old float path against the streaming one.

    python benchmarks/sr_memory.py [--size 1000] [--tile 128] [--overlap 16] [--bits 8] [--model PATH]

Both variants run the whole per-image SR step on the same input (a smooth random photo-like image):
``upscale``, conversion to the input's bit depth and the PNG write. The *baseline* is the implementation
that desra had before (kept here only): a ``float32`` accumulator and weight map of the whole output,
``to_bit_depth`` on the ``float32`` result, OpenCV's encoder. The *new* path is
``upscale(..., out_dtype=uint8|uint16)`` and ``desra_core.image.write_image``. Each variant runs in a fresh
subprocess that first warms up on a small image and then reports the growth of its peak RSS
(``ru_maxrss``) and the peak of ``tracemalloc`` over the step; the parent prints bytes per output pixel,
the ratio, and the largest difference between the two PNGs' pixels (expected 0).

The default model is a tiny SRVGGNetCompact x4 (the tests' random-initialised one), so that the model's
own activations (constant per tile) do not hide what grows with the image; ``--model`` takes any
spandrel-loadable file (e.g. ``../shared/models/…``; real models are slow on a CPU).

``--pipeline`` measures instead the whole per-image path of the ``desra`` flow (``desra run`` in its own
process, tiny MSE and GAN models, no semantic adjustment): peak RSS for one image of ``--size`` and of
half that side, and the difference per output pixel, the figure that ``DESRA_MAX_OUTPUT_MPIX``'s default
is derived from (see ``desra_core.models.sr.DEFAULT_MAX_OUTPUT_MPIX``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------------------------------
# Baseline: the whole-image float32 path as it was (kept only here, to measure against).

def _baseline_upscale(model, image: np.ndarray, *, tile: int, overlap: int, batch_size: int = 4) -> np.ndarray:
    import torch

    from desra_core.image import to_float32
    from desra_core.models.sr import _ramp, _windows

    x = to_float32(image)
    h, w = x.shape[:2]
    s, d = model.scale, model.descriptor
    windows = _windows(h, w, tile, overlap)
    out = np.zeros((h * s, w * s, 3), dtype=np.float32)
    weight = np.zeros((h * s, w * s), dtype=np.float32) if len(windows) > 1 else None
    source = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            group = windows[i:i + batch_size]
            batch = torch.stack([source[:, y:y + th, xx:xx + tw] for y, xx, th, tw in group])
            result = d(batch).float().cpu().numpy().transpose(0, 2, 3, 1)
            for (y, xx, th, tw), patch in zip(group, result, strict=True):
                oy, ox = y * s, xx * s
                if weight is None:
                    out[oy:oy + th * s, ox:ox + tw * s] = patch
                    continue
                wy = _ramp(th * s, overlap * s, y > 0, y + th < h)
                wx = _ramp(tw * s, overlap * s, xx > 0, xx + tw < w)
                wt = wy[:, None] * wx[None, :]
                out[oy:oy + th * s, ox:ox + tw * s] += patch * wt[..., None]
                weight[oy:oy + th * s, ox:ox + tw * s] += wt
    if weight is not None:
        out /= weight[..., None]
    return np.clip(out, 0.0, 1.0, out=out)


def _baseline_step(model, image: np.ndarray, bits: int, path: Path, tile: int, overlap: int) -> None:
    import cv2

    from desra_core.image import to_bit_depth

    result = to_bit_depth(_baseline_upscale(model, image, tile=tile, overlap=overlap), bits)
    _, encoded = cv2.imencode(".png", np.ascontiguousarray(result[..., ::-1]))
    path.write_bytes(encoded.tobytes())


def _new_step(model, image: np.ndarray, bits: int, path: Path, tile: int, overlap: int) -> None:
    from desra_core.image import write_image
    from desra_core.models.sr import upscale

    write_image(path, upscale(model, image, tile=tile, overlap=overlap,
                              out_dtype=np.uint8 if bits == 8 else np.uint16))


# --------------------------------------------------------------------------------------------------

def _image(size: int, bits: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 8 + 2, size // 8 + 2, 3)).astype(np.float32)
    smooth = np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)
    smooth += rng.normal(0, 0.02, smooth.shape).astype(np.float32)  # some texture
    top = 255 if bits == 8 else 65535
    return np.rint(np.clip(smooth, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16)


def _model(spec: str | None):
    from desra_core.models.sr import load_sr_model

    if spec:
        return load_sr_model(spec)
    import torch

    from tests.core.models.test_sr import tiny_compact

    path = Path(tempfile.mkdtemp()) / "compact_tiny_x4.pth"
    torch.save({"params": tiny_compact()}, path)
    return load_sr_model(path)


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(args: argparse.Namespace) -> None:
    model = _model(args.model)
    step = _baseline_step if args.variant == "baseline" else _new_step
    warm = Path(args.out).with_suffix(".warm.png")
    step(model, _image(2 * args.tile, args.bits, seed=1), args.bits, warm, args.tile, args.overlap)  # warm-up
    warm.unlink()
    image = _image(args.size, args.bits)
    before = _rss_now()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    step(model, image, args.bits, Path(args.out), args.tile, args.overlap)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rss_growth": peak - max(before, 0), "peak_before": peak_before, "traced": traced,
                      "out_pixels": args.size * args.size * model.scale ** 2}))


def _pipeline_peak(size: int, folder: Path) -> tuple[int, int]:
    """Peak RSS of ``desra run`` on a drop of one ``size``² image, and its output pixels (x4)."""
    import cv2
    import torch

    from tests.core.models.test_sr import tiny_compact, tiny_rrdbnet

    mse, gan = folder / "mse_tiny.pth", folder / "gan_tiny.pth"
    if not mse.exists():
        torch.save({"params_ema": tiny_rrdbnet()}, mse)
        torch.save({"params": tiny_compact()}, gan)
    drop = folder / f"drop{size}"
    drop.mkdir()
    cv2.imwrite(str(drop / "photo.png"), _image(size, 8)[..., ::-1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(folder / f"prefect{size}"), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen([sys.executable, "-m", "desra", "run", str(drop), "--out", str(folder / f"out{size}"),
                             "--mse-model", str(mse), "--gan-model", str(gan), "--no-semantic", "--min-area", "10"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"desra run failed on the {size}² image")
    return usage.ru_maxrss * 1024, (4 * size) ** 2


def _pipeline(size: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="sr_memory_pipeline_"))
    small, big = _pipeline_peak(size // 2, folder), _pipeline_peak(size, folder)
    marginal = (big[0] - small[0]) / (big[1] - small[1])
    print("desra run, one image, tiny x4 models, no semantic adjustment (own process each):")
    for (peak, px), side in ((small, size // 2), (big, size)):
        print(f"  {side}² → {4 * side}² ({px / 1e6:.1f} Mpx): peak RSS {peak / 2**20:.0f} MiB")
    print(f"  per output pixel beyond the fixed cost: {marginal:.1f} B/px")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000, help="LR side in pixels")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8)
    parser.add_argument("--model", default=None, help="SR weights file (default: a tiny SRVGGNetCompact x4)")
    parser.add_argument("--pipeline", action="store_true", help="measure the whole per-image path of `desra run`")
    parser.add_argument("--variant", choices=("baseline", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _child(args)
        return 0
    if args.pipeline:
        _pipeline(args.size)
        return 0

    from desra_core.image import read_image

    results, folder = {}, Path(tempfile.mkdtemp(prefix="sr_memory_"))
    half = args.size // 2
    for variant in ("baseline", "new"):
        for size in (args.size, half):
            common = ["--size", str(size), "--tile", str(args.tile), "--overlap", str(args.overlap),
                      "--bits", str(args.bits)] + (["--model", args.model] if args.model else [])
            out = folder / f"{variant}-{size}.png"
            done = subprocess.run([sys.executable, __file__, *common, "--variant", variant, "--out", str(out)],
                                  capture_output=True, text=True, check=True)
            results[variant, size] = json.loads(done.stdout.strip().splitlines()[-1])
    px = results["new", args.size]["out_pixels"]
    a = read_image(folder / f"baseline-{args.size}.png").pixels
    b = read_image(folder / f"new-{args.size}.png").pixels
    diff = int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())
    print(f"SR step (upscale + {args.bits}-bit conversion + PNG), {args.size}² → {int(px ** 0.5)}² "
          f"({px / 1e6:.1f} Mpx), tile {args.tile}, overlap {args.overlap}, model "
          f"{args.model or 'tiny SRVGGNetCompact x4'}, one subprocess per variant and size")
    per_px = {}
    for name in ("baseline", "new"):
        big, small = results[name, args.size], results[name, half]
        marginal = (big["rss_growth"] - small["rss_growth"]) / (big["out_pixels"] - small["out_pixels"])
        per_px[name] = big["rss_growth"] / px
        print(f"  {name:8s}  peak RSS growth {big['rss_growth'] / 2**20:7.1f} MiB = {per_px[name]:5.2f} B/px"
              f" (marginal, {half}² → {args.size}²: {marginal:5.2f} B/px)"
              f"   tracemalloc peak {big['traced'] / 2**20:7.1f} MiB = {big['traced'] / px:5.2f} B/px")
    print(f"  new / baseline (RSS growth): {per_px['new'] / per_px['baseline']:.3f}   target new ≤ 8 B/px: "
          f"{'met' if per_px['new'] <= 8 else 'not met (see the marginal figure: the rest is per tile)'}")
    print(f"  largest pixel difference between the two PNGs: {diff} (of {2 ** args.bits - 1})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
