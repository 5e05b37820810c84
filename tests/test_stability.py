"""The rollout-stability metrics on synthetic columns with known answers (float64)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.run import run_ensemble
from experiments.scenarios import stack_pytrees
from experiments.stability import (
    daily_trend,
    diurnal_composite,
    heat_budget_residual,
    jacobian_moduli,
    lead_time_skill,
    median_time_to_failure,
    spectrum_summary,
    survival_curve,
)
from scm.forcing import Forcing
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State

DT = 10.0


class Amplifier(AbstractParameterization):
    """dθ/dt = r (θ − θ_ref): a linear model whose explicit step grows by 1 + r Δt."""

    rate: jax.Array
    reference: jax.Array

    def __call__(self, state: State, forcing: Forcing, grid) -> Tendency:
        zeros = Tendency.zeros(state)
        tendency = State.from_fields({**zeros.tendency.fields(),
                                      "thl": self.rate * (state.thl - self.reference)})
        return Tendency(tendency, zeros.flux, zeros.diffusivity, {})


def test_planted_blow_up_has_its_known_time_to_failure(kit):
    g = kit.grid(1000.0, 8)
    # +0.1 K per step at level 0; the tendency turns NaN once θ exceeds the threshold, so a
    # column whose threshold is 300.05 + 0.1 k fails at step k + 2
    thresholds = [300.05, 300.25, 300.45, 1.0e9]
    models = stack_pytrees([kit.model(g).with_slot("turbulence", kit.PlantedHeating(
        jnp.asarray(0.01), jnp.asarray(t), 0)) for t in thresholds])
    states = stack_pytrees([kit.state(g)] * len(thresholds))
    run = run_ensemble(models, kit.forcing(g), states, DT, 0.0, 20, 1, progress=False)
    failed_at = np.asarray(run.failed_at)
    np.testing.assert_allclose(failed_at, [2 * DT, 4 * DT, 6 * DT, np.inf])
    np.testing.assert_array_equal(np.asarray(run.failed_level)[:3], 0)
    np.testing.assert_allclose(survival_curve(failed_at, np.arange(8) * DT),
                               [1, 1, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25])
    assert median_time_to_failure(failed_at) == 5 * DT
    assert np.all(np.isfinite(np.asarray(run.state.thl)))


def test_survival_curve_of_a_known_set_is_exact():
    failed = np.array([1.0, 2.0, np.inf, 3.0, 2.0])
    np.testing.assert_array_equal(survival_curve(failed, [0.0, 1.0, 1.5, 2.0, 3.0, 10.0]),
                                  [1.0, 0.8, 0.8, 0.4, 0.2, 0.2])
    assert median_time_to_failure(failed) == 2.0
    assert median_time_to_failure(np.array([np.inf, np.inf, 1.0])) == np.inf


def test_skill_trend_and_composite_of_known_series():
    truth = np.zeros((2, 3, 4))
    model = truth + np.array([1.0, -1.0, 1.0, -1.0])
    rmse, bias = lead_time_skill(model, truth)
    np.testing.assert_allclose(rmse, 1.0)
    np.testing.assert_allclose(bias, 0.0)
    saves_per_day = 24
    days = np.arange(5 * saves_per_day + 1) / saves_per_day
    np.testing.assert_allclose(daily_trend(0.3 * days[None, :] + 7.0, saves_per_day), 0.3)
    hours = np.arange(48) * 3600.0 + 1800.0
    composite = diurnal_composite((hours[None, :] % 86400.0) / 3600.0, hours)
    np.testing.assert_allclose(composite[0], np.arange(24) + 0.5)


def test_flux_form_budget_closes_and_a_leaky_scheme_is_flagged(kit):
    g = kit.grid(1000.0, 8, constant_density=False)
    model = kit.model(g, momentum=5.0, scalar=5.0, no_slip=1.0, exchange=0.01, depth=300.0)
    forcing = kit.forcing(g, surface_temperature=305.0, surface_heat_flux=0.05,
                          thl_tendency=1.0e-5, coriolis_parameter=1.0e-4, geostrophic_u=5.0)
    state = kit.state(g, u=3.0, thl=300.0 + 0.003 * np.asarray(g.z))
    residual = heat_budget_residual(model, forcing, state, 0.0, DT)
    column_heat = float(jnp.sum(g.layer_mass * state.thl))
    assert abs(float(residual)) < 1.0e-13 * column_heat
    leak = 2.0e-4
    leaky = model.with_slot("turbulence", kit.PlantedHeating(jnp.asarray(leak),
                                                             jnp.asarray(1.0e9), 3))
    residual = heat_budget_residual(leaky, forcing, state, 0.0, DT)
    np.testing.assert_allclose(float(residual), DT * leak * float(g.layer_mass[3]), rtol=1e-9)


@pytest.mark.parametrize("coriolis", [0.0, 1.0e-4])
def test_pure_implicit_diffusion_has_no_growing_mode(kit, coriolis):
    g = kit.grid(1000.0, 8, constant_density=False)
    model = eqx.tree_at(lambda m: m.surface, kit.model(g, momentum=20.0, scalar=20.0,
                                                       no_slip=1.0), None,
                        is_leaf=lambda x: x is None)
    forcing = kit.forcing(g, coriolis_parameter=coriolis, geostrophic_u=5.0 * (coriolis > 0))
    state = kit.state(g, u=4.0, thl=300.0 + 0.003 * np.asarray(g.z))
    moduli = np.abs(np.linalg.eigvals(np.asarray(jacobian_moduli(model, forcing, state, 0.0,
                                                                 600.0))))
    largest, growing = spectrum_summary(moduli[None], tolerance=1.0e-10)
    # the trapezoidal Coriolis turning is neutral: an undamped wind keeps its modulus
    assert largest <= 1.0 + 1.0e-12 and growing == 0.0


def test_an_unstable_linear_model_is_detected(kit):
    g = kit.grid(1000.0, 8)
    rate = 1.0e-3
    model = kit.model(g).with_slot("radiation", Amplifier(jnp.asarray(rate),
                                                          jnp.asarray(300.0)))
    state = kit.state(g, thl=301.0)
    moduli = np.abs(np.linalg.eigvals(np.asarray(jacobian_moduli(model, kit.forcing(g), state,
                                                                 0.0, DT))))
    largest, growing = spectrum_summary(moduli[None], tolerance=1.0e-4)
    np.testing.assert_allclose(largest, 1.0 + rate * DT, rtol=1e-12)
    assert growing == 1.0


def test_metrics_file_passes_cfchecks(kit, tmp_path, cf_check):
    """The benchmark's metrics.nc, from synthetic results of every metric."""
    from experiments.stability import DIAGNOSTICS, VARIABLES, metrics_dataset
    from scm.io import write_netcdf

    grid = kit.grid(1000.0, 8)
    scenarios, times, levels = 3, np.arange(5) * 3600.0, grid.n_levels
    rng = np.random.default_rng(0)
    result = {"time": times, "failed_at": np.array([np.inf, 7200.0, np.inf])}
    for name in (*VARIABLES, "wind", *DIAGNOSTICS):
        result[f"rmse_{name}"] = rng.random((scenarios, times.size))
        result[f"bias_{name}"] = rng.random((scenarios, times.size))
    for name in VARIABLES:
        result[f"mean_bias_profile_{name}"] = rng.random((scenarios, levels))
        result[f"drift_{name}"] = rng.random(scenarios)
    for name in ("surface_heat_flux", "boundary_layer_height"):
        result[f"diurnal_{name}"] = rng.random((scenarios, 24))
        result[f"diurnal_{name}_truth"] = rng.random((scenarios, 24))
    result["budget_residual"] = rng.random((scenarios, 2))
    result["jacobian_moduli"] = rng.random((scenarios, 2, 3 * levels))
    results = {"physics_local": {"heldout": result}, "replace": {"heldout": result}}
    path = write_netcdf(metrics_dataset(results, grid, {"title": "rollout-stability metrics"}),
                        tmp_path / "metrics.nc")
    cf_check(path)
