"""Losses of the Real-ESRGAN fine-tuning recipe that DeSRA uses: L1 + VGG19 perceptual + GAN, and a texture term.

* :class:`PerceptualLoss` — distance between VGG19 features taken *before* their ReLU
  (layers ``conv1_2 … conv5_4``, weights 0.1/0.1/1/1/1 in Real-ESRGAN's configuration).
* :func:`gan_loss_vanilla` / :func:`discriminator_loss` — the "vanilla" (binary cross-entropy)
  GAN objective on the U-Net discriminator's per-pixel logits.
* :func:`texture_loss` — a texture-keeping term that needs no pretrained network (Laplacian-pyramid bands
  and local standard deviations), for machines without VGG19 weights.
* :func:`vgg19_weights_available` — where the VGG19 weights are, without loading or downloading them.
* :class:`LossWeights` — how the generator terms are mixed
  (Real-ESRGAN: ``l1=1, perceptual=1, gan=0.1``; ``texture`` 0).

Tensors are ``(B, C, H, W)``; images are RGB in [0, 1].
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import VGG19_Weights

from ..errors import ConfigError, ModelLoadError, ShapeError, ShapeMismatchError

__all__ = [
    "DEFAULT_LAYER_WEIGHTS",
    "TEXTURE_MIN_SIDE",
    "VGG19_LAYER_INDEX",
    "LossWeights",
    "PerceptualLoss",
    "discriminator_loss",
    "gan_loss_vanilla",
    "texture_loss",
    "vgg19_weights_available",
]

# Index of each conv layer inside ``torchvision.models.vgg19().features``; the output of that
# module is the pre-activation feature (the ReLU follows at index + 1).
VGG19_LAYER_INDEX: Mapping[str, int] = {
    "conv1_1": 0, "conv1_2": 2,
    "conv2_1": 5, "conv2_2": 7,
    "conv3_1": 10, "conv3_2": 12, "conv3_3": 14, "conv3_4": 16,
    "conv4_1": 19, "conv4_2": 21, "conv4_3": 23, "conv4_4": 25,
    "conv5_1": 28, "conv5_2": 30, "conv5_3": 32, "conv5_4": 34,
}  # fmt: skip

DEFAULT_LAYER_WEIGHTS: Mapping[str, float] = {
    "conv1_2": 0.1,
    "conv2_2": 0.1,
    "conv3_4": 1.0,
    "conv4_4": 1.0,
    "conv5_4": 1.0,
}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _offline_message(exc: BaseException) -> str:
    weights = VGG19_Weights.IMAGENET1K_V1
    file_name = os.path.basename(weights.url)
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    return (
        f"expected to obtain the ImageNet VGG19 weights through torchvision, got {type(exc).__name__}: {exc}. "
        f"Fix one of: (1) pass weights_path=<a local vgg19 state-dict .pth>; "
        f"(2) place '{file_name}' (from {weights.url}) into torch's hub checkpoints folder {checkpoints}; "
        f"(3) disable the perceptual term (LossWeights(perceptual=0))."
    )


def vgg19_weights_available(weights_path: str | PathLike[str] | None) -> str | None:
    """Where :class:`PerceptualLoss` would take its VGG19 weights from without downloading them, else None.

    ``weights_path`` given: that path, as given (a missing or bad file is reported when the loss is made);
    otherwise the file of torchvision's ``VGG19_Weights.IMAGENET1K_V1`` in torch's hub cache
    (``<torch.hub.get_dir()>/checkpoints/<basename of its url>``) when it is there. Nothing is loaded.
    """
    if weights_path is not None and str(weights_path):
        return str(weights_path)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(VGG19_Weights.IMAGENET1K_V1.url))
    return cached if os.path.isfile(cached) else None


def _load_vgg19_features_state(weights_path: str | PathLike[str] | None) -> dict[str, Tensor]:
    """State dict of ``vgg19().features`` (keys ``"0.weight"`` …) from a file or torchvision's cache."""
    if weights_path is None:
        try:
            state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # offline, unreachable, corrupt cache: re-raised, chained
            raise ModelLoadError(_offline_message(exc)) from exc
        source = "torchvision VGG19_Weights.IMAGENET1K_V1"
    else:
        source = str(weights_path)
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # re-raised as ModelLoadError, chained
            raise ModelLoadError(f"expected a readable vgg19 state dict, got {exc} (file: {source})") from exc
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"expected a vgg19 state dict, got {type(state).__name__} (file: {source})")
    features = {k.removeprefix("features."): v for k, v in state.items() if str(k).startswith("features.")}
    if not features:
        raise ModelLoadError(f"expected vgg19 'features.*' keys, got {sorted(state)[:6]} (file: {source})")
    return features


