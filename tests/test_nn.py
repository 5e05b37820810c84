"""Neural parameterizations (nn/): zero-initialized hybrids, conservation, positivity,
batching and gradients, on the dry diurnal case at 16 levels (float64, see conftest)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.cases import build_case
from experiments.scenarios import stack_pytrees
from nn.artifact import install_artifact, load_artifact, save_artifact
from nn.features import (
    PROFILE_FEATURES,
    SCALAR_FEATURES,
    USTAR_FLOOR,
    FeatureSet,
    Normalization,
)
from nn.heads import DiffusivityHead, FluxHead, TendencyHead, softplus, softplus_inverse
from nn.networks import FlatNetwork, NetworkShape, zero_last_layer
from nn.ood import InputDistance, OODFallback
from nn.parameterization import NeuralParameterization, make_network, trainable_filter
from nn.wrappers import Blend, Residual
from physics.turbulence import ConstantDiffusivity, LocalClosure
from scm.errors import ConfigurationError
from scm.integration import rollout
from scm.parameterization import AbstractParameterization, Tendency

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


# ------------------------------------------------------------------ features


def test_every_feature_is_finite_and_the_scaled_ones_are_what_they_say(case, column):
    state, forcing, surface = column
    grid = case.model.grid
    state = eqx.tree_at(lambda s: (s.u, s.v), state,
                        (state.u * (1.0 + grid.z / 2000.0), state.v + 0.3 * grid.z / 1000.0))
    every = FeatureSet.from_names([*PROFILE_FEATURES, *SCALAR_FEATURES])
    profiles, scalars = _apply(every, state, forcing, grid, surface)
    assert profiles.shape == (len(PROFILE_FEATURES), LEVELS)
    assert scalars.shape == (len(SCALAR_FEATURES),)
    assert np.all(np.isfinite(profiles)) and np.all(np.isfinite(scalars))
    named = dict(zip(every.profiles, np.asarray(profiles), strict=True))
    scale = np.hypot(float(surface.ustar), USTAR_FLOOR)
    np.testing.assert_allclose(named["u_defect"],
                               (state.u - forcing.geostrophic_u) / scale, rtol=1e-12)
    np.testing.assert_allclose(named["rotation_height"],
                               grid.z * abs(float(forcing.coriolis_parameter)) / scale)
    for name in ("richardson", "bulk_richardson"):
        assert np.all(np.abs(named[name]) < 1.0), name
    # anomalies do not see a uniform shift of the wind or of θ (Galilean invariance)
    shifted = eqx.tree_at(lambda s: (s.u, s.thl), state, (state.u + 3.0, state.thl + 2.0))
    names = ("u_anomaly", "thl_anomaly")
    moved = FeatureSet.from_names(names)
    np.testing.assert_allclose(_apply(moved, shifted, forcing, grid, surface)[0],
                               _apply(moved, state, forcing, grid, surface)[0], atol=1e-10)
    hours = dict(zip(every.scalars, np.asarray(scalars), strict=True))
    np.testing.assert_allclose(hours["time_of_day_cos"], np.cos(2 * np.pi * 15 / 24))
    with pytest.raises(ConfigurationError, match="known features: u_anomaly"):
        FeatureSet.from_names(["u_anomaly", "vorticity"])
    with pytest.raises(ConfigurationError, match="profile feature"):
        FeatureSet.from_names(["ustar"])


def test_normalization_is_pooled_per_variable_from_samples(rng):
    profiles = rng.normal(3.0, 2.0, (400, 2, 6)) * np.array([1.0, 0.01])[None, :, None]
    scalars = rng.normal([0.3, -1.0], [0.1, 4.0], (400, 2))
    fitted = Normalization.from_samples(profiles, scalars)
    np.testing.assert_allclose(fitted.profile_mean, profiles.mean(axis=(0, 2)))
    np.testing.assert_allclose(fitted.profile_scale, profiles.std(axis=(0, 2)))
    np.testing.assert_allclose(fitted.scalar_mean, scalars.mean(axis=0))
    np.testing.assert_allclose(fitted.scalar_scale, scalars.std(axis=0))


# ------------------------------------------------------------------ out of distribution


@pytest.fixture(scope="module")
def detector(case, column):
    """Fitted on noisy copies of the heated column: its own features are inside."""
    state, forcing, surface = column
    features = FeatureSet.from_names()
    noise = jax.random.normal(jax.random.key(9), (3, 200, LEVELS))
    states = eqx.tree_at(lambda s: (s.u, s.v, s.thl), jax.tree.map(
        lambda a: jnp.broadcast_to(a, (200,) + a.shape), state),
        (state.u + noise[0], state.v + noise[1], state.thl + 0.3 * noise[2]))
    samples = jax.vmap(lambda s: features(s, forcing, case.model.grid, surface))(states)
    return InputDistance.fit(features, case.model.turbulence.surface, *samples)


def test_fallback_is_the_network_inside_and_the_physics_far_outside(case, normalization,
                                                                    column, detector,
                                                                    simple_physics):
    state, forcing, _ = column
    grid = case.model.grid
    network = neural(case, normalization, "diffusivity", "mlp", perturb=0.5)
    scale = detector.threshold
    inside = eqx.tree_at(lambda d: (d.threshold, d.width), detector, (50.0 * scale,
                                                                      1.0e-3 * scale))
    outside = eqx.tree_at(lambda d: (d.threshold, d.width), detector, (0.0 * scale,
                                                                       1.0e-6 * scale))
    a, b, near, far = call([simple_physics, network, OODFallback(network, inside, simple_physics),
                            OODFallback(network, outside, simple_physics)], state, forcing, grid)
    for x, y, z in ((near.diffusivity, b.diffusivity, a.diffusivity),
                    (far.diffusivity, a.diffusivity, b.diffusivity)):
        jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-14),
                     x, y)
        assert not np.allclose(y.u, z.u)
    # a correction (no physics given) fades out: zero far outside, itself inside
    correction = neural(case, normalization, "flux", "mlp", perturb=0.5, exchange=False)
    faded, kept, itself = call([OODFallback(correction, outside), OODFallback(correction, inside),
                                correction], state, forcing, grid)
    np.testing.assert_allclose(faded.flux.thl, 0.0, atol=1e-14)
    np.testing.assert_allclose(kept.flux.thl, itself.flux.thl, rtol=1e-12)


def test_input_distance_separates_training_from_extreme_columns_and_is_smooth(case, column,
                                                                             detector):
    state, forcing, _ = column
    grid = case.model.grid
    distance = eqx.filter_jit(detector.distance)
    assert float(distance(state, forcing, grid)) < float(detector.threshold)
    windy = eqx.tree_at(lambda s: s.u, state, state.u * (1.0 + grid.z / 300.0))
    assert float(detector.physics_weight(distance(windy, forcing, grid))) > 0.99
    # differentiable in the state (so a fallback can sit inside online training)
    gradient = eqx.filter_jit(jax.grad(lambda s: detector.physics_weight(
        detector.distance(s, forcing, grid))))(windy)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(gradient))


# ------------------------------------------------------------------ what is trained


class ScaledClosure(AbstractParameterization):
    """A researcher's own scheme holding its own weights: the local closure's diffusivities
    times exp(a + b z/1000) (a, b trainable), over a physics closure that stays frozen."""

    physics: LocalClosure
    weights: jax.Array

    def __call__(self, state, forcing, grid) -> Tendency:
        out = self.physics(state, forcing, grid)
        factor = jnp.exp(self.weights[0] + self.weights[1] * grid.z_interface / 1000.0)
        scaled = jax.tree.map(lambda k: k * factor, out.diffusivity)
        scaled = eqx.tree_at(lambda d: (d.u, d.v), scaled, (
            scaled.u.at[0].set(out.diffusivity.u[0]), scaled.v.at[0].set(out.diffusivity.v[0])))
        return Tendency(out.tendency, out.flux, scaled, out.diagnostics)


def test_trainable_filter_trains_weights_and_freezes_physics_scales_and_detectors(
        case, normalization, detector, simple_physics):
    network = neural(case, normalization, "flux", "mlp", exchange=False)
    hybrid = case.model.with_slot("turbulence", Residual(
        case.model.turbulence, OODFallback(network, detector)))
    spec = trainable_filter(hybrid, "turbulence")
    marked = eqx.filter(hybrid, spec)
    trained = {id(x) for x in jax.tree.leaves(marked)}
    assert {id(x) for x in jax.tree.leaves(network.network)} == trained
    own = ScaledClosure(LocalClosure(case.model.turbulence.surface), jnp.zeros(2))
    spec = trainable_filter(case.model.with_slot("turbulence", own), "turbulence")
    assert [x.shape for x in jax.tree.leaves(eqx.filter(own, spec.turbulence))] == [(2,)]
    blend = Blend(simple_physics, network, 0.3)
    assert jax.tree.leaves(eqx.filter(blend, trainable_filter(blend))) == jax.tree.leaves(
        eqx.filter(network.network, eqx.is_inexact_array))
    # the other slots, the grid and physics are never trained
    assert not any(jax.tree.leaves(trainable_filter(case.model, "turbulence")))


# ------------------------------------------------------------------ bring your own network


def test_an_equinox_mlp_runs_batched_trains_and_round_trips_as_an_artifact(case, normalization,
                                                                           column, tmp_path):
    """``eqx.nn.MLP`` holds its activation functions as leaves: stacked models must be
    mapped over their arrays only, and its artifact rebuilt from its recipe."""
    head = DiffusivityHead()
    mlp = eqx.nn.MLP(3 * LEVELS + 2, 2 * (LEVELS + 1), 16, 2, activation=jax.nn.relu,
                     key=jax.random.key(1))
    mlp = eqx.tree_at(lambda m: m.layers[-1], mlp, zero_last_layer(mlp.layers[-1]))
    mlp = eqx.tree_at(lambda m: m.layers[-1].bias, mlp, mlp.layers[-1].bias + 0.2)
    scheme = NeuralParameterization(case.model.turbulence.surface, normalization, mlp, head)
    assert isinstance(scheme.network, FlatNetwork)
    state, forcing, _ = column
    grid = case.model.grid
    models = stack_pytrees([case.model.with_slot("turbulence", scheme)] * 2)
    with pytest.raises(TypeError, match="not a valid JAX type"):
        jax.vmap(lambda m: m.turbulence(state, forcing, grid).diffusivity.u)(models)
    k = eqx.filter_jit(eqx.filter_vmap(lambda m: m.turbulence(state, forcing, grid)
                                       .diffusivity.u))(models)
    np.testing.assert_allclose(k[0], k[1])
    assert float(k[0][3]) == pytest.approx(10.0 * float(softplus(0.2)), rel=1e-12)
    save_artifact(tmp_path / "mlp_seed4", scheme, n_levels=LEVELS, seed=4)
    artifact = load_artifact(tmp_path / "mlp_seed4")
    assert artifact.config["network"] == {"kind": "eqx_mlp", "levels": LEVELS, "options": {
        "width": 16, "depth": 2, "activation": "relu"}}
    assert (artifact.name, artifact.config["seed"]) == ("mlp", 4)
    loaded = install_artifact(case.model, artifact).turbulence
    for x, y in zip(jax.tree.leaves(scheme), jax.tree.leaves(loaded), strict=True):
        if eqx.is_array(x):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            assert x is y
    # a network without a recipe: a clear error, and nothing written
    class Own(eqx.Module):
        weight: jax.Array

        def __call__(self, profiles, scalars):
            return jnp.zeros((2, LEVELS + 1)) + self.weight

    own = NeuralParameterization(case.model.turbulence.surface, normalization,
                                 Own(jnp.zeros(())), head)
    with pytest.raises(ConfigurationError, match="recipe"):
        save_artifact(tmp_path / "own", own, n_levels=LEVELS)
    assert not (tmp_path / "own").exists()


def build_own(shape: NetworkShape, *, key, scale: float = 1.0):
    """A researcher's network factory (``"tests.test_nn:build_own"`` as a network kind)."""
    layer = zero_last_layer(eqx.nn.Linear(shape.in_channels * shape.n_levels + shape.n_scalars,
                                          shape.out_channels * shape.out_length, key=key))
    return FlatNetwork(eqx.nn.Sequential([eqx.nn.Lambda(lambda x: scale * x), layer]),
                       shape.out_channels)


def test_a_researchers_factory_is_a_network_kind_with_a_recipe(case, normalization, tmp_path):
    head = FluxHead()
    network = make_network("tests.test_nn:build_own", head, LEVELS, key=jax.random.key(0),
                           scale=2.0)
    scheme = NeuralParameterization(case.model.turbulence.surface, normalization, network,
                                    head, surface_exchange=False)
    save_artifact(tmp_path / "own", scheme, n_levels=LEVELS, coupling="residual",
                  physics="tke", recipe=("tests.test_nn:build_own", {"scale": 2.0}))
    artifact = load_artifact(tmp_path / "own")
    assert isinstance(install_artifact(case.model, artifact).turbulence, Residual)
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        make_network("tests.nowhere:build", head, LEVELS, key=jax.random.key(0))
