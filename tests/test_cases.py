"""The case catalogue: validation, structure, the analytic Ekman layer, and published ranges.

The physical checks run each case in its default configuration (float64 in this session) and
compare with the published ranges its definition holds (``experiments.cases.<case>``).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scm.integration
from experiments.cases import (
    CASE_NAMES,
    TURBULENCE_NAMES,
    Case,
    build_case,
    case_parameters,
    definition,
    describe_cases,
    ekman_impulsive_solution,
    ekman_steady_solution,
)
from experiments.run import case_dataset, run_case
from scm.errors import ConfigurationError
from scm.state import State

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
# Published ranges (default configurations), read from each case's own definition

RANGE_CASES = tuple(name for name in CASE_NAMES if definition(name).ranges)


def case_dataset_of(case: Case):
    """Column 0 of a run of ``case`` as the dataset its ``measure`` reads."""
    return case_dataset(case, run_case(case, progress=False))


@pytest.fixture(scope="module")
def default_runs():
    """Datasets of the default configuration of every case with ranges, made once."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = case_dataset_of(build_case(name))
        return cache[name]

    return get


@pytest.mark.parametrize("name", RANGE_CASES)
def test_default_configuration_is_inside_its_published_ranges(name, default_runs):
    dataset = default_runs(name)
    assert np.isnan(dataset["failed_at"].values).all()
    measured = definition(name).measure(dataset)
    outside = {r.name: (measured[r.name], r.low, r.high) for r in definition(name).ranges
               if not r.contains(measured[r.name])}
    assert not outside, outside


def test_every_range_has_a_measure_and_its_series_exists(default_runs):
    for name in RANGE_CASES:
        spec = definition(name)
        assert spec.measure is not None and spec.references
        dataset = default_runs(name)
        measured = spec.measure(dataset)
        for r in spec.ranges:
            assert r.low < r.high and np.isfinite(measured[r.name]), (name, r.name)
            if r.series is not None:
                assert r.series in dataset, (name, r.series)


@pytest.mark.parametrize(("option", "factor"), [("c_m", 0.8), ("c_eps", 1.5),
                                                ("asymptotic_length", None)])
def test_gabls1_ranges_reject_a_detuned_closure(option, factor):
    """The published ranges are tight enough to catch a closure detuned as the case's
    intercomparison would notice: c_m × 0.8, c_ε × 1.5 or a 40 m asymptotic length."""
    case = build_case("gabls1")
    closure = case.model.turbulence
    value = 40.0 if factor is None else float(getattr(closure, option)) * factor
    detuned = eqx.tree_at(lambda c: getattr(c, option), closure,
                          jnp.asarray(value, closure.c_m.dtype))
    case = dataclasses.replace(case, model=case.model.with_slot("turbulence", detuned))
    measured = definition("gabls1").measure(case_dataset_of(case))
    assert any(not r.contains(measured[r.name]) for r in definition("gabls1").ranges), measured


@pytest.mark.slow
@pytest.mark.parametrize("levels", [32, 128])
def test_dry_cbl_entrainment_does_not_depend_on_the_grid(levels):
    """The entrainment ratio stays inside the LES range at half and double the default 64
    levels (with first-order upwinding of the environment under the mass flux it was −0.36
    and −0.17; the default resolution is checked with the other ranges)."""
    case = build_case("dry_cbl", levels=levels)
    measured = definition("dry_cbl").measure(case_dataset_of(case))
    assert -0.25 <= measured["entrainment_ratio"] <= -0.15, measured


def test_dry_cbl_mixed_layer_warms_as_the_zero_order_budget(default_runs):
    """dθm/dt = (1 + A) Q / h (the zero-order jump model, with the model's own A and h)."""
    dataset = default_runs("dry_cbl")
    measured = definition("dry_cbl").measure(dataset)
    theta = dataset["theta"].isel(column=0).values
    warming = theta[-1, 5] - theta[0, 5]
    expected = (1 - measured["entrainment_ratio"]) * 0.24 * 4 * HOUR / measured[
        "inversion_height"]
    assert warming == pytest.approx(expected, rel=0.15)


