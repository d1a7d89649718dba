"""From real-world images to training pairs, and the before/after evaluation of a fine-tuned model.

:func:`build_pairs` super-resolves each low-resolution image with the MSE and the GAN model, segments
(or takes given label maps), detects artifacts and builds the pseudo-GT pair. :func:`evaluate_models`
measures, per image and GAN model, the artifact fraction that detection finds and how much detail
the GAN result keeps outside the artifacts: the mean Gaussian-window standard deviation of the GAN
result divided by the MSE result's, over the pixels outside the mask (≈1 for an MSE-like result,
above 1 for GAN detail).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..detection import DetectionConfig, detect_artifacts
from ..errors import DesraError
from ..image import read_label_map, to_bit_depth
from ..listing import list_images
from ..models.sr import SRModel, upscale
from .data import TrainingPair, make_pair

__all__ = ["ImageScore", "build_pairs", "detail_kept", "evaluate_models", "label_source", "score_image"]

LabelSource = Callable[[str, np.ndarray], np.ndarray | None]
"""``labels(stem, gan_sr_uint8) -> uint8 (H, W) label map or None`` (no semantic adjustment)."""


def label_source(labels_dir: str | Path | None, segmenter: str | None, device: str = "cpu") -> LabelSource:
    """Label maps from a folder (by stem), from a segmenter run on the GAN result, or none at all."""
    if labels_dir:
        maps = list_images(labels_dir)

        def from_folder(stem: str, gan_sr: np.ndarray) -> np.ndarray:
            if stem not in maps:
                raise DesraError(f"expected a label map with stem '{stem}' in {labels_dir}, found none")
            return read_label_map(maps[stem])
        return from_folder
    if segmenter:
        from ..models.segmentation import load_segmenter, segment

        seg = load_segmenter(segmenter, device=device)
        return lambda stem, gan_sr: segment(seg, gan_sr)
    return lambda stem, gan_sr: None


def _local_std(image: np.ndarray, sigma: float) -> np.ndarray:
    x = image.astype(np.float32)
    mu = cv2.GaussianBlur(x, (0, 0), sigma)
    var = cv2.GaussianBlur(x * x, (0, 0), sigma) - mu * mu
    return np.sqrt(np.maximum(var, 0.0)).mean(axis=2)


def detail_kept(gan: np.ndarray, mse: np.ndarray, mask: np.ndarray, *, sigma: float = 1.5) -> float:
    """Mean local std of ``gan`` over ``mse`` outside ``mask`` (``(H, W, 3)`` images, bool mask).

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


def score_image(name: str, model: str, gan_sr: np.ndarray, mse_sr: np.ndarray, labels: np.ndarray | None,
                config: DetectionConfig) -> tuple[ImageScore, np.ndarray]:
    """Detect on one (uint8) pair; return the score and the mask."""
    det = detect_artifacts(mse_sr, gan_sr, labels, config)
    return ImageScore(name, model, det.artifact_fraction, detail_kept(gan_sr, mse_sr, det.mask)), det.mask


def build_pairs(images: Mapping[str, np.ndarray], mse: SRModel, gan: SRModel, labels: LabelSource,
                config: DetectionConfig, *, tile: int | None = 512, feather: float = 0.0
                ) -> tuple[list[TrainingPair], list[ImageScore]]:
    """Training pairs for fine-tuning ``gan`` from low-resolution ``images`` (name → RGB array).

    Results are rounded to 8 bits before detection, as written SR images are; the pair's target is the
    pseudo-GT in [0, 1] at that precision.
    """
    pairs, scores = [], []
    for name, lr in images.items():
        mse_sr = to_bit_depth(upscale(mse, lr, tile=tile), 8)
        gan_sr = to_bit_depth(upscale(gan, lr, tile=tile), 8)
        score, mask = score_image(name, gan.source, gan_sr, mse_sr, labels(name, gan_sr), config)
        scores.append(score)
        pairs.append(make_pair(lr, gan_sr, mse_sr, mask, name=name, feather=feather))
    return pairs, scores


def evaluate_models(images: Mapping[str, np.ndarray], mse: SRModel, gans: Sequence[SRModel], labels: LabelSource,
                    config: DetectionConfig, *, tile: int | None = 512) -> list[ImageScore]:
    """Score every image under every GAN model (the same MSE reference and detection settings)."""
    scores = []
    for name, lr in images.items():
        mse_sr = to_bit_depth(upscale(mse, lr, tile=tile), 8)
        for gan in gans:
            gan_sr = to_bit_depth(upscale(gan, lr, tile=tile), 8)
            scores.append(score_image(name, gan.source, gan_sr, mse_sr, labels(name, gan_sr), config)[0])
    return scores
