"""Neural parameterizations (nn/): zero-initialized hybrids, conservation, positivity,
batching and gradients, on the dry diurnal case at 16 levels (float64, see conftest)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.cases import build_case
from nn.features import Normalization
from nn.heads import DiffusivityHead, FluxHead, TendencyHead, softplus, softplus_inverse
from nn.parameterization import NeuralParameterization, make_network, trainable_filter
from nn.wrappers import Blend, Residual
from physics.turbulence import ConstantDiffusivity
from scm.integration import rollout

LEVELS = 16
HEADS = {"flux": FluxHead, "diffusivity": DiffusivityHead, "tendency": TendencyHead}

_rollout = eqx.filter_jit(rollout)
_apply = eqx.filter_jit(lambda f, *args: f(*args))


@pytest.fixture(scope="module")
def case():
    return build_case("diurnal", levels=LEVELS, hours=1.0)


@pytest.fixture(scope="module")
def normalization(case):
    """Fitted on the initial column and noisy copies of it (no rollout: keeps tests fast)."""
    noise = jax.random.normal(jax.random.key(7), (3, 8, LEVELS))
    s = case.state0
    states = eqx.tree_at(lambda x: (x.u, x.v, x.thl), jax.tree.map(
        lambda a: jnp.broadcast_to(a, (8,) + a.shape), s),
        (s.u + 2 * noise[0], s.v + 2 * noise[1], s.thl + noise[2]))
    return Normalization.fit(states, case.model.grid)


@pytest.fixture(scope="module")
def column(case):
    """A state and forcing with a heated surface (15 h local time), so fluxes are non-zero,
    and the surface layer's fluxes there."""
    forcing = case.forcing.at(15 * 3600.0)
    surface = eqx.filter_jit(case.model.turbulence.surface.fluxes)(
        case.state0, forcing, case.model.grid)
    return case.state0, forcing, surface


@pytest.fixture(scope="module")
def simple_physics(case):
    """A cheap closure with the case's surface layer, for the rollout and Blend tests (compile
    time); the one-call Residual test uses the case's TKE closure (with its tracer)."""
    return ConstantDiffusivity(5.0, no_slip=False, surface=case.model.turbulence.surface)


@eqx.filter_jit
def call(parameterizations, state, forcing, grid):
    """Evaluate several parameterizations on one column under one compile."""
    return [p(state, forcing, grid) for p in parameterizations]


def neural(case, normalization, head="flux", kind="mlp", seed=0, exchange=True,
           perturb=0.0):
    """A NeuralParameterization with the case's surface layer; ``perturb`` > 0 replaces the
    zero last layer by random weights of that size (so outputs are non-trivial)."""
    h = HEADS[head]()
    network = make_network(kind, h, LEVELS, key=jax.random.key(seed), width=16, depth=2)
    if perturb:
        last = network.layers[-1]
        kw, kb = jax.random.split(jax.random.key(seed + 1))
        network = eqx.tree_at(
            lambda n: (n.layers[-1].weight, n.layers[-1].bias), network,
            (perturb * jax.random.normal(kw, last.weight.shape),
             perturb * jax.random.normal(kb, last.bias.shape)))
    return NeuralParameterization(case.model.turbulence.surface, normalization, network, h,
                                  surface_exchange=exchange)


def assert_tendency_equal(a, b):
    for x, y in ((a.tendency, b.tendency), (a.flux, b.flux), (a.diffusivity, b.diffusivity)):
        jax.tree.map(np.testing.assert_array_equal, x, y)


def test_zero_initialized_residual_is_physics_in_one_call(case, normalization, column):
    physics = case.model.turbulence
    hybrids = [Residual(physics, neural(case, normalization, head, kind, exchange=False))
               for head, kind in (("flux", "mlp"), ("tendency", "conv"))]
    state, forcing, _ = column
    base, *outs = call([physics, *hybrids], state, forcing, case.model.grid)
    for out in outs:
        assert_tendency_equal(base, out)
        assert sorted(base.diagnostics) == sorted(out.diagnostics)


