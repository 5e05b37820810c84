"""Core building blocks: tridiagonal solve, grid, reference state, forcing series, slots,
compilation settings."""

from __future__ import annotations

import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scm.compilation import compile_time_first, filter_jit
from scm.constants import DRY_AIR_GAS_CONSTANT, GRAVITY
from scm.errors import ConfigurationError
from scm.forcing import Forcing, ForcingSeries
from scm.grid import ColumnGrid
from scm.levels import tridiagonal_solve
from scm.model import SLOTS

NZ, BATCH = 12, 3


def random_system(rng, shape=(NZ, BATCH)):
    """A diagonally dominant tridiagonal system (the implicit-diffusion matrices are)."""
    lower = rng.uniform(-1.0, 0.0, shape)
    upper = rng.uniform(-1.0, 0.0, shape)
    diag = 1.0 + np.abs(lower) + np.abs(upper) + rng.uniform(0.0, 1.0, shape)
    rhs = rng.normal(size=shape)
    return lower, diag, upper, rhs


def dense_matrix(lower, diag, upper):
    """Dense matrix of one system (axis 0 = levels); ignores lower[0] and upper[-1]."""
    return jnp.diag(diag) + jnp.diag(lower[1:], -1) + jnp.diag(upper[:-1], 1)


def dense_solve(lower, diag, upper, rhs):
    """Solve every column (last axis) with a dense solve."""
    solve_one = lambda a, b, c, d: jnp.linalg.solve(dense_matrix(a, b, c), d)  # noqa: E731
    return jax.vmap(solve_one, in_axes=-1, out_axes=-1)(lower, diag, upper, rhs)


def test_tridiagonal_matches_dense_solve(rng):
    lower, diag, upper, rhs = random_system(rng)
    x = np.asarray(jax.jit(tridiagonal_solve)(lower, diag, upper, rhs))
    for j in range(BATCH):
        a = np.diag(diag[:, j]) + np.diag(lower[1:, j], -1) + np.diag(upper[:-1, j], 1)
        np.testing.assert_allclose(x[:, j], np.linalg.solve(a, rhs[:, j]), rtol=1e-12, atol=1e-13)


def test_tridiagonal_ignores_lower_first_and_upper_last(rng):
    lower, diag, upper, rhs = random_system(rng)
    x = tridiagonal_solve(lower, diag, upper, rhs)
    lower[0], upper[-1] = 1.0e3, -1.0e3
    np.testing.assert_array_equal(tridiagonal_solve(lower, diag, upper, rhs), x)


def test_tridiagonal_gradient_matches_dense_gradient(rng):
    lower, diag, upper, rhs = random_system(rng)
    weights = rng.normal(size=rhs.shape)

    def loss(solve):
        return lambda *abcd: jnp.sum(weights * jnp.sin(solve(*abcd)))

    args = tuple(jnp.asarray(a) for a in (lower, diag, upper, rhs))
    got = jax.jit(jax.grad(loss(tridiagonal_solve), argnums=(0, 1, 2, 3)))(*args)
    want = jax.jit(jax.grad(loss(dense_solve), argnums=(0, 1, 2, 3)))(*args)
    for name, g, w in zip(("lower", "diag", "upper", "rhs"), got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)
    # Entries outside the matrix get no gradient.
    assert np.all(np.asarray(got[0][0]) == 0.0) and np.all(np.asarray(got[2][-1]) == 0.0)


def test_tridiagonal_forward_mode_matches_dense(rng):
    lower, diag, upper, rhs = (jnp.asarray(a) for a in random_system(rng))
    tangents = tuple(jnp.asarray(rng.normal(size=rhs.shape)) for _ in range(4))
    _, got = jax.jvp(tridiagonal_solve, (lower, diag, upper, rhs), tangents)
    _, want = jax.jvp(dense_solve, (lower, diag, upper, rhs), tangents)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_tridiagonal_solves_several_systems_in_one_sweep(rng):
    first, second = random_system(rng), random_system(rng)
    both = tridiagonal_solve(*(tuple(jnp.asarray(a) for a in pair)
                               for pair in zip(first, second, strict=True)))
    for x, system in zip(both, (first, second), strict=True):
        np.testing.assert_allclose(x, tridiagonal_solve(*system), rtol=1e-14)


