"""Semantic segmentation of the GAN-SR image into ADE20K classes, for the Eq. 9 semantic weights.

The paper segments with SegFormer-B5 trained on ADE20K at 640×640 (mmsegmentation). :func:`segment`
follows mmsegmentation's test procedure: keep-ratio rescale to fit (2048, crop) with bilinear
resizing, normalise, 'slide' inference with crop×crop windows at stride ``crop * 2 // 3`` (426 for
640; windows are clipped, not padded, where the image is smaller than the crop, as mmsegmentation
does), average the overlapping logits, resize the logits bilinearly to the input size and take the
argmax. Memory is bounded by working on a few classes at a time (``Segmenter.chunk_bytes``); classes
are independent, so this equals the one-shot computation bit for bit.

Array contract: images are RGB ``(H, W, 3)``, ``uint8`` or ``float32`` in [0, 1]; the result is a
``uint8 (H, W)`` map of ADE20K indices 0..149, 255 = unlabeled; tensors are ``(B, C, H, W)``.

Backends: :data:`SEGMENTERS` maps a backend name to a loader that returns a :class:`Segmenter`. To plug
in another network, write a loader that wraps it in a ``Segmenter`` (any ``torch.nn.Module`` that maps
normalised ``(B, 3, h, w)`` pixels to logits ``(B, C, h', w')``, or to an object with ``.logits``; its
normalisation, crop size and ``to_ade20k`` table) and pass ``registry={**SEGMENTERS, "mine": loader}``
to :func:`load_segmenter`; "mine:ARG" then calls ``loader("ARG", **kwargs)``.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from ..errors import ConfigError, DesraError, ModelLoadError, ShapeError
from ..semantic import ADE20K_NUM_CLASSES, UNLABELED, default_class_table
from . import DEFAULT_SEGMENTER  # the paper's SegFormer-B5, named where torch is not needed

__all__ = ["DEFAULT_SEGMENTER", "SEGMENTERS", "Segmenter", "load_segformer", "load_segmenter", "prepare",
           "segment"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, kw_only=True, eq=False)
class Segmenter:
    """A loaded segmentation network and how to feed it.

    Attributes:
        model: ``torch.nn.Module`` in eval mode on ``device``; ``model(x)`` with normalised
            ``(B, 3, h, w)`` float32 input gives logits ``(B, C, h', w')`` (or an object with ``.logits``).
        name: the id or path it came from.
        to_ade20k: ``uint8 (C,)``: model class → ADE20K index 0..149, or 255 (unlabeled).
        pixel_scale: factor applied to 0..255 pixel values before normalisation (1/255 for SegFormer).
        mean, std: per-channel normalisation ``(x * pixel_scale - mean) / std``.
        crop: sliding-window size (square); the short side is rescaled to at most this.
        long_side: the long side is rescaled to at most this (mmsegmentation's 2048).
        batch_size: windows per forward pass.
        chunk_bytes: budget of the per-class logit buffers (at least one class is processed at once;
            the running argmax adds about 25 bytes per output pixel).
        device: where the model runs; fp16 autocast is used on CUDA.
    """

    model: torch.nn.Module
    name: str
    to_ade20k: np.ndarray
    pixel_scale: float = 1 / 255
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    crop: int = 512
    long_side: int = 2048
    batch_size: int = 4
    chunk_bytes: int = 256 * 2**20
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        lut = np.asarray(self.to_ade20k)
        if lut.ndim != 1 or lut.size == 0 or lut.dtype.kind not in "iu":
            raise ConfigError(f"expected to_ade20k as a 1-D integer array, got {lut.dtype} {lut.shape}")
        if ((lut < 0) | ((lut >= ADE20K_NUM_CLASSES) & (lut != UNLABELED))).any():
            raise ConfigError(f"expected to_ade20k values in 0..{ADE20K_NUM_CLASSES - 1} or {UNLABELED}, "
                              f"got {sorted(set(lut.tolist()))[:5]}…")
        for name in ("crop", "long_side", "batch_size", "chunk_bytes"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"expected {name} to be a positive integer, got {value!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"expected 3 means and 3 positive stds, got {self.mean} and {self.std}")
        lut = lut.astype(np.uint8)
        lut.flags.writeable = False
        object.__setattr__(self, "to_ade20k", lut)
        object.__setattr__(self, "device", torch.device(self.device))

    @property
    def stride(self) -> int:
        """Window stride: two thirds of the crop, rounded down (426 for 640, as in mmsegmentation)."""
        return max(1, self.crop * 2 // 3)


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("DESRA_OFFLINE", "HF_HUB_OFFLINE"))


def _looks_local(source: str) -> bool:
    """A path rather than a hub id ("name" or "org/name")."""
    return (Path(source).expanduser().exists() or source.startswith((".", "~", "/")) or "\\" in source
            or source.count("/") > 1)


class _ProcessorSettings(TypedDict):
    pixel_scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: int


def _processor_settings(processor: object, source: str) -> _ProcessorSettings:
    """Segmenter fields from a (Segformer) image processor: rescale factor, mean/std and square crop."""
    def get(obj: object, key: str, default: object = None) -> object:
        value = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
        return default if value is None else value

    def number(value: object, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ModelLoadError(f"expected a number for the image processor's {key}, got {value!r} "
                                 f"(file: {source})")
        return float(value)

    def triple(value: object, key: str) -> tuple[float, float, float]:
        values = [number(v, key) for v in (value if isinstance(value, list | tuple) else [value] * 3)]
        if len(values) != 3:
            raise ModelLoadError(f"expected 3 normalisation values, got {values} (file: {source})")
        return values[0], values[1], values[2]

    normalise = get(processor, "do_normalize", True)
    size = get(processor, "size", 512)
    if isinstance(size, numbers.Integral):
        crop = int(size)
    elif get(size, "height") and get(size, "width"):
        crop = min(int(number(get(size, "height"), "size")), int(number(get(size, "width"), "size")))
    else:
        crop = int(number(get(size, "shortest_edge", 512), "size"))
    return {"pixel_scale": number(get(processor, "rescale_factor", 1 / 255), "rescale_factor")
            if get(processor, "do_rescale", True) else 1.0,
            "mean": triple(get(processor, "image_mean", _IMAGENET_MEAN), "image_mean") if normalise
            else (0.0, 0.0, 0.0),
            "std": triple(get(processor, "image_std", _IMAGENET_STD), "image_std") if normalise
            else (1.0, 1.0, 1.0),
            "crop": crop}


def _class_lut(id2label: Mapping[Any, object], class_mapping: Mapping[Any, object] | None,
               source: str) -> np.ndarray:
    """Model class → ADE20K index (255 = unlabeled), after checking the checkpoint's class order."""
    ade = default_class_table().names
    labels = {int(k): str(v).strip() for k, v in id2label.items()}
    if sorted(labels) != list(range(len(labels))):
        raise ModelLoadError(f"expected id2label ids 0..{len(labels) - 1}, got {sorted(labels)[:5]}… "
                             f"(file: {source})")
    names = [labels[i] for i in range(len(labels))]
    if class_mapping is None:
        if names == list(ade):
            return np.arange(len(names), dtype=np.uint8)
        pairs = [(names[i] if i < len(names) else "-", ade[i] if i < len(ade) else "-")
                 for i in range(max(len(names), len(ade)))]
        diffs = [f"{i}: '{m}' vs '{a}'" for i, (m, a) in enumerate(pairs) if m != a]
        raise ModelLoadError(
            f"expected the {len(ade)} ADE20K classes in ADE20K order, got {len(names)} classes that differ "
            f"({', '.join(diffs[:5])}); pass class_mapping={{model id or name: ADE20K index or name}} "
            f"to map them (unmapped classes become {UNLABELED}) (file: {source})")
    ids_by_name: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        ids_by_name.setdefault(name, []).append(i)
    ade_by_name = {name: i for i, name in enumerate(ade)}
    lut = np.full(len(names), UNLABELED, dtype=np.uint8)
    for key, value in class_mapping.items():
        if isinstance(key, numbers.Integral) and not isinstance(key, bool) and 0 <= int(key) < len(names):
            model_id = int(key)
        elif isinstance(key, str) and len(ids_by_name.get(key.strip(), [])) == 1:
            model_id = ids_by_name[key.strip()][0]
        else:
            raise ModelLoadError(f"expected class_mapping keys that are model ids 0..{len(names) - 1} or "
                                 f"unique model class names, got {key!r} (file: {source})")
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and (
                0 <= int(value) < len(ade) or value == UNLABELED):
            lut[model_id] = int(value)
        elif isinstance(value, str) and value.strip() in ade_by_name:
            lut[model_id] = ade_by_name[value.strip()]
        else:
            raise ModelLoadError(f"expected class_mapping values that are ADE20K indices 0..{len(ade) - 1}, "
                                 f"{UNLABELED} or ADE20K class names, got {value!r} for {key!r} (file: {source})")
    return lut


def load_segformer(id_or_path: str = DEFAULT_SEGMENTER, *, device: str | torch.device = "cpu",
                   class_mapping: Mapping[int, int] | Mapping[str, str | int] | None = None,
                   local_files_only: bool | None = None) -> Segmenter:
    """Load a SegFormer semantic-segmentation checkpoint (hub id or ``save_pretrained`` folder).

    The image processor's config (``preprocessor_config.json``) gives the normalisation and the crop
    size; a local folder without one gets ``SegformerImageProcessor``'s defaults (ImageNet mean/std,
    512). The checkpoint's ``id2label`` (names stripped) must equal the paper's ADE20K class order,
    unless ``class_mapping`` maps model ids or names to ADE20K indices or names (unmapped → 255).

    Args:
        id_or_path: hub id (e.g. :data:`DEFAULT_SEGMENTER`) or a local folder.
        device: where the model runs.
        class_mapping: model class → ADE20K class, for checkpoints not in ADE20K order.
        local_files_only: never reach the hub; defaults to True when ``DESRA_OFFLINE`` or
            ``HF_HUB_OFFLINE`` is set to 1.

    Raises:
        ModelLoadError: missing folder, unreachable hub, not a SegFormer, missing weights, class order
            that differs from ADE20K without a mapping, or an invalid mapping.
    """
    from transformers import AutoConfig, AutoImageProcessor, SegformerForSemanticSegmentation, SegformerImageProcessor

    source = str(id_or_path)
    offline = _offline() if local_files_only is None else bool(local_files_only)
    hint = ("pass a local folder made by save_pretrained" if _looks_local(source) else
            f"download it with `huggingface-cli download {source} --local-dir DIR` and pass DIR, or pass a "
            "local save_pretrained folder")
    if _looks_local(source) and not Path(source).expanduser().is_dir():
        raise ModelLoadError(f"expected a SegFormer folder made by save_pretrained, got a path that does not "
                             f"exist or is not a folder (file: {source})")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
        if config.model_type != "segformer":
            raise ModelLoadError(f"expected a SegFormer checkpoint, got model_type '{config.model_type}' "
                                 f"(file: {source})")
        lut = _class_lut(config.id2label or {}, class_mapping, source)  # before reading any weights
        # With output_loading_info, from_pretrained returns (model, info): its annotation says model only.
        model, info = cast(tuple[SegformerForSemanticSegmentation, dict[str, list[str]]],
                           SegformerForSemanticSegmentation.from_pretrained(
                               source, config=config, local_files_only=offline, output_loading_info=True))
        missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith("num_batches_tracked"))
        if missing or info.get("mismatched_keys"):
            raise ModelLoadError(f"expected complete SegFormer segmentation weights, got missing or mismatched "
                                 f"tensors {(missing or list(info['mismatched_keys']))[:4]} (file: {source})")
        local = Path(source).expanduser()
        if local.is_dir() and not (local / "preprocessor_config.json").is_file():
            processor = SegformerImageProcessor()
        else:
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=offline)
    except DesraError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, … for unusable checkpoints
        detail = " ".join(str(exc).split())  # one line: transformers' messages span several
        raise ModelLoadError(f"expected a loadable SegFormer checkpoint, got {type(exc).__name__}: {detail}; "
                             f"{hint} (file: {source})") from exc
    # As a Module: the checker misreads the signature of transformers' functools.wraps'd `to` (same call).
    module: torch.nn.Module = model
    module = module.to(torch.device(device)).eval().requires_grad_(False)
    return Segmenter(model=module, name=source, to_ade20k=lut, device=torch.device(device),
                     **_processor_settings(processor, source))


