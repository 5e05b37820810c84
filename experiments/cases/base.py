"""What every case module provides, and the helpers the case builders share.

A case module defines one ``Definition``: its description, default grid, time step and length,
its tunable parameters with their documented ranges, the builder, the papers it follows, and
its published ranges together with the function that measures them from a run's dataset (so
the tests, the plots and the README table read the same numbers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import xarray as xr

import scm.model
import scm.state
from physics.clouds import AbstractCloudSource, StatisticalCloud
from physics.surface import AbstractSurfaceLayer, MoninObukhovSurface
from physics.thermodynamics import saturation_adjustment, virtual_potential_temperature
from physics.turbulence import ConstantDiffusivity, LocalClosure, TKEClosure
from scm.constants import VIRTUAL_COEFFICIENT
from scm.forcing import Forcing, ForcingSeries
from scm.grid import ColumnGrid
from scm.state import as_float

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


def moist_grid(z_interface, surface_pressure: float, thl_profile, qt_profile) -> ColumnGrid:
    """A grid whose hydrostatic reference state is that of the initial θl, qt profiles: the
    reference potential temperature is their θv, the liquid included (the anelastic base
    state of the LES, e.g. MicroHH's ``calc_base_state``). θv needs the pressure for the
    saturation adjustment and the pressure needs θv; two passes from the dry estimate
    θl (1 + 0.608 qt) agree to far below the adjustment's own accuracy."""
    z = 0.5 * (np.asarray(z_interface)[1:] + np.asarray(z_interface)[:-1])
    thl, qt = np.asarray(thl_profile(z), float), np.asarray(qt_profile(z), float)
    theta_v = thl * (1.0 + VIRTUAL_COEFFICIENT * qt)
    for _ in range(2):
        grid = ColumnGrid.from_interfaces(z_interface, surface_pressure,
                                          lambda heights, values=theta_v: values)
        _, liquid = saturation_adjustment(thl, qt, np.asarray(grid.pressure),
                                          np.asarray(grid.exner))
        theta_v = np.asarray(virtual_potential_temperature(thl, qt, liquid,
                                                           np.asarray(grid.exner)))
    return ColumnGrid.from_interfaces(z_interface, surface_pressure,
                                      lambda heights, values=theta_v: values)


def turbulence_scheme(kind: str, surface: AbstractSurfaceLayer | None, dt: float,
                      eddy_viscosity: float = 5.0, **options):
    """The closure named ``kind`` (``TURBULENCE_NAMES``) over ``surface`` for time step dt;
    ``options`` go to the TKE closure."""
    if kind == "constant":
        return ConstantDiffusivity(eddy_viscosity, eddy_viscosity, no_slip=surface is None,
                                   surface=surface)
    if surface is None:
        surface = MoninObukhovSurface(0.1, heat_boundary="flux")
    if kind == "local":
        return LocalClosure(surface, time_step=dt)
    return TKEClosure(surface, time_step=dt, **options)


def cloud_source(closure) -> AbstractCloudSource:
    """Where the microphysics and radiation take the cloud from: the closure itself when it
    diagnoses one (the TKE closure, with its updraft), else the grid mean's statistical
    cloud."""
    return closure if isinstance(closure, AbstractCloudSource) else StatisticalCloud()


def initial_state(model: scm.model.Model, u, v, thl, qt=0.0, tke=None) -> scm.state.State:
    """The initial state on the model's grid, its schemes' tracers at their defaults (TKE at
    least ``tke`` where given)."""
    to = lambda a: as_float(np.broadcast_to(a, model.grid.z.shape))  # noqa: E731
    tracers = model.initial_tracers()
    if tke is not None and "tke" in tracers:
        tracers["tke"] = jnp.maximum(to(tke), tracers["tke"])
    return scm.state.State(to(u), to(v), to(thl), to(qt), tracers)


def constant_forcing(grid: ColumnGrid, **values) -> ForcingSeries:
    return ForcingSeries.constant(Forcing.create(grid.n_levels, **values))


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
