"""Validation during fine-tuning: images never trained on, scored the way ``desra evaluate`` scores them.

A :class:`Validator` holds, per validation image, the low-resolution input, the MSE-SR reference (at the
input's bit depth, as the pipeline stores results), the label map and the original GAN model's result and
score. Called with a generator module (the weights being trained, or their EMA), it super-resolves every
validation image with those weights (same tile and overlap as the run), detects artifacts against the
same MSE reference and label map with the run's detection settings, and returns the mean re-detected
artifact fraction and the detail kept relative to the original model (mean
:func:`~desra_core.finetune.pipeline.detail_kept` of the tuned weights over the original's).

The label maps are those of the original GAN result (from a folder, or segmented once); re-segmenting
every checkpoint's results would cost a segmentation per image and checkpoint for classes that rarely
change.

:func:`choose_checkpoint` applies the shipping rule: the lowest validation artifact fraction among the
checkpoints whose detail ratio is at least ``min_detail_ratio`` and whose artifact fraction is below the
original's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..detection import DetectionConfig, detect_artifacts
from ..errors import ConfigError
from ..image import to_float32
from ..models.sr import SRModel, upscale
from .pipeline import detail_kept

__all__ = ["Candidate", "ValidationImage", "ValidationScore", "Validator", "choose_checkpoint", "split_holdout",
           "split_stems"]


def split_holdout(stems: Sequence[str], share: float, seed: int) -> tuple[list[str], list[str]]:
    """Split image stems into (train, validation): ``round(share · n)`` held out, at least one, at most n − 1.

    The choice is a permutation drawn with ``numpy.random.default_rng(seed)`` over the sorted stems, so the
    same stems and seed always give the same split; both lists come back sorted.

    Raises:
        ConfigError: ``share`` outside (0, 1), or fewer than two stems (nothing would be left to train on).
    """
    if not 0.0 < share < 1.0:
        raise ConfigError(f"expected a held-out share in (0, 1), got {share}")
    ordered = sorted(stems)
    if len(ordered) < 2:
        raise ConfigError(f"expected at least 2 images to hold one out for validation, got {len(ordered)}; "
                          "pass a separate validation folder instead")
    k = min(max(1, round(share * len(ordered))), len(ordered) - 1)
    order = np.random.default_rng(seed).permutation(len(ordered))
    held = {ordered[i] for i in order[:k]}
    return [s for s in ordered if s not in held], [s for s in ordered if s in held]


def split_stems(stems: Sequence[str], *, holdout: float, seed: int, folder: str | None = None,
                folder_stems: Sequence[str] = ()) -> tuple[list[str], list[str], dict[str, object]]:
    """``(train, validation, how)``: with a separate validation ``folder``, every stem is trained on and
    the folder's ``folder_stems`` validate; else a ``holdout`` share of ``stems`` (:func:`split_holdout`
    with ``seed``). ``how`` says which, for the model card: ``{"mode": "folder", "folder": …}`` or
    ``{"mode": "held-out", "share", "seed", "stems"}``. Raises :class:`ConfigError` as :func:`split_holdout`."""
    if folder is not None:
        return sorted(stems), sorted(folder_stems), {"mode": "folder", "folder": str(folder)}
    train, held = split_holdout(list(stems), holdout, seed)
    return train, held, {"mode": "held-out", "share": holdout, "seed": seed, "stems": held}


@dataclass(frozen=True, kw_only=True)
class ValidationImage:
    """One validation image.

    Attributes:
        name: its stem.
        lr: low-resolution input, ``uint8``/``uint16 (h, w, 3)``.
        mse_sr: the MSE model's result ``(h·s, w·s, 3)`` at the input's bit depth.
        gan_sr: the original GAN model's result, same shape and dtype.
        labels: ADE20K label map ``uint8 (h·s, w·s)`` of the original GAN result, or None.
    """

    name: str
    lr: np.ndarray
    mse_sr: np.ndarray
    gan_sr: np.ndarray
    labels: np.ndarray | None


@dataclass(frozen=True)
class ValidationScore:
    """Validation figures of one set of weights.

    ``artifact_fraction``: mean over the images of the re-detected artifact fraction; ``detail``: mean detail
    kept (GAN local std over MSE local std outside the artifacts); ``detail_ratio``: ``detail`` over the
    original model's; ``per_image``: ``name → (artifact_fraction, detail)``.
    """

    artifact_fraction: float
    detail: float
    detail_ratio: float
    per_image: Mapping[str, tuple[float, float]]


def _score(gan_sr: np.ndarray, image: ValidationImage, detection: DetectionConfig) -> tuple[float, float]:
    mse = image.mse_sr
    if mse.dtype != np.uint8 or gan_sr.dtype != np.uint8:  # the detector takes uint8, or float32 in [0, 1]
        mse, gan_sr = to_float32(mse), to_float32(gan_sr)
    det = detect_artifacts(mse, gan_sr, image.labels, detection)
    return det.artifact_fraction, detail_kept(gan_sr, mse, det.mask)


def _summary(scores: Mapping[str, tuple[float, float]], base: float | None) -> ValidationScore:
    fraction = float(np.mean([f for f, _ in scores.values()]))
    detail = float(np.nanmean([d for _, d in scores.values()]))
    if base is None:
        return ValidationScore(fraction, detail, 1.0, dict(scores))
    ratio = detail / base if base > 0 and math.isfinite(base) else float("nan")
    return ValidationScore(fraction, detail, ratio, dict(scores))


class Validator:
    """Scores generator weights on validation images (see the module docstring).

    Args:
        model: the original GAN model (its weights give the reference scores; a private copy of it runs
            the weights under test, so the caller's model is never modified).
        images: the validation images (at least one).
        detection: detection settings, as for training.
        tile, overlap: SR tiling in input pixels, as the run's (None: whole images).
        original: ``name → (artifact_fraction, detail)`` of the original GAN results when known already
            (the pipeline's rows); else they are detected here.

    Raises:
        ConfigError: no images.
    """

    def __init__(self, model: SRModel, images: Sequence[ValidationImage], detection: DetectionConfig, *,
                 tile: int | None = 512, overlap: int = 32,
                 original: Mapping[str, tuple[float, float]] | None = None) -> None:
        if not images:
            raise ConfigError("expected at least one validation image, got none")
        self.images = tuple(images)
        self.detection = detection
        self.tile, self.overlap = tile, overlap
        self._model = SRModel(descriptor=copy.deepcopy(model.descriptor), source=model.source, path=model.path)
        scores = {im.name: (original[im.name] if original is not None and im.name in original
                            else _score(im.gan_sr, im, detection)) for im in self.images}
        self.original = _summary(scores, None)

    def super_resolve(self, module: torch.nn.Module, image: ValidationImage) -> np.ndarray:
        """``image`` super-resolved with ``module``'s weights, at the input's bit depth (``uint8``/``uint16``),
        as the pipeline's SR step does."""
        with torch.no_grad():
            self._model.descriptor.model.load_state_dict(module.state_dict())
        out = np.uint8 if image.lr.dtype == np.uint8 else np.uint16
        return upscale(self._model, image.lr, tile=self.tile, overlap=self.overlap, out_dtype=out)

    def score(self, module: torch.nn.Module, images: Sequence[ValidationImage]) -> ValidationScore:
        """Score ``module``'s weights on ``images`` (the validation images, or others such as the training
        images); ``detail_ratio`` is relative to the original's detail on the validation images."""
        scores = {im.name: _score(self.super_resolve(module, im), im, self.detection) for im in images}
        return _summary(scores, self.original.detail)

    def __call__(self, module: torch.nn.Module) -> ValidationScore:
        """Score ``module``'s weights (same architecture as the original model's) on every validation image."""
        return self.score(module, self.images)


@dataclass(frozen=True)
class Candidate:
    """A validated checkpoint: the step, which weights (``"trained"`` or ``"ema"``) and its score."""

    step: int
    weights: str
    score: ValidationScore


def choose_checkpoint(candidates: Sequence[Candidate], original: ValidationScore, *,
                      min_detail_ratio: float = 0.9) -> tuple[Candidate | None, str]:
    """The checkpoint to ship, and why (a sentence).

    The lowest validation artifact fraction among the candidates with ``detail_ratio ≥ min_detail_ratio``
    and an artifact fraction below ``original``'s; the earliest on ties. ``None`` when none qualifies.
    """
    def qualifies(c: Candidate) -> bool:
        return c.score.detail_ratio >= min_detail_ratio and c.score.artifact_fraction < original.artifact_fraction

    good = [c for c in candidates if qualifies(c)]
    if not candidates:
        return None, "no checkpoint was validated"
    if not good:
        lowest = min(candidates, key=lambda c: c.score.artifact_fraction)
        kept = max(candidates, key=lambda c: c.score.detail_ratio if math.isfinite(c.score.detail_ratio) else -1)
        return None, (f"none of {len(candidates)} validated checkpoint(s) qualifies: each must keep ≥ "
                      f"{min_detail_ratio:g} of the original's detail and re-detect fewer artifacts than the "
                      f"original's {original.artifact_fraction:.4f} on the validation images; the lowest "
                      f"artifact fraction was {lowest.score.artifact_fraction:.4f} (step {lowest.step}, "
                      f"{lowest.weights}, detail ratio {lowest.score.detail_ratio:.3f}), the best detail ratio "
                      f"{kept.score.detail_ratio:.3f} (step {kept.step}, {kept.weights})")
    best = min(good, key=lambda c: (c.score.artifact_fraction, c.step))
    return best, (f"step {best.step} ({best.weights} weights): the lowest validation artifact fraction, "
                  f"{best.score.artifact_fraction:.4f} against the original's {original.artifact_fraction:.4f}, "
                  f"among the {len(good)} of {len(candidates)} validated checkpoint(s) that keep ≥ "
                  f"{min_detail_ratio:g} of the original's detail (this one keeps {best.score.detail_ratio:.3f})")

