"""Evaluation of artifact masks against ground truth, as DeSRA's published evaluation defines it.

* IoU: per image ``|pred ∧ gt| / |pred ∨ gt|``, averaged over images.
* Region precision: over the whole set, the fraction of predicted 8-connected regions whose area
  overlaps the ground truth by at least ``overlap`` (50 %) of the region's own area.
* Region recall: over the whole set, the fraction of ground-truth regions covered by the prediction
  for at least ``overlap`` of their area.

Both ignore a ``border`` (5-pixel) frame of every mask, where the detector never fires.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import ShapeError, ShapeMismatchError

__all__ = ["ArtifactMetrics", "artifact_metrics"]


@dataclass(frozen=True, slots=True)
class ArtifactMetrics:
    """Set-level scores; ``nan`` where undefined (no image, no predicted or no true region)."""

    iou: float
    precision: float
    recall: float
    images: int
    predicted_regions: int
    true_regions: int

    def as_dict(self) -> dict[str, float | None]:
        """``{"iou", "precision", "recall"}`` with ``None`` for undefined scores (JSON-friendly)."""
        return {k: (None if math.isnan(v) else v)
                for k, v in (("iou", self.iou), ("precision", self.precision), ("recall", self.recall))}


def _regions_hit(regions_of: np.ndarray, other: np.ndarray, overlap: float) -> tuple[int, int]:
    """How many 8-connected regions of ``regions_of`` are covered by ``other`` for ≥ ``overlap`` of their area."""
    n, labels = cv2.connectedComponents(regions_of.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return 0, 0
    area = np.bincount(labels.ravel(), minlength=n)
    covered = np.bincount(labels[other], minlength=n)
    hits = int(np.count_nonzero(covered[1:] >= overlap * area[1:]))
    return hits, n - 1


def artifact_metrics(pred_masks: Iterable[np.ndarray], gt_masks: Iterable[np.ndarray], *,
                     overlap: float = 0.5, border: int = 5) -> ArtifactMetrics:
    """Score predicted artifact masks against ground-truth masks.

    Args:
        pred_masks: ``bool (H, W)`` predicted masks (non-zero = artifact), one per image.
        gt_masks: ground-truth masks in the same order, same sizes.
        overlap: fraction of a region's area that must be covered for it to count as a hit.
        border: width of the frame ignored at every edge.

    Returns:
        :class:`ArtifactMetrics`. An image where both masks are empty has IoU 1 (perfect agreement);
        the published script would divide by zero there.
    """
    ious: list[float] = []
    tp_pred = n_pred = tp_gt = n_gt = 0
    for i, (pred, gt) in enumerate(zip(pred_masks, gt_masks, strict=True)):
        pred, gt = np.asarray(pred) != 0, np.asarray(gt) != 0
        if pred.ndim != 2:
            raise ShapeError(f"expected (H, W) masks, got {pred.shape} for image {i}")
        if pred.shape != gt.shape:
            raise ShapeMismatchError(f"expected masks of one size, got {pred.shape} and {gt.shape} for image {i}")
        if border:
            pred, gt = pred[border:-border, border:-border], gt[border:-border, border:-border]
        union = np.count_nonzero(pred | gt)
        ious.append(1.0 if union == 0 else np.count_nonzero(pred & gt) / union)
        hits, count = _regions_hit(np.ascontiguousarray(pred), gt, overlap)
        tp_pred, n_pred = tp_pred + hits, n_pred + count
        hits, count = _regions_hit(np.ascontiguousarray(gt), pred, overlap)
        tp_gt, n_gt = tp_gt + hits, n_gt + count
    return ArtifactMetrics(
        iou=float(np.mean(ious)) if ious else math.nan,
        precision=tp_pred / n_pred if n_pred else math.nan,
        recall=tp_gt / n_gt if n_gt else math.nan,
        images=len(ious), predicted_regions=n_pred, true_regions=n_gt,
    )
