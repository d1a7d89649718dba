"""Semantic-aware adjustment of the artifact map (DeSRA, Eq. 9) and the paper's class table.

Textured classes (tree, grass, mountain…) legitimately differ more between the MSE and GAN results than
flat ones (sky, wall), so the Eq. 7 map is scaled up per class before thresholding:
``adjusted = clip(map · 20 / (20 − k), 0, 1)``, with ``k`` from the paper's Fig. 10(b).

Label maps are ``uint8``/integer ``(H, W)`` arrays of ADE20K class indices 0..149; 255 means unlabeled
and keeps weight 1.0.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import cv2
import numba
import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError, LabelMapError

__all__ = [
    "ADE20K_NUM_CLASSES",
    "UNLABELED",
    "ClassTable",
    "apply_semantic_weights",
    "default_class_table",
    "validate_labels",
]

ADE20K_NUM_CLASSES = 150
UNLABELED = 255
_INTERVALS = 20


@dataclass(frozen=True, slots=True)
class ClassTable:
    """Per-class interval counts ``k`` of DeSRA's semantic table, in label-index order.

    ``names[i]`` is the class with label index ``i`` and ``k[i]`` its interval count (0 ≤ k < 20).
    """

    names: tuple[str, ...]
    k: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.k):
            raise ConfigError(f"expected as many class names as k values, got {len(self.names)} and {len(self.k)}")
        if len(self.names) > UNLABELED:
            raise ConfigError(f"expected at most {UNLABELED} classes (255 means unlabeled), got {len(self.names)}")
        bad = [(n, k) for n, k in zip(self.names, self.k, strict=True) if not 0 <= k < _INTERVALS]
        if bad:
            raise ConfigError(f"expected every k in 0..{_INTERVALS - 1}, got {bad[:3]}")

    @classmethod
    def from_mapping(cls, order: Sequence[str], k_by_name: Mapping[str, int]) -> ClassTable:
        """Build a table from a class order (index → name) and a ``name → k`` mapping.

        Names are matched after stripping white space (checkpoints' ``id2label`` often carry trailing
        spaces); a class of ``order`` that the mapping lacks raises :class:`ConfigError`.
        """
        stripped = {name.strip(): k for name, k in k_by_name.items()}
        missing = [name for name in order if name.strip() not in stripped]
        if missing:
            raise ConfigError(f"expected a k value for every class, got none for {missing[:5]}")
        return cls(tuple(n.strip() for n in order), tuple(int(stripped[n.strip()]) for n in order))

    @property
    def weights(self) -> np.ndarray:
        """Eq. 9 weights ``20 / (20 − k)`` as float64, in label-index order."""
        return _INTERVALS / (_INTERVALS - np.asarray(self.k, dtype=np.float64))

    def weight_lut(self) -> np.ndarray:
        """A 256-entry float32 lookup table: label value → weight (1.0 for unknown values and 255)."""
        lut = np.ones(256, dtype=np.float32)
        lut[: len(self.k)] = self.weights
        return lut


@cache
def default_class_table() -> ClassTable:
    """The paper's table in ADE20K order (shipped as ``desra_core/data/ade20k_semantic_table.csv``)."""
    text = resources.files("desra_core").joinpath("data/ade20k_semantic_table.csv").read_text("utf-8")
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    if [int(r["index"]) for r in rows] != list(range(ADE20K_NUM_CLASSES)):
        raise ConfigError("the packaged ADE20K semantic table is damaged: expected indices 0..149 in order")
    return ClassTable(tuple(r["name"] for r in rows), tuple(int(r["k"]) for r in rows))


def validate_labels(labels: np.ndarray, shape: tuple[int, int], num_classes: int = ADE20K_NUM_CLASSES,
                    *, path: str | None = None) -> np.ndarray:
    """Check a label map against the image size and the label range, and return it as ``uint8``.

    Args:
        labels: integer ``(H, W)`` map of class indices ``0..num_classes-1``, or 255 for unlabeled.
        shape: the image's ``(H, W)``.
        num_classes: number of classes of the table in use.
        path: file the map came from, named in errors.

    Raises:
        LabelMapError: wrong rank, size, dtype, or values outside ``0..num_classes-1`` and 255.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise LabelMapError(f"expected a label map of shape (H, W), got shape {labels.shape}", path)
    if labels.shape != tuple(shape):
        raise LabelMapError(f"expected a label map of size {tuple(shape)} (the image's), got {labels.shape}", path)
    if labels.dtype.kind not in "iu":
        raise LabelMapError(f"expected an integer label map, got dtype {labels.dtype}", path)
    if labels.dtype != np.uint8:
        invalid = ((labels < 0) | (labels >= num_classes)) & (labels != UNLABELED)
        bad = np.unique(labels[invalid])
    else:  # one histogram pass, no temporaries: cheaper than comparisons on large maps
        counts = cv2.calcHist([labels], [0], None, [256], [0, 256]).ravel()
        bad = np.flatnonzero(counts[num_classes:UNLABELED]) + num_classes
    if len(bad):
        shown = ", ".join(str(int(v)) for v in bad[:5])
        raise LabelMapError(
            f"expected label values in 0..{num_classes - 1} or {UNLABELED} (unlabeled), got {shown}", path)
    return labels.astype(np.uint8, copy=False)


def apply_semantic_weights(similarity: np.ndarray, labels: np.ndarray | None,
                           table: ClassTable | None = None, *, out: np.ndarray | None = None) -> np.ndarray:
    """Eq. 9: ``clip(similarity · 20 / (20 − k[label]), 0, 1)``.

    Args:
        similarity: float32 ``(H, W)`` Eq. 7 map.
        labels: ``uint8 (H, W)`` validated label map (see :func:`validate_labels`) or ``None``, which
            means no adjustment (the map is only clipped).
        table: class table; the paper's by default.
        out: optional float32 output array (may be ``similarity`` itself).

    Returns:
        float32 ``(H, W)`` adjusted map in [0, 1]; lower means more likely an artifact.
    """
    if out is None:
        out = np.empty(similarity.shape, dtype=np.float32)
    if labels is None:
        np.clip(similarity, 0.0, 1.0, out=out)
    else:
        lut = (table or default_class_table()).weight_lut()
        _weigh(similarity, labels, lut, out)
    return out


@numba.njit(parallel=True, cache=True)
def _weigh(similarity: NDArray[np.float32], labels: NDArray[np.uint8], lut: NDArray[np.float32],
           out: NDArray[np.float32]) -> None:  # pragma: no cover - compiled
    for i in numba.prange(similarity.shape[0]):
        for j in range(similarity.shape[1]):
            out[i, j] = min(max(similarity[i, j] * lut[labels[i, j]], np.float32(0.0)), np.float32(1.0))
