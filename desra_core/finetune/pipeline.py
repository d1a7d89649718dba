"""How an image scores under a GAN model: the artifact fraction detection finds and the detail kept.

:func:`detail_kept` measures how much detail the GAN result keeps outside the artifacts: the mean
Gaussian-window standard deviation of the GAN result divided by the MSE result's, over the pixels outside
the mask (≈1 for an MSE-like result, above 1 for GAN detail). The images themselves come from the
pipeline's store (``desra.pipeline.pairs``); validation scores fine-tuned weights the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["ImageScore", "detail_kept"]


def _local_std(image: np.ndarray, sigma: float) -> np.ndarray:
    x = image.astype(np.float32)
    mu = cv2.GaussianBlur(x, (0, 0), sigma)
    var = cv2.GaussianBlur(x * x, (0, 0), sigma) - mu * mu
    std: np.ndarray = np.sqrt(np.maximum(var, 0.0)).mean(axis=2)
    return std


def detail_kept(gan: np.ndarray, mse: np.ndarray, mask: np.ndarray, *, sigma: float = 1.5) -> float:
    """Mean local std of ``gan`` over ``mse`` outside ``mask`` (``(H, W, 3)`` images of one dtype, bool mask).

    A ratio, so it does not depend on the images' scale (``uint8``, ``uint16`` or ``float32``).
    ``nan`` when every pixel is masked or the MSE image is flat there.
    """
    keep = ~np.asarray(mask, bool)
    if not keep.any():
        return float("nan")
    den = float(_local_std(mse, sigma)[keep].mean())
    return float(_local_std(gan, sigma)[keep].mean()) / den if den > 0 else float("nan")


@dataclass(frozen=True, slots=True)
class ImageScore:
    """One image under one GAN model."""

    image: str
    model: str
    artifact_fraction: float
    detail_kept: float
