"""Pseudo ground truth for DeSRA's fine-tuning: MSE-SR pixels inside the artifact mask, GAN-SR elsewhere."""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ConfigError, ShapeError, ShapeMismatchError

__all__ = ["build_pseudo_gt"]


def build_pseudo_gt(gan: np.ndarray, mse: np.ndarray, mask: np.ndarray, feather: float = 0.0) -> np.ndarray:
    """Blend the MSE-SR result into the GAN-SR result where the mask flags artifacts.

    Args:
        gan: GAN-SR result ``(H, W, 3)``, ``uint8``, ``uint16`` or ``float32`` in [0, 1].
        mse: MSE-SR result, same shape and dtype.
        mask: ``bool (H, W)``, ``True`` = artifact (take the MSE pixel).
        feather: width in pixels of a smooth transition across the mask edge (Gaussian sigma of the
            blend weight). 0 gives a hard cut: exactly the MSE pixel inside, the GAN pixel outside.

    Returns:
        Array of the inputs' shape and dtype. With ``feather > 0`` the weight of the MSE image is the
        blurred mask, so pixels deep inside (weight 1) and far outside (weight 0) are still copied exactly.
    """
    gan, mse, mask = np.asarray(gan), np.asarray(mse), np.asarray(mask)
    if gan.shape != mse.shape or gan.dtype != mse.dtype:
        raise ShapeMismatchError(f"expected GAN and MSE images of one shape and dtype, got "
                                 f"{gan.shape} {gan.dtype} and {mse.shape} {mse.dtype}")
    if gan.ndim != 3:
        raise ShapeError(f"expected images of shape (H, W, C), got {gan.shape}")
    if mask.shape != gan.shape[:2]:
        raise ShapeMismatchError(f"expected a mask of size {gan.shape[:2]}, got {mask.shape}")
    if not feather >= 0:
        raise ConfigError(f"expected feather ≥ 0, got {feather}")
    mask = mask.astype(bool, copy=False)
    if feather == 0:
        out = gan.copy()
        out[mask] = mse[mask]
        return out
    weight = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=float(feather),
                              borderType=cv2.BORDER_REPLICATE)
    # Blur leaves values a hair off 0/1 far from the edge; snap them so the sources are kept exactly.
    weight[weight < 1e-4] = 0.0
    weight[weight > 1.0 - 1e-4] = 1.0
    w = weight[..., None]
    blended = mse.astype(np.float32) * w + gan.astype(np.float32) * (1.0 - w)
    if np.issubdtype(gan.dtype, np.integer):
        blended = np.rint(blended, out=blended)
    result: np.ndarray = blended.astype(gan.dtype)
    return result