class PerceptualLoss(nn.Module):
    """Weighted distance between frozen VGG19 features before activation (Real-ESRGAN / ESRGAN).

    ``loss = Σ_layer w_layer · criterion(φ_layer(pred), φ_layer(target))`` where ``φ_layer`` is
    the output of that conv layer *before* its ReLU, and criterion is the mean absolute (``"l1"``)
    or mean squared (``"l2"``) difference. Target features are computed without gradients.

    Args:
        layer_weights: VGG19 layer name (``conv1_1`` … ``conv5_4``) → weight ≥ 0; ``None`` means
            :data:`DEFAULT_LAYER_WEIGHTS` (Real-ESRGAN's).
        weights_path: a local vgg19 state dict (torchvision key names; ``classifier.*`` is
            ignored). ``None`` uses torchvision's ``VGG19_Weights.IMAGENET1K_V1``, which downloads
            into torch's hub cache on first use.
        criterion: ``"l1"`` or ``"l2"``.
        use_input_norm: normalise inputs in [0, 1] with the ImageNet mean/std before VGG.

    Raises:
        ConfigError: unknown layer name or criterion, empty or negative weights.
        ModelLoadError: the weights cannot be obtained (the message says how to supply them).
    """

    mean: Tensor  # the ImageNet normalisation, registered as (1, 3, 1, 1) buffers in __init__
    std: Tensor

    def __init__(
        self,
        layer_weights: Mapping[str, float] | None = None,
        weights_path: str | PathLike[str] | None = None,
        criterion: Literal["l1", "l2"] = "l1",
        use_input_norm: bool = True,
    ) -> None:
        super().__init__()
        weights = dict(DEFAULT_LAYER_WEIGHTS if layer_weights is None else layer_weights)
        if not weights:
            raise ConfigError("expected at least one VGG19 layer in layer_weights, got none")
        for name, w in weights.items():
            if name not in VGG19_LAYER_INDEX:
                raise ConfigError(f"expected VGG19 layer names from {list(VGG19_LAYER_INDEX)}, got {name!r}")
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"expected a finite weight >= 0 for {name}, got {w!r}")
        if criterion not in ("l1", "l2"):
            raise ConfigError(f"expected criterion 'l1' or 'l2', got {criterion!r}")
        self.layer_weights: dict[str, float] = {k: float(v) for k, v in weights.items()}
        self.criterion = criterion
        self.use_input_norm = bool(use_input_norm)

        state = _load_vgg19_features_state(weights_path)
        # Build the architecture on the meta device (no costly random init of the huge classifier),
        # keep only the features, then fill every parameter from the state dict (strict).
        with torch.device("meta"):
            features = torchvision.models.vgg19().features
        features = features.to_empty(device="cpu")
        try:
            features.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            source = "torchvision VGG19_Weights.IMAGENET1K_V1" if weights_path is None else str(weights_path)
            raise ModelLoadError(f"expected vgg19 feature weights, got a mismatch: {exc} (file: {source})") from exc

        last = max(VGG19_LAYER_INDEX[name] for name in self.layer_weights)
        self.vgg = features[: last + 1]
        for module in self.vgg.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False  # in-place ReLU would overwrite the stored pre-activation maps
        self.vgg.requires_grad_(False)
        self.vgg.eval()
        self._index_to_name = {VGG19_LAYER_INDEX[name]: name for name in self.layer_weights}
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Switch mode as usual but keep the frozen VGG in eval mode."""
        super().train(mode)
        self.vgg.eval()
        return self

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Pre-activation VGG19 features of the configured layers.

        Args:
            x: ``(B, 3, H, W)`` images in [0, 1].

        Returns:
            Layer name → ``(B, C_layer, H_layer, W_layer)`` feature map.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ShapeError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out: dict[str, Tensor] = {}
        for index, layer in enumerate(self.vgg):
            x = layer(x)
            name = self._index_to_name.get(index)
            if name is not None:
                out[name] = x
        return out

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Perceptual loss between a prediction and its target.

        Args:
            pred: ``(B, 3, H, W)`` images in [0, 1] (gradients flow back to it).
            target: ``(B, 3, H, W)`` images in [0, 1], same shape (treated as a constant).

        Returns:
            A scalar tensor.

        Raises:
            ShapeMismatchError: pred and target differ in shape.
        """
        if pred.shape != target.shape:
            raise ShapeMismatchError(
                f"expected pred and target of equal shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        pred_feats = self.features(pred)
        with torch.no_grad():
            target_feats = self.features(target.detach())
        dist = F.l1_loss if self.criterion == "l1" else F.mse_loss
        total = pred.new_zeros(())
        for name, weight in self.layer_weights.items():
            total = total + weight * dist(pred_feats[name], target_feats[name])
        return total


def gan_loss_vanilla(logits: Tensor, target_is_real: bool) -> Tensor:
    """Vanilla GAN loss: mean binary cross-entropy of the logits against all-real or all-fake.

    Args:
        logits: discriminator output of any shape, e.g. ``(B, 1, H, W)`` (no sigmoid applied).
        target_is_real: compare against 1 (real) or 0 (fake).

    Returns:
        A scalar tensor. For the generator call it with ``target_is_real=True`` on the fake logits.
    """
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss: ``gan(real_logits, real) + gan(fake_logits, fake)``.

    Args:
        real_logits: ``(B, 1, H, W)`` logits on ground-truth (or pseudo-GT) images.
        fake_logits: ``(B, 1, H, W)`` logits on generator outputs; detach the generator output
            before the discriminator so this loss does not reach the generator.

    Returns:
        A scalar tensor (the sum of Real-ESRGAN's ``l_d_real`` and ``l_d_fake``).
    """
    return gan_loss_vanilla(real_logits, True) + gan_loss_vanilla(fake_logits, False)


TEXTURE_MIN_SIDE = 12
"""The least height and width :func:`texture_loss` takes (its third pyramid level must allow reflect padding)."""

_PYRAMID_LEVELS = 3
_BAND_KERNEL = (5, 1.0)  # (side, sigma) of the blur that splits off a pyramid band
_STD_WINDOW = (11, 1.5)  # (side, sigma) of the Gaussian window of the local standard deviation
_STD_EPS = 1e-6


def _gaussian_kernel(side: int, sigma: float, channels: int, device: torch.device) -> Tensor:
    """A normalised ``side × side`` Gaussian, as a depthwise ``(channels, 1, side, side)`` float32 kernel."""
    x = torch.arange(side, dtype=torch.float32, device=device) - (side - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).expand(channels, 1, side, side).contiguous()


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    """Depthwise convolution of ``x`` with ``kernel`` (one per channel), reflect-padded to keep the size."""
    pad = kernel.shape[-1] // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), kernel, groups=x.shape[1])


def _bands(x: Tensor, kernel: Tensor) -> list[Tensor]:
    """The Laplacian-pyramid bands of ``x``: per level ``x - blur(x)``; the next level is ``avg_pool(blur(x), 2)``."""
    bands = []
    for level in range(_PYRAMID_LEVELS):
        blurred = _filter(x, kernel)
        bands.append(x - blurred)
        if level + 1 < _PYRAMID_LEVELS:
            x = F.avg_pool2d(blurred, 2)
    return bands


def _local_std(x: Tensor, window: Tensor) -> Tensor:
    """Per-channel local standard deviation under a Gaussian window: ``sqrt(max(E[x²] - E[x]², 0) + eps)``."""
    mean = _filter(x, window)
    var = (_filter(x * x, window) - mean * mean).clamp(min=0)
    return torch.sqrt(var + _STD_EPS)


def texture_loss(sr: Tensor, target: Tensor) -> Tensor:
    """A texture-keeping loss that needs no pretrained network: it penalises lost (or invented) fine detail.

    With ``G_σ`` a normalised Gaussian filter applied per channel with reflect padding::

        x_0 = x,   band_k(x) = x_k - G_1.0^{5×5} * x_k,   x_{k+1} = avg_pool_2(G_1.0^{5×5} * x_k)   (k = 0, 1, 2)
        std(x)   = sqrt(max(G_1.5^{11×11} * x² - (G_1.5^{11×11} * x)², 0) + 1e-6)
        loss     = (1/3) Σ_k mean|band_k(sr) - band_k(target)|  +  mean|std(sr) - std(target)|

    The band term matches detail at three scales; the local-std term rewards as much local contrast as the
    target has, which L1 alone (whose optimum is the conditional median) lets fade. It is differentiable and
    computed in float32 with autocast off, so it behaves the same under mixed precision, on the CPU or CUDA.

    Args:
        sr: ``(B, C, H, W)`` prediction in [0, 1] (gradients flow back to it).
        target: ``(B, C, H, W)`` target in [0, 1], same shape (treated as a constant).

    Returns:
        A float32 scalar tensor, 0 for identical inputs.

    Raises:
        ShapeError: not 4-d, or a side below :data:`TEXTURE_MIN_SIDE`.
        ShapeMismatchError: sr and target differ in shape.
    """
    if sr.ndim != 4:
        raise ShapeError(f"expected a (B, C, H, W) tensor, got shape {tuple(sr.shape)}")
    if sr.shape != target.shape:
        raise ShapeMismatchError(
            f"expected sr and target of equal shape, got {tuple(sr.shape)} and {tuple(target.shape)}"
        )
    if min(sr.shape[-2:]) < TEXTURE_MIN_SIDE:
        raise ShapeError(f"expected images of at least {TEXTURE_MIN_SIDE} pixels a side for the texture loss, "
                         f"got shape {tuple(sr.shape)}")
    with torch.autocast(sr.device.type, enabled=False):
        pred, ref = sr.float(), target.detach().float()
        channels = pred.shape[1]
        band_kernel = _gaussian_kernel(*_BAND_KERNEL, channels, pred.device)
        window = _gaussian_kernel(*_STD_WINDOW, channels, pred.device)
        pyramid = pred.new_zeros(())
        for p, t in zip(_bands(pred, band_kernel), _bands(ref, band_kernel), strict=True):
            pyramid = pyramid + F.l1_loss(p, t)
        pyramid = pyramid / _PYRAMID_LEVELS
        contrast = F.l1_loss(_local_std(pred, window), _local_std(ref, window))
        return pyramid + contrast


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """Weights of the generator's loss terms: ``l1·L1 + perceptual·L_percep + gan·L_GAN + texture·L_texture``.

    Defaults are Real-ESRGAN's (1, 1, 0.1) with no texture term (0; :func:`texture_loss`, the term for
    machines without VGG19 weights). A weight of 0 disables its term.

    Raises:
        ConfigError: a weight that is not a finite number ≥ 0.
    """

    l1: float = 1.0
    perceptual: float = 1.0
    gan: float = 0.1
    texture: float = 0.0

    def __post_init__(self) -> None:
        for name in ("l1", "perceptual", "gan", "texture"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"expected a finite number for LossWeights.{name}, got {value!r}")
            if value < 0:
                raise ConfigError(f"expected LossWeights.{name} >= 0, got {value!r}")
