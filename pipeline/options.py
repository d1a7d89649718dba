"""Every option of a run, written once: its name, type, default, bounds and help.

:class:`RunOptions` holds the settings of a run (the models, the semantic adjustment, detection, tiling, the
pseudo-GT blend, the device); :class:`FinetuneFields` holds fine-tuning's, made from the fields of
:class:`~desra_core.finetune.options.FinetuneOptions`, whose defaults, help texts and bounds stay in the core.
Everything else is derived from these two models:

- the command line's options (``desra run/detect/finetune/evaluate/upscale``, :mod:`desra.cli`): ``--`` and the
  field's name with ``-``, its type, default and help; bad values are refused by :func:`check_options`;
- the flows' parameters (the Prefect UI form, ``prefect deploy``'s schema, Prefect's parameter validation):
  :func:`with_options` gives a flow function one keyword parameter per field;
- :class:`~desra.pipeline.settings.Settings`, which validates its flat options through :class:`RunOptions`.

A new option is one new field here (or in ``FinetuneOptions``); a run option that the pipeline uses also needs
its attribute in :class:`~desra.pipeline.settings.Settings`.
"""

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields as dataclass_fields
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from desra_core import ConfigError, DetectionConfig
from desra_core.finetune.options import FinetuneOptions
from desra_core.models import DEFAULT_SEGMENTER

__all__ = ["DETECTION_OPTIONS", "FinetuneFields", "RunOptions", "check_options", "option_fields", "options_of",
           "with_options"]

_DETECTION = DetectionConfig()  # the science's defaults for detection (the paper's)

DETECTION_OPTIONS = ("threshold", "min_area", "min_area_fraction")
"""The run options that make up the :class:`~desra_core.DetectionConfig`."""


class RunOptions(BaseModel):
    """The settings of a run, flat: the flows' parameters and the command line's options have these names."""

    model_config = ConfigDict(extra="forbid")

    mse_model: str = Field("realesrnet_x4plus", min_length=1,
                           description="MSE-SR model: a known name (e.g. realesrnet_x4plus) or a weights file")
    gan_model: str = Field("realesrgan_x4plus", min_length=1,
                           description="GAN-SR model: a known name (e.g. realesrgan_x4plus) or a weights file")
    segmenter: str | None = Field(DEFAULT_SEGMENTER,
                                  description="segmenter of the semantic adjustment (Eq. 9): a SegFormer hub id or "
                                              "save_pretrained folder, 'backend:ARG' for another registered backend; "
                                              "none (or empty): every class weighs 1.0")
    labels_dir: str | None = Field(None, description="folder of precomputed ADE20K label maps of the GAN results, by "
                                                     "stem; when given, no segmenter runs")
    threshold: float = Field(_DETECTION.threshold, ge=0.0, le=1.0,
                             description="a pixel is an artifact where the adjusted similarity is below this")
    min_area: int = Field(_DETECTION.min_area, ge=0,
                          description="keep regions of more than this many pixels (the paper's 4000)")
    min_area_fraction: float | None = Field(_DETECTION.min_area_fraction, ge=0.0, lt=1.0,
                                            description="instead of min_area: keep regions larger than this "
                                                        "fraction of the image's pixels")
    tile: int = Field(512, ge=16, description="largest SR tile side, in input pixels")
    overlap: int = Field(32, ge=0, description="overlap of the SR tiles, in input pixels")
    feather: float = Field(0.0, ge=0.0, description="blend width (Gaussian sigma, pixels) of the pseudo-GT across "
                                                    "the mask edge; 0 = hard cut")
    device: str = Field("auto", min_length=1, description="torch device: auto (CUDA when available, else the CPU), "
                                                          "cpu, cuda or cuda:N")


def _finetune_fields() -> type[BaseModel]:
    """:class:`~desra_core.finetune.options.FinetuneOptions` as a pydantic model: its fields, defaults, help texts
    (``metadata["help"]``) and bounds (``metadata["bounds"]``)."""
    hints = typing.get_type_hints(FinetuneOptions)
    silent = [f.name for f in dataclass_fields(FinetuneOptions) if not f.metadata.get("help")]
    if silent:
        raise TypeError(f"expected every FinetuneOptions field to carry its help text, got none for {silent}")
    definitions: dict[str, Any] = {
        f.name: (hints[f.name], Field(f.default, description=f.metadata["help"], **f.metadata.get("bounds", {})))
        for f in dataclass_fields(FinetuneOptions)}
    return create_model("FinetuneFields", __config__=ConfigDict(extra="forbid"), __module__=__name__,
                        __doc__="The options of a fine-tuning run (FinetuneOptions's fields), flat.", **definitions)


