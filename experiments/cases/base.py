"""What every case module provides, and the light helpers the case modules share.

A case module defines one ``Definition``: its description, default grid, time step and length,
its tunable parameters with their documented ranges, the builder, the papers it follows, and
its published ranges together with the function that measures them from a run's dataset (so
the tests, the plots and the README table read the same numbers).

This module and the case modules import only numpy at their top: listing the cases and
checking a run's options against their ranges must not start JAX (the command line answers a
bad option in a fraction of a second). What builds models is imported inside the builders,
from ``experiments.cases.building``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

    import scm.model
    import scm.state
    from scm.forcing import ForcingSeries

TURBULENCE_NAMES: tuple[str, ...] = ("constant", "local", "tke")
DAY = 86400.0
HOUR = 3600.0


@dataclasses.dataclass(frozen=True)
class Case:
    """A ready-to-run case: integrate with ``scm.integration.rollout(model, state0, forcing,
    0.0, dt, n_steps, save_every)``."""

    name: str
    description: str
    model: scm.model.Model
    state0: scm.state.State
    forcing: ForcingSeries
    dt: float
    hours: float
    save_every: int
    parameters: dict

    @property
    def n_steps(self) -> int:
        """Steps covering ``hours``, rounded to a whole number of output intervals."""
        intervals = max(1, round(self.hours * 3600.0 / (self.dt * self.save_every)))
        return intervals * self.save_every


@dataclasses.dataclass(frozen=True)
class PublishedRange:
    """The spread of a quantity in a case's intercomparison (or its exact value, for an
    analytic case): ``name`` is the key of the case's ``measure``, ``low``/``high`` the range
    in ``units``, ``text`` what it is and over which window. ``series``: the time series of a
    run's dataset the quantity is taken from, if it is one (plots mark the range on it), in
    the dataset's units times ``factor``."""

    name: str
    low: float
    high: float
    units: str
    text: str
    series: str | None = None
    factor: float = 1.0

    def contains(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


#: ``build(parameters, levels, top, dt, hours, turbulence) -> (model, state0, forcing, extra)``
Builder = Callable[[dict, int, float, float, float, str], tuple]


@dataclasses.dataclass(frozen=True)
class Definition:
    """One case: its specification, builder, sources and published ranges.

    ``parameters``: name → (default, low, high, units, description). ``window``: the hours
    over which the case's statistics are taken. ``measure(dataset)`` returns, for a run of the
    case (as written by ``experiments.run.case_dataset``), the value of every ``ranges``
    entry, from column 0.
    """

    name: str
    description: str
    levels: int
    top: float
    dt: float
    hours: float
    turbulence: str
    parameters: dict[str, tuple[float, float, float, str, str]]
    build: Builder
    references: tuple[str, ...] = ()
    window: tuple[float, float] | None = None
    ranges: tuple[PublishedRange, ...] = ()
    measure: Callable[[xr.Dataset], dict[str, float]] | None = None


# ---------------------------------------------------------------------------------------------
# Helpers of the builders


def piecewise(heights, values, extend: bool = True):
    """x(z) piecewise linear through the nodes; above the last node continued with the last
    slope (``extend``) or held."""
    heights, values = np.asarray(heights, float), np.asarray(values, float)
    slope = (values[-1] - values[-2]) / (heights[-1] - heights[-2]) if extend else 0.0

    def profile(z):
        z = np.asarray(z, float)
        inside = np.interp(z, heights, values)
        return np.where(z > heights[-1], values[-1] + slope * (z - heights[-1]), inside)

    return profile


def in_window(dataset: xr.Dataset, window: tuple[float, float]) -> np.ndarray:
    """Which saved times of ``dataset`` lie in the hours ``window`` (both ends included)."""
    hours = dataset["time"].values / HOUR
    return (hours >= window[0] - 1e-9) & (hours <= window[1] + 1e-9)


def window_mean(dataset: xr.Dataset, name: str, window: tuple[float, float]) -> xr.DataArray:
    """Column 0's ``name`` averaged over the hours ``window``; NaN values (no cloud, say) are
    left out."""
    inside = np.flatnonzero(in_window(dataset, window))
    return dataset[name].isel(column=0).isel(time=inside).mean("time", skipna=True)


def window_max(dataset: xr.Dataset, name: str, window: tuple[float, float]) -> float:
    """The largest value of column 0's time series ``name`` over the hours ``window``."""
    return float(np.nanmax(dataset[name].isel(column=0).values[in_window(dataset, window)]))
