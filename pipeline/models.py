"""The models of a run: which weights (by digest), loaded once per process, and the device calls the steps make.

:class:`Models` is what the device stage of :mod:`desra.pipeline.stream` calls: ``super_resolve(role, lr)`` and
``segment(gan)``. It loads nothing until the first call (a run whose images all come from the store loads
no model), and keeps loaded models in the process for the next run. Weights enter store keys by the
sha256 of their file (:func:`model_digest`), a segmenter by its id, or a local folder by its files
(:func:`segmenter_id`), so a changed checkpoint computes anew.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from desra.pipeline.roots import segmenter_path
from desra.pipeline.settings import Settings
from desra.pipeline.store import file_sha256
from desra_core import ConfigError, __version__
from desra_core.image import to_float32
from desra_core.models.sr import SRModel, check_same_scale, load_sr_model, upscale
from desra_core.models.weights import resolve_weights

if TYPE_CHECKING:
    from desra_core.models.segmentation import Segmenter

__all__ = [
    "SEG_VERSION",
    "SR_VERSION",
    "Models",
    "check_device",
    "check_models",
    "load_segmenter_cached",
    "model_digest",
    "segmenter_id",
]

SR_VERSION = f"sr-1/{__version__}"
SEG_VERSION = f"seg-2/{__version__}"  # 2: 8-bit results are segmented as uint8


def check_device(device: str) -> str:
    """The torch device a run asked for (``auto``: CUDA when available, else the CPU), checked on this
    machine. Raises :class:`ConfigError` for a name torch does not know or a device this machine lacks.

    The one place where ``auto`` is resolved: :func:`desra.pipeline.admission.check_run` calls it, and the
    admitted settings carry its answer to every step."""
    import torch

    name = device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"expected device auto, cpu, cuda or cuda:N, got {device!r}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"expected a device this worker has, got {device!r}, but CUDA is not available here")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"expected a device this worker has, got {device!r}, but it has {count} CUDA device(s)")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"expected a device this worker has, got {device!r}, but MPS is not available here")
    elif parsed.type != "cpu":
        raise ConfigError(f"expected device auto, cpu, cuda or cuda:N, got {device!r}")
    return name


def model_digest(spec: str) -> tuple[Path, str]:
    """The weights file of a model spec (known name or path) and its sha256."""
    path = resolve_weights(spec)
    return path, file_sha256(path)


@functools.lru_cache(maxsize=4)
def _sr_model(path: str, digest: str, device: str) -> SRModel:  # digest: a changed file is a new entry
    return load_sr_model(path, device=device)


@functools.lru_cache(maxsize=2)
def load_segmenter_cached(spec: str, device: str) -> Segmenter:
    """A segmenter, loaded once per process and device."""
    from desra_core.models.segmentation import load_segmenter

    return load_segmenter(spec, device=device)


def check_models(models: dict[str, tuple[Path, str]]) -> dict[str, Any]:
    """Load both SR models on the CPU, before any image is touched, and check that their scales agree.

    ``models``: role (``"mse"``, ``"gan"``) → ``(weights file, sha256)`` from :func:`model_digest`, so the
    files are hashed once per run. Raises :class:`~desra_core.ModelLoadError` naming the file for a
    truncated, non-SR or code-running checkpoint, or for two different scales. Returns each role's
    architecture and scale."""
    loaded = {role: _sr_model(str(path), digest, "cpu") for role, (path, digest) in models.items()}
    check_same_scale(loaded["mse"], loaded["gan"])
    return {role: {"architecture": m.architecture, "scale": m.scale} for role, m in loaded.items()}


def segmenter_id(spec: str) -> str:
    """How a segmenter spec enters store keys: a hub id as it is; a local folder (also behind a
    ``backend:`` prefix) with the digest of its files, so that a changed checkpoint computes anew."""
    local = segmenter_path(spec)
    return spec if local is None or not Path(local).is_dir() else f"{spec}@{_folder_digest(local)}"


def _folder_digest(folder: str) -> str:
    """Digest of a local model folder's files (names, sizes, mtimes) so a changed checkpoint re-runs."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


class Models:
    """The SR pair and segmenter of one :class:`~desra.pipeline.settings.Settings`, as the device stage calls them.

    ``digests`` (role → sha256) and ``segmenter_key`` are known at once (the files are hashed, nothing is
    loaded); the models load on the first call, on the thread that makes it (the device thread).
    ``sr=False`` (``desra detect``: every SR result is given): the SR weights are neither resolved nor
    hashed (``files`` and ``digests`` are empty), and only the segmenter can be called. The settings' device is
    used as it is: admitted settings (:func:`desra.pipeline.admission.admit`) carry it resolved.
    """

    def __init__(self, settings: Settings, *, sr: bool = True) -> None:
        if settings.device == "auto":
            raise ConfigError("expected settings with the device resolved (cpu, cuda…), got 'auto': admit them first "
                              "(desra.pipeline.admission.admit)")
        self.settings = settings
        self.device = settings.device
        self.files = {"mse": model_digest(settings.mse_model), "gan": model_digest(settings.gan_model)} if sr else {}
        self.digests = {role: digest for role, (_, digest) in self.files.items()}
        seg = settings.segmenter_in_use
        self.segmenter_key = None if seg is None else segmenter_id(seg)

    @property
    def scale(self) -> int:
        """The models' scale (from the CPU copy that the preflight checks load; no device work)."""
        path, digest = self._file("gan")
        return _sr_model(str(path), digest, "cpu").scale

    def sr_model(self, role: str) -> SRModel:
        path, digest = self._file(role)
        return _sr_model(str(path), digest, self.device)

    def _file(self, role: str) -> tuple[Path, str]:
        if role not in self.files:
            raise ConfigError(f"expected an SR model for role {role!r}, got none: this run was set up with its "
                              "SR results given (Models(settings, sr=False))")
        return self.files[role]

    def super_resolve(self, role: str, lr: np.ndarray) -> np.ndarray:
        """``lr`` upscaled by the ``role`` model at the input's bit depth (``uint8`` or ``uint16``)."""
        out = np.uint8 if lr.dtype == np.uint8 else np.uint16
        return upscale(self.sr_model(role), lr, tile=self.settings.tile, overlap=self.settings.overlap,
                       out_dtype=out)

    def segment(self, gan: np.ndarray) -> np.ndarray:
        """ADE20K label map of a GAN result (``uint8``/``uint16`` RGB)."""
        from desra_core.models.segmentation import segment

        # 8-bit results go in as they are (the reference resizes uint8 values); 16-bit ones as float32 in [0, 1].
        image = gan if gan.dtype == np.uint8 else to_float32(gan)
        return segment(load_segmenter_cached(self.settings.segmenter_in_use, self.device), image)
