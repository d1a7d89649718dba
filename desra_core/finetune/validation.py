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

:func:`choose_checkpoint` applies the shipping rule, which knows how much the validation can tell
(:class:`Evidence`). Its noise bound comes from validating the *unchanged* original model again on
jittered inputs (:meth:`Validator.evidence`): each validation image cropped by one input pixel at the top,
the left and both (:data:`JITTERS`), so the tiles, the detection windows and the area rule fall on other
pixels while the content is the same. How much the re-detected artifact fraction moves then, per image and
for the mean, is what a checkpoint's figures can move without any real change (three extra SR passes per
validation image, once per run). A checkpoint ships only when

* at least ``min_artifact_images`` validation images have artifacts beyond that noise (else the rule
  refuses up front, :func:`evidence_gap`, and nothing needs training);
* a majority of the validation images with artifacts improve by more than their own noise;
* the mean artifact fraction falls by more than the mean's noise;
* **every** validation image keeps ≥ ``min_detail_ratio`` of the original model's detail on it
  (:func:`detail_ratios`; images without artifacts are where blurring shows, a mean would hide them).

Among those it is the lowest mean validation artifact fraction, the earliest on ties.
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

__all__ = ["JITTERS", "Candidate", "Evidence", "ValidationImage", "ValidationScore", "Validator", "choose_checkpoint",
           "detail_ratios", "evidence_gap", "improved_images", "split_holdout", "split_stems", "worst_detail"]

JITTERS: tuple[tuple[int, int], ...] = ((1, 0), (0, 1), (1, 1))
"""Input pixels cropped from the top and the left of each validation image to measure the noise."""


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
        # the original weights, kept: the caller's model may be trained in place after this
        self._original_state = {k: v.detach().clone() for k, v in model.descriptor.model.state_dict().items()}
        self._evidence: Evidence | None = None
        scores = {im.name: (original[im.name] if original is not None and im.name in original
                            else _score(im.gan_sr, im, detection)) for im in self.images}
        self.original = _summary(scores, None)

    def _upscale(self, state: Mapping[str, torch.Tensor], image: ValidationImage) -> np.ndarray:
        with torch.no_grad():
            self._model.descriptor.model.load_state_dict(state)
        out = np.uint8 if image.lr.dtype == np.uint8 else np.uint16
        return upscale(self._model, image.lr, tile=self.tile, overlap=self.overlap, out_dtype=out)

    def super_resolve(self, module: torch.nn.Module, image: ValidationImage) -> np.ndarray:
        """``image`` super-resolved with ``module``'s weights, at the input's bit depth (``uint8``/``uint16``),
        as the pipeline's SR step does."""
        return self._upscale(module.state_dict(), image)

    def evidence(self) -> Evidence:
        """What this validation can tell (computed once): the original scores, and the noise of validating
        the unchanged original model again on each image cropped by :data:`JITTERS` input pixels (per image,
        the largest change of its artifact fraction; for the mean, the largest change of the mean)."""
        if self._evidence is None:
            s = self._model.scale
            base = {name: f for name, (f, _) in self.original.per_image.items()}
            noise = dict.fromkeys(base, 0.0)
            mean_noise = 0.0
            for dy, dx in JITTERS:
                moved = {}
                for im in self.images:
                    crop = ValidationImage(name=im.name, lr=im.lr[dy:, dx:], mse_sr=im.mse_sr[s * dy:, s * dx:],
                                           gan_sr=im.gan_sr[s * dy:, s * dx:],
                                           labels=None if im.labels is None else im.labels[s * dy:, s * dx:])
                    moved[im.name] = _score(self._upscale(self._original_state, crop), crop, self.detection)[0]
                    noise[im.name] = max(noise[im.name], abs(moved[im.name] - base[im.name]))
                mean = float(np.mean(list(moved.values())))
                mean_noise = max(mean_noise, abs(mean - self.original.artifact_fraction))
            pixels = {im.name: int(im.mse_sr.shape[0] * im.mse_sr.shape[1]) for im in self.images}
            self._evidence = Evidence(original=self.original, noise=noise, mean_noise=mean_noise, pixels=pixels)
        return self._evidence

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


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """How much a validation can tell (:meth:`Validator.evidence`).

    Attributes:
        original: the original model's score on the validation images.
        noise: per image, the largest change of its re-detected artifact fraction when the unchanged original
            model is validated again on jittered inputs (:data:`JITTERS`).
        mean_noise: the same for the mean artifact fraction over the images.
        pixels: per image, the pixels of its SR result (for the artifact-pixel counts).
    """

    original: ValidationScore
    noise: Mapping[str, float]
    mean_noise: float
    pixels: Mapping[str, int]

    def fraction(self, name: str) -> float:
        return self.original.per_image[name][0]

    @property
    def with_artifacts(self) -> list[str]:
        """Validation images in which the original model has artifacts, sorted."""
        return sorted(n for n in self.original.per_image if self.fraction(n) > 0)

    @property
    def above_noise(self) -> list[str]:
        """Validation images whose artifacts exceed their noise: only these can show a reduction."""
        return [n for n in self.with_artifacts if self.fraction(n) > self.noise[n]]

    def artifact_pixels(self, name: str) -> int:
        return round(self.fraction(name) * self.pixels[name])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def evidence_gap(evidence: Evidence, min_artifact_images: int) -> str | None:
    """The sentence that says what is missing when ``evidence`` cannot show an improvement: fewer than
    ``min_artifact_images`` validation images whose artifacts exceed their measured noise. None otherwise."""
    usable = evidence.above_noise
    if len(usable) >= min_artifact_images:
        return None
    names = list(evidence.original.per_image)
    share = sum(evidence.artifact_pixels(n) for n in names) / max(sum(evidence.pixels[n] for n in names), 1)
    return (f"{_plural(len(names), 'validation image')} with {100 * share:.2f} % artifacts "
            f"({sum(evidence.artifact_pixels(n) for n in names)} pixels, "
            f"{len(evidence.with_artifacts)} with artifacts, {len(usable)} above the noise of validating the "
            f"original model again) cannot show an improvement: shipping needs at least {min_artifact_images} "
            f"validation images whose artifacts exceed that noise; give --validate DIR (validate_dir in the "
            f"flows) with at least {min_artifact_images} photos that have artifacts")


