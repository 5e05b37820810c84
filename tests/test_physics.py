"""Surface layers and turbulence closures: interface contract, numerics and the formulas."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from physics.clouds import CLOUDY_FRACTION, WITHOUT_CLOUD
from physics.surface import (
    MIN_WIND_SPEED,
    BulkSurface,
    MoninObukhovSurface,
    PrescribedFluxSurface,
)
from physics.thermodynamics import diagnose
from physics.turbulence import MIN_SHEAR2, ConstantDiffusivity, LocalClosure, TKEClosure
from physics.updraft import _no_plume
from scm.constants import GRAVITY, VON_KARMAN
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.parameterization import Tendency
from scm.state import State

LEVELS = 16
TOP = 1600.0


def make_grid() -> ColumnGrid:
    return ColumnGrid.uniform(TOP, LEVELS, 1.0e5, lambda z: 290.0 + 0.004 * z)


def make_state(grid: ColumnGrid, shift: float = 0.0) -> State:
    z = np.asarray(grid.z)
    a = lambda x: jnp.asarray(x, grid.z.dtype)  # noqa: E731
    return State(
        a(1.0 + 9.0 * (1.0 - np.exp(-z / 200.0)) + shift),
        a(2.0 * np.exp(-z / 300.0)),
        a(290.0 + 0.004 * z + 0.5 * np.exp(-z / 100.0) + shift),
        a(0.01 * np.exp(-z / 2000.0)),
        {"tke": a(0.5 * np.exp(-z / 500.0))},
    )


def make_forcing(grid: ColumnGrid, convective: bool) -> Forcing:
    return Forcing.create(
        grid.n_levels,
        coriolis_parameter=1.0e-4,
        geostrophic_u=10.0,
        surface_temperature=296.0 if convective else 284.0,
        surface_heat_flux=0.15 if convective else -0.02,
        surface_moisture_flux=5.0e-5 if convective else 0.0,
        surface_friction_velocity=0.3,
    )


def schemes(grid_dt: float = 60.0) -> dict:
    mo_t = MoninObukhovSurface(0.1, 0.01)
    mo_f = MoninObukhovSurface(0.1, heat_boundary="flux")
    return {
        "constant_no_slip": ConstantDiffusivity(5.0),
        "constant_bulk": ConstantDiffusivity(5.0, 2.0, no_slip=False, surface=BulkSurface()),
        "local": LocalClosure(mo_t),
        "local_predictor": LocalClosure(mo_f, time_step=grid_dt),
        "tke_temperature": TKEClosure(mo_t, grid_dt),
        "tke_flux": TKEClosure(mo_f, grid_dt),
        "tke_prescribed": TKEClosure(PrescribedFluxSurface(), grid_dt),
    }


SCHEMES = tuple(schemes())
# Compiling a gradient or a vmapped TKE closure takes seconds: these subsets still cover every
# closure and every surface layer.
VMAP_SCHEMES = ("constant_no_slip", "constant_bulk", "local_predictor", "tke_temperature",
                "tke_prescribed")
GRADIENT_SCHEMES = ("constant_no_slip", "constant_bulk", "local_predictor", "tke_temperature",
                    "tke_flux")
FLOAT32_SCHEMES = ("constant_bulk", "local", "tke_temperature", "tke_flux")


@pytest.fixture(scope="module")
def column():
    grid = make_grid()
    built = schemes()
    traces = {name: 0 for name in built}

    def compiled(name):
        scheme = built[name]

        def call(state, forcing):
            traces[name] += 1
            return scheme(state, forcing, grid)

        return jax.jit(call)

    return {
        "grid": grid,
        "schemes": built,
        "jitted": {name: compiled(name) for name in built},
        "traces": traces,
        "states": (make_state(grid), make_state(grid, 0.3)),
        "forcings": (make_forcing(grid, True), make_forcing(grid, False)),
    }


@pytest.mark.parametrize("name", SCHEMES)
def test_scheme_contract(column, name):
    """Structure equals the state's, finite, K ≥ 0, compiles once for all inputs."""
    jitted = column["jitted"][name]
    for state in column["states"]:
        for forcing in column["forcings"]:
            out = jitted(state, forcing)
            assert isinstance(out, Tendency)
            assert jax.tree.structure(out.tendency) == jax.tree.structure(state)
            assert jax.tree.structure(out.flux) == jax.tree.structure(state)
            assert jax.tree.structure(out.diffusivity) == jax.tree.structure(state)
            for leaf in jax.tree.leaves(out.tendency):
                assert leaf.shape == (LEVELS,)
            for leaf in jax.tree.leaves((out.flux, out.diffusivity)):
                assert leaf.shape == (LEVELS + 1,)
            defined = {n: d for n, d in out.diagnostics.items() if n not in WITHOUT_CLOUD}
            for leaf in jax.tree.leaves((out.tendency, out.flux, out.diffusivity, defined)):
                assert np.all(np.isfinite(leaf))
            for name_ in set(WITHOUT_CLOUD) & set(out.diagnostics):
                # NaN only where no level is cloudy
                if np.isnan(out.diagnostics[name_]):
                    assert np.max(out.diagnostics["cloud_fraction"]) < CLOUDY_FRACTION
            for leaf in jax.tree.leaves(out.diffusivity):
                assert np.all(np.asarray(leaf) >= 0.0)
            for key, value in out.diagnostics.items():
                assert np.shape(value) in ((), (LEVELS,)), key
            assert {"ustar", "surface_heat_flux", "obukhov_length"} <= set(out.diagnostics)
    assert column["traces"][name] == 1


