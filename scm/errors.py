"""Input validation shared by every layer: clear messages naming the field and its allowed range."""

from __future__ import annotations

import math

import numpy as np


class ConfigurationError(ValueError):
    """Bad input: the message names the field, the value and the allowed range."""


class OutputError(OSError):
    """An output could not be written (a full disk, a directory that is not writable): the
    message names the file and says that what was there before is unchanged."""


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


#: Relative tolerance of "a whole number of steps": lengths are never rounded silently.
WHOLE_TOLERANCE = 1.0e-9


def whole_count(name: str, length: float, step_name: str, step: float,
                minimum: int = 1) -> int:
    """``length / step`` (both in seconds) as an integer of at least ``minimum``; a
    ``ConfigurationError`` naming both when it is not one (lengths are never rounded)."""
    ratio = float(length) / float(step)
    count = round(ratio)
    if count < minimum or abs(ratio - count) > WHOLE_TOLERANCE * max(1.0, abs(ratio)):
        whole = "a whole number" if minimum < 1 else (
            "a whole, nonzero number" if minimum == 1 else f"a whole number >= {minimum}")
        raise ConfigurationError(
            f"{name} ({float(length):g} s) must be {whole} of {step_name} ({float(step):g} s); "
            f"it is {ratio:.6g} (lengths are not rounded)")
    return int(count)


def check_number(name: str, value, units: str = "") -> float:
    """``value`` as a float; ``ConfigurationError`` unless it is a real number (int or float,
    not a bool or a string such as "8")."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer
                                                                 | np.floating):
        unit = f" in {units}" if units else ""
        raise ConfigurationError(f"{name} must be a number{unit} (got {value!r} of type "
                                 f"{type(value).__name__})")
    return float(value)


def check_integer(name: str, value) -> int:
    """``value`` as an int; ``ConfigurationError`` unless it is an integer (not a bool)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ConfigurationError(f"{name} must be an integer (got {value!r})")
    return int(value)


def _show(array: np.ndarray) -> str:
    if array.ndim == 0:
        return f"{float(array):g}"
    bad = ~np.isfinite(array)
    if bad.any():
        return f"non-finite at index {int(np.argmax(bad))}"
    return f"[{array.min():g} .. {array.max():g}]"