def test_diurnal_default_has_a_real_diurnal_cycle(default_runs):
    """30 days in the default configuration: daytime convection and stable nights, bounded
    θ, and TKE never below the closure's floor."""
    dataset = default_runs("diurnal").isel(column=0)
    case = build_case("diurnal")
    assert case.hours >= 30 * 24
    t = dataset["time"].values
    day = np.floor((t - 1e-6) / DAY)
    heat = dataset["surface_heat_flux"].values[day == 29]
    assert heat.max() > 0.05 and heat.min() < 0.0
    assert dataset["updraft_top_height"].values[day == 29].max() > 500.0
    theta = dataset["theta"].values
    assert theta.min() > 250.0 and theta.max() < 340.0
    tke = dataset["tke"].values
    assert tke.min() >= 0.99 * float(case.model.turbulence.tke_min)
    assert tke.max() > 0.5


# ------------------------------------------------------------------------------------------
# Derivatives through each case's own physics, from its own initial state


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_derivative_through_the_cases_physics_matches_finite_differences(name):
    """Three steps of the case's own schemes (16 levels) from its own initial state, whose
    neutral, shear-free and saturated layers sit exactly at the switches of the physics: the
    directional derivative by autodiff (forward mode; reverse mode transposes the same
    linearization) equals central differences as the step shrinks. Before the schemes were
    regularized, differences at 10⁻³ … 10⁻⁵ diverged (GABLS1 and the dry CBL). Where a layer
    is at rest, Ri = N²/(S² + S²min) is steep in θ and the differences converge only as
    fast as that allows (GABLS1: a relative error of 3 × 10⁻² at 10⁻⁴, 10⁻⁴ at 10⁻⁷)."""
    case = build_case(name, levels=16)
    term = scm.integration.ColumnTerm(case.model, case.forcing)
    solver = scm.integration.SemiImplicitEuler()

    def loss(state):
        def step(k, s):
            t = k * case.dt
            return solver.step(term, t, t + case.dt, s, None, None, False)[0]

        final = jax.lax.fori_loop(0, 3, step, state)
        return (1.0e-4 * jnp.sum(final.thl**2) + 1.0e-2 * jnp.sum(final.u**2 + final.v**2)
                + 1.0e2 * jnp.sum(final.qt**2))

    rng = np.random.default_rng(7)
    direction = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), case.state0)
    direction = State(direction.u, direction.v, direction.thl, 1.0e-3 * direction.qt,
                      {n: 0.0 * a for n, a in direction.tracers.items()})
    derivative = float(jax.jit(lambda s, d: jax.jvp(loss, (s,), (d,))[1])(case.state0,
                                                                         direction))
    value = jax.jit(loss)

    def central(h):
        plus = jax.tree.map(lambda a, d: a + h * d, case.state0, direction)
        minus = jax.tree.map(lambda a, d: a - h * d, case.state0, direction)
        return (float(value(plus)) - float(value(minus))) / (2.0 * h)

    errors = [abs(central(h) - derivative) for h in (1.0e-5, 1.0e-7)]
    round_off = 1.0e-6 * (1.0 + abs(derivative))
    assert errors[-1] <= 3.0e-4 * abs(derivative) + round_off, (derivative, errors)
    assert errors[-1] <= errors[0] + round_off, (derivative, errors)


def test_plots_of_a_case_mark_its_window_and_ranges(default_runs, tmp_path):
    from experiments.plots import plot_trajectory

    written = plot_trajectory(default_runs("bomex"), tmp_path)
    assert sorted(p.name for p in written) == [
        f"bomex_{kind}.png" for kind in ("profiles", "sections", "timeseries", "window")]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
