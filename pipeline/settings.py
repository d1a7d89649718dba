"""The settings of a run: one validated object, carried unchanged from every entry point to the science.

``desra run``, ``desra detect``, the flows, fine-tuning and ``desra evaluate`` each build one
:class:`Settings` from their options, and every step reads what it needs from it: detection gets
``settings.detection`` (a :class:`~desra_core.DetectionConfig`) as it is, the SR step ``tile`` and
``overlap``, the pseudo-GT step ``feather``. A Prefect flow's parameters are the flat form of the same
object (:meth:`Settings.options`, the fields of :class:`~desra.pipeline.options.RunOptions`);
:meth:`Settings.from_options` turns them back. Every value is validated by ``RunOptions``, the one definition of
each option's type, default and bounds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from desra.pipeline.options import DETECTION_OPTIONS, RunOptions, check_options
from desra_core import ConfigError, DetectionConfig

__all__ = ["Settings"]

_DEFAULTS = RunOptions()


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

    mse_model: str = _DEFAULTS.mse_model
    gan_model: str = _DEFAULTS.gan_model
    segmenter: str | None = _DEFAULTS.segmenter
    labels_dir: str | None = _DEFAULTS.labels_dir
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    tile: int = _DEFAULTS.tile
    overlap: int = _DEFAULTS.overlap
    feather: float = _DEFAULTS.feather
    device: str = _DEFAULTS.device

    def __post_init__(self) -> None:
        # An empty string means none: a deployment made with DESRA_SEGMENTER="" passes "" as its default.
        object.__setattr__(self, "segmenter", self.segmenter or None)
        object.__setattr__(self, "labels_dir", self.labels_dir or None)
        if not isinstance(self.detection, DetectionConfig):
            raise ConfigError(f"expected detection settings as a DetectionConfig, got {type(self.detection).__name__}")
        for name, value in self.options().items():  # validated by RunOptions (ConfigError), each of its type
            if name not in DETECTION_OPTIONS:
                object.__setattr__(self, name, value)

    @classmethod
    def from_options(cls, **options: Any) -> Settings:
        """Settings from flat options (a flow's parameters, the command line; those not given take
        :class:`~desra.pipeline.options.RunOptions`'s defaults); raises ConfigError naming a bad or unknown one."""
        values = check_options(RunOptions, options)
        detection = DetectionConfig(**{name: values.pop(name) for name in DETECTION_OPTIONS})
        return cls(detection=detection, **values)

    def options(self) -> dict[str, Any]:
        """The flat, JSON-able form: :class:`~desra.pipeline.options.RunOptions`'s dump (the flows' parameter
        names); ``from_options(**s.options()) == s``. Raises ConfigError for a value out of its option's bounds."""
        return check_options(RunOptions, {name: getattr(self.detection if name in DETECTION_OPTIONS else self, name)
                                          for name in RunOptions.model_fields})

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
