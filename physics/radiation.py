"""Radiation (model slot ``"radiation"``): the parameterized longwave of the DYCOMS-II RF01
stratocumulus case, computed from the model's own cloud, and prescribed radiative cooling.

Radiative heating is written as the divergence of a flux, in flux form on θl:
∂θl/∂t = −(1/ρ) ∂(ρ F/(ρ cp Π))/∂z, the kinematic flux F/(ρ cp Π) on interfaces, so the
column's θl budget changes only by the radiative fluxes through its bottom and top.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from physics.clouds import AbstractCloudSource
from scm.constants import DRY_AIR_HEAT_CAPACITY
from scm.errors import check_range
from scm.fastmath import cube_root
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State, as_float


class PrescribedRadiation(AbstractParameterization):
    """A fixed radiative heating of θl (K/s at the layer centres), e.g. the clear-sky
    cooling of BOMEX (−2 K/day below 1.5 km, Siebesma et al. 2003) or RICO (−2.5 K/day,
    vanZanten et al. 2011)."""

    heating: Float[Array, " z"]

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        zeros = Tendency.zeros(state)
        tendency = State(zeros.tendency.u, zeros.tendency.v, self.heating, zeros.tendency.qt,
                         zeros.tendency.tracers)
        return Tendency(tendency, zeros.flux, zeros.diffusivity, {})


class StratocumulusLongwave(AbstractParameterization):
    """The longwave flux of the DYCOMS-II RF01 intercomparison (Stevens et al. 2005, MWR 133),
    net upward, on interfaces:

        F(z) = F0 e^(−Q(z,∞)) + F1 e^(−Q(0,z)) + ρi cp D αz [¼ (z − zi)^(4/3) + zi (z − zi)^(1/3)]
               for z > zi (the last term zero below),
        Q(a, b) = κ ∫_a^b ρ ql dz,

    F0 = 70 W m⁻², F1 = 22 W m⁻², κ = 85 m² kg⁻¹, αz = 1 m^(−4/3), D = 3.75 × 10⁻⁶ s⁻¹ (the
    case's divergence), zi the height of the qt = 8 g/kg isoline (interpolated between
    levels), ρi the density there. The liquid ql is the cloud's from ``cloud`` (the turbulence
    closure's partial cloud). Cloud-top cooling concentrates in the layer with the largest
    ρ ql: run with Δt ≤ 30 s across a 10–20 m inversion. Diagnostic: ``inversion_height``
    (zi, m).
    """

    cloud: AbstractCloudSource
    upper_flux: Float[Array, ""]
    lower_flux: Float[Array, ""]
    absorption: Float[Array, ""]
    divergence: Float[Array, ""]
    inversion_humidity: Float[Array, ""]

    def __init__(self, cloud: AbstractCloudSource, upper_flux=70.0, lower_flux=22.0,
                 absorption=85.0, divergence=3.75e-6, inversion_humidity=8.0e-3):
        check_range("upper_flux", upper_flux, 0.0, 500.0, "W m-2")
        check_range("lower_flux", lower_flux, 0.0, 500.0, "W m-2")
        check_range("absorption", absorption, 0.0, 1000.0, "m2 kg-1")
        check_range("divergence", divergence, 0.0, 1.0e-4, "s-1")
        check_range("inversion_humidity", inversion_humidity, 1.0e-4, 0.05, "kg kg-1")
        self.cloud = cloud
        self.upper_flux = as_float(upper_flux)
        self.lower_flux = as_float(lower_flux)
        self.absorption = as_float(absorption)
        self.divergence = as_float(divergence)
        self.inversion_humidity = as_float(inversion_humidity)

    def flux(self, state: State, forcing: Forcing, grid: ColumnGrid):
        """(net upward longwave flux on interfaces, W m-2; zi, m)."""
        liquid = self.cloud.cloud(state, forcing, grid).liquid
        path = jnp.concatenate([jnp.zeros_like(liquid[:1]),
                                jnp.cumsum(self.absorption * grid.layer_mass * liquid)])
        zi = isoline_height(state.qt, grid, self.inversion_humidity)
        rho_i = jnp.interp(zi, grid.z_interface, grid.rho_interface)
        z = grid.z_interface
        above = z > zi
        distance = jnp.where(above, z - zi, 1.0)
        subsidence = (rho_i * DRY_AIR_HEAT_CAPACITY * self.divergence
                      * (0.25 * distance + zi) * cube_root(distance))
        flux = (self.upper_flux * jnp.exp(-(path[-1] - path))
                + self.lower_flux * jnp.exp(-path)
                + jnp.where(above, subsidence, 0.0))
        return flux, zi

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        flux, zi = self.flux(state, forcing, grid)
        kinematic = flux / (grid.rho_interface * DRY_AIR_HEAT_CAPACITY * grid.exner_interface)
        zeros = Tendency.zeros(state)
        fluxes = State(zeros.flux.u, zeros.flux.v, kinematic, zeros.flux.qt, zeros.flux.tracers)
        return Tendency(zeros.tendency, fluxes, zeros.diffusivity, {"inversion_height": zi})


def isoline_height(x: Float[Array, " z"], grid: ColumnGrid, value) -> Float[Array, ""]:
    """Height (m) where ``x`` first falls below ``value`` going up, interpolated linearly
    between the centres (the lowest centre if it starts below, the top if it never does)."""
    below = x < value
    k = jnp.argmax(below)
    lower = jnp.maximum(k - 1, 0)
    span = x[lower] - x[k]
    weight = jnp.clip((x[lower] - value) / jnp.where(span > 0, span, 1.0), 0.0, 1.0)
    height = grid.z[lower] + weight * (grid.z[k] - grid.z[lower])
    return jnp.where(below.any(), jnp.where(k > 0, height, grid.z[0]), grid.z_interface[-1])
