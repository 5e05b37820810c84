"""Moist physics: thermodynamics, partial cloud, the condensing updraft, warm rain, radiation,
and the column budgets of water and θl (float64 unless a test says otherwise)."""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.cases import build_case
from physics.clouds import StatisticalCloud, cloud_cover, gaussian_cloud
from physics.large_scale import LargeScaleForcing
from physics.microphysics import (
    MAX_DIAMETER_SLOPE,
    WarmRain,
    accretion,
    autoconversion,
    diameter_slope,
    evaporation_rate,
    fall_speed,
    precipitation_fraction,
    sedimentation,
    variability_enhancement,
)
from physics.radiation import StratocumulusLongwave
from physics.surface import BulkSurface
from physics.thermodynamics import (
    LATENT_OVER_CP,
    clear_air_coefficients,
    cloudy_air_coefficients,
    diagnose,
    saturation_adjustment,
    saturation_specific_humidity,
    saturation_vapor_pressure,
    virtual_potential_temperature,
)
from physics.turbulence import TKEClosure, buoyancy_frequency_squared
from physics.updraft import MassFluxUpdraft
from scm.constants import DRY_AIR_HEAT_CAPACITY, GRAVITY, KAPPA, VIRTUAL_COEFFICIENT
from scm.errors import ConfigurationError
from scm.forcing import Forcing, ForcingSeries
from scm.grid import ColumnGrid
from scm.integration import rollout
from scm.model import Model
from scm.state import State

# ------------------------------------------------------------------------------------------
# Thermodynamics


def exner_of(pressure):
    return (pressure / 1.0e5) ** KAPPA


def murphy_koop(temperature):
    """Murphy & Koop (2005), eq. 10: saturation vapour pressure over liquid (Pa)."""
    t = np.asarray(temperature, float)
    return np.exp(54.842763 - 6763.22 / t - 4.210 * np.log(t) + 0.000367 * t
                  + np.tanh(0.0415 * (t - 218.8))
                  * (53.878 - 1331.22 / t - 9.44523 * np.log(t) + 0.014025 * t))


def test_saturation_vapor_pressure_within_bolton_accuracy_of_murphy_koop():
    temperature = np.linspace(243.15, 313.15, 71)
    es, slope = saturation_vapor_pressure(jnp.asarray(temperature))
    np.testing.assert_allclose(es, murphy_koop(temperature), rtol=3.0e-3)
    np.testing.assert_allclose(float(saturation_vapor_pressure(273.15)[0]), 611.2, rtol=1e-12)
    # the logarithmic derivative is exact
    numeric = jax.vmap(jax.grad(lambda t: jnp.log(saturation_vapor_pressure(t)[0])))(
        jnp.asarray(temperature))
    np.testing.assert_allclose(slope, numeric, rtol=1e-10)


def test_saturation_specific_humidity_and_its_derivative():
    t, p = jnp.asarray([280.0, 295.0, 303.0]), jnp.asarray([9.0e4, 1.0e5, 1.01e5])
    qs, slope = saturation_specific_humidity(t, p)
    es = saturation_vapor_pressure(t)[0]
    np.testing.assert_allclose(qs, 0.62197 * es / (p - 0.37803 * es), rtol=1e-4)
    numeric = jax.vmap(jax.grad(lambda t, p: saturation_specific_humidity(t, p)[0]))(t, p)
    np.testing.assert_allclose(slope, numeric, rtol=1e-10)
    # Clausius–Clapeyron: ∂ ln qs / ∂T ≈ Lv / (Rv T²)
    np.testing.assert_allclose(slope / qs, 2.5e6 / (461.5 * t**2), rtol=0.03)


def converged_adjustment(thl, qt, pressure, exner):
    """The root of the saturation residual by 30 Newton iterations in float64."""
    return saturation_adjustment(thl, qt, pressure, exner, n_iterations=30)


def random_states(n, seed=1):
    """States over 100–1050 hPa, 200–315 K, 80 % saturated with up to 5 g/kg of liquid."""
    rng = np.random.default_rng(seed)
    pressure = rng.uniform(1.0e4, 1.05e5, n)
    temperature = rng.uniform(200.0, 315.0, n)
    qs = np.asarray(saturation_specific_humidity(temperature, pressure)[0])
    saturated = rng.random(n) < 0.8
    liquid = np.where(saturated, rng.uniform(0.0, 5.0e-3, n), 0.0)
    qt = np.where(saturated, qs + liquid, qs * rng.uniform(0.1, 0.99, n))
    exner = exner_of(pressure)
    thl = (temperature - LATENT_OVER_CP * liquid) / exner
    return thl, qt, pressure, exner, temperature, liquid


