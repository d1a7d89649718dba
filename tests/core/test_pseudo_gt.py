"""Pseudo ground truth: exact sources inside/outside the mask, feathered blending, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from desra_core import ConfigError, ShapeMismatchError, build_pseudo_gt


def test_hard_cut_hand_computed():
    gan = np.full((2, 3, 3), 200, np.uint8)
    mse = np.full((2, 3, 3), 10, np.uint8)
    mask = np.array([[True, False, False], [False, False, True]])
    out = build_pseudo_gt(gan, mse, mask)
    assert out[0, 0, 0] == 10 and out[1, 2, 2] == 10
    assert (out[~mask] == 200).all()
    assert gan[0, 0, 0] == 200  # inputs untouched


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
    feather=st.sampled_from([0.0, 1.5]),
)
def test_sources_kept_exactly_where_mask_is_0_or_1(data, shape, dtype, feather):
    elements = st.floats(0, 1, width=32) if dtype == np.float32 else None
    gan = data.draw(arrays(dtype, (*shape, 3), elements=elements))
    mse = data.draw(arrays(dtype, (*shape, 3), elements=elements))
    mask = data.draw(arrays(np.bool_, shape))
    out = build_pseudo_gt(gan, mse, mask, feather=feather)
    assert out.dtype == gan.dtype and out.shape == gan.shape
    if feather == 0:
        assert np.array_equal(out[mask], mse[mask])
        assert np.array_equal(out[~mask], gan[~mask])
    else:
        # Far from any mask edge the blend weight is exactly 0 or 1.
        if not mask.any():
            assert np.array_equal(out, gan)
        if mask.all():
            assert np.array_equal(out, mse)


def test_feather_blends_across_the_edge():
    gan = np.zeros((1, 60, 3), np.float32)
    mse = np.ones((1, 60, 3), np.float32)
    mask = np.zeros((1, 60), bool)
    mask[:, 30:] = True
    out = build_pseudo_gt(gan, mse, mask, feather=3.0)[0, :, 0]
    assert out[0] == 0.0 and out[-1] == 1.0
    assert 0.3 < out[30] < 0.7 and 0.3 < out[29] < 0.7
    assert np.all(np.diff(out) >= 0)


def test_errors():
    a = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ShapeMismatchError):
        build_pseudo_gt(a, a[:3], np.zeros((4, 4), bool))
    with pytest.raises(ShapeMismatchError, match="mask"):
        build_pseudo_gt(a, a, np.zeros((4, 5), bool))
    with pytest.raises(ConfigError):
        build_pseudo_gt(a, a, np.zeros((4, 4), bool), feather=-1)
