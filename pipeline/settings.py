"""The settings of a run: one validated object, carried unchanged from every entry point to the science.

``desra run``, ``desra detect``, the flows, fine-tuning and ``desra evaluate`` each build one
:class:`Settings` from their options, and every step reads what it needs from it: detection gets
``settings.detection`` (a :class:`~desra_core.DetectionConfig`) as it is, the SR step ``tile`` and
``overlap``, the pseudo-GT step ``feather``. A Prefect flow's parameters are the flat form of the same
object (:meth:`Settings.options`); :meth:`Settings.from_options` turns them back, validating each value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from desra_core import ConfigError, DetectionConfig
from desra_core.models.segmentation import DEFAULT_SEGMENTER

__all__ = ["Settings"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How a run turns low-resolution images into masks, pseudo-GT and reports.

    Attributes:
        mse_model, gan_model: SR weights (a known name such as ``realesrgan_x4plus``, or a file).
        segmenter: a SegFormer (hub id or folder) for the semantic adjustment, or ``None`` for none.
        labels_dir: precomputed ADE20K label maps by stem; when set, no segmenter runs.
        detection: the detection parameters, handed to :func:`~desra_core.detect_artifacts` unchanged.
        tile, overlap: tiled SR inference (input pixels).
        feather: Gaussian sigma of the pseudo-GT blend across the mask edge (0 = hard cut).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``…
    """

    mse_model: str = "realesrnet_x4plus"
    gan_model: str = "realesrgan_x4plus"
    segmenter: str | None = DEFAULT_SEGMENTER
    labels_dir: str | None = None
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    tile: int = 512
    overlap: int = 32
    feather: float = 0.0
    device: str = "auto"

    def __post_init__(self) -> None:
        # An empty string means none: a deployment made with DESRA_SEGMENTER="" passes "" as its default.
        object.__setattr__(self, "segmenter", self.segmenter or None)
        object.__setattr__(self, "labels_dir", self.labels_dir or None)
        if not isinstance(self.detection, DetectionConfig):
            raise ConfigError(f"expected detection settings as a DetectionConfig, got {type(self.detection).__name__}")
        if isinstance(self.tile, bool) or not isinstance(self.tile, int) or self.tile < 16:
            raise ConfigError(f"expected tile to be a whole number ≥ 16, got {self.tile!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or self.overlap < 0:
            raise ConfigError(f"expected overlap to be a whole number ≥ 0, got {self.overlap!r}")
        if not (isinstance(self.feather, int | float) and self.feather >= 0):
            raise ConfigError(f"expected feather ≥ 0, got {self.feather!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"expected a device name, got {self.device!r}")

    @classmethod
    def from_options(cls, *, threshold: float = 0.7, min_area: int = 4000, min_area_fraction: float | None = None,
                     **rest: Any) -> Settings:
        """Settings from flat options (a flow's parameters, the command line); raises ConfigError."""
        detection = DetectionConfig(threshold=threshold, min_area=min_area, min_area_fraction=min_area_fraction)
        return cls(detection=detection, **rest)

    def options(self) -> dict[str, Any]:
        """The flat, JSON-able form (the flows' parameter names); ``from_options(**s.options()) == s``."""
        d = self.detection
        return {"mse_model": self.mse_model, "gan_model": self.gan_model, "segmenter": self.segmenter,
                "labels_dir": self.labels_dir, "threshold": d.threshold, "min_area": int(d.min_area),
                "min_area_fraction": d.min_area_fraction, "tile": self.tile, "overlap": self.overlap,
                "feather": self.feather, "device": self.device}

    @property
    def segmenter_in_use(self) -> str | None:
        """The segmenter that runs: none when label maps are given."""
        return None if self.labels_dir else self.segmenter

    def detection_key(self) -> dict[str, Any]:
        """The detection parameters as they enter store keys (the class table is the paper's, by code version)."""
        return {k: v for k, v in self.detection.to_dict().items() if k != "class_table_k"}

    def config_hash(self, *, mse: str | None = None, gan: str | None = None) -> str:
        """A short digest of everything that decides an image's outputs, for report rows."""
        payload = {**self.detection_key(), "feather": self.feather, "tile": self.tile, "overlap": self.overlap,
                   "mse": self.mse_model if mse is None else mse, "gan": self.gan_model if gan is None else gan,
                   "seg": self.segmenter_in_use, "labels": self.labels_dir}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)
