"""Shared test setup: float64 for the whole session, and a small kit of test columns.

The kit (fixture ``kit``) holds tiny parameterizations written for the tests only, so the core
tests depend on nothing in ``physics/`` but the large-scale forcing, plus builders for grids,
states and forcing. Every model the kit builds has the same slots and every state the same
fields, so the one jitted ``kit.run`` (``rollout``) compiles once per grid size and rollout
length and is shared by all core tests.
"""

from __future__ import annotations

import gc
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float

from physics.large_scale import LargeScaleForcing
from scm.forcing import Forcing, ForcingSeries
from scm.grid import ColumnGrid
from scm.integration import rollout
from scm.model import Model
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State

# Before any array exists: the whole test session runs in float64.
jax.config.update("jax_enable_x64", True)

MOMENTUM = ("u", "v")


class ConstantDiffusivity(AbstractParameterization):
    """K_m on u and v, K_h on every scalar, uniform on the interior interfaces.

    With ``no_slip = 1`` the surface interface carries K_m for u and v, which couples the
    lowest level to a ground at rest (a no-slip wall half a layer below the first centre).
    """

    momentum: Float[Array, ""]
    scalar: Float[Array, ""]
    no_slip: Float[Array, ""]

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        ones = jnp.ones_like(grid.z_interface)
        k_m = self.momentum * ones.at[0].set(self.no_slip)
        k_h = self.scalar * ones.at[0].set(0.0)
        zeros = Tendency.zeros(state)
        k = {n: k_m if n in MOMENTUM else k_h for n in state.fields()}
        return Tendency(zeros.tendency, zeros.flux, State.from_fields(k), {})


class SurfaceExchange(AbstractParameterization):
    """Explicit flux-form surface scheme for the budget and gradient tests.

    Surface heat flux F0 = Fp + c |U1| (Ts − θ1) (a bulk formula, nonlinear in the state) with
    Fp, Ts from the forcing, and the prescribed moisture flux. Both are spread upward as
    F(z) = F0 (1 − z/h) below h, so the scheme has a non-trivial interior flux too.
    """

    exchange: Float[Array, ""]
    depth: Float[Array, ""]

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        speed = jnp.sqrt(state.u[0] ** 2 + state.v[0] ** 2 + 1.0)
        heat = forcing.surface_heat_flux + self.exchange * speed * (
            forcing.surface_temperature - state.thl[0]
        )
        shape = jnp.clip(1.0 - grid.z_interface / self.depth, 0.0, 1.0)
        zeros = Tendency.zeros(state)
        moisture = forcing.surface_moisture_flux
        fluxes = {**zeros.flux.fields(), "thl": heat * shape, "qt": moisture * shape}
        flux = State.from_fields(fluxes)
        return Tendency(zeros.tendency, flux, zeros.diffusivity, {"surface_heat_flux": heat})


class PlantedHeating(AbstractParameterization):
    """Heats one level at ``rate`` (K s-1); where θ exceeds ``nan_above`` the tendency is NaN."""

    rate: Float[Array, ""]
    nan_above: Float[Array, ""]
    level: int = eqx.field(static=True)

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        heating = jnp.zeros_like(state.thl).at[self.level].set(self.rate)
        heating = jnp.where(state.thl > self.nan_above, jnp.nan, heating)
        zeros = Tendency.zeros(state)
        tendency = State.from_fields({**zeros.tendency.fields(), "thl": heating})
        return Tendency(tendency, zeros.flux, zeros.diffusivity, {})


def grid(top: float, levels: int, *, constant_density: bool = True) -> ColumnGrid:
    """A uniform grid; with ``constant_density`` ρ = 1 everywhere, so that ∂x/∂t = ∂z(K ∂z x)
    holds exactly as in the analytic solutions (which assume a Boussinesq fluid)."""
    g = ColumnGrid.uniform(top, levels, 1.0e5, lambda z: np.full_like(z, 300.0))
    if not constant_density:
        return g
    return eqx.tree_at(
        lambda g: (g.rho, g.rho_interface),
        g,
        (jnp.ones_like(g.rho), jnp.ones_like(g.rho_interface)),
    )


