"""A steady entraining–detraining updraft (the mass-flux part of an eddy-diffusivity
mass-flux closure, EDMF), diagnosed anew every step from the column and the surface fluxes.

The plume rises from the lowest level when the surface buoyancy flux is positive, carrying
the conserved variables θl and qt and the wind; at every level its liquid follows from the
saturation adjustment (``physics.thermodynamics``), so it condenses above its lifting
condensation level and gains buoyancy from the latent heat.

- Initial excess (Siebesma, Soares & Teixeira 2007, JAS 64, "SST07", eqs. 7 and 17):
  φu − φ̄ = b_x w'φ'_s / σw at z1, σw = 1.3 (u*³ + 0.6 (g/θv) w'θv'_s z1)^(1/3); the wind
  starts at the lowest level's.
- Conserved variables: ∂φu/∂z = −ε (φu − φ̄) (SST07, eq. 10); the wind with the pressure
  term of convective momentum transport, ∂uu/∂z = −ε (uu − ū) + c_p ∂ū/∂z (Gregory, Kershaw
  & Inness 1997; c_p = 0.55 as in the GFS EDMF of Han et al. 2016).
- Vertical velocity: ½ ∂wu²/∂z = a B − b ε wu², B = g (θv,u − θ̄v)/θ̄v with the liquid loading
  of the plume and of the grid mean (the form of Soares et al. 2004) with the constants of the
  GFS hybrid EDMF (Han et al. 2016, WAF 31: a = 1.75, b = 0.9; c_ε = 0.38 below).
- Entrainment and detrainment: below the plume's condensation level
  ε = c_ε [1/(z + Δz) + 1/(h − z + Δz)] (SST07, eq. 16; h the level of neutral buoyancy of the
  undiluted surface parcel, condensing above its condensation level), δ = 0 and constant area
  a_0; in cloud, ε = 1/(τ wu) (Neggers, Siebesma & Jonker 2002, QJRMS 128) and buoyancy
  sorting for the detrainment, δ = c_δ max(−B, 0)/wu² + δ_0 (Tan et al. 2018, JAMES 10, as in
  SCAMPy), with the mass flux from steady continuity, ∂(ρ a w)/∂z = ρ a w (ε − δ), and the area
  a = M/(ρ wu) at most the plume's area at the surface, a_0; the vertical velocity in cloud with
  the virtual-mass
  factor a_c = 2/3 and the pressure drag wu²/ℓ_d, ℓ_d = 1333 m, of SCAMPy's diagnostic updraft
  (Tan et al. 2018): ½ ∂wu²/∂z = a_c B − (b ε + 1/ℓ_d) wu². At the condensation level zb
  the mass flux is at most the cloud-base closure of Grant (2001, QJRMS 127),
  M_b = c_b ρ w*, w* = ((g/θv) w'θv'_s zb)^(1/3): of the dry thermals only the strongest
  reach saturation, the others detrain in the transition layer below cloud base. c_b = 0.045
  rather than Grant's 0.03, with which BOMEX's cloud-base mass flux is 0.020 m/s, its cloud
  cover 0.08 and its liquid water path 4 g/m² (LES: 0.14 and 4.3 g/m²), and its qt drifts
  0.7 g/kg from the initial profile in 6 h.
- Levels: each layer is crossed exactly for coefficients frozen across it (the environment
  varying linearly; the buoyancy-sorting detrainment the mean of its values at the layer's two
  ends, so that a plume decelerating to rest inside the layer detrains as it stops rather than
  keeping its mass flux at a vanishing velocity, whose area M/(ρ wu) would then blow up):
  φu,hi − φ̄hi = (φu,lo − φ̄lo) e^(−εΔz) − (1 − c_p)(φ̄hi − φ̄lo)(1 − e^(−εΔz))/(εΔz),
  and wu² likewise with the buoyancy averaged over the layer; the loop is
  ``scm.levels.recurrence``. The plume stops where wu² reaches zero (the top is interpolated),
  and so does the loop (``active``): batched, it runs up to the highest plume's top only.

``interface_fluxes`` turns the plume into the explicit mass-flux fluxes M (φu − φ̄) on
interfaces: φu from the centre below (the plume rises), φ̄ reconstructed on the interface from
above (the compensating subsidence) with van Leer's limited slope (van Leer 1974), which is
monotone for M Δt/(ρ Δz) ≤ 1/2 and, unlike first-order upwinding, does not smear the
inversion: with plain upwinding the dry CBL's entrainment ratio was −0.36, −0.18 and −0.17 at
32, 64 and 128 levels.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from physics.surface import SurfaceFluxes
from physics.thermodynamics import (
    Thermodynamics,
    buoyancy,
    condensation,
    saturation_specific_humidity,
    virtual_potential_temperature,
)
from scm.constants import GRAVITY
from scm.errors import check_range
from scm.fastmath import cube_root
from scm.grid import ColumnGrid
from scm.levels import any_column, recurrence
from scm.state import State, as_float

#: Floor on wu² (m2 s-2) where the buoyancy-sorting rates divide by it (SCAMPy's value).
MIN_W2 = 1.0e-2
#: Added under cube roots whose argument may vanish, so their gradients stay finite.
_TINY = 1.0e-12


class UpdraftProfile(NamedTuple):
    """The plume of one column: profiles at centres ``(z,)`` of θl, qt, u, v, liquid ql,u
    (kg/kg), θv,u (K), vertical velocity w (m/s), area fraction, mass flux ρ a w
    (kg m-2 s-1; zero above the top and where the plume is inactive), and the mass flux on the
    interior interfaces (``(z − 1,)``, zero on an interface the plume does not reach); scalars:
    ``top``
    (m, height where wu² reaches zero; 0 when inactive), ``cloud_base`` and ``cloud_top``
    (m, the plume's condensation level and its top when it condenses; NaN otherwise),
    ``cloud_base_mass_flux`` (a w at the lowest cloudy level, m/s; 0 without cloud)."""

    thl: Float[Array, " z"]
    qt: Float[Array, " z"]
    u: Float[Array, " z"]
    v: Float[Array, " z"]
    liquid: Float[Array, " z"]
    theta_v: Float[Array, " z"]
    w: Float[Array, " z"]
    area: Float[Array, " z"]
    mass_flux: Float[Array, " z"]
    interface_mass_flux: Float[Array, " inner"]
    top: Float[Array, ""]
    cloud_base: Float[Array, ""]
    cloud_top: Float[Array, ""]
    cloud_base_mass_flux: Float[Array, ""]


class MassFluxUpdraft(eqx.Module):
    """One steady updraft (see the module docstring for the equations and their sources)."""

    area: Float[Array, ""]
    entrainment: Float[Array, ""]
    excess: Float[Array, ""]
    buoyancy_coefficient: Float[Array, ""]
    drag_coefficient: Float[Array, ""]
    cloud_entrainment_time: Float[Array, ""]
    cloud_detrainment: Float[Array, ""]
    cloud_detrainment_rate: Float[Array, ""]
    cloud_buoyancy_coefficient: Float[Array, ""]
    cloud_drag_length: Float[Array, ""]
    cloud_base_coefficient: Float[Array, ""]
    pressure_coefficient: Float[Array, ""]

    def __init__(self, area=0.1, entrainment=0.38, excess=1.0, buoyancy_coefficient=1.75,
                 drag_coefficient=0.9, cloud_entrainment_time=500.0, cloud_detrainment=0.12,
                 cloud_detrainment_rate=2.5e-3, cloud_buoyancy_coefficient=2.0 / 3.0,
                 cloud_drag_length=1333.0, cloud_base_coefficient=0.045,
                 pressure_coefficient=0.55):
        for name, value, low, high, units in (
            ("area", area, 1.0e-3, 0.5, ""), ("entrainment", entrainment, 0.01, 5.0, ""),
            ("excess", excess, 0.0, 5.0, ""),
            ("buoyancy_coefficient", buoyancy_coefficient, 0.1, 10.0, ""),
            ("drag_coefficient", drag_coefficient, 0.0, 10.0, ""),
            ("cloud_entrainment_time", cloud_entrainment_time, 10.0, 1.0e5, "s"),
            ("cloud_detrainment", cloud_detrainment, 0.0, 2.0, ""),
            ("cloud_detrainment_rate", cloud_detrainment_rate, 0.0, 0.1, "m-1"),
            ("cloud_buoyancy_coefficient", cloud_buoyancy_coefficient, 0.1, 10.0, ""),
            ("cloud_drag_length", cloud_drag_length, 10.0, 1.0e6, "m"),
            ("cloud_base_coefficient", cloud_base_coefficient, 0.0, 1.0, ""),
            ("pressure_coefficient", pressure_coefficient, 0.0, 1.0, ""),
        ):
            check_range(f"updraft {name}", value, low, high, units)
        self.area = as_float(area)
        self.entrainment = as_float(entrainment)
        self.excess = as_float(excess)
        self.buoyancy_coefficient = as_float(buoyancy_coefficient)
        self.drag_coefficient = as_float(drag_coefficient)
        self.cloud_entrainment_time = as_float(cloud_entrainment_time)
        self.cloud_detrainment = as_float(cloud_detrainment)
        self.cloud_detrainment_rate = as_float(cloud_detrainment_rate)
        self.cloud_buoyancy_coefficient = as_float(cloud_buoyancy_coefficient)
        self.cloud_drag_length = as_float(cloud_drag_length)
        self.cloud_base_coefficient = as_float(cloud_base_coefficient)
        self.pressure_coefficient = as_float(pressure_coefficient)

    def __call__(self, state: State, grid: ColumnGrid, mean: Thermodynamics,
                 surface: SurfaceFluxes, moist: bool = True) -> UpdraftProfile:
        """The plume of a column with grid-mean thermodynamics ``mean``; without ``moist`` it
        never condenses (``physics.thermodynamics.condensation``), and the in-cloud parts of
        the plume are left out of the program rather than computed for nothing. A batch of
        columns none of which is heated from below (stable nights, GABLS1) skips the plume
        altogether (``scm.levels.any_column``)."""
        active = surface.buoyancy_flux > 0
        return jax.lax.cond(any_column(active),
                            lambda: self._rise(state, grid, mean, surface, active, moist),
                            lambda: _no_plume(state, mean.theta_v))

    def _rise(self, state, grid, mean, surface, active, moist):
        z, rho, pressure, exner = grid.z, grid.rho, grid.pressure, grid.exner
        theta_v = mean.theta_v
        heating = jnp.maximum(surface.buoyancy_flux, 0.0)
        buoyancy_parameter = GRAVITY / theta_v[0]
        sigma_w = 1.3 * cube_root(surface.ustar**3 + 0.6 * buoyancy_parameter * heating * z[0]
                                  + _TINY)
        thl0 = state.thl[0] + jnp.where(active, self.excess * surface.heat_flux / sigma_w, 0.0)
        qt0 = state.qt[0] + jnp.where(active, self.excess * surface.moisture_flux / sigma_w, 0.0)

        # h of the dry entrainment: the level of neutral buoyancy of the undiluted surface
        # parcel, condensing above its lifting condensation level (the entraining plume stops
        # a little below it; a parcel that condenses reaches its cloud layer).
        _, parcel_liquid = condensation(thl0, qt0, pressure, exner, moist)
        parcel = virtual_potential_temperature(thl0, qt0, parcel_liquid, exner)
        warmer = theta_v > parcel
        neutral = jnp.where(warmer.any(), z[jnp.argmax(warmer)], z[-1])
        dz = grid.dz
        dry_entrainment = self.entrainment * (1.0 / (z + dz)
                                              + 1.0 / jnp.maximum(neutral - z + dz, dz))

        _, liquid0 = condensation(thl0, qt0, pressure[0], exner[0], moist)
        theta_v0 = virtual_potential_temperature(thl0, qt0, liquid0, exner[0])
        buoyancy0 = buoyancy(theta_v0, theta_v[0])
        a, b = self.buoyancy_coefficient, self.drag_coefficient
        w2_0 = 2.0 * a * buoyancy0 * z[0] / (1.0 + b * dry_entrainment[0] * z[0])
        alive0 = active & (w2_0 > 0)
        w2_0 = jnp.where(alive0, w2_0, 0.0)
        mass0 = self.area * rho[0] * jnp.sqrt(w2_0 + _TINY) * alive0
        first = (jnp.where(alive0, thl0, state.thl[0]), jnp.where(alive0, qt0, state.qt[0]),
                 state.u[0], state.v[0], liquid0 * alive0, jnp.where(alive0, theta_v0, theta_v[0]),
                 w2_0, mass0, jnp.where(alive0, buoyancy0, 0.0), alive0)

        def step(carry, level):
            thl_u, qt_u, u_u, v_u, liquid, _, w2, mass, buoy, alive = carry
            (thl_lo, thl_hi, qt_lo, qt_hi, u_lo, u_hi, v_lo, v_hi, thv_hi, p_hi, exner_hi,
             rho_hi, z_hi, dz, eps_lo, eps_hi) = level
            eps = 0.5 * (eps_lo + eps_hi)
            if moist:
                cloudy = liquid > 0
                w2_safe = jnp.maximum(w2, MIN_W2)
                eps = jnp.where(cloudy, 1.0 / (self.cloud_entrainment_time * jnp.sqrt(w2_safe)),
                                eps)
            eps = jnp.minimum(eps, 0.9 / dz)
            decay, gain = _layer_factors(eps * dz)

            def cross(x_u, x_lo, x_hi, pressure_term=0.0):
                return x_hi + (x_u - x_lo) * decay - (1.0 - pressure_term) * (x_hi - x_lo) * gain

            thl_new = cross(thl_u, thl_lo, thl_hi)
            qt_new = cross(qt_u, qt_lo, qt_hi)
            u_new = cross(u_u, u_lo, u_hi, self.pressure_coefficient)
            v_new = cross(v_u, v_lo, v_hi, self.pressure_coefficient)
            _, liquid_new = condensation(thl_new, qt_new, p_hi, exner_hi, moist)
            thv_new = virtual_potential_temperature(thl_new, qt_new, liquid_new, exner_hi)
            buoy_new = buoyancy(thv_new, thv_hi)
            lift, drag = a, b * eps
            if moist:
                lift = jnp.where(cloudy, self.cloud_buoyancy_coefficient, lift)
                drag = drag + jnp.where(cloudy, 1.0 / self.cloud_drag_length, 0.0)
            w_decay, w_gain = _layer_factors(2.0 * drag * dz)
            w2_new = w2 * w_decay + lift * (buoy + buoy_new) * dz * w_gain
            alive_new = alive & (w2_new > 0)
            w_new = jnp.sqrt(jnp.maximum(w2_new, 0.0) + _TINY)
            mass_new = self.area * rho_hi * w_new
            if moist:
                sorting = 0.5 * (self._sorting(buoy, w2) + self._sorting(buoy_new, w2_new))
                det = jnp.where(cloudy, sorting + self.cloud_detrainment_rate, 0.0)
                growth = jnp.exp(jnp.clip((eps - det) * dz, -30.0, 30.0))
                # At the condensation level, the cloud-base closure of Grant (2001).
                base_mass = self.cloud_base_coefficient * rho_hi * cube_root(
                    buoyancy_parameter * heating * z_hi + _TINY)
                mass_new = jnp.where(liquid_new > 0, jnp.minimum(mass_new, base_mass), mass_new)
                mass_new = jnp.where(cloudy, mass * growth, mass_new)
            mass_new = jnp.minimum(mass_new, self.area * rho_hi * w_new) * alive_new
            out = (jnp.where(alive_new, thl_new, thl_hi), jnp.where(alive_new, qt_new, qt_hi),
                   jnp.where(alive_new, u_new, u_hi), jnp.where(alive_new, v_new, v_hi),
                   liquid_new * alive_new, jnp.where(alive_new, thv_new, thv_hi),
                   jnp.where(alive_new, w2_new, 0.0), mass_new,
                   jnp.where(alive_new, buoy_new, 0.0), alive_new)
            return out, (out, w2_new)

        def pairs(x):
            return x[:-1], x[1:]

        levels = (*pairs(state.thl), *pairs(state.qt), *pairs(state.u), *pairs(state.v),
                  theta_v[1:], pressure[1:], exner[1:], rho[1:], z[1:], jnp.diff(z),
                  *pairs(dry_entrainment))
        # the loop stops where the plume does (alive is the carry's last entry); above, the
        # plume's conserved variables are the environment's
        _, (rest, w2_raw) = recurrence(step, first, levels, active=lambda carry: carry[-1])
        thl_u, qt_u, u_u, v_u, liquid, thv_u, w2, mass, _, alive = (
            jnp.concatenate([jnp.reshape(f, (1,)), r]) for f, r in zip(first, rest, strict=True))
        thl_u, qt_u, u_u, v_u, thv_u = (
            jnp.where(alive, x, mean_x) for x, mean_x in
            ((thl_u, state.thl), (qt_u, state.qt), (u_u, state.u), (v_u, state.v),
             (thv_u, theta_v)))
        alive = alive.astype(z.dtype)
        w = jnp.sqrt(w2 + _TINY) * alive
        area = mass / (rho * jnp.maximum(w, 1.0e-3)) * alive

        # Top: where wu² crosses zero above the last level the plume reaches.
        n_alive = jnp.sum(alive).astype(jnp.int32)
        last = jnp.maximum(n_alive - 1, 0)
        beyond = jnp.minimum(last, z.shape[0] - 2)
        w2_last = w2[last]
        w2_next = w2_raw[beyond]
        fraction = jnp.clip(w2_last / jnp.maximum(w2_last - w2_next, _TINY), 0.0, 1.0)
        reaches_top = n_alive == z.shape[0]
        top = jnp.where(reaches_top, grid.z_interface[-1],
                        z[last] + fraction * (z[beyond + 1] - z[last]))
        top = jnp.where(n_alive > 0, top, 0.0)

        face_mass = mass[:-1]
        nan = jnp.full_like(top, jnp.nan)
        if not moist:
            return UpdraftProfile(thl_u, qt_u, u_u, v_u, liquid, thv_u, w, area, mass, face_mass,
                                  top, nan, nan, jnp.zeros_like(top))
        # Cloud base: where the plume's saturation excess qt,u − qs(Π θl,u) crosses zero.
        qs_liquid, _ = saturation_specific_humidity(exner * thl_u, pressure)
        excess = qt_u - qs_liquid
        cloudy = (liquid > 0) & (alive > 0)
        has_cloud = cloudy.any()
        k = jnp.argmax(cloudy)
        below = jnp.maximum(k - 1, 0)
        weight = jnp.clip(-excess[below] / jnp.maximum(excess[k] - excess[below], _TINY), 0.0,
                          1.0)
        base = jnp.where(k > 0, z[below] + weight * (z[k] - z[below]), z[0])
        return UpdraftProfile(thl_u, qt_u, u_u, v_u, liquid, thv_u, w, area, mass, face_mass,
                              top, jnp.where(has_cloud, base, nan),
                              jnp.where(has_cloud, top, nan),
                              jnp.where(has_cloud, mass[k] / rho[k], 0.0))

    def _sorting(self, buoyancy_, w2):
        """Buoyancy-sorting detrainment c_δ max(−B, 0)/wu² (m-1; wu² at least ``MIN_W2``)."""
        return self.cloud_detrainment * jnp.maximum(-buoyancy_, 0.0) / jnp.maximum(w2, MIN_W2)

    def interface_fluxes(self, plume: UpdraftProfile, state: State, theta_v, grid: ColumnGrid,
                         time_step: float):
        """Kinematic mass-flux fluxes M (φu − φ̄)/ρ on interfaces of u, v, θl, qt and of θv
        (the last for the TKE closure's buoyancy production), zero at the surface and the
        top; tracers are not carried. M is at most ρ Δz / (2 Δt), the limit of the explicit
        monotone transport."""
        limit = 0.5 * grid.rho[1:] * grid.dz[1:] / time_step
        mass = jnp.minimum(plume.interface_mass_flux, limit) / grid.rho_interface[1:-1]
        zero = jnp.zeros_like(grid.z[:1])

        def flux(updraft, mean):
            return jnp.concatenate([zero, mass * (updraft[:-1] - subsiding_face_values(mean)),
                                    zero])

        nothing = jnp.zeros_like(grid.z_interface)
        untouched = {name: nothing for name in state.tracers}

        def transport():
            return (State(flux(plume.u, state.u), flux(plume.v, state.v),
                          flux(plume.thl, state.thl), flux(plume.qt, state.qt), untouched),
                    flux(plume.theta_v, theta_v))

        def none():  # what transport gives where the mass flux is zero on every interface
            return State(nothing, nothing, nothing, nothing, untouched), nothing

        carries = jnp.any(plume.interface_mass_flux != 0)  # (NaN counts: it must show)
        return jax.lax.cond(any_column(carries), transport, none)


def _no_plume(state: State, theta_v) -> UpdraftProfile:
    """The profile of a column without a plume, as ``MassFluxUpdraft._rise`` gives it: the
    environment's conserved variables and θv, no liquid, velocity, area or mass flux, top 0,
    no cloud."""
    zero = jnp.zeros_like(state.thl)
    nothing = jnp.zeros_like(state.thl[0])
    nan = jnp.full_like(nothing, jnp.nan)
    return UpdraftProfile(state.thl, state.qt, state.u, state.v, zero, theta_v, zero, zero, zero,
                          zero[:-1], nothing, nan, nan, nothing)


def _layer_factors(x):
    """(e^(−x), (1 − e^(−x))/x) for x ≥ 0, the second → 1 as x → 0 without dividing by 0."""
    small = x < 1.0e-6
    safe = jnp.where(small, 1.0, x)
    return jnp.exp(-x), jnp.where(small, 1.0 - 0.5 * x, -jnp.expm1(-safe) / safe)


def subsiding_face_values(x: Float[Array, " z"]) -> Float[Array, " inner"]:
    """Values of x on the interior interfaces k + ½ for flow downward from level k + 1:
    x_U + ½ φ(r)(x_U − x_UU) with U = k + 1, UU = k + 2 and van Leer's limiter, written as
    the harmonic slope (a|b| + |a|b)/(|a| + |b| + δ), a = x_D − x_U, b = x_U − x_UU (van Leer
    1974); first-order upwind at the highest interface, where UU is missing. δ, 10⁻⁷ of the
    field's largest magnitude, makes the slope differentiable where a profile is uniform
    (without it the slope is homogeneous of degree one there, with no derivative)."""
    upwind = x[1:]
    a = x[:-1] - upwind
    b = jnp.concatenate([x[1:-1] - x[2:], jnp.zeros_like(x[:1])])
    small = 1.0e-7 * jnp.max(jnp.abs(x)) + _TINY
    size_a, size_b = _magnitude(a), _magnitude(b)
    slope = (a * size_b + size_a * b) / (size_a + size_b + small)
    return upwind + 0.5 * slope


def _magnitude(x):
    """|x| as max(x, −x), whose derivative at 0 is 0, the mean of its one-sided ones (that of
    ``jnp.abs`` is 1): at a kink the gradient is then what central differences converge to."""
    return jnp.maximum(x, -x)