@pytest.mark.parametrize("name", VMAP_SCHEMES)
def test_vmap_equals_per_column(column, name):
    grid, scheme = column["grid"], column["schemes"][name]
    forcing = column["forcings"][0]
    states = [make_state(grid, shift) for shift in (-0.5, 0.0, 0.7)]
    batched = jax.tree.map(lambda *a: jnp.stack(a), *states)
    out = jax.jit(jax.vmap(lambda s: scheme(s, forcing, grid)))(batched)
    for i, state in enumerate(states):
        single = column["jitted"][name](state, forcing)
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(out), strict=True):
            np.testing.assert_allclose(b[i], a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", GRADIENT_SCHEMES)
def test_gradients_finite(column, name):
    """Gradients of every output with respect to the state and the scheme's parameters."""
    grid, scheme = column["grid"], column["schemes"][name]

    def loss(inputs, forcing):
        scheme, state = inputs
        out = scheme(state, forcing, grid)
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(out))

    grad = eqx.filter_jit(eqx.filter_grad(loss))
    for forcing in column["forcings"]:
        g_scheme, g_state = grad((scheme, column["states"][0]), forcing)
        leaves = jax.tree.leaves(g_scheme) + jax.tree.leaves(g_state)
        assert leaves
        for leaf in leaves:
            assert np.all(np.isfinite(leaf)), name
        assert any(np.any(leaf != 0) for leaf in jax.tree.leaves(g_state))


def test_schemes_finite_in_float32():
    with jax.enable_x64(False):
        grid = make_grid()
        state = make_state(grid)
        assert state.u.dtype == jnp.float32
        forcings = [make_forcing(grid, True), make_forcing(grid, False)]
        for name, scheme in schemes().items():
            if name not in FLOAT32_SCHEMES:
                continue
            call = eqx.filter_jit(lambda sc, s, f: sc(s, f, grid))
            for forcing in forcings:
                out = call(scheme, state, forcing)
                for leaf in jax.tree.leaves(out):
                    assert leaf.dtype == jnp.float32, name
                defined = {n: d for n, d in out.diagnostics.items() if n not in WITHOUT_CLOUD}
                for leaf in jax.tree.leaves((out.tendency, out.flux, out.diffusivity, defined)):
                    assert np.all(np.isfinite(leaf)), name


# ------------------------------------------------------------------------------------------
# Monin–Obukhov surface layer


def _surface_column(z1: float, speed: float, theta1: float, qt1: float = 0.0):
    """A 16-level column whose first level is at ``z1``, uniform wind and θ."""
    grid = ColumnGrid.uniform(32.0 * z1, 16, 1.0e5, lambda z: np.full_like(z, theta1))
    n = grid.n_levels
    full = lambda x: jnp.full((n,), x, grid.z.dtype)  # noqa: E731
    return grid, State(full(speed * 0.6), full(speed * 0.8), full(theta1), full(qt1), {})


