"""Size limits that an operator sets through the environment (``DESRA_MAX_INPUT_MB``,
``DESRA_MAX_OUTPUT_MPIX``): one way to read them, so every limit refuses a bad value the same way."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from .errors import ConfigError

__all__ = ["positive_setting"]


def positive_setting(variable: str, unit: str, environ: Mapping[str, str] | None = None) -> float | None:
    """The positive number that ``variable`` holds in ``environ`` (default: this process's environment),
    or ``None`` when it is unset or empty (the caller's default applies).

    Raises:
        ConfigError: a value that is not a finite positive number, naming ``variable`` and ``unit``
            ("expected DESRA_MAX_INPUT_MB to be a positive number of MiB, got 'x'").
    """
    raw = (os.environ if environ is None else environ).get(variable, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"expected {variable} to be a positive number of {unit}, got {raw!r}")
    return value
