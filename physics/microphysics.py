"""Warm-rain microphysics (model slot ``"microphysics"``): prognostic rain water qr (tracer
``"qr"``, kg/kg) formed from cloud liquid, evaporating below cloud and falling out.

Processes (rates in kg kg⁻¹ s⁻¹):

- Autoconversion and accretion of Khairoutdinov & Kogan (2000, MWR 128, eqs. 29 and 33),
  (∂qr/∂t)_au = 1350 qc^2.47 Nc^−1.79 (qc in kg/kg, Nc in cm⁻³) and
  (∂qr/∂t)_ac = 67 (qc qr)^1.15, applied to in-cloud liquid separately in the updraft (area
  a_u, liquid ql,u) and in the environment's cloudy part (fraction Ce, in-cloud liquid ql,e):
  the rates are nonlinear, so applying them to grid means would underestimate them. For the
  same reason each rate is multiplied by its mean over the spread of cloud water within the
  cloudy part, a gamma distribution of shape ν (inverse relative variance) about the mean:
  E = Γ(ν + β)/(Γ(ν) ν^β) for a rate ∝ qc^β (Morrison & Gettelman 2008, J. Climate 21,
  section 2b), ν = 1 (their default; Barker et al. 1996 found ν ≈ 1 for broken cloud fields),
  E = 3.2 for autoconversion and 1.07 for accretion. The updraft is one bulk plume standing
  for a population of cumuli whose cores are diluted unequally; the deepest, least diluted
  ones make the rain.
- Rain falls through a precipitation fraction (``precipitation_fraction``): the cloud fraction
  above weighted by the rain formed there (Tiedtke 1993, MWR 121, approximates the area of
  precipitation by the precipitation-flux-weighted cloud cover above), within which it has the
  concentration qr/fraction that accretion, fall speed and evaporation see. The rain of trade
  cumuli forms in the cores of the deepest clouds and falls through them, not through the
  widest cloud above (the maximum overlap of Morrison & Gettelman spread RICO's rain over
  the updraft's area at cloud base, three to ten times the area that made it, where it
  evaporated before reaching the ground).
- Evaporation of rain in the clear air, with the one-moment Marshall–Palmer closure and the
  ventilation factor of Seifert & Beheng (2006) (as in the one-moment scheme of CliMA's
  CloudMicrophysics.jl): n(r) = n0 e^(−λr), n0 = 1.6 × 10⁷ m⁻⁴, λ = (8π ρw n0/(ρ qr))^(1/4),
  ∂qr/∂t = (4π n0/ρ)(S − 1) G(T) λ⁻² [a_v + b_v (ν/Dv)^(1/3) (r0 λ)^(−1/4) (2 v0/(ν λ))^(1/2)
  Γ(11/4)] for S < 1, G = [Lv/(Ka T)(Lv/(Rv T) − 1) + Rv T/(es Dv)]⁻¹,
  v0 = [8 (ρw/ρ − 1) g r0 / (3 C_D)]^(1/2), in the part of the precipitation fraction that is
  clear of cloud.
- Sedimentation with the mass-weighted fall speed of the Rogers et al. (1993) drop velocity
  (as in Seifert & Beheng 2006) over an exponential distribution with the Marshall–Palmer
  intercept N0 = 8 × 10⁶ m⁻⁴ (of diameter): v = (ρ0/ρ)^(1/2) [9.65 − 10.3 (1 + 600/λD)⁻⁴] m/s,
  λD = (π ρw N0/(ρ qr))^(1/4), at least 0: bounded (≤ 9.65 m/s) and smooth. λD is bounded by
  the smallest mean mass of rain drops of Seifert & Beheng (2006), 2.6 × 10⁻¹⁰ kg, so that
  light rain still falls (≥ 0.36 m/s; without the bound the speed vanishes below
  qr ≈ 10⁻⁸ and the rain of trade cumuli stays aloft until it evaporates). Where the bound
  holds, the intercept falls with qr (n0 (λ_bound/λ)⁴, λ the unbounded slope) so that the
  distribution still holds qr: evaporation then stays proportional to qr instead of being
  that of a distribution with more water than there is.

Time stepping (over the model's ``time_step``, as the case builder sets it): the process rates
are limited so that no more cloud converts than exists (S ≤ ql/Δt) and no more rain evaporates
than exists (E ≤ qr/Δt). Sedimentation is implicit upwind from the top down,
qr,k⁺ = q*_k / (1 + Δt v_k/Δz_k) with q*_k = qr,k + Δt F_k+½ / (ρ_k Δz_k) the old rain plus
what falls in from above, the fall speed evaluated on q* (on the old qr, empty levels would
have v = 0 and hold the rain aloft): unconditionally stable, positive and exactly
conservative. The scheme returns it as the interface fluxes F that produce that update, so the
column's water budget closes by construction: what leaves the lowest level is the surface
precipitation.

Coupling to the conserved variables: ∂qt/∂t = −∂qr/∂t|proc, ∂θl/∂t = (Lv/(cp Π)) ∂qr/∂t|proc.
Diagnostics: ``surface_precipitation`` (kg m⁻² s⁻¹) and ``rain_water_path`` ∫ρ qr dz
(kg m⁻²).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from physics.clouds import AbstractCloudSource
from physics.thermodynamics import (
    LATENT_OVER_CP,
    saturation_specific_humidity,
    saturation_vapor_pressure,
)
from scm.constants import (
    GRAVITY,
    LATENT_HEAT_VAPORIZATION,
    LIQUID_WATER_DENSITY,
    WATER_VAPOR_GAS_CONSTANT,
)
from scm.errors import check_positive, check_range
from scm.fastmath import fourth_root, inverse_fourth_root
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.levels import recurrence
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State, as_float

#: Smallest fraction of a level the rain is assumed to fall through (where none formed above;
#: elsewhere the raining clouds' own fraction).
MIN_PRECIPITATION_FRACTION = 1.0e-3
#: Exponents of cloud water in the KK2000 autoconversion and accretion rates.
AUTOCONVERSION_EXPONENT, ACCRETION_EXPONENT = 2.47, 1.15
#: Rain below this (kg/kg) has no fall speed nor evaporation (its power laws are not
#: differentiable at zero).
MIN_RAIN = 1.0e-12
#: Marshall–Palmer intercepts: n0 of radius (m-4), N0 of diameter (m-4).
RADIUS_INTERCEPT = 1.6e7
DIAMETER_INTERCEPT = 8.0e6
#: λD of the smallest mean rain-drop mass, 2.6e-10 kg (Seifert & Beheng 2006): λD³ = π ρw/x.
MAX_DIAMETER_SLOPE = (math.pi * LIQUID_WATER_DENSITY / 2.6e-10) ** (1.0 / 3.0)
#: Drop terminal velocity v(r) = v0 (r/r0)^½ of the evaporation's ventilation (CloudMicrophysics):
REFERENCE_RADIUS = 1.0e-3  # m
DRAG_COEFFICIENT = 0.55
#: Ventilation factor F = a_v + b_v Sc^(1/3) Re^(1/2) (Seifert & Beheng 2006, eq. 24).
VENTILATION_A, VENTILATION_B = 1.5, 0.53
AIR_VISCOSITY = 1.6e-5  # kinematic, m2 s-1
VAPOR_DIFFUSIVITY = 2.26e-5  # m2 s-1
AIR_CONDUCTIVITY = 2.4e-2  # W m-1 K-1


def autoconversion(cloud_liquid, droplet_number):
    """KK2000 eq. 29: 1350 qc^2.47 Nc^−1.79 (kg/kg s-1; Nc in cm-3)."""
    return (1350.0 * jnp.maximum(cloud_liquid, 0.0) ** AUTOCONVERSION_EXPONENT
            * droplet_number ** -1.79)


def accretion(cloud_liquid, rain):
    """KK2000 eq. 33: 67 (qc qr)^1.15 (kg/kg s-1)."""
    return 67.0 * (jnp.maximum(cloud_liquid, 0.0) * jnp.maximum(rain, 0.0)) ** ACCRETION_EXPONENT


def variability_enhancement(exponent: float, shape):
    """E = Γ(ν + β)/(Γ(ν) ν^β): the mean of qc^β over a gamma distribution of cloud water of
    shape ν, over the β-th power of its mean (Morrison & Gettelman 2008, section 2b); → 1 as
    ν → ∞ (uniform cloud water)."""
    gammaln = jax.scipy.special.gammaln
    return jnp.exp(gammaln(shape + exponent) - gammaln(shape) - exponent * jnp.log(shape))


def _unbounded_diameter_slope(rain, rho):
    safe = jnp.where(rain > MIN_RAIN, rain, 1.0)
    return fourth_root(math.pi * LIQUID_WATER_DENSITY * DIAMETER_INTERCEPT / (rho * safe))


def diameter_slope(rain, rho):
    """λD (m-1) of the exponential drop-size distribution with the Marshall–Palmer intercept,
    (π ρw N0/(ρ qr))^(1/4), at most the value whose mean drop mass π ρw/λD³ is the smallest
    mass of a rain drop of Seifert & Beheng (2006), 2.6 × 10⁻¹⁰ kg (80 μm): as qr → 0 a fixed
    intercept would shrink the drops to cloud droplets that no longer fall."""
    return jnp.minimum(_unbounded_diameter_slope(rain, rho), MAX_DIAMETER_SLOPE)


def fall_speed(rain, rho, surface_rho):
    """Mass-weighted fall speed of rain (m/s; zero without rain)."""
    slope = diameter_slope(rain, rho)
    speed = jnp.sqrt(surface_rho / rho) * (9.65 - 10.3 * (1.0 + 600.0 / slope) ** -4)
    return jnp.where(rain > MIN_RAIN, jnp.maximum(speed, 0.0), 0.0)


def evaporation_rate(rain, temperature, saturation_ratio, rho):
    """Rate at which rain evaporates in subsaturated air (kg/kg s-1, ≥ 0), from the
    Marshall–Palmer closure (the module docstring)."""
    has_rain = rain > MIN_RAIN
    unbounded = _unbounded_diameter_slope(rain, rho)
    bounded = jnp.minimum(unbounded, MAX_DIAMETER_SLOPE)
    # The intercept that makes the (bounded) distribution hold qr: n0 (λ_bound/λ)⁴ ≤ n0.
    intercept = RADIUS_INTERCEPT * (bounded / unbounded) ** 4
    slope = 2.0 * bounded
    es, _ = saturation_vapor_pressure(temperature)
    lv = LATENT_HEAT_VAPORIZATION
    rv_t = WATER_VAPOR_GAS_CONSTANT * temperature
    g = 1.0 / (lv / (AIR_CONDUCTIVITY * temperature) * (lv / rv_t - 1.0)
               + rv_t / (es * VAPOR_DIFFUSIVITY))
    v0 = jnp.sqrt(8.0 * (LIQUID_WATER_DENSITY / rho - 1.0) * GRAVITY * REFERENCE_RADIUS
                  / (3.0 * DRAG_COEFFICIENT))
    ventilation = VENTILATION_A + VENTILATION_B * (
        (AIR_VISCOSITY / VAPOR_DIFFUSIVITY) ** (1.0 / 3.0)
        * inverse_fourth_root(REFERENCE_RADIUS * slope)
        * jnp.sqrt(2.0 * v0 / (AIR_VISCOSITY * slope)) * math.gamma(11.0 / 4.0))
    deficit = jnp.maximum(1.0 - saturation_ratio, 0.0)
    rate = 4.0 * math.pi * intercept / rho * deficit * g / slope**2 * ventilation
    return jnp.where(has_rain, rate, 0.0)


class WarmRain(AbstractParameterization):
    """Warm-rain microphysics with prognostic rain (see the module docstring).

    ``cloud``: where the cloud comes from (the turbulence closure, which knows its updraft,
    or a statistical scheme of the grid mean); ``droplet_number`` Nc (cm-3);
    ``cloud_water_shape`` ν of the cloud water's spread within the cloudy part (large: uniform
    cloud water, no enhancement of the rates); ``time_step`` the model's (s).
    """

    cloud: AbstractCloudSource
    droplet_number: Float[Array, ""]
    cloud_water_shape: Float[Array, ""]
    time_step: float = eqx.field(static=True)

    def __init__(self, cloud: AbstractCloudSource, droplet_number=70.0,
                 cloud_water_shape=1.0, time_step: float = 60.0):
        check_range("droplet_number", droplet_number, 1.0, 5000.0, "cm-3")
        check_range("cloud_water_shape", cloud_water_shape, 0.1, 1.0e4)
        check_positive("time_step", time_step, "s")
        self.cloud = cloud
        self.droplet_number = as_float(droplet_number)
        self.cloud_water_shape = as_float(cloud_water_shape)
        self.time_step = float(time_step)

    def required_tracers(self) -> tuple[str, ...]:
        return ("qr",)

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        dt = self.time_step
        cloud = self.cloud.cloud(state, forcing, grid)
        rain = jnp.maximum(state.tracers["qr"], 0.0)
        nc = self.droplet_number
        enhance_autoconversion = variability_enhancement(AUTOCONVERSION_EXPONENT,
                                                         self.cloud_water_shape)
        enhance_accretion = variability_enhancement(ACCRETION_EXPONENT, self.cloud_water_shape)
        updraft_cloud = cloud.updraft_area * (cloud.updraft_liquid > 0)
        environment_cloud = (1.0 - cloud.updraft_area) * cloud.environment_fraction
        updraft_autoconversion = enhance_autoconversion * autoconversion(cloud.updraft_liquid, nc)
        environment_autoconversion = enhance_autoconversion * autoconversion(
            cloud.environment_liquid, nc)
        share = precipitation_fraction(updraft_cloud, environment_cloud,
                                       cloud.updraft_area * updraft_autoconversion,
                                       environment_cloud * environment_autoconversion)
        rain_in_shaft = rain / share
        formed = (cloud.updraft_area
                  * (updraft_autoconversion
                     + enhance_accretion * accretion(cloud.updraft_liquid, rain_in_shaft))
                  + environment_cloud
                  * (environment_autoconversion
                     + enhance_accretion * accretion(cloud.environment_liquid, rain_in_shaft)))
        formed = jnp.minimum(formed, cloud.liquid / dt)

        vapor = state.qt - cloud.liquid
        temperature = grid.exner * state.thl + LATENT_OVER_CP * cloud.liquid
        qs, _ = saturation_specific_humidity(temperature, grid.pressure)
        clear_shaft = jnp.maximum(share - cloud.fraction, 0.0)
        evaporated = clear_shaft * evaporation_rate(rain_in_shaft, temperature, vapor / qs,
                                                    grid.rho)
        evaporated = jnp.minimum(evaporated, rain / dt)
        process = formed - evaporated

        _, flux = sedimentation(rain + dt * process, grid, dt, share)
        zeros = Tendency.zeros(state)
        tendency = State(zeros.tendency.u, zeros.tendency.v,
                         LATENT_OVER_CP * process / grid.exner, -process,
                         {**zeros.tendency.tracers, "qr": process})
        fluxes = State(zeros.flux.u, zeros.flux.v, zeros.flux.thl, zeros.flux.qt,
                       {**zeros.flux.tracers, "qr": -flux / grid.rho_interface})
        diagnostics = {"surface_precipitation": flux[0],
                       "rain_water_path": grid.column_integral(rain)}
        return Tendency(tendency, fluxes, zeros.diffusivity, diagnostics)


def precipitation_fraction(updraft_cloud, environment_cloud, updraft_rain, environment_rain):
    """Fraction of each level that the rain falls through: the cloudy area of the updraft and
    of the environment at and above the level, weighted by the rain each forms there
    (``*_rain``, per unit volume of grid box; Tiedtke 1993's precipitation-flux-weighted cloud
    cover), at least ``MIN_PRECIPITATION_FRACTION``: the rain of trade cumuli forms in the
    cores of the deepest clouds and falls through them, not through the widest cloud above."""
    formed = (updraft_rain + environment_rain)[::-1]
    weighted = (updraft_rain * updraft_cloud + environment_rain * environment_cloud)[::-1]
    formed_above, weighted_above = jnp.cumsum(formed)[::-1], jnp.cumsum(weighted)[::-1]
    raining = weighted_above / jnp.where(formed_above > 0, formed_above, 1.0)
    return jnp.maximum(raining, MIN_PRECIPITATION_FRACTION)


def sedimentation(rain, grid: ColumnGrid, dt: float, share=1.0):
    """Implicit upwind sedimentation of rain ``(z,)`` over ``dt``, top down (the module
    docstring), the rain falling through the fraction ``share`` of each level (its fall speed
    that of the rain there, qr/share): returns the rain after it and the downward mass fluxes
    (kg m-2 s-1) through every interface, ``(n_interface,)``, the surface precipitation first
    and zero at the top."""
    surface_rho = grid.rho_interface[0]
    share = jnp.broadcast_to(share, rain.shape)

    def step(falling_in, level):
        q, rho, dz, fraction = level
        provisional = q + dt * falling_in / (rho * dz)
        speed = fall_speed(provisional / fraction, rho, surface_rho)
        updated = provisional / (1.0 + dt * speed / dz)
        falling_out = rho * speed * updated
        return falling_out, (updated, falling_out)

    _, (updated, falling) = recurrence(step, jnp.zeros_like(rain[0]),
                                       (rain, grid.rho, grid.dz, share), reverse=True)
    return updated, jnp.concatenate([falling, jnp.zeros_like(falling[:1])])