@pytest.mark.parametrize("mode", ["temperature", "flux"])
def test_monin_obukhov_neutral_limit_is_the_log_law(mode):
    z0 = 0.05
    grid, state = _surface_column(5.0, 7.0, 280.0)
    forcing = Forcing.create(grid.n_levels, surface_temperature=280.0, surface_heat_flux=0.0)
    out = MoninObukhovSurface(z0, heat_boundary=mode).fluxes(state, forcing, grid)
    expected = VON_KARMAN * 7.0 / math.log(float(grid.z[0]) / z0)
    np.testing.assert_allclose(float(out.ustar), expected, rtol=1e-9)
    np.testing.assert_allclose(float(out.drag), expected**2 / 7.0, rtol=1e-9)
    assert abs(float(out.heat_flux)) < 1e-12
    assert abs(float(out.obukhov_length)) >= 0.999e5


def test_monin_obukhov_phi_functions_match_the_formulas():
    mo = MoninObukhovSurface(0.1, beta_m=4.8, beta_h=7.8, gamma_m=16.0, gamma_h=16.0)
    stable = np.array([0.0, 0.1, 0.5, 2.0])
    unstable = np.array([-0.01, -0.5, -2.0, -10.0])
    np.testing.assert_allclose(mo.phi_m(stable), 1 + 4.8 * stable, rtol=1e-12)
    np.testing.assert_allclose(mo.phi_h(stable), 1 + 7.8 * stable, rtol=1e-12)
    np.testing.assert_allclose(mo.phi_m(unstable), (1 - 16 * unstable) ** -0.25, rtol=1e-12)
    np.testing.assert_allclose(mo.phi_h(unstable), (1 - 16 * unstable) ** -0.5, rtol=1e-12)
    # ψ is the integral of (1 − φ)/ζ (Paulson 1970): check the closed forms by quadrature.
    for zeta in np.concatenate([stable, unstable]):
        for phi, psi in ((mo.phi_m, mo.psi_m), (mo.phi_h, mo.psi_h)):
            integral, _ = quad(lambda x, phi=phi: (1.0 - float(phi(x))) / x, 0.0, zeta)
            # (to the 10⁻⁸ by which the branches are blended at ζ = 0)
            np.testing.assert_allclose(float(psi(zeta)), integral, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("delta", [-4.0, -0.5, 0.3, 1.5])
def test_monin_obukhov_temperature_mode_satisfies_the_profile_laws(delta):
    """u*, θ* and L returned solve the flux–profile relations at z1 (stable and unstable)."""
    mo = MoninObukhovSurface(0.1, 0.01, beta_m=4.8, beta_h=7.8)
    grid, state = _surface_column(10.0, 6.0, 280.0 + delta)
    forcing = Forcing.create(grid.n_levels, surface_temperature=280.0)
    out = mo.fluxes(state, forcing, grid)
    z1 = float(grid.z[0])
    zeta = z1 / float(out.obukhov_length)
    fm, fh = (float(f) for f in mo.profile_integrals(jnp.asarray(zeta), grid.z[0]))
    np.testing.assert_allclose(float(out.ustar), VON_KARMAN * 6.0 / fm, rtol=1e-6)
    theta_star = VON_KARMAN * delta / fh
    np.testing.assert_allclose(float(out.heat_flux), -float(out.ustar) * theta_star, rtol=1e-6)
    assert np.sign(float(out.heat_flux)) == -np.sign(delta)
    expected_l = float(out.ustar) ** 2 * (280.0 + delta) / (VON_KARMAN * GRAVITY * theta_star)
    np.testing.assert_allclose(float(out.obukhov_length), expected_l, rtol=1e-6)


def test_monin_obukhov_flux_mode_returns_the_prescribed_flux():
    mo = MoninObukhovSurface(0.1, heat_boundary="flux")
    grid, state = _surface_column(15.0, 1.0, 300.0)
    forcing = Forcing.create(grid.n_levels, surface_heat_flux=0.24)
    out = mo.fluxes(state, forcing, grid)
    assert float(out.heat_flux) == pytest.approx(0.24)
    expected_l = -float(out.ustar) ** 3 * 300.0 / (VON_KARMAN * GRAVITY * 0.24)
    np.testing.assert_allclose(float(out.obukhov_length), expected_l, rtol=1e-6)
    zeta = float(grid.z[0]) / expected_l
    fm, _ = mo.profile_integrals(jnp.asarray(zeta), grid.z[0])
    np.testing.assert_allclose(float(out.ustar), VON_KARMAN * 1.0 / float(fm), rtol=1e-6)
    assert float(out.ustar) > VON_KARMAN * 1.0 / math.log(float(grid.z[0]) / 0.1)


def test_monin_obukhov_extremes_are_finite_and_gradients_match_differences():
    mo = MoninObukhovSurface(0.1, 0.1, beta_m=4.8, beta_h=7.8)

    def ustar(speed, delta):
        grid, state = _surface_column(3.125, 1.0, 265.0)
        state = State(state.u * 0 + speed, state.v * 0, state.thl + delta, state.qt, {})
        forcing = Forcing.create(grid.n_levels, surface_temperature=265.0)
        return mo.fluxes(state, forcing, grid).ustar

    f = jax.jit(ustar)
    # Calm, far beyond the critical Richardson number, and strongly unstable: all finite.
    for speed, delta in ((0.0, 5.0), (0.05, -5.0), (2.0, 10.0), (30.0, -10.0)):
        assert np.isfinite(float(f(speed, delta)))
        assert float(f(speed, delta)) > 0
    assert float(f(0.0, 0.0)) == pytest.approx(
        VON_KARMAN * MIN_WIND_SPEED / math.log(3.125 / 0.1), rel=1e-9)
    grad = jax.jit(jax.grad(ustar, argnums=(0, 1)))
    for speed, delta in ((5.0, 0.5), (5.0, -1.0), (8.0, 0.1)):
        g_speed, g_delta = grad(speed, delta)
        h = 1e-6
        fd_speed = (f(speed + h, delta) - f(speed - h, delta)) / (2 * h)
        fd_delta = (f(speed, delta + h) - f(speed, delta - h)) / (2 * h)
        np.testing.assert_allclose(g_speed, fd_speed, rtol=1e-5)
        np.testing.assert_allclose(g_delta, fd_delta, rtol=1e-5)


def test_bulk_and_prescribed_surfaces():
    grid, state = _surface_column(20.0, 5.0, 300.0, 0.015)
    forcing = Forcing.create(grid.n_levels, surface_temperature=301.0,
                             surface_heat_flux=0.01, surface_moisture_flux=2e-5,
                             surface_friction_velocity=0.28)
    # z1 = 20 m = the reference height: the coefficients apply unscaled.
    bulk = BulkSurface(Cm=1e-3, Ch=2e-3, Cq=3e-3, reference_height=20.0).fluxes(
        state, forcing, grid)
    np.testing.assert_allclose(float(bulk.heat_flux), 2e-3 * 5.0 * 1.0, rtol=1e-12)
    np.testing.assert_allclose(float(bulk.ustar), math.sqrt(1e-3) * 5.0, rtol=1e-12)
    assert float(bulk.moisture_flux) > 0  # qsat(301 K) ≈ 0.024 > 0.015
    # At a lower first level the neutral log law raises the coefficients.
    low, _ = _surface_column(5.0, 5.0, 300.0)
    scaled = BulkSurface(Cm=1e-3, reference_height=20.0, roughness_length=1.5e-4).fluxes(
        state, forcing, low)
    factor = (math.log(20.0 / 1.5e-4) / math.log(5.0 / 1.5e-4)) ** 2
    np.testing.assert_allclose(float(scaled.drag), factor * 1e-3 * 5.0, rtol=1e-12)
    prescribed = PrescribedFluxSurface().fluxes(state, forcing, grid)
    assert float(prescribed.ustar) == pytest.approx(0.28)
    assert float(prescribed.heat_flux) == pytest.approx(0.01)
    assert float(prescribed.moisture_flux) == pytest.approx(2e-5)
    np.testing.assert_allclose(float(prescribed.drag), 0.28**2 / 5.0, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Closures


def test_closures_put_the_surface_layer_into_the_tendency(column):
    grid = column["grid"]
    state, forcing = column["states"][0], column["forcings"][0]
    surface = MoninObukhovSurface(0.1, 0.01)
    fluxes = surface.fluxes(state, forcing, grid)
    for closure in (LocalClosure(surface), TKEClosure(surface, 60.0)):
        out = closure(state, forcing, grid)
        np.testing.assert_allclose(out.flux.thl[0], fluxes.heat_flux, rtol=1e-12)
        np.testing.assert_allclose(out.flux.qt[0], fluxes.moisture_flux, rtol=1e-12)
        np.testing.assert_allclose(out.diffusivity.u[0], fluxes.drag * grid.z[0], rtol=1e-12)
        np.testing.assert_allclose(out.diagnostics["ustar"], fluxes.ustar, rtol=1e-12)
        assert float(out.diffusivity.thl[0]) == 0.0
        assert float(out.diffusivity.u[-1]) == 0.0
    no_slip = ConstantDiffusivity(4.0, 2.0)(state, forcing, grid)
    assert float(no_slip.diffusivity.u[0]) == 4.0
    np.testing.assert_allclose(no_slip.diffusivity.u[1:-1], 4.0)
    np.testing.assert_allclose(no_slip.diffusivity.tracers["tke"][1:-1], 2.0)
    assert float(no_slip.flux.thl[0]) == 0.0


def test_local_closure_neutral_and_stable_diffusivity():
    grid = make_grid()
    z = np.asarray(grid.z)
    a = lambda x: jnp.asarray(x, grid.z.dtype)  # noqa: E731
    closure = LocalClosure(MoninObukhovSurface(0.1), asymptotic_length=80.0,
                           background_diffusivity=0.0)
    neutral = State(a(0.01 * z), a(0 * z), a(300 + 0 * z), a(0 * z), {})
    k_m, k_h = closure.diffusivities(neutral, grid)
    zi = np.asarray(grid.z_interface)[1:-1]
    length = VON_KARMAN * zi / (1 + VON_KARMAN * zi / 80.0)
    # K_m = l² |∂U/∂z| with the squared shear floored at MIN_SHEAR2
    np.testing.assert_allclose(k_m[1:-1], length**2 * np.sqrt(0.01**2 + MIN_SHEAR2), rtol=1e-9)
    np.testing.assert_allclose(k_h[1:-1], k_m[1:-1], rtol=1e-12)
    stable = State(a(0.01 * z), a(0 * z), a(300 + 0.01 * z), a(0 * z), {})
    k_m_stable, _ = closure.diffusivities(stable, grid)
    shear2 = 0.01**2 + MIN_SHEAR2
    ri = GRAVITY / (300.0 + 0.01 * zi) * 0.01 / shear2
    np.testing.assert_allclose(k_m_stable[1:-1], length**2 * np.sqrt(shear2) / (1 + 4.7 * ri)
                               ** 2, rtol=2e-3)
    unstable = State(a(0 * z), a(0 * z), a(300 - 0.001 * z), a(0 * z), {})
    k_m_free, k_h_free = closure.diffusivities(unstable, grid)
    assert np.all(np.asarray(k_m_free[1:-1]) > 0)
    assert np.all(np.asarray(k_h_free[1:-1]) > np.asarray(k_m_free[1:-1]))


def test_tke_closure_neutral_surface_layer_carries_the_log_law():
    """With e = 3.75 u*² and l = κz, K_m = c_m l √e = κ z u* (the defaults' calibration)."""
    grid = make_grid()
    z = np.asarray(grid.z)
    a = lambda x: jnp.asarray(x, grid.z.dtype)  # noqa: E731
    ustar = 0.3
    closure = TKEClosure(MoninObukhovSurface(0.1), 60.0, asymptotic_length=1.0e4,
                         updraft=False)
    state = State(a(5 + 0.01 * z), a(0 * z), a(300 + 0 * z), a(0 * z),
                  {"tke": a(3.75 * ustar**2 + 0 * z)})
    out = closure(state, Forcing.create(grid.n_levels, surface_temperature=300.0), grid)
    zi = np.asarray(grid.z_interface)[1:-1]
    expected = VON_KARMAN * zi / (1 + VON_KARMAN * zi / 1.0e4) * ustar
    np.testing.assert_allclose(out.diffusivity.u[1:-1], expected, rtol=1e-9)
    np.testing.assert_allclose(out.diffusivity.tracers["tke"][1:-1], 2 * expected, rtol=1e-9)


def test_updraft_batched_over_columns_whose_plumes_stop_at_different_levels(column):
    """The plume's loop stops where the highest plume does (``recurrence(active=)``): vmapped
    over columns heated differently (one cooled, no plume) it equals each column alone, and
    so does its gradient."""
    grid, state = column["grid"], column["states"][0]
    closure = column["schemes"]["tke_flux"]
    heat_flux = jnp.asarray([-0.02, 0.002, 0.03, 0.3], grid.z.dtype)  # K m/s
    forcings = jax.tree.map(lambda a: jnp.stack([a] * len(heat_flux)), column["forcings"][0])
    forcings = eqx.tree_at(lambda f: f.surface_heat_flux, forcings, heat_flux)

    def top_and_flux(state, forcing):
        out = closure(state, forcing, grid)
        return out.diagnostics["updraft_top_height"], out.flux.thl

    def loss(state, forcing):
        top, flux = top_and_flux(state, forcing)
        return jnp.sum(flux[1:-1] ** 2) + 1e-6 * top

    tops, fluxes = jax.jit(jax.vmap(top_and_flux, (None, 0)))(state, forcings)
    grads = jax.jit(jax.vmap(jax.grad(loss), (None, 0)))(state, forcings)
    assert float(tops[0]) == 0.0 and len(set(np.asarray(tops[1:]).tolist())) == 3
    for c in range(len(heat_flux)):
        one = jax.tree.map(lambda a, c=c: a[c], forcings)
        top, flux = top_and_flux(state, one)
        np.testing.assert_allclose(tops[c], top, rtol=1e-12)
        np.testing.assert_allclose(fluxes[c], flux, rtol=1e-12, atol=1e-15)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda g, c=c: g[c], grads)),
                        jax.tree.leaves(jax.grad(loss)(state, one)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_updraft_skipped_by_a_batch_without_heating_gives_what_the_plume_gives(column):
    """A batch of columns none of which is heated from below skips the plume
    (``scm.levels.any_column``): what it gives instead, for the plume and its fluxes, is what
    the plume gives a cooled column, bit for bit."""
    grid, state = column["grid"], column["states"][0]
    closure = column["schemes"]["tke_flux"]
    cooled = column["forcings"][1]
    fluxes = closure.surface.fluxes(state, cooled, grid)
    assert float(fluxes.buoyancy_flux) < 0
    mean = diagnose(state, grid, closure.moist)
    updraft = closure.updraft
    plume = updraft._rise(state, grid, mean, fluxes, fluxes.buoyancy_flux > 0, closure.moist)
    for a, b in zip(plume, _no_plume(state, mean.theta_v), strict=True):
        np.testing.assert_array_equal(a, b)
    explicit, mf_thv = updraft.interface_fluxes(plume, state, mean.theta_v, grid,
                                                closure.time_step)
    for a in (*jax.tree.leaves(explicit), mf_thv):
        np.testing.assert_array_equal(a, 0.0)
    # batched over two cooled columns (the skipping branch) it equals each alone
    states = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    states = eqx.tree_at(lambda s: s.thl, states, states.thl.at[1].add(0.5))
    together = jax.jit(jax.vmap(lambda s: closure(s, cooled, grid)))(states)
    for c in range(2):
        alone = closure(jax.tree.map(lambda a, c=c: a[c], states), cooled, grid)
        for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(a[c], b, rtol=1e-13, atol=1e-300)


def test_tke_closure_updraft_only_under_surface_heating(column):
    grid = column["grid"]
    state = column["states"][0]
    closure = column["schemes"]["tke_flux"]
    heated = closure(state, column["forcings"][0], grid)
    cooled = closure(state, column["forcings"][1], grid)
    assert float(heated.diagnostics["updraft_top_height"]) > float(grid.z[0])
    assert float(heated.diagnostics["convective_velocity"]) > 0
    assert np.any(np.asarray(heated.flux.thl[1:-1]) != 0)
    assert float(cooled.diagnostics["updraft_top_height"]) == 0.0
    np.testing.assert_array_equal(cooled.flux.thl[1:], 0.0)
    # Lowest-level TKE is set to the surface-layer value (André et al. 1978).
    dt = closure.time_step
    e1 = state.tracers["tke"][0] + dt * cooled.tendency.tracers["tke"][0]
    ustar = cooled.diagnostics["ustar"]
    np.testing.assert_allclose(e1, 3.75 * ustar**2, rtol=1e-6)


def test_local_closure_runs_diurnal_cycles():
    """Two coarse diurnal days with the local closure: finite and bounded (TKE positivity is
    checked over 30 days in ``test_cases``)."""
    import scm.integration
    from experiments.cases import build_case

    case = build_case("diurnal", levels=16, hours=48.0, dt=120.0, turbulence="local")
    traj = jax.jit(lambda s: scm.integration.rollout(
        case.model, s, case.forcing, 0.0, case.dt, case.n_steps, case.save_every))(case.state0)
    assert np.isinf(float(traj.failed_at))
    for leaf in jax.tree.leaves((traj.state, traj.flux, traj.diagnostics)):
        assert np.all(np.isfinite(leaf))
    heat = np.asarray(traj.diagnostics["surface_heat_flux"])
    assert heat.max() > 0.05 and heat.min() < 0.0
