"""The options of a fine-tuning run, with desra's only defaults.

:class:`FinetuneOptions` is what ``desra finetune``, the ``finetune`` flow and ``desra(finetune=True)`` all
take (the flow's parameters have its field names); the trainer's :class:`~desra_core.finetune.trainer.FinetuneConfig`
takes its defaults from it. Each field also carries its help text and bounds (its metadata, checked when
the options are made), from which the command line's options and the flow's parameters are derived
(:mod:`desra.pipeline.options`). This module loads no torch, so the command line can show the defaults cheaply.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from .losses import LossWeights
    from .trainer import FinetuneConfig

__all__ = ["DEFAULTS", "TEXTURE_DEFAULT", "FinetuneOptions"]

TEXTURE_DEFAULT = 1.0
"""The texture term's weight in the automatic objective when no VGG19 weights are available (L1 + texture): on
``benchmarks/finetune_generalization.py``'s choice photos it removed more artifacts than L1 alone (median −61 %
against −55 % over 3 splits × 3 seeds) with as many shipped runs (docs/finetuning.md)."""

_BOUNDS = {"ge": ("at least", operator.ge), "gt": ("above", operator.gt), "le": ("at most", operator.le),
           "lt": ("below", operator.lt)}


def _option(default: object, help: str, **bounds: float) -> Any:
    """A field with its one default, its help text and its bounds (``ge``, ``gt``, ``le``, ``lt``), which the
    command line and the flows read from the field's metadata (:mod:`desra.pipeline.options`)."""
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"expected bounds among {sorted(_BOUNDS)}, got {sorted(unknown)}")
    return dataclasses.field(default=default, metadata={"help": help, "bounds": bounds})


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """Every option of a fine-tuning run, with desra's one set of defaults (measured in docs/finetuning.md).

    Training: ``iterations``, ``batch``, ``crop`` (HR side), ``lr``, ``ema`` (0: off), ``perceptual``, ``gan``
    and ``texture``, the weights of the VGG19, adversarial and texture terms (0: off; None: automatic, see
    :meth:`objective`: the Real-ESRGAN recipe, 1.0, 0.1 on CUDA and 0, where VGG19 weights are available, else
    L1 + :data:`TEXTURE_DEFAULT` · texture), ``artifact_share`` (crops forced onto artifact pixels), ``seed``,
    ``vgg_weights`` (a local VGG19 file), ``discriminator`` (a pretrained U-Net discriminator to start from),
    ``checkpoint_every``.
    Validation and shipping: ``validate_dir`` (with ``validate_labels_dir``), else a ``holdout`` share of the
    images chosen with ``split_seed``; ``validate_every``; ``min_detail_ratio`` (kept on *every* validation
    image) and ``min_artifact_images`` (validation images with artifacts beyond the measured noise that the
    shipping rule needs, :func:`~desra_core.finetune.validation.choose_checkpoint`).
    """

    iterations: int = _option(200, "training iterations", ge=1)
    batch: int = _option(4, "crops per iteration", ge=1)
    crop: int = _option(128, "HR crop side, a multiple of the scale", ge=8)
    lr: float = _option(1e-4, "Adam learning rate", gt=0)
    ema: float = _option(0.0, "EMA decay of the generator; 0 = off", ge=0, lt=1)
    perceptual: float | None = _option(None, "weight of the VGG19 perceptual term (the recipe's: 1.0; needs VGG19 "
                                             "weights: torchvision's cache or vgg_weights); 0 = off; none = auto: "
                                             "1.0 where VGG19 weights are available, else 0", ge=0)
    gan: float | None = _option(None, "weight of the adversarial term against a U-Net discriminator (the recipe's: "
                                      "0.1; discriminator to start from one); 0 = off; none = auto: 0.1 on CUDA "
                                      "where VGG19 weights are available, else 0", ge=0)
    texture: float | None = _option(None, "weight of the texture term (Laplacian bands and local contrast, no "
                                          f"pretrained network); 0 = off; none = auto: {TEXTURE_DEFAULT} without "
                                          "VGG19 weights, else 0", ge=0)
    artifact_share: float = _option(0.5, "share of training crops forced onto artifact pixels", ge=0, le=1)
    seed: int = _option(0, "training seed")
    vgg_weights: str | None = _option(None, "local VGG19 weights file (offline machines)")
    discriminator: str | None = _option(None, "pretrained U-Net discriminator to start from (e.g. *_netD.pth)")
    checkpoint_every: int = _option(100, "steps between checkpoints; the same run started again resumes", ge=1)
    validate_every: int = _option(100, "steps between validations", ge=1)
    min_detail_ratio: float = _option(0.9, "least detail, relative to the original model, that a shipped "
                                           "checkpoint keeps on every validation image", ge=0)
    min_artifact_images: int = _option(3, "validation images with artifacts beyond the measured noise that "
                                          "shipping needs; with fewer nothing is trained", ge=1)
    validate_dir: str | None = _option(None, "folder of validation images, never trained on (default: hold out "
                                             "a holdout share of the images)")
    validate_labels_dir: str | None = _option(None, "label maps of the validation images, by stem (default: the "
                                                    "run's labels_dir)")
    holdout: float = _option(0.25, "share of the images held out for validation without validate_dir, at least "
                                   "one", gt=0, lt=1)
    split_seed: int = _option(0, "seed of the held-out choice (recorded in the model card)")

    def __post_init__(self) -> None:
        for option in dataclasses.fields(self):
            value = getattr(self, option.name)
            if value is None and option.default is None:
                continue
            for kind, limit in option.metadata.get("bounds", {}).items():
                sign, holds = _BOUNDS[kind]
                if isinstance(value, bool) or not isinstance(value, int | float) or not holds(value, limit):
                    raise ConfigError(f"expected {option.name} {sign} {limit}, got {value!r}")

    def objective(self, device: object = "cpu") -> dict[str, Any]:
        """The loss weights a run on ``device`` uses: ``{"perceptual", "gan", "texture", "why"}``.

        A weight given (a number; 0 = off) is used as it is; each one left None is automatic: where VGG19
        weights are available (``vgg_weights``, or torchvision's cache,
        :func:`~desra_core.finetune.losses.vgg19_weights_available`) the Real-ESRGAN recipe (perceptual 1.0,
        gan 0.1 on a CUDA device else 0, texture 0), else L1 + texture (perceptual 0, gan 0, texture
        :data:`TEXTURE_DEFAULT`). ``why`` says which in one sentence (recorded in the model card).
        """
        from .losses import vgg19_weights_available

        given = {"perceptual": self.perceptual, "gan": self.gan, "texture": self.texture}
        cuda = str(device).startswith("cuda")
        found = None if None not in given.values() else vgg19_weights_available(self.vgg_weights)
        if found is not None:
            auto = {"perceptual": 1.0, "gan": 0.1 if cuda else 0.0, "texture": 0.0}
            where = f"given as vgg_weights ({found})" if self.vgg_weights else f"found in torchvision's cache ({found})"
            why = f"VGG19 weights {where}: the Real-ESRGAN recipe" + ("" if cuda else ", without its GAN term on a CPU")
        else:
            auto = {"perceptual": 0.0, "gan": 0.0, "texture": TEXTURE_DEFAULT}
            why = "no VGG19 weights: L1 + texture"
        weights = {name: auto[name] if value is None else float(value) for name, value in given.items()}
        chosen = [f"{name} {value:g}" for name, value in given.items() if value is not None]
        if len(chosen) == len(given):
            why = "weights as given: " + ", ".join(chosen)
        elif chosen:
            why += " (given: " + ", ".join(chosen) + ")"
        return {**weights, "why": why}

    def loss_weights(self, device: object = "cpu") -> LossWeights:
        """The trainer's loss weights on ``device`` (:meth:`objective`)."""
        from .losses import LossWeights

        objective = self.objective(device)
        return LossWeights(perceptual=objective["perceptual"], gan=objective["gan"], texture=objective["texture"])

    def config(self, device: object = "cpu") -> FinetuneConfig:
        """The trainer's settings for a run on ``device`` (its automatic loss weights resolved by
        :meth:`objective`); raises ConfigError for a bad value."""
        from .trainer import FinetuneConfig

        return FinetuneConfig(iterations=self.iterations, batch=self.batch, crop=self.crop, lr=self.lr, ema=self.ema,
                              weights=self.loss_weights(device),
                              artifact_fraction=self.artifact_share, seed=self.seed, vgg_weights_path=self.vgg_weights,
                              checkpoint_every=self.checkpoint_every, validate_every=self.validate_every,
                              min_detail_ratio=self.min_detail_ratio, min_artifact_images=self.min_artifact_images)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> FinetuneOptions:  # field values: __post_init__ checks their bounds
        return dataclasses.replace(self, **changes)


DEFAULTS = FinetuneOptions()
"""The defaults, for signatures and help texts."""
