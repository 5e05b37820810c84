"""The helpers of the case builders that build models: grids with a moist reference state,
closures, cloud sources, initial states and constant forcing (JAX from here on)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

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
                      eddy_viscosity: float = 5.0, moist: bool = True, **options):
    """The closure named ``kind`` (``TURBULENCE_NAMES``) over ``surface`` for time step dt;
    ``moist=False`` for the dry cases (no condensation, see ``physics.turbulence``);
    ``options`` go to the TKE closure."""
    if kind == "constant":
        return ConstantDiffusivity(eddy_viscosity, eddy_viscosity, no_slip=surface is None,
                                   surface=surface)
    if surface is None:
        surface = MoninObukhovSurface(0.1, heat_boundary="flux")
    if kind == "local":
        return LocalClosure(surface, time_step=dt, moist=moist)
    return TKEClosure(surface, time_step=dt, moist=moist, **options)


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
