"""IoU and region precision/recall with the published 50 % overlap rule and 5-pixel border."""

from __future__ import annotations

import math

import numpy as np
import pytest

from desra_core import ShapeMismatchError, artifact_metrics


def _mask(h=40, w=40, *boxes):
    m = np.zeros((h, w), bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_hand_computed_set():
    # Image 1: gt region A (10×10); prediction covers 60 % of it plus a false region.
    gt1 = _mask(40, 40, (10, 20, 10, 20))
    pred1 = _mask(40, 40, (10, 16, 10, 20), (30, 34, 30, 34))
    # Image 2: gt region B (10×10), prediction covers 40 % of it.
    gt2 = _mask(40, 40, (20, 30, 20, 30))
    pred2 = _mask(40, 40, (20, 24, 20, 30))
    m = artifact_metrics([pred1, pred2], [gt1, gt2])
    iou1 = 60 / (100 + 16)
    iou2 = 40 / 100
    assert m.iou == pytest.approx((iou1 + iou2) / 2)
    # Predicted regions: pred1 box 1 (inside gt) hit, pred1 box 2 miss, pred2 box hit → 2 / 3.
    assert (m.predicted_regions, m.precision) == (3, pytest.approx(2 / 3))
    # True regions: A covered 60 % (hit), B covered 40 % (miss) → 1 / 2.
    assert (m.true_regions, m.recall) == (2, 0.5)


def test_border_is_ignored():
    gt = _mask(40, 40, (0, 3, 0, 40))  # only in the 5-pixel frame
    pred = np.zeros((40, 40), bool)
    m = artifact_metrics([pred], [gt])
    assert m.iou == 1.0 and m.true_regions == 0
    assert math.isnan(m.recall) and math.isnan(m.precision)
    assert m.as_dict() == {"iou": 1.0, "precision": None, "recall": None}


def test_exact_half_overlap_counts():
    gt = _mask(40, 40, (10, 20, 10, 20))
    pred = _mask(40, 40, (10, 15, 10, 20))
    m = artifact_metrics([pred], [gt])
    assert m.recall == 1.0 and m.precision == 1.0


def test_size_mismatch():
    with pytest.raises(ShapeMismatchError):
        artifact_metrics([np.zeros((4, 4), bool)], [np.zeros((4, 5), bool)])
    with pytest.raises(ValueError):
        artifact_metrics([np.zeros((4, 4), bool)], [])
