"""Cost of orchestration: the ``desra`` flow against the same core calls in a plain loop, same process.

    python benchmarks/orchestration_overhead.py [--images 50] [--size 96]

Both do the same work on the same drop of small images with tiny real-architecture SR models
(RRDBNet as MSE, SRVGGNetCompact as GAN; no segmenter): read, super-resolve twice, detect, build the
pseudo-GT, write the outputs and a report. Prints the loop's time, the flow's first run on an empty
output root, and a fully cached re-run. Targets: overhead ≤ 25 % of the loop, cached re-run ≤ 10 % of
the first run. Uses Prefect's embedded API with a temporary PREFECT_HOME.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="desra-bench-prefect-"))
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tasks  # noqa: E402,F401  (Prefect environment defaults)


def make_drop(folder: Path, images: int, size: int) -> None:
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC))


def make_models(folder: Path) -> tuple[str, str]:
    import torch

    from tests.core.models.test_sr import tiny_compact, tiny_rrdbnet

    mse, gan = folder / "mse.pth", folder / "gan.pth"
    torch.save({"params_ema": tiny_rrdbnet()}, mse)
    torch.save({"params": tiny_compact()}, gan)
    return str(mse), str(gan)


def plain_loop(drop: Path, out: Path, mse_path: str, gan_path: str, min_area: int) -> None:
    import pandas as pd

    from desra_core import DetectionConfig, build_pseudo_gt, detect_artifacts
    from desra_core.image import list_images, read_image, to_bit_depth, write_image
    from desra_core.models.sr import load_sr_model, upscale

    mse_model, gan_model = load_sr_model(mse_path), load_sr_model(gan_path)
    rows = []
    for stem, path in list_images(drop).items():
        lr = read_image(path)
        mse = to_bit_depth(upscale(mse_model, lr.pixels), 8)
        gan = to_bit_depth(upscale(gan_model, lr.pixels), 8)
        det = detect_artifacts(mse, gan, None, DetectionConfig(min_area=min_area))
        for folder, image in (("sr/mse", mse), ("sr/gan", gan), ("masks", det.mask),
                              ("pseudo_gt", build_pseudo_gt(gan, mse, det.mask))):
            write_image(out / folder / f"{stem}.png", image)
        rows.append({"stem": stem, "artifact_fraction": det.artifact_fraction, "regions": len(det.regions)})
    pd.DataFrame(rows).to_parquet(out / "report.parquet")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--min-area", type=int, default=100)
    args = parser.parse_args()

    from flows.full import run_in_process

    work = Path(tempfile.mkdtemp(prefix="desra-bench-"))
    drop = work / "drop"
    make_drop(drop, args.images, args.size)
    mse, gan = make_models(work)

    plain_loop(drop, work / "warm", mse, gan, args.min_area)  # warm-up: JIT kernels, imports
    start = time.perf_counter()
    plain_loop(drop, work / "loop", mse, gan, args.min_area)
    loop = time.perf_counter() - start

    params = dict(input_dir=str(drop), mse_model=mse, gan_model=gan, segmenter=None, min_area=args.min_area)
    run_in_process(**params, output_dir=str(work / "flow_warm"), batch_size=args.images)  # API start-up
    start = time.perf_counter()
    state = run_in_process(**params, output_dir=str(work / "flow"), batch_size=args.images)
    first = time.perf_counter() - start
    start = time.perf_counter()
    cached_state = run_in_process(**params, output_dir=str(work / "flow"), batch_size=args.images)
    cached = time.perf_counter() - start

    print(f"{args.images} images of {args.size}×{args.size} (x4 by tiny RRDBNet + Compact), no segmenter")
    print(f"plain loop:           {loop:7.2f} s")
    print(f"desra flow, first:    {first:7.2f} s   [{state.name}: {state.message}]")
    print(f"desra flow, cached:   {cached:7.2f} s   [{cached_state.name}: {cached_state.message}]")
    print(f"orchestration overhead: {(first / loop - 1) * 100:+.1f}% of the loop (target <= 25%)")
    print(f"cached re-run: {cached / first * 100:.1f}% of the first run (target <= 10%)")
    return 0 if state.is_completed() and cached_state.is_completed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