def test_saturation_adjustment_reaches_float32_round_off_in_four_iterations():
    thl, qt, pressure, exner, temperature, liquid = random_states(20000)
    realistic = qt < 0.04  # the atmosphere's range of water content
    thl, qt, pressure, exner, temperature, liquid = (
        x[realistic] for x in (thl, qt, pressure, exner, temperature, liquid))
    truth_t, truth_l = converged_adjustment(thl, qt, pressure, exner)
    np.testing.assert_allclose(truth_t, temperature, atol=1e-8)
    np.testing.assert_allclose(truth_l, liquid, atol=1e-12)
    with jax.enable_x64(False):
        args = [jnp.asarray(x, jnp.float32) for x in (thl, qt, pressure, exner)]
        t32, l32 = jax.jit(saturation_adjustment)(*args)
        assert t32.dtype == jnp.float32
    assert np.abs(np.asarray(t32, float) - temperature).max() < 5.0e-4
    assert np.abs(np.asarray(l32, float) - liquid).max() < 1.0e-6
    # fewer iterations are not enough
    t2, _ = saturation_adjustment(thl, qt, pressure, exner, n_iterations=2)
    assert np.abs(np.asarray(t2) - temperature).max() > 0.1


def test_saturation_adjustment_converges_where_a_clipped_residual_two_cycles():
    """A warm, very moist parcel (902 hPa, 301 K, 5 g/kg of liquid): Newton on the residual
    with ql clipped at zero alternates between two temperatures; unclipped, it converges."""
    pressure, temperature, liquid = 9.02e4, 301.0, 5.0e-3
    exner = exner_of(pressure)
    qs = float(saturation_specific_humidity(temperature, pressure)[0])
    qt, thl = qs + liquid, (temperature - LATENT_OVER_CP * liquid) / exner
    t, ql = saturation_adjustment(thl, qt, pressure, exner)
    assert float(t) == pytest.approx(temperature, abs=1e-6)
    assert float(ql) == pytest.approx(liquid, abs=1e-9)

    def clipped_step(t):
        qs_t, slope = saturation_specific_humidity(t, pressure)
        condensate = max(qt - float(qs_t), 0.0)
        g = t - exner * thl - LATENT_OVER_CP * condensate
        return t - g / (1.0 + LATENT_OVER_CP * float(slope) * (condensate > 0))

    iterates = [exner * thl]
    for _ in range(8):
        iterates.append(clipped_step(iterates[-1]))
    assert abs(iterates[-1] - iterates[-3]) < 1e-9 < abs(iterates[-1] - iterates[-2])


def test_unsaturated_air_is_the_dry_thermodynamics_to_round_off():
    """Where the air is unsaturated the moist functions reduce to the dry ones exactly:
    T = Π θl, ql = 0, θv = θl (1 + 0.608 qt), N² = (g/θv) ∂θv/∂z: the dry cases are
    unchanged by the moist thermodynamics."""
    grid = ColumnGrid.uniform(2000.0, 16, 1.0e5, lambda z: 290.0 + 0.004 * z)
    z = np.asarray(grid.z)
    state = State(jnp.asarray(5.0 + 0 * z), jnp.asarray(0 * z), jnp.asarray(290.0 + 0.004 * z),
                  jnp.asarray(0.004 * np.exp(-z / 1500.0)))
    mean = diagnose(state, grid)
    np.testing.assert_array_equal(mean.liquid, 0.0)
    np.testing.assert_allclose(mean.temperature, grid.exner * state.thl, rtol=1e-15)
    dry_theta_v = state.thl * (1.0 + VIRTUAL_COEFFICIENT * state.qt)
    np.testing.assert_allclose(mean.theta_v, dry_theta_v, rtol=1e-15)
    n2 = buoyancy_frequency_squared(state, grid, mean)
    dry = GRAVITY * grid.gradient_at_interfaces(dry_theta_v) / grid.to_interfaces(dry_theta_v)
    np.testing.assert_allclose(n2, dry, rtol=1e-12, atol=1e-18)