def model(
    g: ColumnGrid,
    *,
    momentum: float = 0.0,
    scalar: float = 0.0,
    no_slip: float = 0.0,
    exchange: float = 0.0,
    depth: float = 1.0,
) -> Model:
    """The standard test model: surface exchange, constant K, large-scale forcing."""
    a = lambda x: jnp.asarray(x, g.z.dtype)  # noqa: E731
    return Model(
        g,
        surface=SurfaceExchange(a(exchange), a(depth)),
        turbulence=ConstantDiffusivity(a(momentum), a(scalar), a(no_slip)),
        large_scale=LargeScaleForcing(),
    )


def state(g: ColumnGrid, *, u=0.0, v=0.0, thl=300.0, qt=0.0, passive=0.0) -> State:
    """A column state with one passive tracer; scalars are broadcast over the levels."""
    full = lambda x: jnp.broadcast_to(jnp.asarray(x, g.z.dtype), g.z.shape)  # noqa: E731
    return State(full(u), full(v), full(thl), full(qt), {"passive": full(passive)})


def forcing(g: ColumnGrid, **values) -> ForcingSeries:
    """Constant forcing; fields not given are zero."""
    return ForcingSeries.constant(Forcing.create(g.n_levels, **values))


def run(m: Model, s0: State, f: ForcingSeries, dt, n_steps: int, save_every: int = 1, t0=0.0):
    """``rollout`` under one shared ``eqx.filter_jit`` (times go in as arrays: no recompiles)."""
    return _jitted_rollout(m, s0, f, jnp.asarray(t0), jnp.asarray(dt), n_steps, save_every)


_jitted_rollout = eqx.filter_jit(rollout)


@pytest.fixture(scope="session")
def kit() -> types.SimpleNamespace:
    """Test parameterizations and builders (see the module docstring)."""
    return types.SimpleNamespace(
        ConstantDiffusivity=ConstantDiffusivity,
        SurfaceExchange=SurfaceExchange,
        PlantedHeating=PlantedHeating,
        grid=grid,
        model=model,
        state=state,
        forcing=forcing,
        run=run,
    )


@pytest.fixture(scope="module", autouse=True)
def free_compiled_programs():
    """After each test file, drop the compiled programs nothing refers to any more: XLA:CPU
    maps about 20 memory regions per compiled program, and a process that keeps a few
    thousand of them reaches Linux's default limit of 65530 maps
    (``vm.max_map_count``), where the next compilation aborts."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


#: Tables of area types and region names for the CF checker, which otherwise downloads them:
#: no file of this package has an ``area_type`` or a region name, so empty tables check the
#: same.
EMPTY_TABLES = {
    "area": "<area_type_table><version_number>0</version_number><date>none</date>"
            "</area_type_table>",
    "region": "<standardized_region_list><version_number>0</version_number><date>none</date>"
              "</standardized_region_list>",
}


@pytest.fixture(scope="session")
def cf_check(tmp_path_factory):
    """``cf_check(path)``: run ``cfchecks`` (the ``cfchecker`` package) on a netCDF file
    offline, with the CF standard-name table that ``compliance-checker`` ships, and assert no
    error and no warning (the messages are the assertion's text). Skips where the checker or
    the udunits2 library it loads is missing."""
    try:
        from importlib.resources import files

        from cfchecker import cfchecks  # loads udunits2 through cfunits

        standard_names = files("compliance_checker") / "data" / "cf-standard-name-table.xml"
    except Exception as error:  # ImportError, or OSError / FileNotFoundError for udunits2
        pytest.skip(f"cfchecks cannot run here ({type(error).__name__}: {error}); it needs "
                    "the cfchecker and compliance-checker packages and the udunits2 library "
                    "(.ci/run installs them)")
    tables = tmp_path_factory.mktemp("cf_tables")
    for name, text in EMPTY_TABLES.items():
        (tables / f"{name}.xml").write_text(f'<?xml version="1.0"?>{text}')

    def check(path) -> None:
        checker = cfchecks.CFChecker(
            cfStandardNamesXML=str(standard_names), cfAreaTypesXML=str(tables / "area.xml"),
            cfRegionNamesXML=str(tables / "region.xml"), version=cfchecks.CFVersion(),
            silent=True)
        checker.checker(str(path))
        results = [checker.results["global"], *checker.results["variables"].values()]
        messages = [message for result in results for category in ("FATAL", "ERROR", "WARN")
                    for message in result[category]]
        assert not messages, f"cfchecks of {path}: " + "; ".join(messages)
        # the version the file declares is the one checked (a version unknown to the checker
        # is an error above)
        assert "Checking against CF Version CF-1.8" in checker.results["global"]["VERSION"]

    return check