SEGMENTERS: dict[str, Callable[..., Segmenter]] = {"segformer": load_segformer}
_DEFAULT_BACKEND = "segformer"
_SPEC = re.compile(r"([A-Za-z_][\w.-]+):(.+)")


def load_segmenter(spec: str, *, registry: Mapping[str, Callable[..., Segmenter]] = SEGMENTERS,
                   **kwargs: object) -> Segmenter:
    """Load a segmenter from ``"backend:id_or_path"`` or a plain id/path (→ the ``segformer`` backend).

    ``kwargs`` go to the backend's loader (for SegFormer: ``device``, ``class_mapping``,
    ``local_files_only``); a loader rejects names it does not know.

    Raises:
        ModelLoadError: unknown backend, or whatever the loader raises.
    """
    match = _SPEC.fullmatch(spec)
    backend, target = (match.group(1), match.group(2)) if match else (_DEFAULT_BACKEND, spec)
    if backend not in registry:
        raise ModelLoadError(f"expected a segmentation backend among {sorted(registry)}, got '{backend}' "
                             f"(in '{spec}')")
    return registry[backend](target, **kwargs)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        shape = getattr(image, "shape", type(image).__name__)
        raise ShapeError(f"expected an RGB image of shape (H, W, 3), got {shape}")
    if image.dtype == np.float32:
        if not np.isfinite(image).all() or image.min() < -1e-3 or image.max() > 1 + 1e-3:
            raise ShapeError("expected float32 values in [0, 1], got values outside it (or NaN/infinity)")
        clipped: NDArray[np.float32] = np.clip(image, 0.0, 1.0)
        return clipped
    if image.dtype != np.uint8:
        raise ShapeError(f"expected a uint8 or float32 image, got {image.dtype}")
    return image