FinetuneFields = _finetune_fields()


def option_fields(*models: type[BaseModel]) -> dict[str, FieldInfo]:
    """The fields of ``models``, by name, in order; raises TypeError where two models name the same option."""
    found: dict[str, FieldInfo] = {}
    for model in models:
        for name, info in model.model_fields.items():
            if name in found:
                raise TypeError(f"expected each option in one model, got {name!r} twice")
            found[name] = info
    return found


def options_of(model: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are options of ``model``."""
    return {name: values[name] for name in model.model_fields if name in values}


_SIGNS = {"greater_than_equal": ("at least", "ge"), "greater_than": ("above", "gt"),
          "less_than_equal": ("at most", "le"), "less_than": ("below", "lt")}  # words: "<" is escaped in output


def _sentence(error: Mapping[str, Any], model: type[BaseModel], label: Callable[[str], str]) -> str:
    """One pydantic error as desra's one sentence: ``expected …, got …``."""
    name = label(str(error["loc"][0])) if error["loc"] else "the options"
    kind = error["type"]
    if kind == "extra_forbidden":
        known = ", ".join(label(n) for n in model.model_fields)
        return f"expected options among {known}, got an unknown option {name}"
    if kind in _SIGNS:
        sign, key = _SIGNS[kind]
        return f"expected {name} {sign} {error['ctx'][key]}, got {error['input']!r}"
    if kind in ("string_too_short", "too_short"):
        return f"expected {name} to be given (not empty), got {error['input']!r}"
    message = str(error["msg"])
    message = message.removeprefix("Input should be ").removeprefix("Value error, ")
    return f"expected {name} to be {message}, got {error['input']!r}"


def check_options(model: type[BaseModel], values: Mapping[str, Any], *,
                  label: Callable[[str], str] = str) -> dict[str, Any]:
    """``values`` validated by ``model``: every option, the defaults filled in, each value of its field's type.

    ``label`` names an option in the error (e.g. as the command line's ``--min-area``).

    Raises:
        ConfigError: one sentence naming the first bad or unknown option.
    """
    try:
        return model.model_validate(dict(values)).model_dump()
    except ValidationError as e:
        raise ConfigError(_sentence(e.errors()[0], model, label)) from None


def _parameter(name: str, info: FieldInfo) -> inspect.Parameter:
    """A keyword parameter for the field: its type with the field's bounds, and a ``Field`` default that carries the
    default and the help (Prefect's parameter schema takes the description from a ``Field`` default)."""
    annotation: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=Field(info.default, description=info.description))


def with_options(*models: type[BaseModel]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a function that takes ``**options`` one keyword parameter per field of ``models`` (apply it under
    Prefect's ``@flow``): its signature, which Prefect reads for the parameter schema and for validation, is the
    function's own parameters and then the options, each with its type, bounds, default and help. A call binds
    its arguments to that signature (an unknown name is a TypeError, never swallowed) and passes every option,
    its default filled in, on in ``**options``."""
    fields = option_fields(*models)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        if len(own) == len(signature.parameters):
            raise TypeError(f"expected {fn.__qualname__} to take **options, got none")
        clash = sorted({p.name for p in own} & fields.keys())
        if clash:
            raise TypeError(f"expected {fn.__qualname__}'s own parameters apart from its options, got {clash}")
        exposed = signature.replace(parameters=[*own, *(_parameter(name, info) for name, info in fields.items())])

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            bound = exposed.bind(*args, **kwargs)
            bound.apply_defaults()
            return fn(**{name: value.default if isinstance(value, FieldInfo) else value
                         for name, value in bound.arguments.items()})

        call.__signature__ = exposed  # type: ignore[attr-defined]  # functions take __signature__; typeshed does not declare it
        return call

    return decorate
