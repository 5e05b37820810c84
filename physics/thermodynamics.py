"""Moist thermodynamics of the warm phase (water vapour and liquid; no ice), used by every
scheme that needs temperature, cloud liquid or buoyancy.

The prognostic variables are the liquid-water potential temperature θl and the total water
specific humidity qt. With the linearized definition of Betts (1973), used by the LES
of the moist cases (DALES, MicroHH, UCLA-LES),

    θl = θ − (Lv / (cp Π)) ql   ⇔   T = Π θl + (Lv / cp) ql,

where Π = (p/p0)^(R/cp) is the reference state's Exner function (anelastic: the pressure of
the reference state, not the actual pressure). Constants (latent heat and heat capacity held
constant, as in the case definitions) are those of ``scm.constants``.

Saturation over liquid: Bolton (1980, eq. 10), es = 611.2 exp(17.67 (T − 273.15)/(T − 29.65))
Pa, within 0.1 % of Murphy & Koop (2005, eq. 10) for −30 … 35 °C; qs = ε es / (p − (1 − ε) es)
with ε = Rd/Rv. Virtual potential temperature θv = θ (1 + (Rv/Rd − 1) qv − ql) with
qv = qt − ql (liquid loading included; rain loading neglected); buoyancy b = g (θv − θv,ref) /
θv,ref. When the air is unsaturated ql = 0 exactly, θ = θl and θv = θl (1 + 0.608 qt): the dry
cases are unchanged to round-off.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from scm.constants import (
    DRY_AIR_HEAT_CAPACITY,
    EPSILON,
    GRAVITY,
    LATENT_HEAT_VAPORIZATION,
    VIRTUAL_COEFFICIENT,
    WATER_VAPOR_GAS_CONSTANT,
)
from scm.grid import ColumnGrid
from scm.state import State

#: Lv / cp (K per kg/kg of condensate).
LATENT_OVER_CP = LATENT_HEAT_VAPORIZATION / DRY_AIR_HEAT_CAPACITY
#: Newton iterations of the saturation adjustment: 4 reach float32 round-off for up to
#: 5 g/kg of condensate (3 × 10⁻⁴ K; 3 iterations leave 2 × 10⁻² K there).
ADJUSTMENT_ITERATIONS = 4


def saturation_vapor_pressure(temperature):
    """(es, d ln es / dT): saturation vapour pressure over liquid water (Pa) and its
    logarithmic derivative (K-1), es = 611.2 exp(17.67 Tc / (Tc + 243.5)) with Tc = T − 273.15
    (Bolton 1980, eq. 10), d ln es/dT = 17.67 · 243.5 / (Tc + 243.5)²."""
    denominator = temperature - 29.65
    es = 611.2 * jnp.exp(17.67 * (temperature - 273.15) / denominator)
    return es, 17.67 * 243.5 / denominator**2


def saturation_specific_humidity(temperature, pressure):
    """(qs, ∂qs/∂T): saturation specific humidity over liquid (kg/kg) and its temperature
    derivative (kg/kg K-1), qs = ε es / (p − (1 − ε) es),
    ∂qs/∂T = qs p / (p − (1 − ε) es) · d ln es/dT (the Clausius–Clapeyron slope)."""
    es, slope = saturation_vapor_pressure(temperature)
    dry_pressure = pressure - (1.0 - EPSILON) * es
    qs = EPSILON * es / dry_pressure
    return qs, qs * pressure / dry_pressure * slope


def saturation_adjustment(thl, qt, pressure, exner, n_iterations: int = ADJUSTMENT_ITERATIONS):
    """(T, ql): temperature (K) and cloud liquid (kg/kg) of air with θl, qt at pressure p.

    Saturated exactly when qt > qs(Tl, p), Tl = Π θl (were it not, T = Tl); the flag is fixed
    before iterating. On the saturated branch T solves g(T) = T − Tl − (Lv/cp)(qt − qs(T)) = 0
    by ``n_iterations`` Newton steps from Tl on the *unclipped* residual: g is increasing and
    convex, so the first step lands right of the root and the rest descend monotonically
    (a residual clipped at ql = 0 can 2-cycle between the branches). Then ql = qt − qs(T).

    Derivatives go through the iterations, so they are exact for the function computed (the
    iterate, not the root it approaches: a derivative attached at the root by the
    implicit-function theorem differs from the iterate's by the iteration's own error, up to
    10⁻⁵ of it for a few g/kg of condensate) on both sides of saturation; at the switch itself
    T and ql are continuous, their derivatives are not.
    """
    liquid_temperature = exner * thl
    qs_liquid, _ = saturation_specific_humidity(liquid_temperature, pressure)
    saturated = qt > qs_liquid
    temperature = liquid_temperature
    for _ in range(n_iterations):
        qs, slope = saturation_specific_humidity(temperature, pressure)
        residual = temperature - liquid_temperature - LATENT_OVER_CP * (qt - qs)
        temperature = temperature - jnp.where(saturated,
                                              residual / (1.0 + LATENT_OVER_CP * slope), 0.0)
    qs, _ = saturation_specific_humidity(temperature, pressure)
    liquid = jnp.where(saturated, jnp.maximum(qt - qs, 0.0), 0.0)
    return temperature, liquid


def potential_temperature(thl, ql, exner):
    """θ = θl + Lv ql / (cp Π) (K)."""
    return thl + LATENT_OVER_CP * ql / exner


def virtual_potential_temperature(thl, qt, ql, exner):
    """θv = θ (1 + (Rv/Rd − 1)(qt − ql) − ql) (K), liquid loading included."""
    theta = potential_temperature(thl, ql, exner)
    return theta * (1.0 + VIRTUAL_COEFFICIENT * (qt - ql) - ql)


def buoyancy(theta_v, theta_v_reference):
    """b = g (θv − θv,ref) / θv,ref (m s-2)."""
    return GRAVITY * (theta_v - theta_v_reference) / theta_v_reference


def clear_air_coefficients(theta, qt):
    """(A, B) of w'θv' = A w'θl' + B w'qt' in unsaturated air: A = 1 + 0.608 qt, B = 0.608 θ
    (the virtual-temperature definition differentiated; as in DALES ``calthv``)."""
    return 1.0 + VIRTUAL_COEFFICIENT * qt, VIRTUAL_COEFFICIENT * theta


def cloudy_air_coefficients(temperature, qt, qs, theta, exner):
    """(A, B) of w'θv' = A w'θl' + B w'qt' in saturated air (Deardorff 1976; Cuijpers &
    Duynkerke 1993; as in DALES ``calthv``, with the Π of θl kept):
    A = [1 − qt + (qs/ε)(1 + Lv/(Rv T))] / [1 + Lv² qs / (cp Rv T²)], B = A Lv/(cp Π) − θ."""
    lv_over_rv_t = LATENT_HEAT_VAPORIZATION / (WATER_VAPOR_GAS_CONSTANT * temperature)
    a = (1.0 - qt + qs / EPSILON * (1.0 + lv_over_rv_t)) / (
        1.0 + LATENT_OVER_CP * lv_over_rv_t * qs / temperature)
    return a, a * LATENT_OVER_CP / exner - theta


class Thermodynamics(NamedTuple):
    """Thermodynamic state of a column's grid mean (each ``(z,)``), from ``diagnose``:
    temperature T (K), cloud liquid ql (kg/kg; all-or-nothing saturation of the grid mean),
    θ and θv (K), and qs(T) (kg/kg)."""

    temperature: Float[Array, " z"]
    liquid: Float[Array, " z"]
    theta: Float[Array, " z"]
    theta_v: Float[Array, " z"]
    saturation_humidity: Float[Array, " z"]


def condensation(thl, qt, pressure, exner, moist: bool = True):
    """(T, ql) of air with θl, qt: ``saturation_adjustment`` where water may condense
    (``moist``), else dry air, T = Π θl and ql = 0 exactly. The dry form is what the adjustment
    returns for unsaturated air, without its Newton iterations: for the dry cases, whose
    moisture stays far below saturation, or is zero."""
    if moist:
        return saturation_adjustment(thl, qt, pressure, exner)
    return exner * thl, jnp.zeros_like(thl + qt)


def diagnose(state: State, grid: ColumnGrid, moist: bool = True) -> Thermodynamics:
    """Saturation adjustment of every level's grid mean at the reference pressure (without
    condensation unless ``moist``; see ``condensation``)."""
    temperature, liquid = condensation(state.thl, state.qt, grid.pressure, grid.exner, moist)
    qs, _ = saturation_specific_humidity(temperature, grid.pressure)
    return Thermodynamics(temperature, liquid,
                          potential_temperature(state.thl, liquid, grid.exner),
                          virtual_potential_temperature(state.thl, state.qt, liquid, grid.exner),
                          qs)
