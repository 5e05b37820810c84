"""Surface layers: the exchange of momentum, heat and moisture between the ground and the
lowest model level.

A surface layer is not a model slot of its own: a turbulence closure (or a network that
replaces one) holds it as a field and uses its fluxes as the lower boundary condition and for
its nonlocal terms. Every surface layer returns the same ``SurfaceFluxes``; the momentum stress
is ``-drag * (u1, v1)``, which the closure hands to the implicit solver as the surface-interface
diffusivity ``drag * z1`` (the ground wind is zero).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from physics.thermodynamics import (
    clear_air_coefficients,
    saturation_adjustment,
    saturation_specific_humidity,
    virtual_potential_temperature,
)
from scm.constants import GRAVITY, KAPPA, REFERENCE_PRESSURE, VON_KARMAN
from scm.errors import check_choice, check_positive, check_range
from scm.fastmath import arctan, fourth_root, inverse_fourth_root
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.levels import recurrence
from scm.state import State, as_float

#: Wind speeds below this (m/s) are raised to it: a calm surface layer still exchanges heat.
MIN_WIND_SPEED = 0.1
#: Bound on |L|^-1 (1/m) for the reported Obukhov length (|L| ≥ 1e5 m counts as neutral).
_MIN_INVERSE_OBUKHOV = 1.0e-5


class SurfaceFluxes(eqx.Module):
    """Surface exchange of one column (all scalars, kinematic, upward positive).

    ``ustar`` friction velocity (m/s); ``heat_flux`` w'θl' (K m/s); ``moisture_flux`` w'qt'
    (kg/kg m/s); ``drag`` = u*²/|U1| (m/s), so the stress is −drag (u1, v1);
    ``buoyancy_flux`` w'θv' (K m/s, from ``surface_buoyancy_flux``); ``obukhov_length``
    L = −u*³ θv / (κ g w'θv') (m; ±1e5 m bounds the neutral limit).
    """

    ustar: Float[Array, ""]
    heat_flux: Float[Array, ""]
    moisture_flux: Float[Array, ""]
    drag: Float[Array, ""]
    buoyancy_flux: Float[Array, ""]
    obukhov_length: Float[Array, ""]


class AbstractSurfaceLayer(eqx.Module):
    """Computes ``SurfaceFluxes`` from the lowest model level and the forcing."""

    @abc.abstractmethod
    def fluxes(self, state: State, forcing: Forcing, grid: ColumnGrid) -> SurfaceFluxes:
        raise NotImplementedError


def wind_speed(state: State) -> Float[Array, ""]:
    """|U1| at the lowest level, at least ``MIN_WIND_SPEED`` (differentiable everywhere)."""
    speed2 = state.u[0] ** 2 + state.v[0] ** 2
    return jnp.sqrt(jnp.maximum(speed2, MIN_WIND_SPEED**2))


def obukhov_length(ustar, buoyancy_flux, theta_v) -> Float[Array, ""]:
    """L = −u*³ θv / (κ g w'θv'), bounded to |L| ≤ 1e5 m without dividing by zero."""
    inverse = -VON_KARMAN * GRAVITY * buoyancy_flux / (theta_v * ustar**3)
    inverse = jnp.where(inverse >= 0, jnp.maximum(inverse, _MIN_INVERSE_OBUKHOV),
                        jnp.minimum(inverse, -_MIN_INVERSE_OBUKHOV))
    return 1.0 / inverse


def lowest_level_theta_v(state: State, grid: ColumnGrid) -> Float[Array, ""]:
    """θv (K) of the lowest level, its liquid included (``physics.thermodynamics``)."""
    thl, qt, exner = state.thl[0], state.qt[0], grid.exner[0]
    _, liquid = saturation_adjustment(thl, qt, grid.pressure[0], exner)
    return virtual_potential_temperature(thl, qt, liquid, exner)


def surface_buoyancy_flux(heat_flux, moisture_flux, state: State) -> Float[Array, ""]:
    """w'θv' = A w'θl' + B w'qt' at the surface with the clear-air coefficients of the lowest
    level (``physics.thermodynamics.clear_air_coefficients``)."""
    a, b = clear_air_coefficients(state.thl[0], state.qt[0])
    return a * heat_flux + b * moisture_flux


def surface_fluxes(ustar, heat_flux, moisture_flux, drag, state: State, grid: ColumnGrid,
                   min_ustar: float = 0.0) -> SurfaceFluxes:
    """``SurfaceFluxes`` with the buoyancy flux and the Obukhov length completed (the latter
    from max(u*, ``min_ustar``))."""
    buoyancy_flux = surface_buoyancy_flux(heat_flux, moisture_flux, state)
    length = obukhov_length(jnp.maximum(ustar, min_ustar), buoyancy_flux,
                            lowest_level_theta_v(state, grid))
    return SurfaceFluxes(ustar, heat_flux, moisture_flux, drag, buoyancy_flux, length)


class MoninObukhovSurface(AbstractSurfaceLayer):
    """Monin–Obukhov similarity between the ground and the first level z1 = ``grid.z[0]``.

    Flux–profile relations (Businger et al. 1971; Dyer 1974) with configurable coefficients:

    - unstable (ζ = z/L < 0): φm = (1 − γm ζ)^(−1/4), φh = (1 − γh ζ)^(−1/2);
    - stable (ζ ≥ 0): φm = 1 + βm ζ, φh = 1 + βh ζ (GABLS1: βm = 4.8, βh = 7.8; Beare et al.
      2006, section 2).

    Integrated stability functions ψ = ∫ (1 − φ)/ζ dζ: for ζ < 0 (Paulson 1970, with
    x = (1 − γm ζ)^(1/4), y = (1 − γh ζ)^(1/2))
    ψm = 2 ln((1 + x)/2) + ln((1 + x²)/2) − 2 arctan x + π/2, ψh = 2 ln((1 + y)/2);
    for ζ ≥ 0, ψm = −βm ζ, ψh = −βh ζ. With Fm = ln(z1/z0m) − ψm(ζ) + ψm(ζ z0m/z1) and
    Fh likewise with z0h:

        u* = κ |U1| / Fm,   θ* = κ (θ1 − θs) / Fh,   w'θ' = −u* θ*,   ζ = κ g z1 θ*v / (θv u*²).

    ``heat_boundary="temperature"``: θs is ``forcing.surface_temperature`` (a potential
    temperature) and ζ solves Ri_b = ζ Fh(ζ) / Fm(ζ)², Ri_b = g z1 (θ1 − θs) / (θv1 |U1|²)
    (the moisture flux's buoyancy is neglected in this mode).
    ``heat_boundary="flux"``: w'θ' is ``forcing.surface_heat_flux`` and ζ solves
    ζ = −κ g z1 w'θv' Fm(ζ)³ / (θv (κ |U1|)³). The moisture flux is
    ``forcing.surface_moisture_flux`` in both modes (it enters the buoyancy flux).

    Both relations are monotone in ζ on the admissible interval, so ζ is bracketed by a
    fixed number of bisection steps (no data-dependent loop), then refined by one Newton step
    whose derivative with respect to the inputs is the implicit-function derivative: the
    result is differentiable although bisection itself is not. ζ is confined to
    [−``zeta_min``, ``zeta_max``] (beyond the critical Richardson number of the linear stable
    functions the stable solution does not exist and ζ sits at ``zeta_max``); |U1| ≥ 0.1 m/s.
    """

    roughness_length_momentum: Float[Array, ""]
    roughness_length_heat: Float[Array, ""]
    beta_m: Float[Array, ""]
    beta_h: Float[Array, ""]
    gamma_m: Float[Array, ""]
    gamma_h: Float[Array, ""]
    heat_boundary: str = eqx.field(static=True)
    n_iterations: int = eqx.field(static=True)
    zeta_min: float = eqx.field(static=True)
    zeta_max: float = eqx.field(static=True)

    def __init__(self, z0m=0.1, z0h=None, beta_m=4.8, beta_h=7.8, gamma_m=16.0, gamma_h=16.0,
                 heat_boundary: str = "temperature", n_iterations: int = 24,
                 zeta_min: float = 20.0, zeta_max: float = 10.0):
        z0h = z0m if z0h is None else z0h
        check_range("z0m", z0m, 1.0e-6, 10.0, "m")
        check_range("z0h", z0h, 1.0e-7, 10.0, "m")
        for name, value in (("beta_m", beta_m), ("beta_h", beta_h), ("gamma_m", gamma_m),
                            ("gamma_h", gamma_h)):
            check_range(name, value, 0.0, 100.0)
        check_choice("heat_boundary", heat_boundary, ("temperature", "flux"))
        check_range("n_iterations", n_iterations, 1, 64)
        check_positive("zeta_min", zeta_min)
        check_positive("zeta_max", zeta_max)
        self.roughness_length_momentum = as_float(z0m)
        self.roughness_length_heat = as_float(z0h)
        self.beta_m = as_float(beta_m)
        self.beta_h = as_float(beta_h)
        self.gamma_m = as_float(gamma_m)
        self.gamma_h = as_float(gamma_h)
        self.heat_boundary = heat_boundary
        self.n_iterations = int(n_iterations)
        self.zeta_min = float(zeta_min)
        self.zeta_max = float(zeta_max)

    def phi_m(self, zeta):
        """Dimensionless wind shear κz/u* ∂U/∂z."""
        unstable = inverse_fourth_root(1.0 - self.gamma_m * jnp.minimum(zeta, 0.0))
        return jnp.where(zeta < 0, unstable, 1.0 + self.beta_m * jnp.maximum(zeta, 0.0))

    def phi_h(self, zeta):
        """Dimensionless potential-temperature gradient κz/θ* ∂θ/∂z."""
        unstable = 1.0 / jnp.sqrt(1.0 - self.gamma_h * jnp.minimum(zeta, 0.0))
        return jnp.where(zeta < 0, unstable, 1.0 + self.beta_h * jnp.maximum(zeta, 0.0))

    def psi_m(self, zeta):
        """Integrated stability function for momentum (Paulson 1970)."""
        zeta_u, zeta_s = _split_at_neutral(zeta)
        x = fourth_root(1.0 - self.gamma_m * zeta_u)
        unstable = (2.0 * jnp.log(0.5 * (1.0 + x)) + jnp.log(0.5 * (1.0 + x * x))
                    - 2.0 * arctan(x) + 0.5 * math.pi)
        return unstable - self.beta_m * zeta_s

    def psi_h(self, zeta):
        """Integrated stability function for heat (Paulson 1970)."""
        zeta_u, zeta_s = _split_at_neutral(zeta)
        y = jnp.sqrt(1.0 - self.gamma_h * zeta_u)
        return 2.0 * jnp.log(0.5 * (1.0 + y)) - self.beta_h * zeta_s

    def profile_integrals(self, zeta, z1):
        """(Fm, Fh): ∫ φ/z dz from the roughness lengths to z1, for ζ = z1/L."""
        z0m, z0h = self.roughness_length_momentum, self.roughness_length_heat
        fm = jnp.log(z1 / z0m) - self.psi_m(zeta) + self.psi_m(zeta * z0m / z1)
        fh = jnp.log(z1 / z0h) - self.psi_h(zeta) + self.psi_h(zeta * z0h / z1)
        return fm, fh

    def fluxes(self, state: State, forcing: Forcing, grid: ColumnGrid) -> SurfaceFluxes:
        z1 = grid.z[0]
        speed = wind_speed(state)
        theta_v = lowest_level_theta_v(state, grid)
        moisture_flux = forcing.surface_moisture_flux
        if self.heat_boundary == "temperature":
            theta_s = forcing.surface_temperature
            delta = state.thl[0] - theta_s
            bulk_richardson = GRAVITY * z1 * delta / (theta_v * speed**2)

            def residual(zeta, rib):
                fm, fh = self.profile_integrals(zeta, z1)
                return zeta * fh / fm**2 - rib

            upper = jnp.asarray(self.zeta_max, z1.dtype)
            zeta = _solve_monotone(residual, bulk_richardson, -self.zeta_min, upper,
                                   self.n_iterations)
            fm, fh = self.profile_integrals(zeta, z1)
            ustar = VON_KARMAN * speed / fm
            heat_flux = -ustar * VON_KARMAN * delta / fh
        else:
            heat_flux = forcing.surface_heat_flux
            buoyancy_flux = surface_buoyancy_flux(heat_flux, moisture_flux, state)
            scale = GRAVITY * z1 * buoyancy_flux / (theta_v * VON_KARMAN**2 * speed**3)

            def residual(zeta, q):
                fm, _ = self.profile_integrals(zeta, z1)
                return zeta / fm**3 + q

            # ζ / Fm³ rises only up to ζ = ln(z1/z0m) / (2 βm): the largest downward heat flux
            # that a given wind can carry (beyond it, the surface layer decouples).
            z0m = self.roughness_length_momentum
            peak = jnp.log(z1 / z0m) / (2.0 * self.beta_m * (1.0 - z0m / z1) + 1.0e-6)
            upper = jnp.minimum(self.zeta_max, peak)
            zeta = _solve_monotone(residual, scale, -self.zeta_min, upper, self.n_iterations)
            fm, _ = self.profile_integrals(zeta, z1)
            ustar = VON_KARMAN * speed / fm
        return surface_fluxes(ustar, heat_flux, moisture_flux, ustar**2 / speed, state, grid)


def _split_at_neutral(zeta):
    """(ζ⁻, ζ⁺) = (ζ − ζ⁺, ζ⁺) with ζ⁺ = ½ (ζ + √(ζ² + ε²) − ε), ε = 10⁻⁸: max(ζ, 0) and
    min(ζ, 0) to 5 × 10⁻⁹, but smooth at ζ = 0. The stable and unstable branches of ψ meet
    there with different slopes (4.8 against γ/4 = 4 for GABLS1's functions); the solved ζ
    of a neutral surface layer is a round-off away from 0, on one side or the other, and
    with a sharp split its derivative would be that side's, not the mean that finite
    differences across neutrality give."""
    positive = 0.5 * (zeta + jnp.sqrt(zeta**2 + 1.0e-16) - 1.0e-8)
    return zeta - positive, positive


def _solve_monotone(residual, target, lower, upper, n_iterations: int):
    """Root of an increasing ``residual(ζ, target)`` on [lower, upper], clipped to it.

    Fixed-count bisection and one Newton step, all without gradient; the derivative is then
    attached by the implicit-function theorem, dζ/dp = −(∂r/∂p)/(∂r/∂ζ) at the root, through
    ``r(ζ, p) − stop_gradient(r(ζ, p))`` (first derivatives only, so the gradient stays cheap
    to compile). At a bound (no root inside) the bound is returned, with zero derivative.
    """
    lower = jnp.asarray(lower, target.dtype)
    upper = jnp.asarray(upper, target.dtype)
    frozen = jax.lax.stop_gradient(target)

    def bisect(bracket, _):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        positive = residual(mid, frozen) > 0
        return (jnp.where(positive, lo, mid), jnp.where(positive, mid, hi)), None

    # A rolled loop: unrolled, its 4 × n_iterations stability-function evaluations were half
    # of a compiled step's instructions (GABLS1, one column: compile 5.5 s against 3.8 s),
    # and it ran no faster at 1024 columns, slower for one (2.6e4 against 4.6e4 steps/s).
    (lo, hi), _ = recurrence(bisect, (jax.lax.stop_gradient(lower),
                                      jax.lax.stop_gradient(upper)), length=n_iterations)
    zeta = jax.lax.stop_gradient(0.5 * (lo + hi))
    value, slope = jax.jvp(lambda x: residual(x, target), (zeta,), (jnp.ones_like(zeta),))
    slope = jax.lax.stop_gradient(jnp.where(slope > 0, slope, 1.0))
    span = jax.lax.stop_gradient(upper - lower)
    interior = (zeta > lower + span * 1.0e-6) & (zeta < upper - span * 1.0e-6)
    newton = jnp.clip(zeta - jax.lax.stop_gradient(value) / slope, lower, upper)
    attached = newton - (value - jax.lax.stop_gradient(value)) / slope
    return jnp.where(interior, attached, zeta)


class BulkSurface(AbstractSurfaceLayer):
    """Bulk aerodynamic formulas with fixed exchange coefficients (e.g. RICO, vanZanten et al.
    2011, section 2): u*² = Cm |U1|², w'θ' = Ch |U1| (θs − θ1), w'q' = Cq |U1| (qs − q1).

    Coefficients given at ``reference_height`` zr are moved to the first level z1 with the
    neutral log-law factor [ln(zr/z0) / ln(z1/z0)]². θs is ``forcing.surface_temperature``
    (potential temperature); qs = qsat(Ts, ps) with Ts = θs Π(ps) (Bolton 1980, eq. 10).
    """

    Cm: Float[Array, ""]
    Ch: Float[Array, ""]
    Cq: Float[Array, ""]
    reference_height: Float[Array, ""]
    roughness_length: Float[Array, ""]

    def __init__(self, Cm=1.229e-3, Ch=1.094e-3, Cq=1.133e-3, reference_height=20.0,
                 roughness_length=1.5e-4):
        for name, value in (("Cm", Cm), ("Ch", Ch), ("Cq", Cq)):
            check_range(name, value, 0.0, 0.1)
        check_range("reference_height", reference_height, 0.1, 1000.0, "m")
        check_range("roughness_length", roughness_length, 1.0e-7, 10.0, "m")
        self.Cm, self.Ch, self.Cq = (as_float(c) for c in (Cm, Ch, Cq))
        self.reference_height = as_float(reference_height)
        self.roughness_length = as_float(roughness_length)

    def fluxes(self, state: State, forcing: Forcing, grid: ColumnGrid) -> SurfaceFluxes:
        z1, z0 = grid.z[0], self.roughness_length
        factor = (jnp.log(self.reference_height / z0) / jnp.log(z1 / z0)) ** 2
        speed = wind_speed(state)
        theta_s = forcing.surface_temperature
        surface_pressure = grid.pressure_interface[0]
        temperature = theta_s * (surface_pressure / REFERENCE_PRESSURE) ** KAPPA
        q_s, _ = saturation_specific_humidity(temperature, surface_pressure)
        heat_flux = factor * self.Ch * speed * (theta_s - state.thl[0])
        moisture_flux = factor * self.Cq * speed * (q_s - state.qt[0])
        ustar = jnp.sqrt(factor * self.Cm) * speed
        return surface_fluxes(ustar, heat_flux, moisture_flux, factor * self.Cm * speed, state,
                              grid)


class PrescribedFluxSurface(AbstractSurfaceLayer):
    """Surface heat and moisture fluxes taken from the forcing, and u* either from the forcing
    too (e.g. BOMEX, Siebesma et al. 2003, section 2) or, with a ``drag_coefficient`` Cd, from
    the bulk drag u*² = Cd |U1|² (e.g. DYCOMS-II RF01, Stevens et al. 2005: Cd = 0.0011); the
    stress is u*² along the lowest-level wind."""

    drag_coefficient: Float[Array, ""] | None

    def __init__(self, drag_coefficient=None):
        if drag_coefficient is not None:
            check_range("drag_coefficient", drag_coefficient, 0.0, 0.1)
            drag_coefficient = as_float(drag_coefficient)
        self.drag_coefficient = drag_coefficient

    def fluxes(self, state: State, forcing: Forcing, grid: ColumnGrid) -> SurfaceFluxes:
        speed = wind_speed(state)
        if self.drag_coefficient is None:
            ustar = forcing.surface_friction_velocity
        else:
            ustar = jnp.sqrt(self.drag_coefficient) * speed
        return surface_fluxes(ustar, forcing.surface_heat_flux, forcing.surface_moisture_flux,
                              ustar**2 / speed, state, grid, min_ustar=1.0e-3)
