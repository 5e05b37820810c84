"""Input validation shared by every layer: clear messages naming the field and its allowed range."""

from __future__ import annotations

import math

import numpy as np


class ConfigurationError(ValueError):
    """Bad input: the message names the field, the value and the allowed range."""


def check_range(name: str, value, low=-math.inf, high=math.inf, units: str = "") -> None:
    """Raise ``ConfigurationError`` unless all of ``value`` is finite and in [low, high]."""
    array = np.asarray(value, dtype=float)
    unit = f" {units}" if units else ""
    if not np.all(np.isfinite(array)):
        raise ConfigurationError(f"{name} must be finite (got {_show(array)}{unit})")
    if np.any(array < low) or np.any(array > high):
        raise ConfigurationError(
            f"{name} = {_show(array)}{unit} is outside the allowed range [{low}, {high}]{unit}"
        )


def check_positive(name: str, value, units: str = "") -> None:
    array = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ConfigurationError(f"{name} must be > 0 (got {_show(array)} {units})".rstrip())


def check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigurationError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _show(array: np.ndarray) -> str:
    if array.ndim == 0:
        return f"{float(array):g}"
    bad = ~np.isfinite(array)
    if bad.any():
        return f"non-finite at index {int(np.argmax(bad))}"
    return f"[{array.min():g} .. {array.max():g}]"
