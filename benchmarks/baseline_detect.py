"""A straightforward implementation of DeSRA detection, used only as the benchmarks' baseline.

float64 throughout, one channel at a time, a full 2-D Gaussian window applied with ``cv2.filter2D``,
every intermediate kept as its own array: the equations as written, with no attention to speed or
memory. It follows the same semantics as :func:`desra_core.detect_artifacts` (the benchmark checks
that both give identical masks).
"""

from __future__ import annotations

import cv2
import numpy as np

from desra_core.semantic import default_class_table

__all__ = ["straightforward_detect"]


def _fill_holes_8(mask: np.ndarray) -> np.ndarray:
    # Background components (8-connected) that do not touch the array's edge are holes.
    background = (~mask).astype(np.uint8)
    _, comp = cv2.connectedComponents(background, connectivity=8)
    edge = np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]]))
    outside = np.isin(comp, edge) & (background > 0)
    return ~outside


def straightforward_detect(mse: np.ndarray, gan: np.ndarray, labels: np.ndarray | None,
                           threshold: float = 0.7, min_area: int = 4000,
                           window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Return the artifact mask (bool, full size) for uint8 RGB inputs."""
    r = window // 2
    g = cv2.getGaussianKernel(window, sigma)
    kernel2d = np.outer(g, g)
    c = (0.03 * 255) ** 2
    a = mse.astype(np.float64)
    b = gan.astype(np.float64)
    maps = []
    for ch in range(a.shape[2]):
        x = a[..., ch]
        y = b[..., ch]
        mu_x = cv2.filter2D(x, -1, kernel2d)[r:-r, r:-r]
        mu_y = cv2.filter2D(y, -1, kernel2d)[r:-r, r:-r]
        var_x = cv2.filter2D(x * x, -1, kernel2d)[r:-r, r:-r] - mu_x ** 2
        var_y = cv2.filter2D(y * y, -1, kernel2d)[r:-r, r:-r] - mu_y ** 2
        sd_x = np.sqrt(np.maximum(var_x, 0))
        sd_y = np.sqrt(np.maximum(var_y, 0))
        maps.append((2 * sd_x * sd_y + c) / (var_x + var_y + c))
    similarity = np.mean(np.stack(maps), axis=0)
    if labels is None:
        weights = np.ones_like(similarity)
    else:
        table = default_class_table()
        weight_of = np.ones(256)
        weight_of[: len(table.k)] = table.weights
        weights = weight_of[labels[r:-r, r:-r]]
    adjusted = np.clip(similarity * weights, 0, 1)
    candidates = (adjusted < threshold).astype(np.float64)
    square = np.ones((5, 5), np.uint8)
    opened = cv2.dilate(cv2.erode(candidates, square, iterations=1), square, iterations=3)
    filled = _fill_holes_8(opened > 0)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(filled.astype(np.uint8), connectivity=8)
    kept = np.zeros(filled.shape, dtype=bool)
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] > min_area:
            kept |= comp == i
    mask = np.zeros(mse.shape[:2], dtype=bool)
    mask[r:-r, r:-r] = kept
    return mask
