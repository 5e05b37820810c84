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
    bootstrap_change,
    daily_means,
    daily_trend,
    diurnal_composite,
    drift_failure_time,
    heat_budget_residual,
    jacobian_moduli,
    kinetic_energy_source,
    lead_time_skill,
    median_time_to_failure,
    momentum_budget_residual,
    periodicity,
    spectrum_summary,
    survival_curve,
)
from scm.forcing import Forcing
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State

DT = 10.0


class MomentumFlux(AbstractParameterization):
    """An explicit upward momentum flux F_u = c ∂u/∂z on the interior interfaces (flux form:
    it moves momentum and keeps the column total), plus a tendency of v on one level that is
    not a flux (a leak). With c > 0 the flux runs up the gradient: anti-diffusion, which
    creates kinetic energy."""

    coefficient: jax.Array
    leak: jax.Array

    def __call__(self, state: State, forcing: Forcing, grid) -> Tendency:
        zeros = Tendency.zeros(state)
        shear = grid.gradient_at_interfaces(state.u).at[0].set(0.0).at[-1].set(0.0)
        flux = State.from_fields({**zeros.flux.fields(), "u": self.coefficient * shear})
        tendency = State.from_fields({**zeros.tendency.fields(),
                                      "v": zeros.tendency.v.at[2].set(self.leak)})
        return Tendency(tendency, flux, zeros.diffusivity, {})


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


def test_metrics_file_passes_cfchecks(tmp_path, cf_check):
    """The benchmark's metrics.nc, from synthetic runs with every per-run metric."""
    from experiments.stability import _SCALAR_UNITS, metrics_dataset
    from scm.io import write_netcdf

    rng = np.random.default_rng(0)

    def run(families):
        result = {name: rng.random(len(families)) for name in _SCALAR_UNITS}
        result["failed_at"] = np.array([np.inf] * (len(families) - 1) + [7200.0])
        result["families"] = families
        result["daily_theta_error"] = rng.random((len(families), 5))
        result["daily_wind_error"] = rng.random((len(families), 5))
        return result

    sets = {"test": ["test"] * 3, "extrapolation": ["warm", "warm", "windy"]}
    results = {model: {name: [run(f), run(f)] for name, f in sets.items()}
               for model in ("physics_local", "residual_online+fallback")}
    path = write_netcdf(metrics_dataset(results, {"title": "rollout-stability metrics"}),
                        tmp_path / "metrics.nc")
    cf_check(path)


def test_drift_is_flagged_at_the_day_it_crosses_the_threshold():
    """A run whose daily-mean θ error grows by 1 K a day crosses 3 K on day 4 (its end); a
    wind drift by 2 m/s a day crosses 5 m/s on day 3; a run within both never fails."""
    days = np.arange(1, 11, dtype=float)
    theta = np.stack([days * 1.0, days * 0.1, days * 0.1])
    wind = np.stack([days * 0.1, days * 2.0, days * 0.4])
    np.testing.assert_array_equal(drift_failure_time(theta, wind, 3.0, 5.0),
                                  [4.0, 3.0, np.inf])
    # daily means leave the initial save out: day d averages saves d·n + 1 … (d + 1)·n
    series = np.arange(1 + 2 * 4, dtype=float)[None, :]
    np.testing.assert_array_equal(daily_means(series, 4), [[2.5, 6.5]])


def test_bootstrap_interval_of_a_known_improvement():
    rng = np.random.default_rng(3)
    baseline = rng.uniform(1.0, 2.0, 40)
    better = 0.5 * baseline[None, :] * rng.uniform(0.9, 1.1, (3, 40))
    change, low, high = bootstrap_change(better, baseline)
    assert change == pytest.approx(better.mean() / baseline.mean() - 1.0)
    assert low < change < high < 0.0 and change == pytest.approx(-0.5, abs=0.05)
    # the same errors: no change, an interval of zero width around it
    assert bootstrap_change(baseline[None, :], baseline) == (0.0, 0.0, 0.0)
    # errors uncorrelated with the baseline's and as large: the interval holds zero
    _, low, high = bootstrap_change(rng.uniform(1.0, 2.0, (3, 40)), baseline)
    assert low < 0.0 < high


def test_periodicity_of_a_periodic_and_of_a_drifting_climate():
    days = np.arange(40, dtype=float)[None, :, None] * np.ones((1, 1, 5))
    assert periodicity(np.zeros_like(days) + 3.0)[0] == 0.0
    np.testing.assert_allclose(periodicity(0.2 * days), [0.2])


def test_momentum_budget_closes_with_coriolis_and_drag_and_a_leak_is_flagged(kit):
    g = kit.grid(1000.0, 8, constant_density=False)
    model = kit.model(g, momentum=5.0, scalar=5.0, no_slip=1.0, exchange=0.01, depth=300.0)
    model = model.with_slot("radiation", MomentumFlux(jnp.asarray(0.3), jnp.asarray(0.0)))
    forcing = kit.forcing(g, coriolis_parameter=1.2e-4, geostrophic_u=8.0,
                          geostrophic_v=-1.0, surface_temperature=301.0)
    state = kit.state(g, u=2.0 + 0.004 * np.asarray(g.z), v=0.5,
                      thl=300.0 + 0.003 * np.asarray(g.z))
    momentum = float(jnp.sum(g.layer_mass * jnp.abs(state.u + 1j * state.v)))
    for slot in ("turbulence", "radiation"):
        residual = momentum_budget_residual(model, forcing, state, 0.0, DT, slot)
        assert abs(complex(residual)) < 1.0e-12 * momentum, slot
    leak = 3.0e-4
    leaky = model.with_slot("radiation", MomentumFlux(jnp.asarray(0.3), jnp.asarray(leak)))
    residual = momentum_budget_residual(leaky, forcing, state, 0.0, DT, "radiation")
    np.testing.assert_allclose(complex(residual), 1j * DT * leak * float(g.layer_mass[2]),
                               rtol=1e-9)


def test_kinetic_energy_source_sign_of_mixing_and_of_anti_diffusion(kit):
    g = kit.grid(1000.0, 8, constant_density=False)
    state = kit.state(g, u=2.0 + 0.01 * np.asarray(g.z), v=1.0)
    forcing = kit.forcing(g)
    mixing = kit.model(g, momentum=10.0, scalar=1.0, no_slip=1.0)
    assert float(kinetic_energy_source(mixing, forcing, state, 0.0, DT)) < 0.0
    # an up-gradient momentum flux (F = +c ∂u/∂z) sharpens the shear: it creates energy
    anti = kit.model(g).with_slot("turbulence", MomentumFlux(jnp.asarray(2.0),
                                                             jnp.asarray(0.0)))
    assert float(kinetic_energy_source(anti, forcing, state, 0.0, DT)) > 0.0
