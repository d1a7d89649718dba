"""The options of a fine-tuning run, with desra's only defaults.

:class:`FinetuneOptions` is what ``desra finetune``, the ``finetune`` flow and ``desra(finetune=True)`` all
take (the flow's parameters have its field names); the trainer's :class:`~desra_core.finetune.trainer.FinetuneConfig`
takes its defaults from it. This module loads no torch, so the command line can show the defaults cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .trainer import FinetuneConfig

__all__ = ["DEFAULTS", "FinetuneOptions"]


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """Every option of a fine-tuning run. The defaults are the best row of the README's measured table.

    Training: ``iterations``, ``batch``, ``crop`` (HR side), ``lr``, ``ema`` (0: off), ``perceptual`` and
    ``gan``, the weights of the VGG19 and adversarial terms (0: off; the Real-ESRGAN recipe: 1.0 and 0.1),
    ``artifact_share`` (crops forced onto artifact pixels), ``seed``, ``vgg_weights`` (a local VGG19 file),
    ``discriminator`` (a pretrained U-Net discriminator to start from), ``checkpoint_every``.
    Validation and shipping: ``validate_dir`` (with ``validate_labels_dir``), else a ``holdout`` share of the
    images chosen with ``split_seed``; ``validate_every``; ``min_detail_ratio`` (kept on *every* validation
    image) and ``min_artifact_images`` (validation images with artifacts beyond the measured noise that the
    shipping rule needs, :func:`~desra_core.finetune.validation.choose_checkpoint`).
    """

    iterations: int = 200
    batch: int = 4
    crop: int = 128
    lr: float = 1e-4
    ema: float = 0.0
    perceptual: float = 0.0
    gan: float = 0.0
    artifact_share: float = 0.5
    seed: int = 0
    vgg_weights: str | None = None
    discriminator: str | None = None
    checkpoint_every: int = 100
    validate_every: int = 100
    min_detail_ratio: float = 0.9
    min_artifact_images: int = 3
    validate_dir: str | None = None
    validate_labels_dir: str | None = None
    holdout: float = 0.25
    split_seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"expected a held-out share in (0, 1), got {self.holdout}")

    def config(self) -> FinetuneConfig:
        """The trainer's settings (raises ConfigError for a bad value)."""
        from .losses import LossWeights
        from .trainer import FinetuneConfig

        return FinetuneConfig(iterations=self.iterations, batch=self.batch, crop=self.crop, lr=self.lr, ema=self.ema,
                              weights=LossWeights(perceptual=self.perceptual, gan=self.gan),
                              artifact_fraction=self.artifact_share, seed=self.seed, vgg_weights_path=self.vgg_weights,
                              checkpoint_every=self.checkpoint_every, validate_every=self.validate_every,
                              min_detail_ratio=self.min_detail_ratio, min_artifact_images=self.min_artifact_images)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: object) -> FinetuneOptions:
        return dataclasses.replace(self, **changes)


DEFAULTS = FinetuneOptions()
"""The defaults, for signatures and help texts."""
