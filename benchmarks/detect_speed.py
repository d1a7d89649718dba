"""Speed and memory of ``detect_artifacts`` against a straightforward implementation, same process.

    python benchmarks/detect_speed.py [--size 2048] [--repeat 3]

Both run on the same 2048×2048 MSE/GAN/label triple (the shipped example drop, resized with cubic
interpolation so it keeps photo-like texture), after one warm-up call each (numba compiles or loads
its cache then). Prints best-of-N wall time, peak memory traced by ``tracemalloc`` (numpy and OpenCV
arrays), whether the masks are identical, and the ratios. Targets: ≥ 10× faster, ≤ 1/3 of the memory.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_detect import straightforward_detect

from desra_core import DetectionConfig, detect_artifacts
from desra_core.artifact_map import _BLOCK_ROWS

DROP = Path(__file__).resolve().parents[1] / "examples" / "drop"


def load_pair(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A size×size (mse, gan, labels) triple from the example drop."""
    stem = sorted(p.stem for p in (DROP / "gan").glob("*.png"))[0]
    read = lambda sub: cv2.imread(str(DROP / sub / f"{stem}.png"), cv2.IMREAD_UNCHANGED)  # noqa: E731
    mse, gan, labels = read("mse"), read("gan"), read("labels")
    up = lambda im, interp: cv2.resize(im, (size, size), interpolation=interp)  # noqa: E731
    return (cv2.cvtColor(up(mse, cv2.INTER_CUBIC), cv2.COLOR_BGR2RGB),
            cv2.cvtColor(up(gan, cv2.INTER_CUBIC), cv2.COLOR_BGR2RGB), up(labels, cv2.INTER_NEAREST))


def measure(fn, repeat: int) -> tuple[float, int, np.ndarray]:
    result = fn()  # warm-up (JIT compile or cache load, page faults)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return min(times), peak, result


def run(mse, gan, labels, threshold: float, min_area: int, repeat: int) -> bool:
    pixels = mse.shape[0] * mse.shape[1]
    config = DetectionConfig(threshold=threshold, min_area=min_area)
    t_base, m_base, mask_base = measure(
        lambda: straightforward_detect(mse, gan, labels, threshold, min_area), repeat)
    t_fast, m_fast, det = measure(lambda: detect_artifacts(mse, gan, labels, config), repeat)
    identical = np.array_equal(det.mask, mask_base)
    # float64 per thread: horizontal moments of both images (4 × rows + halo) and the channel sum
    scratch = 2 * (4 * (_BLOCK_ROWS + 10) + _BLOCK_ROWS) * (mse.shape[1] - 10) * 8

    print(f"\n{mse.shape[1]}×{mse.shape[0]} RGB uint8 with labels, threshold {threshold}, min_area {min_area}: "
          f"artifact fraction {det.artifact_fraction:.4f}, {len(det.regions)} region(s)")
    print(f"  straightforward float64: {t_base * 1e3:8.1f} ms   peak traced {m_base / pixels:6.1f} B/px")
    print(f"  detect_artifacts:        {t_fast * 1e3:8.1f} ms   peak traced {m_fast / pixels:6.1f} B/px "
          f"(+ {scratch / 2**20:.1f} MiB numba scratch = {scratch / pixels:.1f} B/px, not traced)")
    print(f"  masks identical: {identical}")
    print(f"  speed-up: {t_base / t_fast:.1f}x (target >= 10x)")
    print(f"  memory ratio: {m_fast / m_base:.3f} traced, {(m_fast + scratch) / m_base:.3f} with scratch "
          f"(target <= 0.333)")
    return identical


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    mse, gan, labels = load_pair(args.size)
    # The paper's defaults, then a sensitive setting that finds regions in this image.
    ok = [run(mse, gan, labels, t, a, args.repeat) for t, a in ((0.7, 4000), (0.8, 500))]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