def test_dry_closure_is_the_moist_closure_for_unsaturated_air():
    """``moist=False`` (the dry cases' closure) leaves out the condensation, the cloud and
    the plume's in-cloud parts; for air far from saturation it gives the moist closure's
    results bit for bit in float64 (here the dry CBL, its updraft active), without the cloud
    diagnostics, and refuses to act as a cloud source."""
    case = build_case("dry_cbl", hours=0.5)
    dry = case.model
    assert dry.turbulence.moist is False
    moist = dry.with_slot("turbulence", dataclasses.replace(dry.turbulence, moist=True))

    def run_(model):
        return jax.jit(lambda m: rollout(m, case.state0, case.forcing, 0.0, case.dt, 60, 20))(
            model)

    a, b = run_(dry), run_(moist)
    assert float(jnp.max(a.diagnostics["updraft_mass_flux"])) > 0.01
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
        np.testing.assert_array_equal(x, y)
    assert set(b.diagnostics) - set(a.diagnostics) == {
        "ql", "cloud_fraction", "liquid_water_path", "cloud_cover", "cloud_base_height",
        "cloud_top_height"}
    for name, x in a.diagnostics.items():
        np.testing.assert_array_equal(x, b.diagnostics[name], err_msg=name)
    with pytest.raises(ConfigurationError, match="moist=False"):
        dry.turbulence.cloud(case.state0, case.forcing.at(0.0), dry.grid)


@pytest.mark.parametrize("saturation", [0.97, 1.03])
def test_saturation_adjustment_gradient_matches_finite_differences(saturation):
    """On either side of saturation (qt = 0.97 and 1.03 qs(Tl)) the derivatives of T and
    ql with respect to θl, qt and p are those of central differences."""
    pressure = 9.5e4
    exner = exner_of(pressure)
    thl = 293.0 / exner
    qt = saturation * float(saturation_specific_humidity(293.0, pressure)[0])

    def outputs(x):
        t, ql = saturation_adjustment(x[0], x[1], x[2], exner_of(x[2]))
        return jnp.stack([t, 1.0e3 * ql])

    x = jnp.asarray([thl, qt, pressure])
    jacobian = jax.jacfwd(outputs)(x)
    steps = jnp.asarray([1.0e-4, 1.0e-8, 1.0e-1])
    for k in range(3):
        e = jnp.zeros(3).at[k].set(steps[k])
        fd = (outputs(x + e) - outputs(x - e)) / (2.0 * steps[k])
        np.testing.assert_allclose(jacobian[:, k], fd, rtol=1e-5, atol=1e-9)
    assert (float(saturation_adjustment(thl, qt, pressure, exner)[1]) > 0) == (saturation > 1)


def test_buoyancy_flux_coefficients():
    """Clear and saturated coefficients of w'θv' = A w'θl' + B w'qt' (BOMEX cloud base,
    293 K and 950 hPa: A_d ≈ 1.010, B_d ≈ 181 K, A_s ≈ 0.43, B_s ≈ 790 K; DYCOMS cloud,
    283 K and 925 hPa: A_s ≈ 0.53, B_s ≈ 1054 K), and the saturated ones equal the
    derivatives of θv through the saturation adjustment."""
    pressure, temperature = 9.5e4, 293.0
    exner = exner_of(pressure)
    qs = float(saturation_specific_humidity(temperature, pressure)[0])
    theta = temperature / exner
    a_d, b_d = clear_air_coefficients(theta, 0.016)
    assert float(a_d) == pytest.approx(1.0097, abs=1e-3)
    assert float(b_d) == pytest.approx(181.0, abs=1.0)
    a_s, b_s = cloudy_air_coefficients(temperature, qs, qs, theta, exner)
    assert float(a_s) == pytest.approx(0.430, abs=0.005)
    assert float(b_s) == pytest.approx(790.0, abs=5.0)
    t2, p2 = 283.0, 9.25e4
    qs2 = float(saturation_specific_humidity(t2, p2)[0])
    a2, b2 = cloudy_air_coefficients(t2, qs2, qs2, t2 / exner_of(p2), exner_of(p2))
    assert float(a2) == pytest.approx(0.528, abs=0.005)
    assert float(b2) == pytest.approx(1054.0, abs=5.0)
    # saturated: A = ∂θv/∂θl, B = ∂θv/∂qt of the adjusted air, to first order
    liquid = 1.0e-3
    qt, thl = qs + liquid, (temperature - LATENT_OVER_CP * liquid) / exner

    def theta_v(thl, qt):
        _, ql = saturation_adjustment(thl, qt, pressure, exner)
        return virtual_potential_temperature(thl, qt, ql, exner)

    d_thl, d_qt = jax.grad(theta_v, argnums=(0, 1))(thl, qt)
    t_sat, _ = saturation_adjustment(thl, qt, pressure, exner)
    qs_sat = saturation_specific_humidity(t_sat, pressure)[0]
    a, b = cloudy_air_coefficients(t_sat, qt, qs_sat, thl + LATENT_OVER_CP * liquid / exner,
                                   exner)
    assert float(a) == pytest.approx(float(d_thl), rel=0.03)
    assert float(b) == pytest.approx(float(d_qt), rel=0.03)


