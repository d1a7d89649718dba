"""Fine-tuning data for DeSRA: (LR, pseudo-GT) pairs and an artifact-biased, scale-aligned crop sampler.

DeSRA fine-tunes the GAN-SR model on pairs whose target is the pseudo ground truth: the MSE-SR result
inside the detected artifact mask and the GAN-SR result elsewhere (:func:`desra_core.build_pseudo_gt`).

Array contract: LR images are ``float32 (h, w, 3)`` RGB in [0, 1], targets ``float32 (h·s, w·s, 3)``,
masks ``bool (h·s, w·s)`` (``True`` = artifact); batches are ``float32`` tensors ``(B, 3, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ShapeError, ShapeMismatchError
from ..image import to_float32
from ..pseudo_gt import build_pseudo_gt

__all__ = ["CropConfig", "PairSampler", "TrainingPair", "make_pair"]


def _check_image(arr: np.ndarray, what: str, name: str) -> None:
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.float32:
        raise ShapeError(f"expected {what} float32 (H, W, 3), got {arr.shape} {arr.dtype} (pair: {name})")


@dataclass(frozen=True, kw_only=True)
class TrainingPair:
    """One fine-tuning example.

    Attributes:
        lr: low-resolution input, ``float32 (h, w, 3)`` RGB in [0, 1].
        target: pseudo ground truth, ``float32 (h·scale, w·scale, 3)`` RGB in [0, 1].
        mask: artifact mask on the target grid, ``bool (h·scale, w·scale)``, ``True`` = artifact.
        scale: integer upscaling factor ≥ 1.
        name: identifier used in error messages (a file stem, say).

    Raises:
        ConfigError: ``scale`` is not an integer ≥ 1.
        ShapeError: an array has the wrong rank, channel count or dtype.
        ShapeMismatchError: the target is not exactly ``scale`` × the LR, or the mask does not match it.
    """

    lr: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    scale: int
    name: str

    def __post_init__(self) -> None:
        name = self.name
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | np.integer) or self.scale < 1:
            raise ConfigError(f"expected an integer scale ≥ 1, got {self.scale!r} (pair: {name})")
        _check_image(self.lr, "an LR image", name)
        _check_image(self.target, "a target image", name)
        h, w = self.lr.shape[:2]
        expected = (h * self.scale, w * self.scale)
        if self.target.shape[:2] != expected:
            raise ShapeMismatchError(f"expected a target of size {expected} ({self.scale}× the LR {(h, w)}), "
                                     f"got {self.target.shape[:2]} (pair: {name})")
        if self.mask.dtype != np.bool_ or self.mask.shape != expected:
            raise ShapeMismatchError(f"expected a bool mask of size {expected}, got {self.mask.shape} "
                                     f"{self.mask.dtype} (pair: {name})")


def _to_float32(arr: np.ndarray, what: str, name: str) -> np.ndarray:
    try:
        return to_float32(arr)
    except ShapeError as e:
        raise ShapeError(f"{what}: {e} (pair: {name})") from e


def make_pair(lr: np.ndarray, gan_sr: np.ndarray, mse_sr: np.ndarray, mask: np.ndarray, *, name: str,
              feather: float = 0.0) -> TrainingPair:
    """Build a :class:`TrainingPair` whose target is the pseudo-GT (MSE inside ``mask``, GAN outside).

    Args:
        lr: LR input ``(h, w, 3)``, ``uint8``/``uint16`` (divided by 255/65535) or ``float32`` in [0, 1].
        gan_sr: GAN-SR result ``(h·s, w·s, 3)``, same dtype rules.
        mse_sr: MSE-SR result, same shape and dtype as ``gan_sr``.
        mask: ``bool (h·s, w·s)``, ``True`` = artifact (take the MSE pixel).
        name: identifier used in error messages.
        feather: Gaussian sigma of the blend across the mask edge, see :func:`build_pseudo_gt`. With
            ``uint8``/``uint16`` results the pseudo-GT is built (and rounded) at their bit depth, so the
            target is exactly the pseudo-GT image the pipeline writes for them.

    Returns:
        The pair; ``scale`` is inferred as ``gan_sr`` height / ``lr`` height and must be an integer that
        also matches the widths.

    Raises:
        ShapeError / ShapeMismatchError: wrong dtypes, shapes, or a non-integer scale (message names ``name``).
    """
    lr_f = _to_float32(lr, "an LR image", name)
    gan_f = _to_float32(gan_sr, "a GAN-SR image", name)
    mse_f = _to_float32(mse_sr, "an MSE-SR image", name)
    _check_image(lr_f, "an LR image", name)
    _check_image(gan_f, "a GAN-SR image", name)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ShapeError(f"expected a bool mask, got {mask.dtype} (pair: {name})")
    (h, w), (hh, ww) = lr_f.shape[:2], gan_f.shape[:2]
    scale = hh // h if h else 0
    if scale < 1 or hh != h * scale or ww != w * scale:
        raise ShapeMismatchError(f"expected an SR image an integer multiple of the LR {(h, w)}, "
                                 f"got {(hh, ww)} (pair: {name})")
    gan_sr, mse_sr = np.asarray(gan_sr), np.asarray(mse_sr)
    try:
        if gan_sr.dtype == mse_sr.dtype and gan_sr.dtype in (np.uint8, np.uint16):
            # at the results' bit depth, as the pipeline's pseudo-GT step writes it
            target = to_float32(build_pseudo_gt(gan_sr, mse_sr, mask, feather))
        else:
            target = build_pseudo_gt(gan_f, mse_f, mask, feather)
    except (ShapeError, ConfigError) as exc:
        raise type(exc)(f"{exc} (pair: {name})") from exc
    return TrainingPair(lr=lr_f, target=target.astype(np.float32, copy=False), mask=mask, scale=scale, name=name)


@dataclass(frozen=True, kw_only=True)
class CropConfig:
    """How :class:`PairSampler` cuts training crops.

    Attributes:
        crop: side of the HR crop in pixels; must be ≥ the scale and a multiple of it (checked when the
            sampler is built, since the scale comes from the pairs). The LR crop side is ``crop // scale``.
        artifact_fraction: probability in [0, 1] that a crop is forced to contain an artifact pixel
            (only for pairs with at least ``min_artifact_pixels`` artifact pixels).
        min_artifact_pixels: a pair with fewer artifact pixels is always cropped uniformly; ≥ 1.
        flips: apply random horizontal and vertical flips (each with probability 1/2).
        rot90: apply a random 90° rotation (probability 1/2); with ``flips`` this covers all 8 symmetries.
    """

    crop: int = 256
    artifact_fraction: float = 0.5
    min_artifact_pixels: int = 1
    flips: bool = True
    rot90: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 1:
            raise ConfigError(f"expected an integer crop ≥ 1, got {self.crop!r}")
        if not 0.0 <= self.artifact_fraction <= 1.0:
            raise ConfigError(f"expected artifact_fraction in [0, 1], got {self.artifact_fraction}")
        if isinstance(self.min_artifact_pixels, bool) or not isinstance(self.min_artifact_pixels, int) \
                or self.min_artifact_pixels < 1:
            raise ConfigError(f"expected an integer min_artifact_pixels ≥ 1, got {self.min_artifact_pixels!r}")


class PairSampler:
    """Draws random, scale-aligned (LR, HR) crop batches from training pairs, biased towards artifacts.

    Each item: a pair is chosen uniformly; with probability ``config.artifact_fraction`` (when the pair has
    ≥ ``min_artifact_pixels`` artifact pixels) a random artifact pixel is chosen and the crop window is
    drawn uniformly among the aligned windows that contain it and fit in the image; otherwise the window
    is uniform. HR window corners are multiples of the scale, so the LR crop ``(top/s, left/s, crop/s)``
    covers exactly the same area. The same random flips / 90° rotation are applied to LR, HR and mask.

    Pairs smaller than the crop are refused (``ShapeError`` naming the pair) rather than silently shrinking
    the crop, so that every batch has the configured size.

    Args:
        pairs: non-empty; all must share one scale.
        config: crop settings.
        seed: seed of the sampler's own ``np.random.Generator``.

    Raises:
        ConfigError: no pairs, mixed scales, or a crop that is not a multiple of the scale / below it.
        ShapeError: a pair smaller than the crop.
    """

    def __init__(self, pairs: Sequence[TrainingPair], config: CropConfig, seed: int) -> None:
        self._pairs = tuple(pairs)
        if not self._pairs:
            raise ConfigError("expected at least one training pair, got none")
        scales = sorted({p.scale for p in self._pairs})
        if len(scales) != 1:
            raise ConfigError(f"expected pairs of one scale, got scales {scales}")
        self._scale = scale = scales[0]
        if config.crop < scale or config.crop % scale:
            raise ConfigError(f"expected a crop that is a multiple of the scale {scale} and ≥ it, got {config.crop}")
        for p in self._pairs:
            if min(p.target.shape[:2]) < config.crop:
                raise ShapeError(f"expected a pair at least {config.crop}×{config.crop} (HR), "
                                 f"got {p.target.shape[0]}×{p.target.shape[1]} (pair: {p.name})")
        self._config = config
        self._artifacts = tuple(np.flatnonzero(p.mask) for p in self._pairs)
        self._rng = np.random.default_rng(seed)

    @property
    def scale(self) -> int:
        return self._scale

    @property
    def config(self) -> CropConfig:
        return self._config

    def _window(self, size: int, pos: int | None) -> int:
        """Top (or left) HR coordinate: a multiple of the scale; contains ``pos`` when given."""
        s, crop = self._scale, self._config.crop
        if pos is None:
            return s * int(self._rng.integers(0, (size - crop) // s + 1))
        lo = math.ceil(max(0, pos - crop + 1) / s)
        hi = min(pos // s, (size - crop) // s)
        return s * int(self._rng.integers(lo, hi + 1))

    def sample(self, batch: int, *, return_masks: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw one batch.

        Args:
            batch: number of items ≥ 1.
            return_masks: also return the HR artifact-mask crops.

        Returns:
            ``(lr, hr)`` float32 tensors ``(B, 3, crop/s, crop/s)`` and ``(B, 3, crop, crop)`` in [0, 1];
            with ``return_masks`` a third tensor, ``bool (B, crop, crop)``, transformed like ``hr``.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"expected an integer batch ≥ 1, got {batch!r}")
        cfg, s, rng = self._config, self._scale, self._rng
        crop, lcrop = cfg.crop, cfg.crop // self._scale
        lrs, hrs, masks = [], [], []
        for _ in range(batch):
            i = int(rng.integers(0, len(self._pairs)))
            pair, art = self._pairs[i], self._artifacts[i]
            hh, ww = pair.target.shape[:2]
            py = px = None
            if art.size >= cfg.min_artifact_pixels and rng.random() < cfg.artifact_fraction:
                py, px = divmod(int(art[rng.integers(0, art.size)]), ww)
            top, left = self._window(hh, py), self._window(ww, px)
            hr = pair.target[top:top + crop, left:left + crop]
            mk = pair.mask[top:top + crop, left:left + crop]
            lr = pair.lr[top // s:top // s + lcrop, left // s:left // s + lcrop]
            if cfg.flips:
                if rng.random() < 0.5:
                    hr, mk, lr = hr[:, ::-1], mk[:, ::-1], lr[:, ::-1]
                if rng.random() < 0.5:
                    hr, mk, lr = hr[::-1], mk[::-1], lr[::-1]
            if cfg.rot90 and rng.random() < 0.5:
                hr, mk, lr = np.rot90(hr), np.rot90(mk), np.rot90(lr)
            lrs.append(np.ascontiguousarray(lr))
            hrs.append(np.ascontiguousarray(hr))
            masks.append(np.ascontiguousarray(mk))
        lr_t = torch.from_numpy(np.stack(lrs)).permute(0, 3, 1, 2).contiguous()
        hr_t = torch.from_numpy(np.stack(hrs)).permute(0, 3, 1, 2).contiguous()
        if return_masks:
            return lr_t, hr_t, torch.from_numpy(np.stack(masks))
        return lr_t, hr_t

    def state(self) -> dict[str, Any]:
        """The generator state (``bit_generator.state``): a JSON-able dict for resumable training."""
        return dict(self._rng.bit_generator.state)

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state`; the sampler then continues the same sequence.

        Raises:
            ConfigError: the state does not fit this sampler's generator.
        """
        try:
            self._rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"expected a {type(self._rng.bit_generator).__name__} state, got {state!r}") from exc
