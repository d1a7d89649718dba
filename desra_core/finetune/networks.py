"""The Real-ESRGAN U-Net discriminator with spectral normalisation, and its safe loader.

DeSRA fine-tunes a GAN-SR generator with Real-ESRGAN's recipe, whose discriminator
(``UNetDiscriminatorSN``) predicts a realness logit for every pixel rather than one per image.
Parameter names follow Real-ESRGAN (``conv0`` … ``conv9``) so that its pretrained
``RealESRGAN_x4plus_netD.pth`` (a ``{"params": state_dict}`` file) loads unchanged.

Tensors are ``(B, C, H, W)``; images are RGB in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

from ..errors import ConfigError, ModelLoadError, ShapeError

__all__ = ["UNetDiscriminatorSN", "load_discriminator"]

_NEGATIVE_SLOPE = 0.2


class UNetDiscriminatorSN(nn.Module):
    """U-Net discriminator with spectral normalisation (Real-ESRGAN, Wang et al. 2021, Sec. 4.2).

    Layout: a 3×3 ``conv0`` (``num_in_ch → f``), three stride-2 4×4 convs ``conv1..conv3``
    (``f → 2f → 4f → 8f``), then three stages of bilinear ×2 upsampling followed by 3×3 convs
    ``conv4..conv6`` (``8f → 4f → 2f → f``) with skip additions from the matching encoder stage,
    two further 3×3 convs ``conv7``, ``conv8`` and a final 3×3 ``conv9`` to one channel.
    Every conv but ``conv0`` and ``conv9`` is spectrally normalised and bias-free; activations
    are LeakyReLU(0.2).

    Args:
        num_in_ch: channels of the input images.
        num_feat: base feature width ``f``.
        skip_connection: add the encoder features to the decoder features (U-Net skips).

    Input ``(B, num_in_ch, H, W)`` with H and W multiples of 8; output ``(B, 1, H, W)`` logits
    (higher means "real"; no sigmoid).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        for name, value in (("num_in_ch", num_in_ch), ("num_feat", num_feat)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"expected {name} to be a positive int, got {value!r}")
        self.num_in_ch = num_in_ch
        self.num_feat = num_feat
        self.skip_connection = bool(skip_connection)
        f = num_feat

        def sn_conv(cin: int, cout: int, kernel: int, stride: int, padding: int) -> nn.Module:
            return spectral_norm(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False))

        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        # Encoder: stride-2 downsampling.
        self.conv1 = sn_conv(f, f * 2, 4, 2, 1)
        self.conv2 = sn_conv(f * 2, f * 4, 4, 2, 1)
        self.conv3 = sn_conv(f * 4, f * 8, 4, 2, 1)
        # Decoder: applied after bilinear ×2 upsampling.
        self.conv4 = sn_conv(f * 8, f * 4, 3, 1, 1)
        self.conv5 = sn_conv(f * 4, f * 2, 3, 1, 1)
        self.conv6 = sn_conv(f * 2, f, 3, 1, 1)
        # Extra convs and the one-channel head.
        self.conv7 = sn_conv(f, f, 3, 1, 1)
        self.conv8 = sn_conv(f, f, 3, 1, 1)
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Per-pixel realness logits.

        Args:
            x: ``(B, num_in_ch, H, W)`` float images, H and W multiples of 8.

        Returns:
            ``(B, 1, H, W)`` logits.

        Raises:
            ShapeError: wrong rank, channel count, or a size that is not a multiple of 8.
        """
        if x.ndim != 4 or x.shape[1] != self.num_in_ch:
            raise ShapeError(f"expected a (B, {self.num_in_ch}, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ShapeError(f"expected H and W to be multiples of 8, got {tuple(x.shape[-2:])}")

        def act(t: Tensor) -> Tensor:
            return F.leaky_relu(t, negative_slope=_NEGATIVE_SLOPE)

        def up(t: Tensor) -> Tensor:
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))

        x4 = act(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0

        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        logits: Tensor = self.conv9(out)
        return logits


def _unwrap_state_dict(obj: object, path: str) -> dict[str, Tensor]:
    """Return the bare state dict inside a BasicSR-style checkpoint (``params`` / ``params_ema``)."""
    if isinstance(obj, Mapping):
        for key in ("params", "params_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelLoadError(
            f"expected a discriminator state dict (optionally under 'params'), got {type(obj).__name__} (file: {path})"
        )
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        key = str(key)
        state[key.removeprefix("module.")] = value
    return state


def load_discriminator(
    path: str | PathLike[str], *, skip_connection: bool = True, map_location: str | torch.device = "cpu"
) -> UNetDiscriminatorSN:
    """Load a Real-ESRGAN U-Net discriminator checkpoint, e.g. ``RealESRGAN_x4plus_netD.pth``.

    The file is read with ``torch.load(..., weights_only=True)`` (no arbitrary unpickling). A
    ``params`` (or ``params_ema``) wrapper and a DataParallel ``module.`` prefix are removed. The
    input channel count and feature width are read from ``conv0.weight``.

    Args:
        path: the ``.pth`` file.
        skip_connection: whether the network was trained with U-Net skips (Real-ESRGAN: True).
        map_location: device to load the tensors onto.

    Returns:
        The discriminator in eval mode; call ``.train()`` before fine-tuning it.

    Raises:
        ModelLoadError: the file is missing, corrupt, unsafe to unpickle, or its keys/shapes do
            not match ``UNetDiscriminatorSN``; the message names the file.
    """
    name = str(path)
    try:
        obj = torch.load(name, map_location=map_location, weights_only=True)
    except Exception as exc:  # re-raised as ModelLoadError, chained
        raise ModelLoadError(f"expected a readable PyTorch checkpoint, got {exc} (file: {name})") from exc
    state = _unwrap_state_dict(obj, name)

    first = state.get("conv0.weight")
    if first is None or first.ndim != 4:
        raise ModelLoadError(
            f"expected a UNetDiscriminatorSN state dict with a 4-D 'conv0.weight', got keys "
            f"{sorted(state)[:6]}… (file: {name})"
        )
    num_feat, num_in_ch = int(first.shape[0]), int(first.shape[1])
    model = UNetDiscriminatorSN(num_in_ch=num_in_ch, num_feat=num_feat, skip_connection=skip_connection)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"expected a UNetDiscriminatorSN state dict, got a mismatch: {exc} (file: {name})"
        ) from exc
    return model.to(map_location).eval()