# ------------------------------------------------------------------------------------------
# Partial cloud


def test_gaussian_cloud_table():
    """Sommeria & Deardorff (1977) / Mellor (1977) Gaussian values of C and ql/σs."""
    q1 = jnp.asarray([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    fraction, liquid = gaussian_cloud(q1)
    np.testing.assert_allclose(fraction, [0.023, 0.159, 0.309, 0.500, 0.692, 0.841, 0.977],
                               atol=6e-4)
    np.testing.assert_allclose(liquid, [0.0085, 0.083, 0.198, 0.399, 0.698, 1.083, 2.009],
                               atol=6e-4)


def moist_column(levels=16, top=1600.0, humidity=0.9):
    """A column with a saturated layer between 600 and 1000 m, relative humidity
    ``humidity`` elsewhere."""
    grid = ColumnGrid.uniform(top, levels, 1.0e5, lambda z: 295.0 + 0.003 * z)
    z = np.asarray(grid.z)
    thl = 295.0 + 0.003 * z
    qs = np.asarray(saturation_specific_humidity(np.asarray(grid.exner) * thl,
                                                 np.asarray(grid.pressure))[0])
    qt = np.where((z > 600.0) & (z < 1000.0), 1.004 * qs, humidity * qs)
    return grid, State(jnp.asarray(-5.0 + 0 * z), jnp.asarray(1.0 + 0 * z), jnp.asarray(thl),
                       jnp.asarray(qt), {"tke": jnp.asarray(0.3 + 0 * z),
                                         "qr": jnp.asarray(1.0e-5 * (z < 1000.0))})


def test_statistical_cloud_without_spread_is_the_saturation_adjustment():
    grid, state = moist_column(humidity=0.995)
    sharp = StatisticalCloud(spread_coefficient=0.0, saturation_spread=0.0)
    cloud = sharp(state.thl, state.qt, grid)
    mean = diagnose(state, grid)
    np.testing.assert_allclose(cloud.liquid, mean.liquid, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(cloud.fraction) > 0.5, np.asarray(mean.liquid) > 0)
    broad = StatisticalCloud()(state.thl, state.qt, grid)
    # the spread makes partial cloud in the subsaturated layers next to the saturated one
    saturated = np.flatnonzero(np.asarray(mean.liquid) > 0)
    for k in (saturated[0] - 1, saturated[-1] + 1):
        assert 0.0 < float(broad.fraction[k]) < 0.5
    # a saturated grid mean is more than half cloudy, whatever the spread
    assert np.all(np.asarray(broad.fraction)[saturated] > 0.5)


def test_updraft_cloud_adds_to_the_environments():
    grid, state = moist_column()
    n = grid.n_levels
    area = jnp.full((n,), 0.05)
    liquid_u = jnp.where(grid.z > 300.0, 1.0e-3, 0.0)
    cloud = StatisticalCloud()(state.thl, state.qt, grid, None, area, state.thl + 0.5,
                               state.qt + 1.0e-3, liquid_u)
    expected = area * (liquid_u > 0) + (1.0 - area) * cloud.environment_fraction
    np.testing.assert_allclose(cloud.fraction, expected, rtol=1e-12)
    np.testing.assert_allclose(cloud.liquid, area * liquid_u + (1.0 - area)
                               * cloud.environment_fraction * cloud.environment_liquid,
                               rtol=1e-12)


def test_cloud_cover_overlap():
    grid = ColumnGrid.uniform(3000.0, 30, 1.0e5, lambda z: 300.0 + 0 * z)
    z = np.asarray(grid.z)
    assert float(cloud_cover(jnp.where((z > 500) & (z < 1000), 1.0, 0.0), grid)) == 1.0
    single = jnp.zeros(30).at[10].set(0.2)
    assert float(cloud_cover(single, grid)) == pytest.approx(0.2, rel=1e-12)
    # far apart: random overlap; adjacent: nearly maximum
    far = jnp.zeros(30).at[3].set(0.2).at[27].set(0.2)
    assert float(cloud_cover(far, grid)) == pytest.approx(1.0 - 0.8**2, rel=1e-6)
    near = jnp.zeros(30).at[10].set(0.2).at[11].set(0.2)
    alpha = math.exp(-100.0 / 300.0)
    assert float(cloud_cover(near, grid)) == pytest.approx(
        alpha * 0.2 + (1 - alpha) * 0.36, rel=1e-12)


# ------------------------------------------------------------------------------------------
# The condensing updraft


def test_updraft_condenses_at_its_lifting_condensation_level():
    """BOMEX's initial column: the plume rises from the surface, saturates at its lifting
    condensation level (where qt,u = qs(Π θl,u)), reports cloud base, top and mass flux,
    and has the Grant (2001) cloud-base mass flux there."""
    case = build_case("bomex")
    grid, state = case.model.grid, case.state0
    closure = case.model.turbulence
    column = closure.column(state, case.forcing.at(0.0), grid)
    plume = column.plume
    assert float(plume.top) > float(plume.cloud_base) > 400.0
    z = np.asarray(grid.z)
    cloudy = np.asarray(plume.liquid) > 0
    assert cloudy.any() and z[cloudy].min() >= float(plume.cloud_base)
    qs = saturation_specific_humidity(grid.exner * plume.thl, grid.pressure)[0]
    below = (z < float(plume.cloud_base)) & (np.asarray(plume.w) > 0)
    assert np.all(np.asarray(plume.qt - qs)[below] < 0)
    # below cloud, the constant area of the dry plume; at cloud base Grant's closure
    np.testing.assert_allclose(np.asarray(plume.area)[below], 0.1, rtol=1e-9)
    k = int(np.argmax(cloudy))
    w_star = (GRAVITY / float(column.mean.theta_v[0]) * float(column.fluxes.buoyancy_flux)
              * z[k] + 1e-12) ** (1 / 3)
    assert float(plume.cloud_base_mass_flux) == pytest.approx(
        float(closure.updraft.cloud_base_coefficient) * w_star, rel=1e-6)


def test_updraft_is_never_wider_than_at_the_surface():
    """Over a run of BOMEX the plume's area stays at most its surface area a_0 (a plume that
    decelerates to rest inside a level detrains as it stops; its area M/(ρ w) used to reach
    0.3–0.5 at its top and double the cloud cover)."""
    case = build_case("bomex", hours=2.0)
    closure = case.model.turbulence
    grid = case.model.grid
    run = jax.jit(lambda s: rollout(case.model, s, case.forcing, 0.0, case.dt, case.n_steps,
                                    case.save_every))
    states = run(case.state0).state
    plumes = jax.vmap(lambda s: closure.column(s, case.forcing.at(0.0), grid).plume)(states)
    area = np.asarray(plumes.area)
    assert area.max() <= float(closure.updraft.area) * (1 + 1e-12)
    assert (np.asarray(plumes.liquid) > 0).any()


def test_updraft_is_inactive_without_surface_heating():
    grid, state = moist_column()
    surface = BulkSurface()
    forcing = Forcing.create(grid.n_levels, surface_temperature=280.0)
    fluxes = surface.fluxes(state, forcing, grid)
    assert float(fluxes.buoyancy_flux) < 0
    plume = MassFluxUpdraft()(state, grid, diagnose(state, grid), fluxes)
    assert float(jnp.max(plume.mass_flux)) == 0.0 and float(plume.top) == 0.0
    assert np.isnan(float(plume.cloud_base))


# ------------------------------------------------------------------------------------------
# Warm rain


def test_khairoutdinov_kogan_rates():
    """KK2000 eqs. 29 and 33 at qc = 0.5 g/kg, Nc = 70 cm⁻³, qr = 0.1 g/kg."""
    assert float(autoconversion(0.5e-3, 70.0)) == pytest.approx(4.72e-9, rel=5e-3)
    assert float(accretion(0.5e-3, 0.1e-3)) == pytest.approx(2.69e-7, rel=5e-3)
    assert float(autoconversion(0.0, 70.0)) == 0.0 and float(accretion(1e-3, 0.0)) == 0.0


def test_fall_speed_and_evaporation_of_rain():
    """Mass-weighted fall speed 3.97 m/s and evaporation 3.86 × 10⁻⁷ s⁻¹ at ρ = 1.15, qr =
    0.1 g/kg (ρ0 = 1.2; T = 290 K, S − 1 = −0.2); light rain still falls."""
    assert float(fall_speed(0.1e-3, 1.15, 1.2)) == pytest.approx(3.97, abs=0.01)
    assert float(evaporation_rate(0.1e-3, 290.0, 0.8, 1.15)) == pytest.approx(3.86e-7,
                                                                              rel=0.02)
    assert float(evaporation_rate(0.1e-3, 290.0, 1.1, 1.15)) == 0.0
    assert 0.3 < float(fall_speed(1.0e-10, 1.15, 1.15)) < 0.5
    assert float(fall_speed(0.0, 1.15, 1.15)) == 0.0
    speeds = fall_speed(jnp.logspace(-9, -2, 50), 1.15, 1.15)
    assert np.all(np.diff(np.asarray(speeds)) >= 0) and float(speeds[-1]) < 9.65


def test_variability_enhancement_is_the_mean_rate_over_a_gamma_distribution():
    """E(β, ν) = Γ(ν + β)/(Γ(ν) ν^β) is the mean of x^β over gamma-distributed cloud water of
    unit mean and shape ν (Monte Carlo, 4 × 10⁶ draws); KK2000's autoconversion at ν = 1 is
    enhanced 3.21-fold, its accretion 1.07-fold; uniform cloud water (ν → ∞) gives 1."""
    draws = np.random.default_rng(0).gamma(shape=2.0, scale=0.5, size=4_000_000)
    for beta in (2.47, 1.15):
        assert float(variability_enhancement(beta, 2.0)) == pytest.approx(
            np.mean(draws**beta), rel=5e-3)
    assert float(variability_enhancement(2.47, 1.0)) == pytest.approx(math.gamma(3.47),
                                                                      rel=1e-12)
    assert float(variability_enhancement(1.15, 1.0)) == pytest.approx(1.0730, abs=1e-4)
    assert float(variability_enhancement(2.47, 1.0e6)) == pytest.approx(1.0, abs=1e-5)


def test_rain_falls_through_the_clouds_that_made_it():
    """Rain formed in a 0.5 % core aloft falls through 0.5 % below, not through the 3 % of
    the non-raining cloud base beneath it; where two clouds rain, the fraction is their
    areas weighted by the rain each forms; where no rain formed above, the floor."""
    updraft = jnp.asarray([0.0, 0.03, 0.01, 0.005, 0.0])
    environment = jnp.asarray([0.0, 0.0, 0.2, 0.0, 0.0])
    updraft_rain = jnp.asarray([0.0, 0.0, 1.0, 3.0, 0.0])
    environment_rain = jnp.asarray([0.0, 0.0, 1.0, 0.0, 0.0])
    share = np.asarray(precipitation_fraction(updraft, environment, updraft_rain,
                                              environment_rain))
    expected = (3.0 * 0.005 + 1.0 * 0.01 + 1.0 * 0.2) / 5.0
    np.testing.assert_allclose(share[:3], expected, rtol=1e-12)
    assert share[3] == pytest.approx(0.005, rel=1e-12)
    assert share[4] == pytest.approx(1.0e-3)


def test_light_rain_evaporates_in_proportion_to_its_amount():
    """Below the smallest mean drop mass the distribution keeps its slope and loses intercept,
    so that it still holds qr: evaporation is then proportional to qr (with a fixed intercept
    it stayed that of the bounded distribution, however little rain there was)."""
    rho = 1.15
    bound = math.pi * 1000.0 * 8.0e6 / (rho * MAX_DIAMETER_SLOPE**4)
    light = jnp.asarray([0.5, 0.1, 0.01]) * bound
    assert np.allclose(np.asarray(diameter_slope(light, rho)), MAX_DIAMETER_SLOPE)
    per_rain = np.asarray(evaporation_rate(light, 290.0, 0.8, rho) / light)
    np.testing.assert_allclose(per_rain, per_rain[0], rtol=1e-9)
    # continuous at the bound
    above, below = evaporation_rate(jnp.asarray([1.0001, 0.9999]) * bound, 290.0, 0.8, rho)
    assert float(above) == pytest.approx(float(below), rel=1e-3)


def slab_grid():
    return ColumnGrid.uniform(3000.0, 120, 1.0e5, lambda z: 300.0 + 0.004 * z)


def test_sedimentation_is_conservative_positive_and_matches_a_substepped_reference():
    """A 1 g/kg slab at 1.5–2 km on a 25 m grid falls for an hour: with Δt = 120 s (Courant
    numbers up to 40) mass is conserved to round-off, rain stays ≥ 0, and the hour's surface
    rain equals a finely sub-stepped explicit upwind reference within 2 %."""
    grid = slab_grid()
    z, mass = np.asarray(grid.z), np.asarray(grid.layer_mass)
    rain0 = jnp.asarray(np.where((z > 1500) & (z < 2000), 1.0e-3, 0.0))
    run = jax.jit(lambda q, dt: sedimentation(q, grid, dt))
    dt, rain, fallen = 120.0, rain0, 0.0
    for _ in range(30):
        rain, flux = run(rain, dt)
        fallen += dt * float(flux[0])
        assert float(jnp.min(rain)) >= 0.0
        assert float(flux[-1]) == 0.0
    total0 = float(jnp.sum(mass * rain0))
    assert float(jnp.sum(mass * rain)) + fallen == pytest.approx(total0, rel=1e-13)

    # explicit upwind, Courant number ≤ 0.5
    q, reference, rho, dz = np.asarray(rain0), 0.0, np.asarray(grid.rho), np.asarray(grid.dz)
    small = 1.25
    for _ in range(int(3600 / small)):
        speed = np.asarray(fall_speed(jnp.asarray(q), grid.rho, grid.rho_interface[0]))
        out = rho * speed * q
        q = q + small * (np.append(out[1:], 0.0) - out) / (rho * dz)
        reference += small * out[0]
    assert fallen == pytest.approx(reference, rel=0.02)
    assert 0.3 < fallen < 0.7  # kg m-2: most of the slab's 0.55 kg m-2 has arrived


def rain_column():
    grid, state = moist_column()
    cloud = TKEClosure(BulkSurface(), 60.0)
    return grid, state, WarmRain(cloud, 70.0, time_step=60.0)


def test_warm_rain_moves_water_between_cloud_and_rain_only():
    """The process rates move water between qt and qr (their tendencies cancel level by
    level) with the latent heating Lv/(cp Π) of θl; what sediments leaves through the ground
    as the surface precipitation; qr ≥ 0 afterwards."""
    grid, state, scheme = rain_column()
    forcing = Forcing.create(grid.n_levels, surface_temperature=297.0)
    out = jax.jit(lambda s: scheme(s, forcing, grid))(state)
    qr_rate, qt_rate = out.tendency.tracers["qr"], out.tendency.qt
    np.testing.assert_allclose(qr_rate + qt_rate, 0.0, atol=1e-20)
    np.testing.assert_allclose(out.tendency.thl, -LATENT_OVER_CP * qt_rate / grid.exner,
                               rtol=1e-12)
    assert float(jnp.max(qr_rate)) > 0  # rain forms in the saturated layer
    flux = out.flux.tracers["qr"]
    assert float(out.diagnostics["surface_precipitation"]) == pytest.approx(
        -float(flux[0] * grid.rho_interface[0]), rel=1e-12)
    assert float(flux[-1]) == 0.0 and np.all(np.asarray(flux) <= 0.0)
    after = state.tracers["qr"] + 60.0 * out.explicit_rate(grid).tracers["qr"]
    assert float(jnp.min(after)) >= -1e-18


# ------------------------------------------------------------------------------------------
# Radiation


def test_stratocumulus_longwave():
    """Stevens et al. (2005): without liquid the flux below zi is F0 + F1 (no heating);
    with a cloud, the cloud top cools and F(0) = F0 e^(−κ LWP) + F1."""
    grid, state = moist_column(levels=40, top=1600.0)
    dry = State(state.u, state.v, state.thl, 0.5 * state.qt, state.tracers)
    scheme = StratocumulusLongwave(StatisticalCloud(), inversion_humidity=1.0e-3)
    forcing = Forcing.create(grid.n_levels)
    flux, zi = scheme.flux(dry, forcing, grid)
    assert float(zi) == pytest.approx(float(grid.z_interface[-1]))
    np.testing.assert_allclose(flux, 92.0, rtol=1e-4)
    cloudy_scheme = StratocumulusLongwave(StatisticalCloud(), inversion_humidity=0.015)
    flux, zi = cloudy_scheme.flux(state, forcing, grid)
    liquid = StatisticalCloud().cloud(state, forcing, grid).liquid
    path = float(grid.column_integral(liquid))
    assert float(flux[0]) == pytest.approx(70.0 * math.exp(-85.0 * path) + 22.0, rel=1e-9)
    heating = cloudy_scheme(state, forcing, grid).explicit_rate(grid).thl
    coolest = int(np.argmin(np.asarray(heating)))
    assert 600.0 < float(grid.z[coolest]) < 1100.0 and float(heating[coolest]) < -1e-4
    # flux form: the column's θl changes by the fluxes through its bottom and top only
    out = cloudy_scheme(state, forcing, grid)
    kinematic = out.flux.thl * grid.rho_interface
    assert float(grid.column_integral(heating)) == pytest.approx(
        float(kinematic[0] - kinematic[-1]), rel=1e-10)
    assert float(kinematic[0]) == pytest.approx(
        float(flux[0]) / (DRY_AIR_HEAT_CAPACITY * grid.exner_interface[0]), rel=1e-12)


# ------------------------------------------------------------------------------------------
# Column budgets


def test_moist_column_budgets_close_to_round_off():
    """EDMF turbulence, warm rain and the longwave on a moist column (no large-scale
    forcing): over every step, ∫ρ(qt + qr) changes by the surface moisture flux minus the
    precipitation, and ∫ρ θl by its surface and radiative boundary fluxes plus the latent
    heating of rain formation and evaporation, to round-off."""
    grid, state = moist_column()
    closure = TKEClosure(BulkSurface(), 60.0)
    model = Model(grid, turbulence=closure, microphysics=WarmRain(closure, 70.0, 60.0),
                  radiation=StratocumulusLongwave(closure, inversion_humidity=0.013),
                  large_scale=LargeScaleForcing())
    forcing = ForcingSeries.constant(Forcing.create(grid.n_levels, surface_temperature=297.5,
                                                    coriolis_parameter=1e-4))
    steps = 6
    trajectory = jax.jit(lambda s: rollout(model, s, forcing, 0.0, 60.0, steps, 1))(state)
    mass, rho_i = grid.layer_mass, grid.rho_interface
    water = jnp.sum(mass * (trajectory.state.qt + trajectory.state.tracers["qr"]), axis=-1)
    heat = jnp.sum(mass * trajectory.state.thl, axis=-1)
    latent = jax.vmap(lambda s: model.microphysics(s, forcing.at(0.0), grid).tendency.thl)(
        trajectory.state)
    for n in range(steps):
        flux = jax.tree.map(lambda a, n=n: a[n], trajectory.flux)
        water_in = rho_i[0] * (flux.qt[0] + flux.tracers["qr"][0])
        assert float(water[n + 1] - water[n]) == pytest.approx(60.0 * float(water_in),
                                                               rel=1e-9, abs=1e-15)
        heat_in = (rho_i[0] * flux.thl[0] - rho_i[-1] * flux.thl[-1]
                   + jnp.sum(mass * latent[n]))
        assert float(heat[n + 1] - heat[n]) == pytest.approx(60.0 * float(heat_in),
                                                             rel=1e-9, abs=1e-9)
    assert float(jnp.min(trajectory.flux.tracers["qr"][:, 0])) < 0.0  # it rained


# ------------------------------------------------------------------------------------------
# The time step the schemes were built for


def test_rollout_with_another_time_step_than_the_closures_is_refused():
    case = build_case("gabls1", levels=16)
    with pytest.raises(ConfigurationError, match="time_step = 30 s.*dt = 60 s"):
        rollout(case.model, case.state0, case.forcing, 0.0, 60.0, 4, 2)
    rico = build_case("rico", levels=16)
    wrong = eqx.tree_at(lambda m: m.microphysics, rico.model,
                        WarmRain(rico.model.turbulence, 70.0, time_step=30.0))
    with pytest.raises(ConfigurationError, match="WarmRain"):
        rollout(wrong, rico.state0, rico.forcing, 0.0, rico.dt, 4, 2)


# ------------------------------------------------------------------------------------------
# The moist schemes' contract: one compilation, vmap equals per column, finite gradients


def moist_schemes():
    closure = TKEClosure(BulkSurface(), 60.0)
    return {"tke_moist": closure, "warm_rain": WarmRain(closure, 70.0, 60.0),
            "longwave": StratocumulusLongwave(closure, inversion_humidity=0.013)}


@pytest.mark.parametrize("name", tuple(moist_schemes()))
def test_moist_scheme_contract(name):
    grid, state = moist_column()
    shifted = State(state.u + 0.5, state.v, state.thl - 0.3, state.qt * 1.01, state.tracers)
    forcing = Forcing.create(grid.n_levels, surface_temperature=297.5)
    scheme = moist_schemes()[name]
    traces = []

    def call(s):
        traces.append(1)
        return scheme(s, forcing, grid)

    jitted = jax.jit(call)
    outs = [jitted(s) for s in (state, shifted)]
    assert len(traces) == 1
    for out in outs:
        assert jax.tree.structure(out.tendency) == jax.tree.structure(state)
        for leaf in jax.tree.leaves((out.tendency, out.flux, out.diffusivity)):
            assert np.all(np.isfinite(leaf)), name
    batched = jax.tree.map(lambda a, b: jnp.stack([a, b]), state, shifted)
    together = jax.jit(jax.vmap(call))(batched)
    for i, single in enumerate(outs):
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(together), strict=True):
            np.testing.assert_allclose(b[i], a, rtol=1e-9, atol=1e-15)

    def loss(s):
        out = scheme(s, forcing, grid)
        rate = out.explicit_rate(grid)
        return (jnp.sum(rate.thl**2) * 1e8 + jnp.sum(rate.qt**2) * 1e14
                + jnp.sum(out.diffusivity.thl))

    gradient = jax.jit(jax.grad(loss))(state)
    for leaf in jax.tree.leaves(gradient):
        assert np.all(np.isfinite(leaf)), name
    assert any(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in jax.tree.leaves(gradient))
