"""Rollout: gradients against finite differences, vmap over columns, failure flagging."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scm.errors import ConfigurationError
from scm.forcing import Forcing, ForcingSeries
from scm.integration import (
    DEFAULT_BOUNDS,
    check_state,
    checkpointed_steps,
    first_violation,
    rollout,
)
from scm.state import State

NZ, DT = 16, 60.0
STEPS, SAVE_EVERY = 40, 10  # 4 saves, each 5 checkpointed chunks of 2 steps


@pytest.fixture(scope="module")
def setup(kit):
    g = kit.grid(1600.0, NZ, constant_density=False)
    z = np.asarray(g.z)
    model = kit.model(g, momentum=4.0, scalar=2.0, no_slip=1.0, exchange=0.02, depth=400.0)
    forcing = kit.forcing(
        g,
        coriolis_parameter=1.0e-4,
        geostrophic_u=8.0,
        geostrophic_v=-3.0,
        surface_temperature=302.0,
        surface_moisture_flux=5.0e-5,
    )
    s0 = kit.state(
        g,
        u=8.0 * np.tanh(z / 200.0),
        v=-1.0,
        thl=299.0 + 0.004 * z,
        qt=0.008 - 2e-6 * z,
        passive=np.exp(-z / 400.0),
    )
    return g, model, forcing, s0


def loss(model, s0, forcing):
    """Misfit of every saved state to a target profile (nonlinear through K and the bulk flux)."""
    run = rollout(model, s0, forcing, 0.0, DT, STEPS, SAVE_EVERY)
    target_thl = 300.0 + 0.003 * model.grid.z
    return (
        jnp.mean((run.state.thl - target_thl) ** 2)
        + 0.1 * jnp.mean((run.state.u - 7.0) ** 2 + run.state.v**2)
        + 1.0e4 * jnp.mean(run.state.qt**2)
        + jnp.mean(run.state.tracers["passive"] ** 3)
    )


@pytest.fixture(scope="module")
def loss_and_gradient():
    return eqx.filter_jit(loss), eqx.filter_jit(eqx.filter_grad(lambda ms, f: loss(*ms, f)))


def central_difference(f, h):
    return (f(h) - f(-h)) / (2 * h)


def test_gradient_wrt_initial_state_matches_finite_difference(setup, loss_and_gradient, rng):
    _, model, forcing, s0 = setup
    value, gradient = loss_and_gradient
    _, g0 = gradient((model, s0), forcing)
    scales = {"u": 1.0, "v": 1.0, "thl": 1.0, "qt": 1e-3, "passive": 0.1}
    direction = State.from_fields(
        {n: jnp.asarray(scales[n] * rng.normal(size=NZ)) for n in s0.fields()}
    )
    analytic = sum(
        jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(direction), strict=True)
    )
    numeric = central_difference(lambda h: value(model, s0 + direction * h, forcing), 1e-4)
    assert abs(float(analytic)) > 1e-3
    assert float(analytic) == pytest.approx(float(numeric), rel=1e-6)
    for name, x in g0.fields().items():
        assert np.all(np.isfinite(np.asarray(x))) and np.abs(np.asarray(x)).max() > 0, name


@pytest.mark.parametrize(
    "parameter",
    [lambda m: m.turbulence.momentum, lambda m: m.turbulence.scalar, lambda m: m.surface.exchange],
    ids=["K_m", "K_h", "exchange"],
)
def test_gradient_wrt_scheme_parameter_matches_finite_difference(
    setup, loss_and_gradient, parameter
):
    _, model, forcing, s0 = setup
    value, gradient = loss_and_gradient
    (g_model, _) = gradient((model, s0), forcing)
    analytic = float(parameter(g_model))
    p0 = float(parameter(model))

    def perturbed(h):
        new = jnp.asarray(p0 + h, dtype=parameter(model).dtype)  # same type: no recompile
        return value(eqx.tree_at(parameter, model, new), s0, forcing)

    numeric = float(central_difference(perturbed, 1e-5 * p0))
    assert abs(analytic) > 1e-8
    assert analytic == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize("n, chunk", [(12, None), (12, 1), (12, 5), (13, 4), (6, 6), (6, 50),
                                      (130, None)])
def test_checkpointed_steps_equal_a_plain_loop_in_value_and_gradient(n, chunk):
    """Every chunking (divisor, remainder, one chunk, none) is the same loop, forward and
    backward."""
    def step(carry):
        x, k = carry
        return jnp.sin(x) * 1.1 + 0.01 * k * x**2, k + 1.0

    def plain(x0):
        carry = (x0, 0.0)
        for _ in range(n):
            carry = step(carry)
        return jnp.sum(carry[0] ** 2)

    def chunked(x0):
        return jnp.sum(checkpointed_steps(step, (x0, 0.0), n, chunk)[0] ** 2)

    x0 = jnp.linspace(-1.0, 1.0, 5)
    np.testing.assert_allclose(chunked(x0), plain(x0), rtol=1e-13)
    np.testing.assert_allclose(jax.grad(chunked)(x0), jax.grad(plain)(x0), rtol=1e-12)


@pytest.mark.parametrize("n, chunk", [(40, 1), (40, 8), (400, None)])
def test_checkpointed_steps_keep_one_steps_intermediates_at_a_time(n, chunk):
    """Reverse mode through the loop holds one step's intermediate values at a time (here
    arrays of 4 × 4096 numbers, 128 KiB each; the step's adjoint needs about three of them),
    besides the carries: the compiled gradient's working memory stays below four such arrays
    whatever the chunk, where stacking each chunk's residuals took 27 (chunks of 8) and 63
    (chunks of 20)."""
    width = 4096

    def step(x):
        wide = jnp.tanh(jnp.outer(x, jnp.linspace(0.0, 1.0, width)))
        return x + 0.01 * jnp.sum(jnp.sin(wide), axis=1)

    def loss(x):
        return jnp.sum(checkpointed_steps(step, x, n, chunk) ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(jnp.ones(4)).compile()
    one_step = 4 * width * 8
    assert compiled.memory_analysis().temp_size_in_bytes < 4 * one_step


def test_vmap_over_columns_equals_single_columns(kit, setup):
    g, model, forcing, s0 = setup
    columns = 3
    shift = jnp.arange(columns, dtype=s0.u.dtype)[:, None]
    states = jax.tree.map(lambda a: a + 0.0 * shift, s0)
    states = eqx.tree_at(lambda s: (s.u, s.thl), states, (s0.u + 2.0 * shift, s0.thl - shift))
    forcings = jax.tree.map(lambda a: jnp.stack([a] * columns), forcing)
    ug = forcings.forcing.geostrophic_u * (1.0 + shift[..., None])
    forcings = eqx.tree_at(lambda f: f.forcing.geostrophic_u, forcings, ug)

    @eqx.filter_jit
    def batched(model, states, forcings):
        one = lambda s, f: rollout(model, s, f, 0.0, DT, STEPS, SAVE_EVERY)  # noqa: E731
        return jax.vmap(one)(states, forcings)

    together = batched(model, states, forcings)
    for c in range(columns):
        pick = lambda a, c=c: a[c]  # noqa: E731
        alone = kit.run(
            model, jax.tree.map(pick, states), jax.tree.map(pick, forcings), DT, STEPS, SAVE_EVERY
        )
        for a, b in zip(
            jax.tree.leaves(jax.tree.map(pick, together)), jax.tree.leaves(alone), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert float(jnp.abs(together.state.u[1] - together.state.u[0]).max()) > 1.0


def test_rollout_times_and_time_dependent_forcing(kit, setup):
    """Explicit forcing is evaluated at each step's start time t0 + nΔt: with a prescribed
    heating q(t) = a t, θ_N = θ0 + Σₙ a (t0 + nΔt) Δt exactly."""
    g, _, _, s0 = setup
    a, t0 = 1.0e-7, 500.0
    forcings = [Forcing.create(NZ, thl_tendency=a * t) for t in (0.0, 1.0e5)]
    series = ForcingSeries.from_list([0.0, 1.0e5], forcings)
    run = kit.run(kit.model(g), s0, series, DT, STEPS, SAVE_EVERY, t0=t0)
    np.testing.assert_allclose(run.time, t0 + DT * SAVE_EVERY * np.arange(STEPS // SAVE_EVERY + 1))
    for j, n in enumerate(range(0, STEPS + 1, SAVE_EVERY)):
        heating = a * DT * (n * t0 + DT * n * (n - 1) / 2)
        np.testing.assert_allclose(run.state.thl[j], s0.thl + heating, rtol=1e-14)
    with pytest.raises(ValueError, match="multiple"):
        kit.run(kit.model(g), s0, series, DT, STEPS, 7)


# ---------------------------------------------------------------------------------------------
# failure flagging

LEVEL, RATE = 3, 7.0  # K s-1 at level 3; with Δt = 1 s, θ = θ0 + 7n


@pytest.fixture(scope="module")
def planted(kit):
    """Columns of a model that heats level 3 by 7 K per 1-s step, run in one vmapped call."""
    g = kit.grid(1600.0, NZ, constant_density=False)

    @eqx.filter_jit
    def run(nan_above, thl_at_level):
        heating = kit.PlantedHeating(jnp.asarray(RATE), nan_above, LEVEL)
        model = kit.model(g).with_slot("convection", heating)
        forcing = kit.forcing(g)

        def one(theta):
            s0 = kit.state(g, thl=jnp.full(NZ, 300.0).at[LEVEL].set(theta))
            return rollout(model, s0, forcing, 100.0, 1.0, 40, 1)

        return jax.vmap(one)(thl_at_level)

    return run


def test_planted_blow_up_is_flagged_at_its_step(planted):
    """θ0 = 300, 200, 400 at level 3 leave [150, 500] K after 29 steps, never, and 15 steps."""
    run = planted(jnp.asarray(np.inf), jnp.asarray([300.0, 200.0, 400.0]))
    np.testing.assert_array_equal(run.failed_at, [100.0 + 29, np.inf, 100.0 + 15])
    np.testing.assert_array_equal(run.failed_level, [LEVEL, -1, LEVEL])
    thl = np.asarray(run.state.thl[:, :, LEVEL])
    assert thl[0, 28] == 300.0 + 7 * 28 and np.all(thl[0, 29:] == thl[0, 28])  # held
    assert thl[2, 14] == 400.0 + 7 * 14 and np.all(thl[2, 15:] == thl[2, 14])
    np.testing.assert_array_equal(thl[1], 200.0 + 7 * np.arange(41))  # untouched by the others
    assert np.all(thl <= DEFAULT_BOUNDS["thl"][1])
    for leaf in jax.tree.leaves((run.state, run.flux, run.diagnostics)):
        assert np.all(np.isfinite(np.asarray(leaf)))


def test_non_finite_state_is_flagged_and_held_finite(planted):
    """Above 400 K the scheme returns NaN: θ = 405 after 15 steps, the 16th step is NaN.

    The implicit solve spreads a NaN over the whole column (0·NaN = NaN even where K = 0), so
    the first offending level may be any level at or below the planted one."""
    run = planted(jnp.asarray(400.0), jnp.asarray([300.0, 300.0, 300.0]))
    np.testing.assert_array_equal(run.failed_at, [116.0, 116.0, 116.0])
    assert np.all((np.asarray(run.failed_level) >= 0) & (np.asarray(run.failed_level) <= LEVEL))
    for leaf in jax.tree.leaves((run.state, run.flux, run.diagnostics)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert np.all(np.asarray(run.state.thl[:, 15:, LEVEL]) == 405.0)


def test_first_violation_reports_lowest_bad_level():
    ok = State(jnp.zeros(8), jnp.zeros(8), jnp.full(8, 300.0), jnp.zeros(8), {"tke": jnp.ones(8)})
    assert int(first_violation(ok, DEFAULT_BOUNDS)) == -1
    bad = eqx.tree_at(lambda s: s.thl, ok, ok.thl.at[5].set(jnp.nan).at[6].set(600.0))
    assert int(first_violation(bad, DEFAULT_BOUNDS)) == 5
    bad = eqx.tree_at(lambda s: s.tracers["tke"], bad, ok.tracers["tke"].at[2].set(-1.0))
    assert int(first_violation(bad, DEFAULT_BOUNDS)) == 2
    bad = eqx.tree_at(lambda s: s.v, ok, ok.v.at[7].set(jnp.inf))
    assert int(first_violation(bad, {})) == 7  # non-finite is failure whatever the bounds


def test_bad_initial_state_is_a_clear_error_before_compiling():
    good = State(jnp.zeros(8), jnp.zeros(8), jnp.full(8, 300.0), jnp.zeros(8))
    check_state(good)
    with pytest.raises(ConfigurationError, match=r"initial thl = nan K at index \(3,\)"):
        check_state(State(good.u, good.v, good.thl.at[3].set(jnp.nan), good.qt))
    with pytest.raises(ConfigurationError, match=r"initial u = 500 m s-1 .*\[-150, 150\]"):
        check_state(State(good.u.at[0].set(500.0), good.v, good.thl, good.qt))