def prepare(segmenter: Segmenter, image: np.ndarray) -> torch.Tensor:
    """The network input: ``image`` rescaled to fit (long_side, crop), keeping its aspect ratio, and normalised.

    The size is ``int(side * s + 0.5)`` with ``s = min(long_side / long, crop / short)`` (mmcv's
    ``imrescale``), resized with OpenCV's bilinear filter (on the uint8 values for uint8 images).

    Returns:
        float32 ``(1, 3, h, w)`` on ``segmenter.device``.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    s = min(segmenter.long_side / max(h, w), segmenter.crop / min(h, w))
    size = (max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5)))
    if size != (h, w):
        image = cv2.resize(np.ascontiguousarray(image), size[::-1], interpolation=cv2.INTER_LINEAR)
    pixels = image.astype(np.float32) * (np.float32(255.0) if image.dtype == np.float32 else np.float32(1.0))
    mean, std = np.asarray(segmenter.mean, np.float32), np.asarray(segmenter.std, np.float32)
    x = (pixels * np.float32(segmenter.pixel_scale) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(segmenter.device)


def _windows(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmsegmentation's slide grid: (y1, y2, x1, x2) boxes, row-major, clipped to the image."""
    boxes = []
    for i in range(max(h - crop + stride - 1, 0) // stride + 1):
        for j in range(max(w - crop + stride - 1, 0) // stride + 1):
            y2, x2 = min(i * stride + crop, h), min(j * stride + crop, w)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def _window_logits(segmenter: Segmenter, x: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """Raw logits ``(N, C, h', w')`` (float32) of every window, ``batch_size`` windows per pass."""
    device = segmenter.device
    out = []
    for start in range(0, len(boxes), segmenter.batch_size):
        batch = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes[start:start + segmenter.batch_size]])
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            result = segmenter.model(batch)
        logits = getattr(result, "logits", result)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or logits.shape[1] != segmenter.to_ade20k.size:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ShapeError(f"expected logits (B, {segmenter.to_ade20k.size}, h, w) from {segmenter.name}, "
                             f"got {shape}")
        out.append(logits.float())
    return torch.cat(out)


def _slide_argmax(logits: torch.Tensor, boxes: list[tuple[int, int, int, int]], size: tuple[int, int],
                  out_size: tuple[int, int], chunk_bytes: int) -> torch.Tensor:
    """Average the upsampled window logits over ``size``, resize to ``out_size`` and argmax.

    Works on as many classes at a time as ``chunk_bytes`` allows; a running maximum (first index wins,
    like ``argmax``) makes the result identical to doing all classes at once. Returns int64 ``out_size``.
    """
    classes = logits.shape[1]
    count = torch.zeros(size, device=logits.device)
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    window = (boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2])
    per_class = 4 * (size[0] * size[1] + out_size[0] * out_size[1] + window[0] * window[1])
    step = max(1, min(classes, chunk_bytes // per_class))
    best = torch.full(out_size, -torch.inf, device=logits.device)
    label = torch.zeros(out_size, dtype=torch.int64, device=logits.device)
    for c0 in range(0, classes, step):
        acc = torch.zeros((min(step, classes - c0), *size), device=logits.device)
        for i, (y1, y2, x1, x2) in enumerate(boxes):
            acc[:, y1:y2, x1:x2] += F.interpolate(logits[i:i + 1, c0:c0 + step], size=window, mode="bilinear",
                                                  align_corners=False)[0]
        acc /= count
        up = F.interpolate(acc[None], size=out_size, mode="bilinear", align_corners=False)[0]
        del acc
        idx = up.argmax(0)
        top = up.gather(0, idx[None])[0]
        better = top > best
        best = torch.where(better, top, best)
        label = torch.where(better, idx + c0, label)
    return label


def segment(segmenter: Segmenter, image: np.ndarray) -> np.ndarray:
    """Label every pixel of ``image`` with an ADE20K class (mmsegmentation 'slide' inference; see module doc).

    Args:
        segmenter: from :func:`load_segmenter` / :func:`load_segformer` or any registered backend.
        image: RGB ``(H, W, 3)``, ``uint8`` or ``float32`` in [0, 1].

    Returns:
        ``uint8 (H, W)`` ADE20K indices 0..149; 255 where the model's class maps to none.

    Raises:
        ShapeError: wrong shape or dtype, float values outside [0, 1], or logits of the wrong shape.
    """
    with torch.inference_mode():
        x = prepare(segmenter, image)
        size = (x.shape[2], x.shape[3])
        boxes = _windows(*size, segmenter.crop, segmenter.stride)
        logits = _window_logits(segmenter, x, boxes)
        label = _slide_argmax(logits, boxes, size, image.shape[:2], segmenter.chunk_bytes)
    labels: NDArray[np.uint8] = segmenter.to_ade20k[label.cpu().numpy()]
    return labels
