"""The case catalogue: validation, structure, the analytic Ekman layer, and published ranges.

The physical checks run each case in its default configuration (float64 in this session) and
compare with the intercomparison ranges of docs/cases.md.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import scm.integration
from experiments.cases import (
    CASE_NAMES,
    TURBULENCE_NAMES,
    Case,
    build_case,
    case_parameters,
    describe_cases,
    ekman_impulsive_solution,
    ekman_steady_solution,
)
from scm.errors import ConfigurationError

HOUR = 3600.0
DAY = 86400.0


def run(case: Case, hours: float | None = None):
    n_steps = case.n_steps if hours is None else round(hours * HOUR / case.dt)
    return jax.jit(lambda s: scm.integration.rollout(
        case.model, s, case.forcing, 0.0, case.dt, n_steps, case.save_every))(case.state0)


# ------------------------------------------------------------------------------------------
# Catalogue and validation


def test_catalogue_describes_every_case():
    assert set(describe_cases()) == set(CASE_NAMES)
    for name in CASE_NAMES:
        for key, (default, low, high, units, text) in case_parameters(name).items():
            assert low <= default <= high, key
            assert isinstance(units, str) and text


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("turbulence", TURBULENCE_NAMES)
def test_every_case_builds_with_every_closure(name, turbulence):
    case = build_case(name, turbulence=turbulence, levels=16)
    assert case.name == name and case.description == describe_cases()[name]
    assert set(case.state0.tracers) == set(case.model.required_tracers())
    assert case.state0.u.shape == (16,)
    assert case.dt > 0 and case.hours > 0 and case.save_every >= 1
    assert abs(case.dt * case.save_every - 600.0) <= case.dt
    assert case.n_steps % case.save_every == 0
    for key, value in case.parameters.items():
        assert type(value) in (int, float, str), key
    assert set(case_parameters(name)) <= set(case.parameters)
    assert case.parameters["turbulence"] == turbulence
    for leaf in jax.tree.leaves(case.state0):
        assert np.all(np.isfinite(leaf))


def test_parameters_are_applied_and_recorded():
    case = build_case("diurnal", latitude=30.0, geostrophic_wind=5.0, lapse_rate=4.0)
    assert case.parameters["latitude"] == 30.0
    f = case.forcing.at(0.0)
    assert float(f.coriolis_parameter) == pytest.approx(2 * 7.2921e-5 * 0.5, rel=1e-6)
    assert float(f.geostrophic_u[0]) == 5.0
    noon, midnight = case.forcing.at(15 * HOUR), case.forcing.at(3 * HOUR + DAY)
    assert float(noon.surface_temperature) == pytest.approx(300.0)
    assert float(midnight.surface_temperature) == pytest.approx(280.0)
    assert case.forcing.period == DAY


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "bomex_typo"}, ["case", "ekman"]),
        ({"name": "gabls1", "turbulence": "neural"}, ["turbulence", "tke"]),
        ({"name": "gabls1", "dt": 0.0}, ["dt", "> 0"]),
        ({"name": "gabls1", "dt": -5.0}, ["dt"]),
        ({"name": "gabls1", "hours": 0.0}, ["hours", "> 0"]),
        ({"name": "gabls1", "hours": float("nan")}, ["hours"]),
        ({"name": "gabls1", "levels": 4}, ["levels", "8"]),
        ({"name": "gabls1", "levels": 32.5}, ["levels"]),
        ({"name": "gabls1", "roughness": 0.1}, ["roughness", "roughness_length"]),
        ({"name": "gabls1", "geostrophic_wind": 40.0}, ["geostrophic_wind", "[2.0, 15.0]"]),
        ({"name": "diurnal", "latitude": 0.0}, ["latitude", "[10.0, 80.0]"]),
        ({"name": "dry_cbl", "surface_heat_flux": -0.1}, ["surface_heat_flux", "0.5"]),
        ({"name": "ekman", "eddy_viscosity": float("inf")}, ["eddy_viscosity", "finite"]),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, words):
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    with pytest.raises(ConfigurationError) as error:
        build_case(name, **kwargs)
    for word in words:
        assert word in str(error.value)


# ------------------------------------------------------------------------------------------
# Ekman layer: analytic solutions, then the model against them


def test_ekman_solutions_have_their_textbook_properties():
    k, f, ug = 5.0, 1.0e-4, 10.0
    depth = math.sqrt(2 * k / f)
    z = np.linspace(0.0, 8 * depth, 20001)
    u, v = ekman_steady_solution(z, ug, 0.0, k, f)
    assert v.max() == pytest.approx(0.3224 * ug, rel=1e-3)
    assert z[v.argmax()] == pytest.approx(math.pi / 4 * depth, rel=1e-3)
    # Surface stress K ∂U/∂z = |Ug| √(K f), at 45° to the geostrophic wind.
    du, dv = (u[1] - u[0]) / z[1], (v[1] - v[0]) / z[1]
    assert k * math.hypot(du, dv) == pytest.approx(ug * math.sqrt(k * f), rel=1e-3)
    assert math.degrees(math.atan2(dv, du)) == pytest.approx(45.0, abs=0.1)
    # The impulsive start: no slip at the ground, geostrophic far above, steady as t → ∞.
    ui, vi = ekman_impulsive_solution(z[::100], 3600.0, ug, 0.0, k, f)
    assert abs(ui[0]) < 1e-9 and abs(vi[0]) < 1e-9
    assert ui[-1] == pytest.approx(ug, abs=1e-6) and abs(vi[-1]) < 1e-6
    u_late, v_late = ekman_impulsive_solution(z[::100], 400 * DAY, ug, 0.0, k, f)
    np.testing.assert_allclose(u_late, u[::100], atol=0.02)
    np.testing.assert_allclose(v_late, v[::100], atol=0.02)


def test_ekman_case_follows_the_impulsive_solution():
    case = build_case("ekman", hours=12.0)
    traj = run(case)
    z = np.asarray(case.model.grid.z)
    p = case.parameters
    for k in (6, 36, len(traj.time) - 1):
        t = float(traj.time[k])
        u, v = ekman_impulsive_solution(z, t, p["geostrophic_u"], p["geostrophic_v"],
                                        p["eddy_viscosity"], p["coriolis_parameter"])
        # First-order time stepping at Δt = 60 s: about 0.5 % of |Ug|.
        np.testing.assert_allclose(traj.state.u[k], u, atol=0.08)
        np.testing.assert_allclose(traj.state.v[k], v, atol=0.08)


# ------------------------------------------------------------------------------------------
# Published ranges (default configurations)


@pytest.fixture(scope="module")
def gabls1():
    case = build_case("gabls1")
    return case, run(case)


def test_gabls1_hour_8_to_9_in_published_range(gabls1):
    """Beare et al. (2006): u* 0.25–0.30, w'θ' −0.010 to −0.013 K m/s, h 150–200 m, jet
    9–10 m/s (LES); the asserted bands are a little wider, the model's numbers are
    u* ≈ 0.27, −0.010, 188 m, 9.8 m/s."""
    case, traj = gabls1
    assert np.isinf(float(traj.failed_at))
    t = np.asarray(traj.time)
    window = (t >= 8 * HOUR) & (t <= 9 * HOUR)
    ustar = np.asarray(traj.diagnostics["ustar"])[window].mean()
    heat = np.asarray(traj.diagnostics["surface_heat_flux"])[window].mean()
    height = np.asarray(traj.diagnostics["boundary_layer_height"])[window].mean()
    speed = np.hypot(np.asarray(traj.state.u), np.asarray(traj.state.v))[window].mean(0)
    np.testing.assert_allclose(heat, np.asarray(traj.flux.thl)[window, 0].mean(), rtol=1e-9)
    assert 0.22 <= ustar <= 0.34, ustar
    assert -0.016 <= heat <= -0.008, heat
    assert 120.0 <= height <= 250.0, height
    assert 8.5 <= speed.max() <= 11.0, speed.max()
    tke = np.asarray(traj.state.tracers["tke"])
    assert tke.min() >= 0.0


def test_dry_cbl_entrainment_in_published_range():
    """Sullivan & Patton (2011): minimum heat flux ≈ −0.2 × the surface flux at the inversion,
    which rises from ≈ 1.0 to 1.1–1.2 km in 4 h. Averaged over hour 3–4 (the inversion moves
    one 31 m level at a time, so snapshots flicker); the model gives ≈ −0.18 at 1.125 km."""
    case = build_case("dry_cbl")
    traj = run(case)
    assert np.isinf(float(traj.failed_at))
    t = np.asarray(traj.time)
    assert t[-1] == pytest.approx(4 * HOUR)
    flux = np.asarray(traj.flux.thl)[t > 3 * HOUR].mean(0)
    ratio = flux.min() / flux[0]
    inversion = float(case.model.grid.z_interface[flux.argmin()])
    assert flux[0] == pytest.approx(0.24)
    assert -0.3 <= ratio <= -0.1, ratio
    assert 1050.0 <= inversion <= 1300.0, inversion
    # The 4 h snapshot itself is inside the same ranges.
    final = np.asarray(traj.flux.thl)[-1]
    assert -0.3 <= final.min() / final[0] <= -0.1, final.min() / final[0]
    assert 1050.0 <= float(case.model.grid.z_interface[final.argmin()]) <= 1300.0
    # Mixed-layer warming against the zero-order budget dθm/dt = (1 + A) Q / h.
    theta = np.asarray(traj.state.thl)
    warming = theta[-1, 5] - theta[0, 5]
    expected = (1 - ratio) * 0.24 * 4 * HOUR / inversion
    assert warming == pytest.approx(expected, rel=0.15)
    w_star = np.asarray(traj.diagnostics["convective_velocity"])[t > 3 * HOUR].mean()
    assert 1.7 <= w_star <= 2.4, w_star


def test_diurnal_default_is_bounded_and_periodic():
    """30 days in the default configuration: finite, and the day-30 mean θ profile within
    1 K of day 10's (the model: within 0.01 K)."""
    case = build_case("diurnal")
    assert case.hours >= 30 * 24
    traj = run(case, hours=30 * 24)
    assert np.isinf(float(traj.failed_at))
    for leaf in (traj.state.u, traj.state.v, traj.state.thl, traj.flux.thl):
        assert np.all(np.isfinite(leaf))
    t = np.asarray(traj.time)
    theta = np.asarray(traj.state.thl)
    day = np.floor((t - 1e-6) / DAY)
    day10, day30 = theta[day == 9].mean(0), theta[day == 29].mean(0)
    assert np.abs(day30 - day10).max() < 1.0
    # A real diurnal cycle: daytime convection, stable nights.
    heat = np.asarray(traj.diagnostics["surface_heat_flux"])[day == 29]
    assert heat.max() > 0.05 and heat.min() < 0.0
    assert np.asarray(traj.diagnostics["updraft_top_height"])[day == 29].max() > 500.0
    assert theta.min() > 250.0 and theta.max() < 340.0
    # TKE never falls below the closure's floor, and is substantial by day.
    tke = np.asarray(traj.state.tracers["tke"])
    assert tke.min() >= 0.99 * float(case.model.turbulence.tke_min)
    assert tke.max() > 0.5
