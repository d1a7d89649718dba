"""Post-processing: erosion/dilation with OpenCV border rules, hole filling, the area filter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from desra_core.morphology import fill_holes, keep_large_regions, open_and_merge


def test_isolated_pixel_is_removed():
    m = np.zeros((30, 30), bool)
    m[15, 15] = True
    assert not open_and_merge(m).any()


def test_square_erodes_to_a_point_and_dilates_to_13x13():
    m = np.zeros((40, 40), bool)
    m[10:15, 20:25] = True
    out = open_and_merge(m)
    expected = np.zeros_like(m)
    expected[12 - 6:12 + 7, 22 - 6:22 + 7] = True
    assert np.array_equal(out, expected)


def test_border_never_erodes():
    # OpenCV's default border: outside pixels count as foreground for erosion, so a 3×3 block in a
    # corner keeps its corner pixel, which then grows into a 7×7 block (clipped at the edge).
    m = np.zeros((30, 30), bool)
    m[:3, :3] = True
    out = open_and_merge(m)
    expected = np.zeros_like(m)
    expected[:7, :7] = True
    assert np.array_equal(out, expected)


def test_fill_holes_hand_computed():
    m = np.zeros((9, 9), bool)
    m[2:7, 2:7] = True
    m[4, 4] = False  # an enclosed hole
    m[0:3, 7] = True
    out = fill_holes(m)
    assert out[4, 4]
    assert np.array_equal(out & ~m, np.eye(9, dtype=bool) & (np.arange(9) == 4)[:, None])


def test_fill_holes_uses_8_connected_background():
    # Background that leaks out through a diagonal gap is not a hole (3×3 structure = 8-connectivity).
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    m[2:5, 2:5] = False  # a 3×3 hole …
    m[1, 1] = False  # … whose corner touches the outside diagonally via (1,1)→(0,0)
    m[2, 2] = False
    out = fill_holes(m)
    assert not out[3, 3]
    assert np.array_equal(out, ndimage.binary_fill_holes(m, structure=np.ones((3, 3))))


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))))
def test_fill_holes_matches_scipy(m):
    assert np.array_equal(fill_holes(m), ndimage.binary_fill_holes(m, structure=np.ones((3, 3))))


def test_area_limit_is_strict():
    m = np.zeros((50, 50), bool)
    m[5:18, 5:18] = True  # 169 pixels
    m[30:32, 30:40] = True  # 20 pixels
    assert keep_large_regions(m, 168).count == 1
    assert keep_large_regions(m, 169).count == 0
    r = keep_large_regions(m, 19)
    assert r.count == 2
    assert list(r.areas) == [169, 20]
    assert [tuple(b) for b in r.bboxes] == [(5, 5, 13, 13), (30, 30, 10, 2)]
    assert set(np.unique(r.labels)) == {0, 1, 2}


def test_regions_are_8_connected():
    m = np.zeros((10, 10), bool)
    m[2, 2] = m[3, 3] = True  # diagonal neighbours: one region
    assert keep_large_regions(m, 1).count == 1


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 30), st.integers(1, 30))), st.integers(0, 20))
def test_area_filter_output_is_subset_and_exact(m, min_area):
    r = keep_large_regions(m, min_area)
    kept = r.mask
    assert not (kept & ~m).any()
    labels, n = ndimage.label(m, structure=np.ones((3, 3)))
    sizes = ndimage.sum_labels(np.ones_like(m), labels, index=np.arange(1, n + 1))
    expected = np.isin(labels, np.flatnonzero(sizes > min_area) + 1)
    assert np.array_equal(kept, expected)
    assert r.count == int((sizes > min_area).sum())


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="shape"):
        fill_holes(np.zeros((2, 2, 2), bool))