def test_zero_initialized_residual_rollout_is_physics_bit_for_bit(case, normalization,
                                                                 simple_physics):
    physics = simple_physics
    base_model = case.model.with_slot("turbulence", physics)
    hybrid = case.model.with_slot(
        "turbulence", Residual(physics, neural(case, normalization, "flux", "conv",
                                               exchange=False)))
    args = (case.state0, case.forcing, 12 * 3600.0, case.dt, 20, 10)
    base, test = _rollout(base_model, *args), _rollout(hybrid, *args)
    jax.tree.map(np.testing.assert_array_equal, base.state, test.state)
    jax.tree.map(np.testing.assert_array_equal, base.flux, test.flux)
    assert np.isinf(test.failed_at)


def test_flux_head_closes_column_heat_budget(case, normalization, column):
    grid = case.model.grid
    state, forcing, surface = column
    nets = [neural(case, normalization, "flux", kind, perturb=1.0) for kind in ("mlp", "conv")]
    for out in call(nets, state, forcing, grid):
        rate = out.explicit_rate(grid).thl
        assert np.abs(out.flux.thl[1:-1]).max() > 1e-3  # the network's own fluxes
        assert out.flux.thl[-1] == 0.0
        assert out.flux.thl[0] == surface.heat_flux
        integral = grid.column_integral(rate)
        magnitude = grid.column_integral(jnp.abs(rate))
        np.testing.assert_allclose(integral, grid.rho_interface[0] * surface.heat_flux,
                                   rtol=0, atol=1e-13 * magnitude)


def test_diffusivity_head_never_negative(case, column):
    grid = case.model.grid
    _, _, surface = column
    for dtype in (jnp.float32, jnp.float64):
        outputs = 1.0e3 * jax.random.normal(jax.random.key(3), (2, LEVELS + 1), dtype)
        outputs = outputs.at[0, 3].set(-1.0e4).at[1, 5].set(1.0e4)
        head = DiffusivityHead()
        head = eqx.tree_at(lambda h: h.scale, head, head.scale.astype(dtype))
        out = _apply(head, outputs, case.state0, grid, surface)
        for k in jax.tree.leaves(out.diffusivity):
            assert k.dtype == dtype
            assert np.all(np.isfinite(k)) and np.all(k >= 0)
        np.testing.assert_allclose(out.diffusivity.u[0], surface.drag * grid.z[0], rtol=1e-6)
        assert out.diffusivity.u[0] > 0
        k = jnp.asarray([1.0e-3, 1.0, 80.0, 100.0, 1.0e3], dtype)
        assert np.all(np.isfinite(softplus_inverse(k)))
        np.testing.assert_allclose(softplus(softplus_inverse(k)), k, rtol=1e-5)


def test_diffusivity_head_learns_from_a_zero_last_layer(case, column):
    """At a zero output (where a zero-initialized last layer puts every level) the head's
    derivative must not vanish, or training can never move K."""
    grid = case.model.grid
    np.testing.assert_allclose(jax.grad(softplus)(0.0), 0.5)
    _, _, surface = column

    def mixed(outputs):
        out = _apply(DiffusivityHead(), outputs, case.state0, grid, surface)
        return jnp.sum(out.total_flux(case.state0, grid).thl ** 2)

    gradient = jax.grad(mixed)(jnp.zeros((2, LEVELS + 1)))
    assert np.any(np.abs(np.asarray(gradient)) > 0)


