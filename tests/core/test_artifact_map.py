"""Eq. 7 texture-similarity map: hand-computed cases, an independent oracle, errors and laws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from desra_core import ShapeError, ShapeMismatchError, texture_similarity
from desra_core.artifact_map import SIMILARITY_CONSTANT, gaussian_window

C = (0.03 * 255) ** 2


def _gauss11() -> list[float]:
    w = [math.exp(-(u * u) / (2 * 1.5 * 1.5)) for u in range(-5, 6)]
    s = sum(w)
    return [v / s for v in w]


def _stripes(h: int, w: int, low: float, high: float) -> np.ndarray:
    """Vertical stripes: odd columns ``high``, even columns ``low``, all three channels."""
    img = np.full((h, w, 3), low, dtype=np.float64)
    img[:, 1::2] = high
    return img.astype(np.uint8)


def _window_variance_of_stripes(amplitude: float) -> float:
    # Every window holds stripes; the weight on 'high' columns is p (odd offsets) or 1 − p,
    # and the weighted variance of a two-valued signal is amplitude² · p · (1 − p) either way.
    g = _gauss11()
    p = sum(g[i] for i in range(11) if (i - 5) % 2)
    return amplitude * amplitude * p * (1 - p)


def test_constant_matches_paper():
    assert SIMILARITY_CONSTANT == pytest.approx(58.5225)


def test_gaussian_window_matches_formula():
    assert np.allclose(gaussian_window(11, 1.5), _gauss11(), atol=1e-15)


def test_identical_images_are_fully_similar():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    sim = texture_similarity(img, img)
    assert sim.shape == (22, 30)
    assert np.allclose(sim, 1.0, atol=1e-6)


def test_flat_against_stripes_hand_computed():
    mse = np.full((24, 30, 3), 128, np.uint8)
    gan = _stripes(24, 30, 0, 255)
    var = _window_variance_of_stripes(255)
    expected = C / (var + C)  # σ_mse = 0
    sim = texture_similarity(mse, gan)
    assert expected < 0.01  # a strong artifact
    assert np.allclose(sim, expected, rtol=1e-5)


def test_scaled_texture_hand_computed():
    mse = _stripes(21, 21, 100, 150)  # amplitude 50
    gan = _stripes(21, 21, 50, 200)  # same texture, amplitude 150
    v_mse, v_gan = _window_variance_of_stripes(50), _window_variance_of_stripes(150)
    expected = (2 * math.sqrt(v_mse * v_gan) + C) / (v_mse + v_gan + C)
    sim = texture_similarity(mse, gan)
    assert sim.shape == (11, 11)
    assert np.allclose(sim, expected, rtol=1e-5)


def test_float_input_equals_uint8_input():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (30, 31, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (30, 31, 3), dtype=np.uint8)
    s8 = texture_similarity(a, b)
    s32 = texture_similarity(a.astype(np.float32) / 255, b.astype(np.float32) / 255)
    assert np.abs(s8 - s32).max() < 1e-5


def _direct_oracle(a: np.ndarray, b: np.ndarray, window: int, sigma: float) -> np.ndarray:
    """Window-by-window float64 sums straight from the definition (no filters, no libraries)."""
    r = window // 2
    xs = np.arange(window) - r
    g1 = np.exp(-(xs ** 2) / (2 * sigma * sigma))
    g2 = np.outer(g1, g1) / g1.sum() ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    h, w, ch = a.shape
    out = np.zeros((h - 2 * r, w - 2 * r))
    for i in range(h - 2 * r):
        for j in range(w - 2 * r):
            for c in range(ch):
                pa, pb = a[i:i + window, j:j + window, c], b[i:i + window, j:j + window, c]
                ma, mb = (g2 * pa).sum(), (g2 * pb).sum()
                va, vb = (g2 * (pa - ma) ** 2).sum(), (g2 * (pb - mb) ** 2).sum()
                out[i, j] += (2 * math.sqrt(va * vb) + C) / (va + vb + C) / ch
    return out


@pytest.mark.parametrize(("window", "sigma"), [(11, 1.5), (7, 1.0), (5, 2.0)])
def test_matches_direct_definition(window, sigma):
    rng = np.random.default_rng(window)
    base = rng.integers(0, 256, (19, 23, 3)).astype(np.uint8)
    a = (base // 4 + 100).astype(np.uint8)  # low texture
    b = base  # high texture
    got = texture_similarity(a, b, window=window, sigma=sigma)
    assert np.abs(got - _direct_oracle(a, b, window, sigma)).max() < 1e-6


def test_flat_areas_are_precise():
    # Near-flat windows are where float32 moments lose ~5e-3; the map must stay exact there.
    mse = np.full((40, 40, 3), 231, np.uint8)
    mse[::7, ::5] = 232
    rng = np.random.default_rng(3)
    gan = (231 + rng.integers(-9, 10, (40, 40, 3))).astype(np.uint8)
    got = texture_similarity(mse, gan)
    assert np.abs(got - _direct_oracle(mse, gan, 11, 1.5)).max() < 1e-6


def test_gray_images_accepted():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (15, 16), dtype=np.uint8)
    rgb = np.repeat(a[..., None], 3, axis=2)
    assert np.allclose(texture_similarity(a, a[::-1].copy()), texture_similarity(rgb, rgb[::-1].copy()))


def test_errors():
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ShapeMismatchError, match="same shape"):
        texture_similarity(a, np.zeros((20, 21, 3), np.uint8))
    with pytest.raises(ShapeMismatchError, match="dtype"):
        texture_similarity(a, a.astype(np.float32))
    with pytest.raises(ShapeError, match="uint8 or float32"):
        texture_similarity(a.astype(np.float64), a.astype(np.float64))
    with pytest.raises(ShapeError, match="at least 11×11"):
        texture_similarity(a[:10], a[:10])
    with pytest.raises(ShapeError, match="odd"):
        texture_similarity(a, a, window=4)
    with pytest.raises(ShapeError, match="out of shape"):
        texture_similarity(a, a, out=np.empty((9, 9), np.float32))


@settings(max_examples=30, deadline=None)
@given(
    a=arrays(np.uint8, (13, 14, 3)),
    b=arrays(np.uint8, (13, 14, 3)),
)
def test_symmetric_and_bounded(a, b):
    ab, ba = texture_similarity(a, b), texture_similarity(b, a)
    assert np.array_equal(ab, ba)
    assert ab.min() >= 0.0
    assert ab.max() <= 1.0 + 1e-6


@settings(max_examples=20, deadline=None)
@given(a=arrays(np.uint8, (12, 12, 3)), offset=st.integers(-20, 20))
def test_invariant_to_brightness_shift(a, offset):
    # Eq. 7 uses only variances, so adding a constant to an image changes nothing.
    shifted = np.clip(a.astype(int) + offset, 0, 255)
    assume(np.array_equal(shifted - offset, a))  # clipping would change the texture
    b = np.flipud(a).copy()
    assert np.allclose(texture_similarity(shifted.astype(np.uint8), b), texture_similarity(a, b), atol=1e-6)