def test_tridiagonal_under_vmap(rng):
    lower, diag, upper, rhs = random_system(rng, (5, NZ, BATCH))  # leading axis: vmapped
    batched = jax.jit(jax.vmap(tridiagonal_solve))(lower, diag, upper, rhs)
    want = jax.jit(jax.vmap(dense_solve))(lower, diag, upper, rhs)
    np.testing.assert_allclose(batched, want, rtol=1e-12, atol=1e-13)

    # and the gradient of a vmapped solve (the custom linear solve under vmap)
    def gradient(solve):
        loss = lambda d, r: jnp.sum(jnp.sin(solve(lower[0], d, upper[0], r)))  # noqa: E731
        return jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(diag, rhs)

    for got, want in zip(gradient(tridiagonal_solve), gradient(dense_solve), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# grid


def theta_profile(z):
    return 290.0 + 0.005 * np.asarray(z)


@pytest.fixture(scope="module")
def stretched():
    return ColumnGrid.stretched(3000.0, 40, 1.0e5, theta_profile, stretching=1.06)


def test_reference_state_is_hydrostatic_ideal_gas(stretched):
    g = stretched
    p, pi = np.asarray(g.pressure_interface), np.asarray(g.pressure)
    assert p[0] == pytest.approx(1.0e5, rel=1e-12)
    assert np.all(np.diff(p) < 0) and np.all(np.diff(pi) < 0)
    assert np.all((pi < p[:-1]) & (pi > p[1:]))
    temperature = np.asarray(g.exner) * theta_profile(g.z)
    np.testing.assert_allclose(g.rho, pi / (DRY_AIR_GAS_CONSTANT * temperature), rtol=1e-12)
    # dp/dz = −ρg: layer by layer to the truncation error of the midpoint rule
    dz = np.asarray(g.dz)
    np.testing.assert_allclose(-np.diff(p), np.asarray(g.rho) * GRAVITY * dz, rtol=2e-4)
    np.testing.assert_allclose(g.layer_mass.sum(), (p[0] - p[-1]) / GRAVITY, rtol=2e-5)
    assert np.all(np.asarray(g.dz) > 0) and np.asarray(g.z_interface)[0] == 0.0
    np.testing.assert_allclose(np.asarray(g.dz)[1:] / np.asarray(g.dz)[:-1], 1.06, rtol=1e-12)


def test_flux_divergence_integrates_to_boundary_fluxes(stretched, rng):
    g = stretched
    flux = jnp.asarray(rng.normal(size=(4, g.n_levels + 1)))  # a batch of random fluxes
    integral = g.column_integral(g.tendency_from_flux(flux))
    boundary = -(g.rho_interface[-1] * flux[:, -1] - g.rho_interface[0] * flux[:, 0])
    np.testing.assert_allclose(integral, boundary, rtol=1e-12, atol=1e-13)
    # a flux that vanishes at both ends moves the quantity without changing its total
    closed = flux.at[:, 0].set(0.0).at[:, -1].set(0.0)
    total = g.column_integral(g.tendency_from_flux(closed))
    assert np.abs(np.asarray(total)).max() < 1e-13 * np.abs(np.asarray(flux)).max() * 1e4


@pytest.mark.parametrize(
    ("z_interface", "field"),
    [
        (np.r_[0.0, np.arange(1.0, 12.0)[::-1] * 10.0], "z_interface"),  # decreasing
        (np.r_[0.0, 10.0, 20.0, 20.0, *np.arange(30.0, 100.0, 10.0)], "z_interface"),
        (np.linspace(0.0, 100.0, 5), "levels"),  # too few
        (np.r_[np.arange(0.0, 81.0, 10.0), 1000.0], "z_interface too coarse"),
        (np.linspace(10.0, 200.0, 20), r"z_interface\[0\]"),  # not starting at 0
        (np.linspace(-10.0, 200.0, 20), "z_interface"),
        (np.r_[np.linspace(0.0, 200.0, 19), np.nan], "z_interface"),
    ],
)
def test_bad_grid_raises_naming_the_field(z_interface, field):
    with pytest.raises(ConfigurationError, match=field):
        ColumnGrid.from_interfaces(z_interface, 1.0e5, theta_profile)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(top=1000.0, n_levels=4), "levels"),
        (dict(top=1.0, n_levels=20), "top"),
        (dict(top=1000.0, n_levels=20, surface_pressure=2.0e5), "surface_pressure"),
        (dict(top=1000.0, n_levels=20, theta_profile=lambda z: 0 * z + 1000.0), "temperature"),
    ],
)
def test_bad_uniform_grid_raises_naming_the_field(kwargs, field):
    kwargs = {"surface_pressure": 1.0e5, "theta_profile": theta_profile, **kwargs}
    with pytest.raises(ConfigurationError, match=field):
        ColumnGrid.uniform(**kwargs)


# ---------------------------------------------------------------------------------------------
# forcing in time


def series(period=None):
    times = [0.0, 100.0, 300.0]
    f = [1.0e-4, 2.0e-4, 1.0e-4]
    ug = [np.linspace(0.0, 1.0, 10), np.linspace(5.0, 6.0, 10), np.linspace(0.0, 1.0, 10)]
    forcings = [
        Forcing.create(10, coriolis_parameter=a, geostrophic_u=b, surface_heat_flux=c)
        for a, b, c in zip(f, ug, [0.1, -0.1, 0.1], strict=True)
    ]
    return ForcingSeries.from_list(times, forcings, period=period)


@pytest.fixture(scope="module")
def forcing_at():
    return jax.jit(lambda s, t: s.at(t))


