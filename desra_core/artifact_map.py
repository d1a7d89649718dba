"""The texture-similarity map between the MSE-SR and GAN-SR results (DeSRA, Eq. 7).

For every channel, with Gaussian-weighted local variances ``σ²_mse``, ``σ²_gan`` over a
``window × window`` window on values in [0, 255]::

    c = (2 · σ_mse · σ_gan + C) / (σ²_mse + σ²_gan + C),   C = (0.03 · 255)²

averaged over channels. 1 means the two results have the same local texture; values near 0 mean the
GAN result invented (or lost) texture there. The map covers the *valid* region only: the
``window // 2`` pixels at each edge, which the window cannot cover, are not part of it.

Implementation: one fused, multi-threaded numba kernel in float64. Float64 matters: the variance is
``E[x²] − E[x]²``, and in flat areas (where the square root of Eq. 7 magnifies errors) float32 loses
up to 5e-3 of the map. The kernel works on blocks of rows, reads the interleaved image directly and
keeps only a few rows of intermediates per thread, so memory stays at the output's 4 bytes per
pixel whatever the image size.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

from .errors import ShapeError, ShapeMismatchError

__all__ = ["SIMILARITY_CONSTANT", "gaussian_window", "texture_similarity"]

SIMILARITY_CONSTANT = (0.03 * 255.0) ** 2
"""The stabilising constant ``C`` of Eq. 7 (SSIM's ``C2``) for values in [0, 255]."""

_BLOCK_ROWS = 64  # output rows per work item: ~4 MB of float64 intermediates per thread at width 2048


def gaussian_window(window: int, sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian kernel (float64, ``(window,)``); the 2-D window is its outer product.

    Same values as OpenCV's ``getGaussianKernel(window, sigma)``.
    """
    if window < 1 or window % 2 == 0:
        raise ShapeError(f"expected an odd window size ≥ 1, got {window}")
    if not sigma > 0:
        raise ShapeError(f"expected a positive sigma, got {sigma}")
    x = np.arange(window, dtype=np.float64) - (window - 1) / 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    kernel: NDArray[np.float64] = g / g.sum()
    return kernel


@numba.njit(inline="always", fastmath=True, boundscheck=False)
def _block(a: np.ndarray, b: np.ndarray, g: NDArray[np.float64], out: NDArray[np.float32], scale: float,
           y0: int, n: int, window: int) -> None:  # pragma: no cover - compiled
    """Eq. 7 for output rows ``y0 .. y0+n`` (all channels), written to ``out[y0:y0+n]``."""
    r = window // 2
    width = a.shape[1]
    nch = a.shape[2]
    wv = width - 2 * r
    rows = n + 2 * r
    const = (0.03 * 255.0) ** 2
    hm = np.empty((2, rows, wv))  # horizontal pass: Gaussian mean of x ...
    hq = np.empty((2, rows, wv))  # ... and of x², per image
    xr = np.empty(width)
    x2 = np.empty(width)
    acc = np.zeros((n, wv))
    for ch in range(nch):
        for im in range(2):
            src = a if im == 0 else b
            for i in range(rows):
                for j in range(width):
                    v = src[y0 + i, j, ch] * scale
                    xr[j] = v
                    x2[j] = v * v
                m = hm[im, i]
                q = hq[im, i]
                for j in range(wv):
                    sm = 0.0
                    sq = 0.0
                    for k in range(window):
                        sm += g[k] * xr[j + k]
                        sq += g[k] * x2[j + k]
                    m[j] = sm
                    q[j] = sq
        for i in range(n):
            ac = acc[i]
            for j in range(wv):
                ma = 0.0
                qa = 0.0
                mb = 0.0
                qb = 0.0
                for k in range(window):
                    gk = g[k]
                    ma += gk * hm[0, i + k, j]
                    qa += gk * hq[0, i + k, j]
                    mb += gk * hm[1, i + k, j]
                    qb += gk * hq[1, i + k, j]
                va = max(qa - ma * ma, 0.0)  # rounding can leave tiny negatives in flat areas
                vb = max(qb - mb * mb, 0.0)
                ac[j] += (2.0 * np.sqrt(va * vb) + const) / (va + vb + const)
    for i in range(n):
        for j in range(wv):
            out[y0 + i, j] = acc[i, j] / nch


@numba.njit(parallel=True, fastmath=True, cache=True)
def _similarity_w11(a: np.ndarray, b: np.ndarray, g: NDArray[np.float64], out: NDArray[np.float32], scale: float,
                    block: int) -> None:  # pragma: no cover - compiled
    # The paper's window: a literal size lets LLVM unroll the taps and vectorise across columns.
    hv = out.shape[0]
    for bi in numba.prange((hv + block - 1) // block):
        y0 = bi * block
        _block(a, b, g, out, scale, y0, min(block, hv - y0), 11)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _similarity_any(a: np.ndarray, b: np.ndarray, g: NDArray[np.float64], out: NDArray[np.float32], scale: float,
                    block: int, window: int) -> None:  # pragma: no cover - compiled
    hv = out.shape[0]
    for bi in numba.prange((hv + block - 1) // block):
        y0 = bi * block
        _block(a, b, g, out, scale, y0, min(block, hv - y0), window)


def _check_pair(mse: np.ndarray, gan: np.ndarray, window: int) -> float:
    """Validate the image pair; return the factor that brings its values to [0, 255]."""
    if mse.shape != gan.shape:
        raise ShapeMismatchError(f"expected MSE and GAN images of the same shape, got {mse.shape} and {gan.shape}")
    if mse.ndim not in (2, 3):
        raise ShapeError(f"expected images of shape (H, W, 3) or (H, W), got {mse.shape}")
    if mse.dtype != gan.dtype:
        raise ShapeMismatchError(f"expected MSE and GAN images of the same dtype, got {mse.dtype} and {gan.dtype}")
    if mse.dtype not in (np.uint8, np.float32):
        raise ShapeError(f"expected uint8 or float32 images, got {mse.dtype}")
    h, w = mse.shape[:2]
    if h < window or w < window:
        raise ShapeError(f"expected images at least {window}×{window} pixels (the window), got {h}×{w}")
    return 1.0 if mse.dtype == np.uint8 else 255.0


def texture_similarity(mse: np.ndarray, gan: np.ndarray, *, window: int = 11, sigma: float = 1.5,
                       out: np.ndarray | None = None) -> np.ndarray:
    """Eq. 7 map over the *valid* region, averaged over channels.

    Args:
        mse: MSE-SR result, ``uint8`` in [0, 255] or ``float32`` in [0, 1], shape ``(H, W, 3)`` RGB
            (or ``(H, W)``; any channel count works, and channel order does not matter).
        gan: GAN-SR result, same shape and dtype.
        window: odd Gaussian window size.
        sigma: Gaussian standard deviation.
        out: optional float32 array (or view) of shape ``(H − 2r, W − 2r)``, ``r = window // 2``.

    Returns:
        float32 ``(H − 2r, W − 2r)`` map in [0, 1]: element ``[i, j]`` is the similarity of the window
        centred on pixel ``(i + r, j + r)``. Symmetric in its two arguments.

    Raises:
        ShapeMismatchError: the two images differ in shape or dtype.
        ShapeError: unsupported dtype or rank, or an image smaller than the window.
    """
    mse, gan = np.asarray(mse), np.asarray(gan)
    scale = _check_pair(mse, gan, window)
    g = gaussian_window(window, sigma)
    if mse.ndim == 2:
        mse, gan = mse[:, :, None], gan[:, :, None]
    r = window // 2
    h, w = mse.shape[:2]
    shape = (h - 2 * r, w - 2 * r)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ShapeError(f"expected out of shape {shape} and dtype float32, got {out.shape} {out.dtype}")
    if window == 11:
        _similarity_w11(mse, gan, g, out, scale, _BLOCK_ROWS)
    else:
        _similarity_any(mse, gan, g, out, scale, _BLOCK_ROWS, window)
    return out
