"""Super-resolution inference for any architecture spandrel loads (RRDBNet, SRVGG, SwinIR, HAT, SPAN, …).

Weights come only through spandrel (``.pth`` with restricted unpickling, ``.safetensors``; the
``params_ema`` / ``params`` wrappers of BasicSR checkpoints are unwrapped), are checked to be an x``s``
super-resolution model, and run with :func:`upscale`: tiled inference with blended overlaps, so memory is
bounded by the tile size plus the output, and no seam is measurable.

Array contract: images in are ``(H, W, 3)`` RGB, ``float32`` in [0, 1], ``uint8`` or ``uint16``; out
``float32`` in [0, 1] by default, or ``uint8``/``uint16`` written directly (``out_dtype``), which needs
3 or 6 bytes per output pixel instead of 12; tensors inside are ``(B, 3, h, w)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from ..errors import ConfigError, InputImageError, ModelLoadError, ShapeError
from ..image import to_bit_depth, to_float32
from ..limits import positive_setting

if TYPE_CHECKING:  # at run time both are imported where a model is loaded
    from spandrel import ImageModelDescriptor

    from .weights import KnownWeights

__all__ = ["DEFAULT_MAX_OUTPUT_MPIX", "MAX_OUTPUT_VARIABLE", "Precision", "SRModel", "check_output_size",
           "check_same_scale", "load_sr_model", "max_output_pixels", "upscale"]

Precision = Literal["auto", "fp32", "fp16", "bf16"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class SRModel:
    """A loaded super-resolution model.

    ``descriptor`` is spandrel's ``ImageModelDescriptor`` (its ``.model`` is the ``torch.nn.Module``,
    trainable in place); ``source`` is what the user gave (a known name or a path) and ``path`` the
    file that was loaded.
    """

    descriptor: ImageModelDescriptor[torch.nn.Module]
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
                  table: Mapping[str, KnownWeights] | None = None) -> SRModel:
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


MAX_OUTPUT_VARIABLE = "DESRA_MAX_OUTPUT_MPIX"
DEFAULT_MAX_OUTPUT_MPIX: float = 80.0
"""Default limit on output megapixels per image (input pixels × scale²), sized so that one image fits
comfortably in a 16 GB worker. The whole per-image path of the ``desra`` flow without semantic
adjustment (both SR passes at once, detection, pseudo-GT, the in-memory image cache, report and review
page) measured 67 bytes per output pixel beyond the process's fixed cost (``python
benchmarks/sr_memory.py --pipeline``: 1616 MiB for a 2000² output, 2387 MiB for 4000²); segmentation's
running argmax adds about 25 more. 80 Mpx × 92 B ≈ 7.4 GB, under half of 16 GB, leaving the rest for
the fixed cost (about 1.2 GB for ``desra run``), the models and their tile activations. At x4 that is an
input of up to about 2236×2236 pixels."""


def max_output_pixels(environ: Mapping[str, str] | None = None) -> int:
    """The output-pixel limit per image: ``DESRA_MAX_OUTPUT_MPIX`` megapixels from ``environ`` (default:
    this process's environment) when set and not empty, else :data:`DEFAULT_MAX_OUTPUT_MPIX`.

    Raises:
        ConfigError: a value that is not a positive number.
    """
    mpix = positive_setting(MAX_OUTPUT_VARIABLE, "megapixels", environ)
    return max(1, int((DEFAULT_MAX_OUTPUT_MPIX if mpix is None else mpix) * 1e6))


def check_output_size(width: int, height: int, scale: int, max_pixels: int, path: str) -> None:
    """Refuse an input whose ``scale``× result would exceed ``max_pixels`` output pixels (from the
    header's size, before anything is decoded).

    Raises:
        InputImageError: naming the file, its own size, the output size and the limit.
    """
    out_w, out_h = width * scale, height * scale
    if out_w * out_h > max_pixels:
        raise InputImageError(
            f"expected at most {max_pixels / 1e6:g} megapixels of output per image ({MAX_OUTPUT_VARIABLE}), got "
            f"a {width}×{height} image whose x{scale} result would be {out_w}×{out_h} = "
            f"{out_w * out_h / 1e6:.1f} megapixels (refused before decoding)", path)


def check_same_scale(mse: SRModel, gan: SRModel) -> None:
    """DeSRA compares the two results pixel by pixel: both models must have the same scale."""
    if mse.scale != gan.scale:
        raise ModelLoadError(f"expected the MSE and GAN models to have the same scale, got x{mse.scale} "
                             f"({mse.path}) and x{gan.scale} ({gan.path})")


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


def _finish(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Clip finished ``float32`` values to [0, 1] and convert them to the output dtype
    (``rint(x · 255)`` or ``rint(x · 65535)`` for integers, as :func:`~desra_core.image.to_bit_depth`)."""
    np.clip(values, 0.0, 1.0, out=values)
    if dtype == np.float32:
        return values
    return to_bit_depth(values, 8 * dtype.itemsize)


class _Blender:
    """Accumulates weighted window outputs and writes each output pixel as soon as no later window
    covers it, so that only a tile-sized buffer and the rows shared with the next window row are kept
    in ``float32``.

    Windows arrive in row-major order (the order of :func:`_windows`); every pixel's weighted sum and
    weight are added up in that order, exactly as a whole-image accumulator would, so the result is
    bit-identical to dividing a full ``float32`` accumulator by a full weight map. After window
    ``(i, j)``, the output columns before window ``j + 1`` are complete for this window row: its rows
    before window row ``i + 1`` go to the output, the rest (the rows the next window row overlaps) to
    the carry buffer that the next window row starts from.
    """

    def __init__(self, out: np.ndarray, ys: list[int], xs: list[int], th: int, tw: int, s: int,
                 overlap: int) -> None:
        self.out, self.s, self.overlap = out, s, overlap
        self.ys, self.xs, self.th, self.tw = ys, xs, th, tw
        self.h, self.w = out.shape[0] // s, out.shape[1] // s
        self.acc = np.zeros((th * s, tw * s, 3), dtype=np.float32)
        self.weight = np.zeros((th * s, tw * s), dtype=np.float32)
        self.carry: tuple[np.ndarray, np.ndarray] | None = None  # rows shared with the previous window row
        self.next_carry: tuple[np.ndarray, np.ndarray] | None = None

    def _carry_rows(self, i: int) -> int:
        """Output rows that window row ``i`` shares with window row ``i + 1`` (0 for the last row)."""
        return 0 if i + 1 >= len(self.ys) else (self.ys[i] + self.th - self.ys[i + 1]) * self.s

    def _load(self, c0: int, c1: int, x0: int) -> None:
        """Zero the buffer's columns ``c0:c1`` (output columns ``x0 + c0 …``) and load the carried rows."""
        self.acc[:, c0:c1] = 0.0
        self.weight[:, c0:c1] = 0.0
        if self.carry is not None:
            acc, weight = self.carry
            n = acc.shape[0]
            self.acc[:n, c0:c1] = acc[:, x0 + c0:x0 + c1]
            self.weight[:n, c0:c1] = weight[:, x0 + c0:x0 + c1]

    def add(self, i: int, j: int, patch: np.ndarray) -> None:
        s, th, tw = self.s, self.th, self.tw
        x0 = self.xs[j] * s
        if j == 0:
            rows = self._carry_rows(i)
            self.next_carry = None if rows == 0 else (
                np.empty((rows, self.out.shape[1], 3), dtype=np.float32),
                np.empty((rows, self.out.shape[1]), dtype=np.float32))
            self._load(0, tw * s, x0)
        else:
            kept = (self.xs[j - 1] + tw - self.xs[j]) * s  # shifted left by the last flush
            self._load(kept, tw * s, x0)
        wy = _ramp(th * s, self.overlap * s, self.ys[i] > 0, self.ys[i] + th < self.h)
        wx = _ramp(tw * s, self.overlap * s, self.xs[j] > 0, self.xs[j] + tw < self.w)
        wt = wy[:, None] * wx[None, :]
        self.acc += patch * wt[..., None]
        self.weight += wt
        # Flush what no later window touches.
        last_col = j + 1 == len(self.xs)
        cols = (self.out.shape[1] if last_col else self.xs[j + 1] * s) - x0
        rows = th * s - self._carry_rows(i)
        y0 = self.ys[i] * s
        self.out[y0:y0 + rows, x0:x0 + cols] = _finish(self.acc[:rows, :cols] / self.weight[:rows, :cols, None],
                                                       self.out.dtype)
        if self.next_carry is not None:
            self.next_carry[0][:, x0:x0 + cols] = self.acc[rows:, :cols]
            self.next_carry[1][:, x0:x0 + cols] = self.weight[rows:, :cols]
        if last_col:
            self.carry = self.next_carry
        else:  # keep the columns the next window overlaps, at the buffer's left edge
            kept = tw * s - cols
            self.acc[:, :kept] = self.acc[:, cols:].copy()
            self.weight[:, :kept] = self.weight[:, cols:].copy()


def upscale(model: SRModel, image: np.ndarray, *, tile: int | None = 512, overlap: int = 32, batch_size: int = 4,
            precision: Precision = "auto", out_dtype: type | np.dtype = np.float32) -> np.ndarray:
    """Super-resolve one image, tile by tile.

    Windows of at most ``tile × tile`` input pixels, as few as cover the image with at least ``overlap``
    pixels between neighbours, spread evenly (so tiling costs about ``overlap / tile`` extra work); each window's output
    is weighted by a ramp across the overlaps that ignores each window's outer margin (where its padding
    makes it least reliable), and the weighted outputs are averaged. The windows are run
    ``batch_size`` at a time. On CUDA the model runs under bf16/fp16 autocast when the architecture
    supports it (``precision="auto"``) with channels-last tensors; on the CPU in fp32. Output is
    deterministic for a given input, device and setting.

    Memory: on the device, ``batch_size`` windows. On the host, the output itself (3 bytes per output
    pixel for ``uint8``, 6 for ``uint16``, 12 for ``float32``), the input, and ``float32`` buffers of one
    window and of the output rows that two window rows share: each output pixel is written, converted
    to ``out_dtype``, as soon as no later window covers it. The result equals dividing a whole-image
    ``float32`` sum of the weighted windows by the whole-image weight map, bit for bit, then clipping and
    converting (``uint8``/``uint16`` exactly as :func:`~desra_core.image.to_bit_depth` does).

    Args:
        model: from :func:`load_sr_model`.
        image: ``(H, W, 3)`` RGB, ``float32`` in [0, 1], ``uint8`` or ``uint16``.
        tile: window side in input pixels; ``None`` runs the whole image at once.
        overlap: minimum overlap of neighbouring windows in input pixels (< tile).
        batch_size: windows per forward pass.
        precision: ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        out_dtype: ``float32`` (in [0, 1]), ``uint8`` or ``uint16``.

    Returns:
        ``(H·s, W·s, 3)`` RGB of ``out_dtype``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ShapeError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ShapeError(f"expected pixels of dtype uint8, uint16 or float32, got {image.dtype}")
    dtype_out = np.dtype(out_dtype)
    if dtype_out not in (np.float32, np.uint8, np.uint16):
        raise ConfigError(f"expected out_dtype float32, uint8 or uint16, got {dtype_out}")
    h, w = image.shape[:2]
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

    ys, th = _axis_windows(h, tile, overlap)
    xs, tw = _axis_windows(w, tile, overlap)
    windows = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    out = np.empty((h * s, w * s, 3), dtype=dtype_out)
    blender = _Blender(out, ys, xs, th, tw, s, overlap) if len(windows) > 1 else None

    def window(i: int, j: int) -> torch.Tensor:  # converted window by window: no float copy of the whole input
        part = to_float32(image[ys[i]:ys[i] + th, xs[j]:xs[j] + tw])
        return torch.from_numpy(np.ascontiguousarray(part.transpose(2, 0, 1)))

    # Weights stay fp32; autocast runs the convolutions/matmuls in reduced precision where asked.
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.inference_mode(), autocast:
        for k in range(0, len(windows), batch_size):
            group = windows[k:k + batch_size]
            batch = torch.stack([window(i, j) for i, j in group]).to(device)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            result = d(batch).float().cpu().numpy().transpose(0, 2, 3, 1)
            for (i, j), patch in zip(group, result, strict=True):
                if blender is None:
                    out[...] = _finish(patch, dtype_out)
                else:
                    blender.add(i, j, patch)
    return out
