"""desra_core: the science of DeSRA, free of any orchestration.

Array contract (every docstring repeats it): images are ``(H, W, 3)`` RGB, ``uint8`` in [0, 255] or
``float32`` in [0, 1]; masks are ``bool (H, W)``; label maps are ``uint8 (H, W)`` ADE20K indices
0..149 with 255 = unlabeled.
"""

from .artifact_map import texture_similarity
from .detection import ClassShare, Detection, DetectionConfig, Region, detect_artifacts
from .errors import (
    ConfigError,
    DesraError,
    InputImageError,
    LabelMapError,
    ModelLoadError,
    ShapeError,
    ShapeMismatchError,
)
from .metrics import ArtifactMetrics, artifact_metrics
from .pseudo_gt import build_pseudo_gt
from .semantic import ClassTable, apply_semantic_weights, default_class_table

__all__ = [
    "ArtifactMetrics",
    "ClassShare",
    "ClassTable",
    "ConfigError",
    "DesraError",
    "Detection",
    "DetectionConfig",
    "InputImageError",
    "LabelMapError",
    "ModelLoadError",
    "Region",
    "ShapeError",
    "ShapeMismatchError",
    "apply_semantic_weights",
    "artifact_metrics",
    "build_pseudo_gt",
    "default_class_table",
    "detect_artifacts",
    "texture_similarity",
]

__version__ = "0.1.0"