def improved_images(score: ValidationScore, evidence: Evidence) -> list[str]:
    """The validation images with artifacts whose artifact fraction under ``score`` fell by more than
    their noise (:attr:`Evidence.noise`)."""
    return [n for n in evidence.with_artifacts
            if score.per_image[n][0] < evidence.fraction(n) - evidence.noise[n]]


def detail_ratios(score: ValidationScore, original: ValidationScore) -> dict[str, float]:
    """Per validation image, the detail kept under ``score`` over the original model's on it (``nan`` where
    the weights under test leave none measurable); images where the original's detail is not measurable
    (every pixel an artifact, or a flat MSE result) are left out."""
    ratios = {}
    for name, (_, base) in original.per_image.items():
        if math.isfinite(base) and base > 0:
            detail = score.per_image[name][1]
            ratios[name] = detail / base if math.isfinite(detail) else float("nan")
    return ratios


def worst_detail(score: ValidationScore, original: ValidationScore) -> tuple[str | None, float]:
    """``(image, ratio)`` of the validation image that keeps the least detail (``nan`` counts as least);
    ``(None, nan)`` when no image's detail is measurable."""
    ratios = detail_ratios(score, original)
    if not ratios:
        return None, float("nan")
    name = min(ratios, key=lambda n: ratios[n] if math.isfinite(ratios[n]) else -math.inf)
    return name, ratios[name]


def _shortfalls(c: Candidate, evidence: Evidence, min_detail_ratio: float) -> list[str]:
    original = evidence.original
    out = []
    name, worst = worst_detail(c.score, original)
    if not worst >= min_detail_ratio:
        out.append(f"{name} keeps {worst:.3f} of its detail" if name is not None else "no measurable detail")
    art = evidence.with_artifacts
    better = improved_images(c.score, evidence)
    if not 2 * len(better) > len(art):
        out.append(f"{len(better)} of {len(art)} image(s) with artifacts improve beyond their noise")
    drop = original.artifact_fraction - c.score.artifact_fraction
    if not (drop > evidence.mean_noise and drop > 0):
        out.append(f"artifact fraction {c.score.artifact_fraction:.4f} is not below the original's by more than "
                   f"the noise {evidence.mean_noise:.4f}")
    return out


def choose_checkpoint(candidates: Sequence[Candidate], evidence: Evidence, *, min_detail_ratio: float = 0.9,
                      min_artifact_images: int = 3) -> tuple[Candidate | None, str]:
    """The checkpoint to ship, and why (a sentence); see the module docstring for the rule.

    A candidate qualifies when the evidence suffices (:func:`evidence_gap`), every validation image keeps
    ≥ ``min_detail_ratio`` of the original's detail, a majority of the images with artifacts improve beyond
    their noise and the mean artifact fraction falls by more than its noise. The lowest mean validation
    artifact fraction among those is chosen, the earliest on ties; ``None`` when none qualifies.
    """
    gap = evidence_gap(evidence, min_artifact_images)
    if gap is not None:
        return None, gap
    if not candidates:
        return None, "no checkpoint was validated"
    original = evidence.original
    n_art = len(evidence.with_artifacts)
    good = [c for c in candidates if not _shortfalls(c, evidence, min_detail_ratio)]
    if not good:
        lowest = min(candidates, key=lambda c: c.score.artifact_fraction)
        return None, (f"none of {len(candidates)} validated checkpoint(s) qualifies: each must keep ≥ "
                      f"{min_detail_ratio:g} of the original's detail on every validation image, improve a "
                      f"majority of the {n_art} validation image(s) with artifacts beyond their noise and lower "
                      f"the mean artifact fraction, the original's {original.artifact_fraction:.4f}, by more than "
                      f"its noise {evidence.mean_noise:.4f}; the lowest artifact fraction was "
                      f"{lowest.score.artifact_fraction:.4f} (step {lowest.step}, {lowest.weights}), where "
                      + "; ".join(_shortfalls(lowest, evidence, min_detail_ratio)))
    best = min(good, key=lambda c: (c.score.artifact_fraction, c.step))
    name, worst = worst_detail(best.score, original)
    return best, (f"step {best.step} ({best.weights} weights): the lowest validation artifact fraction, "
                  f"{best.score.artifact_fraction:.4f} against the original's {original.artifact_fraction:.4f} "
                  f"(noise {evidence.mean_noise:.4f}), among the {len(good)} of {len(candidates)} validated "
                  f"checkpoint(s) that qualify; it improves {len(improved_images(best.score, evidence))} of "
                  f"{n_art} validation image(s) with artifacts beyond their noise and keeps ≥ {min_detail_ratio:g} "
                  f"of the original's detail on every validation image (worst: {name}, {worst:.3f})")