@pytest.mark.parametrize(
    ("t", "weight", "nodes"),
    [(0.0, 0.0, (0, 1)), (25.0, 0.25, (0, 1)), (100.0, 0.0, (1, 2)), (250.0, 0.75, (1, 2))],
)
def test_forcing_series_interpolates_linearly(forcing_at, t, weight, nodes):
    s = series()
    got = forcing_at(s, jnp.asarray(t))
    for a, b, name in [
        (s.forcing.coriolis_parameter, got.coriolis_parameter, "f"),
        (s.forcing.geostrophic_u, got.geostrophic_u, "ug"),
        (s.forcing.surface_heat_flux, got.surface_heat_flux, "heat"),
    ]:
        i, j = nodes
        np.testing.assert_allclose(b, a[i] + weight * (a[j] - a[i]), rtol=1e-13, err_msg=name)


def test_forcing_series_holds_end_values(forcing_at):
    s = series()
    for t, node in [(-50.0, 0), (300.0, 2), (1.0e6, 2)]:
        got = forcing_at(s, jnp.asarray(t))
        np.testing.assert_allclose(got.geostrophic_u, s.forcing.geostrophic_u[node], atol=1e-15)
        np.testing.assert_allclose(got.surface_heat_flux, s.forcing.surface_heat_flux[node])


def test_forcing_series_is_periodic(forcing_at):
    s = series(period=300.0)
    for t in [0.0, 25.0, 130.0, 299.0]:
        want = forcing_at(s, jnp.asarray(t))
        for shift in (300.0, 900.0, -300.0):
            got = forcing_at(s, jnp.asarray(t + shift))
            np.testing.assert_allclose(got.geostrophic_u, want.geostrophic_u, rtol=1e-12)
            np.testing.assert_allclose(got.coriolis_parameter, want.coriolis_parameter, rtol=1e-9)
    np.testing.assert_allclose(forcing_at(s, jnp.asarray(350.0)).surface_heat_flux, 0.0, atol=1e-15)


def test_forcing_create_rejects_unknown_field_and_constant_series():
    with pytest.raises(ConfigurationError, match="geostrophic_w"):
        Forcing.create(10, geostrophic_w=1.0)
    with pytest.raises(ConfigurationError, match="increase"):
        ForcingSeries.from_list([0.0, 0.0], [Forcing.create(10)] * 2)
    f = Forcing.create(10, geostrophic_u=3.0, coriolis_parameter=1e-4)
    at = ForcingSeries.constant(f).at(jnp.asarray(123.0))
    assert at.geostrophic_u.shape == (10,) and float(at.geostrophic_u[4]) == 3.0
    assert at.coriolis_parameter.dtype == jnp.float64  # the test session runs in float64


# ---------------------------------------------------------------------------------------------
# model


def test_model_slots_add_and_unknown_slot_is_rejected(kit):
    g = kit.grid(1000.0, 10)
    m = kit.model(g, momentum=2.0, scalar=1.0)
    with pytest.raises(ConfigurationError, match="slot 'turbulance'"):
        m.with_slot("turbulance", None)
    assert tuple(m.slots()) == ("surface", "turbulence", "large_scale")
    assert set(m.slots()) <= set(SLOTS)
    s = kit.state(g, u=1.0)
    f = kit.forcing(g, thl_tendency=1e-4).at(0.0)
    tendency = eqx.filter_jit(lambda m, s, f: m.tendency(s, f))
    total = tendency(m, s, f)
    doubled = tendency(m.with_slot("convection", m.turbulence), s, f)
    np.testing.assert_allclose(doubled.diffusivity.u, 2 * total.diffusivity.u)
    np.testing.assert_allclose(doubled.tendency.thl, total.tendency.thl)  # forcing, once
    np.testing.assert_allclose(total.tendency.thl, 1e-4 * np.ones(10))
    assert m.with_slot("large_scale", None).large_scale is None and m.large_scale is not None


# ---------------------------------------------------------------------------------------------
# compilation settings


def test_compile_time_first_compiles_its_own_programs_in_every_thread(rng):
    """Inside ``compile_time_first`` (from any thread) a ``filter_jit`` function is compiled with
    other options, once, and returns the same values to round-off; outside, the default
    program is used. Which program a call used shows in whether the other setting compiles."""
    compiles = []

    def count(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    def compiles_in(call):
        before = len(compiles)
        result = call()
        return len(compiles) - before, result

    def new_solve():
        return filter_jit(lambda a, b, c, d: jnp.exp(-tridiagonal_solve(a, b, c, d)))

    system = random_system(rng)
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        solve = new_solve()
        assert compiles_in(lambda: solve(*system))[0] == 1
        with compile_time_first():
            assert compiles_in(lambda: solve(*system))[0] >= 1  # (+ a check of the options)
            n, first = compiles_in(lambda: solve(*system))
            assert n == 0
            in_thread, results = new_solve(), []
            worker = threading.Thread(target=lambda: results.append(in_thread(*system)))
            worker.start()
            worker.join()
            disabled = new_solve()
            with compile_time_first(enabled=False):  # leaves the setting as it was
                assert compiles_in(lambda: disabled(*system))[0] == 1
            assert compiles_in(lambda: disabled(*system))[0] == 0
        assert compiles_in(lambda: in_thread(*system))[0] == 1  # the thread's was the other
        n, default = compiles_in(lambda: solve(*system))
        assert n == 0
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    np.testing.assert_allclose(first, default, rtol=1e-13)
    np.testing.assert_allclose(results[0], default, rtol=1e-13)