def test_vmap_equals_per_column(case, normalization, column):
    grid = case.model.grid
    state, forcing, _ = column
    nets = [neural(case, normalization, "diffusivity", kind, perturb=0.5)
            for kind in ("mlp", "conv")]
    noise = jax.random.normal(jax.random.key(4), (3, 4, LEVELS))
    states = eqx.tree_at(lambda s: (s.u, s.v, s.thl), jax.tree.map(
        lambda a: jnp.broadcast_to(a, (4,) + a.shape), state),
        (state.u + noise[0], state.v + noise[1], state.thl + 0.5 * noise[2]))

    @eqx.filter_jit
    def both(nets, states):
        batched = [jax.vmap(p, in_axes=(0, None, None))(states, forcing, grid) for p in nets]
        # lax.map: one column at a time (a scan), no batching rule involved.
        single = [jax.lax.map(lambda s, p=p: p(s, forcing, grid), states) for p in nets]
        return batched, single

    def parts(t):
        return (t.tendency, t.flux, t.diffusivity, t.diagnostics)

    batched, single = both(nets, states)
    for b, s in zip(batched, single, strict=True):
        assert b.diffusivity.thl.shape == (4, LEVELS + 1)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15),
                     parts(b), parts(s))


def test_rollout_gradient_matches_finite_difference(case, normalization):
    p = neural(case, normalization, "diffusivity", "mlp", perturb=0.3)
    model = case.model.with_slot("turbulence", p)
    trainable, frozen = eqx.partition(model, trainable_filter(model))
    target = case.state0.thl + 0.5

    def loss(trainable):
        m = eqx.combine(trainable, frozen)
        trajectory = rollout(m, case.state0, case.forcing, 12 * 3600.0, case.dt, 6, 6)
        final = jax.tree.map(lambda a: a[-1], trajectory.state)
        return jnp.mean((final.thl - target) ** 2) + jnp.mean(final.u**2 + final.v**2)

    # One compiled function for the gradient and the finite-difference evaluations.
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(loss))
    _, grad = value_and_grad(trainable)
    leaves = jax.tree.leaves(grad)
    assert len(leaves) == len(jax.tree.leaves(trainable)) > 0
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert max(float(jnp.abs(g).max()) for g in leaves) > 0
    keys = iter(jax.random.split(jax.random.key(5), len(leaves)))
    direction = jax.tree.map(lambda g: jax.random.normal(next(keys), g.shape), grad)
    eps = 1.0e-6

    def shifted(sign):
        return value_and_grad(jax.tree.map(lambda t, d: t + sign * eps * d, trainable,
                                           direction))[0]

    fd = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    ad = sum(jnp.vdot(g, d) for g, d in zip(leaves, jax.tree.leaves(direction), strict=True))
    np.testing.assert_allclose(ad, fd, rtol=1e-5)


def test_frozen_pieces_get_no_gradient(case, normalization, column):
    p = neural(case, normalization, "flux", "mlp", perturb=0.3)
    state, forcing, _ = column

    def loss(p):
        out = p(state, forcing, case.model.grid)
        return jnp.sum(out.explicit_rate(case.model.grid).thl ** 2)

    grad = eqx.filter_jit(jax.grad(loss))(p)
    for g in (grad.normalization.profile_scale, grad.normalization.scalar_mean, grad.head.scale):
        np.testing.assert_array_equal(g, 0.0)
    assert float(jnp.abs(grad.network.layers[-1].weight).max()) > 0


def test_blend_endpoints(case, normalization, column, simple_physics):
    physics = simple_physics
    network = neural(case, normalization, "diffusivity", "conv", perturb=0.5)
    state, forcing, _ = column
    blends = [Blend(physics, network, w) for w in (0.0, 1.0)]
    a, b, zero, one = call([physics, network, *blends], state, forcing, case.model.grid)
    assert_tendency_equal(zero, a)
    assert_tendency_equal(one, b)
    np.testing.assert_array_equal(zero.diagnostics["ustar"], a.diagnostics["ustar"])
    assert sorted(one.diagnostics) == sorted(a.diagnostics)
    with pytest.raises(Exception, match="weight"):
        Blend(physics, network, 1.5)
