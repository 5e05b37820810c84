"""Turbulence closures (model slot ``"turbulence"``): vertical mixing by eddy diffusivities,
integrated implicitly by the solver, plus explicit nonlocal (mass-flux) fluxes.

Each closure holds its surface layer (``physics.surface``) and writes the surface exchange
into the ``Tendency``: the heat and moisture fluxes in ``flux.thl[0]``, ``flux.qt[0]``, the
momentum drag u*²/|U1| as the surface-interface diffusivity ``drag * z1`` of u and v (the
solver couples the lowest level to a ground wind of zero). Diagnostics (scalars): ``ustar``
(m/s), ``surface_heat_flux`` (K m/s), ``obukhov_length`` (m), and closure-specific ones.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from physics.surface import (
    VIRTUAL_COEFFICIENT,
    AbstractSurfaceLayer,
    SurfaceFluxes,
    obukhov_length,
    virtual_potential_temperature,
)
from scm.constants import GRAVITY, VON_KARMAN
from scm.errors import ConfigurationError, check_positive, check_range
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.integration import implicit_diffusion
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State, as_float

#: Floor on the squared shear (s-2) where Richardson numbers divide by it.
_MIN_SHEAR2 = 1.0e-10
#: Added under square roots whose argument may vanish, so their gradients stay finite.
_TINY = 1.0e-12


def _interior(x: Float[Array, " n_interface"]) -> Float[Array, " n_interface"]:
    """Zero at the surface and top interfaces."""
    return x.at[0].set(0.0).at[-1].set(0.0)


def buoyancy_frequency_squared(state: State, grid: ColumnGrid) -> Float[Array, " n_interface"]:
    """N² = (g/θv) ∂θv/∂z on interfaces (zero at the surface and the top)."""
    theta_v = virtual_potential_temperature(state)
    return GRAVITY * grid.gradient_at_interfaces(theta_v) / grid.to_interfaces(theta_v)


def shear_squared(state: State, grid: ColumnGrid) -> Float[Array, " n_interface"]:
    """S² = (∂u/∂z)² + (∂v/∂z)² on interfaces (zero at the surface and the top)."""
    return grid.gradient_at_interfaces(state.u) ** 2 + grid.gradient_at_interfaces(state.v) ** 2


def blackadar_length(z, asymptotic_length):
    """l = κz / (1 + κz/λ) (Blackadar 1962)."""
    return VON_KARMAN * z / (1.0 + VON_KARMAN * z / asymptotic_length)


def assemble(state: State, grid: ColumnGrid, surface: SurfaceFluxes | None,
             k_momentum, k_scalar, wall_momentum=None, explicit_flux=None,
             tendency=None, tracer_diffusivity=None, diagnostics=None) -> Tendency:
    """Build the ``Tendency`` of a closure from interior diffusivities and the surface layer.

    ``k_momentum``/``k_scalar`` are used on interior interfaces; the surface interface of u, v
    carries ``wall_momentum`` if given (a no-slip wall), else the surface drag × z1.
    ``tracer_diffusivity`` overrides the scalar K for named tracers (e.g. TKE).
    """
    zeros = Tendency.zeros(state)
    km, kh = _interior(k_momentum), _interior(k_scalar)
    if wall_momentum is not None:
        km = km.at[0].set(wall_momentum)
    elif surface is not None:
        km = km.at[0].set(surface.drag * grid.z[0])
    tracer_k = {name: kh for name in state.tracers}
    tracer_k.update({n: _interior(k) for n, k in (tracer_diffusivity or {}).items()})
    diffusivity = State(km, km, kh, kh, tracer_k)
    flux = zeros.flux if explicit_flux is None else explicit_flux
    if surface is not None:
        flux = State(flux.u, flux.v, flux.thl.at[0].set(surface.heat_flux),
                     flux.qt.at[0].set(surface.moisture_flux), flux.tracers)
    return Tendency(zeros.tendency if tendency is None else tendency, flux, diffusivity,
                    diagnostics or {})


def surface_diagnostics(surface: SurfaceFluxes) -> dict[str, Array]:
    return {"ustar": surface.ustar, "surface_heat_flux": surface.heat_flux,
            "obukhov_length": surface.obukhov_length}


class ConstantDiffusivity(AbstractParameterization):
    """Constant eddy viscosity ``K_m`` and diffusivity ``K_h`` (m²/s) on every interior
    interface: ∂x/∂t = (1/ρ) ∂/∂z (ρ K ∂x/∂z), for the analytic tests (Ekman spiral, diffusing
    Gaussian; see docs/cases.md).

    With ``no_slip`` the ground is a wall where the wind vanishes, reached with the same K_m
    over the half-layer below the first level (stress = K_m U1 / z1); otherwise the surface
    drag of ``surface``. Scalar surface fluxes come from ``surface`` (zero without one).
    """

    K_m: Float[Array, ""]
    K_h: Float[Array, ""]
    surface: AbstractSurfaceLayer | None
    no_slip: bool = eqx.field(static=True)

    def __init__(self, K_m=5.0, K_h=None, no_slip: bool = True,
                 surface: AbstractSurfaceLayer | None = None):
        K_h = K_m if K_h is None else K_h
        check_range("K_m", K_m, 0.0, 1.0e4, "m2 s-1")
        check_range("K_h", K_h, 0.0, 1.0e4, "m2 s-1")
        if not no_slip and surface is None:
            raise ConfigurationError("ConstantDiffusivity needs a surface layer unless no_slip")
        self.K_m, self.K_h = as_float(K_m), as_float(K_h)
        self.surface, self.no_slip = surface, bool(no_slip)

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        ones = jnp.ones_like(grid.z_interface)
        fluxes = None if self.surface is None else self.surface.fluxes(state, forcing, grid)
        wall = self.K_m if self.no_slip else None
        if self.no_slip:
            stress = self.K_m * jnp.sqrt(state.u[0] ** 2 + state.v[0] ** 2 + _TINY) / grid.z[0]
            ustar = jnp.sqrt(stress + _TINY)
        else:
            ustar = fluxes.ustar
        heat = jnp.zeros_like(ustar) if fluxes is None else fluxes.heat_flux
        moisture = jnp.zeros_like(ustar) if fluxes is None else fluxes.moisture_flux
        theta_v = virtual_potential_temperature(state)[0]
        buoyancy = heat + VIRTUAL_COEFFICIENT * state.thl[0] * moisture
        diagnostics = {"ustar": ustar, "surface_heat_flux": heat,
                       "obukhov_length": obukhov_length(jnp.maximum(ustar, 1.0e-3), buoyancy,
                                                        theta_v)}
        return assemble(state, grid, fluxes, self.K_m * ones, self.K_h * ones,
                        wall_momentum=wall, diagnostics=diagnostics)


class LocalClosure(AbstractParameterization):
    """First-order local closure, K = l² |∂U/∂z| f(Ri), on interior interfaces.

    Mixing length l = κz / (1 + κz/λ) (Blackadar 1962). Gradient Richardson number
    Ri = N²/S², N² = (g/θv) ∂θv/∂z, S² = |∂U/∂z|² (Louis 1979 form of the closure).
    Stability functions:

    - unstable (Ri < 0), from Businger–Dyer φm = (1 − γζ)^(−1/4), φh = (1 − γζ)^(−1/2), for
      which Ri = ζ: f_m = φm⁻² = (1 − γ Ri)^(1/2), f_h = (φm φh)⁻¹ = (1 − γ Ri)^(3/4) (Dyer
      1974). Written as K_m = l² (S² − γN²)^(1/2), which tends to the free-convection limit
      l² (−γN²)^(1/2) without dividing by the shear;
    - stable (Ri ≥ 0): f_m = f_h = (1 + b Ri)⁻², b = 4.7 (Louis 1979, stable branch). This
      tail is long: over GABLS1 the layer comes out too deep (≈ 1.7× the LES), the known bias
      of operational schemes (Cuxart et al. 2006, section 4); on coarse grids it keeps the
      lowest layer from decoupling at night.

    A lagged, state-dependent K integrated implicitly oscillates with period 2Δt
    ("fibrillation") once K Δt/Δz² ≫ 1 (Kalnay & Kanamitsu 1988). With ``time_step`` set, K is
    the mean of K(yⁿ) and K(y*), where y* is yⁿ after one trial implicit step of length
    ``time_step`` with K(yⁿ) (a predictor–corrector; ``predictor_weight`` is the weight of
    K(y*)). In GABLS1 at 6.25 m this reproduces a Δt = 1 s run at Δt = 10 s. A small
    ``background_diffusivity`` (m²/s) keeps the free atmosphere from decoupling entirely.
    """

    surface: AbstractSurfaceLayer
    asymptotic_length: Float[Array, ""]
    stable_coefficient: Float[Array, ""]
    gamma: Float[Array, ""]
    background_diffusivity: Float[Array, ""]
    time_step: float | None = eqx.field(static=True)
    predictor_weight: float = eqx.field(static=True)

    def __init__(self, surface: AbstractSurfaceLayer, asymptotic_length=80.0,
                 stable_coefficient=4.7, gamma=16.0, background_diffusivity=0.01,
                 time_step: float | None = None, predictor_weight: float = 0.5):
        check_range("asymptotic_length", asymptotic_length, 1.0, 1.0e4, "m")
        check_range("stable_coefficient", stable_coefficient, 0.0, 100.0)
        check_range("gamma", gamma, 0.0, 100.0)
        check_range("background_diffusivity", background_diffusivity, 0.0, 10.0, "m2 s-1")
        if time_step is not None:
            check_positive("time_step", time_step, "s")
        check_range("predictor_weight", predictor_weight, 0.0, 1.0)
        self.surface = surface
        self.asymptotic_length = as_float(asymptotic_length)
        self.stable_coefficient = as_float(stable_coefficient)
        self.gamma = as_float(gamma)
        self.background_diffusivity = as_float(background_diffusivity)
        self.time_step = None if time_step is None else float(time_step)
        self.predictor_weight = float(predictor_weight)

    def diffusivities(self, state: State, grid: ColumnGrid):
        """(K_m, K_h) on interfaces (the end values are not used)."""
        n2, s2 = buoyancy_frequency_squared(state, grid), shear_squared(state, grid)
        length = blackadar_length(grid.z_interface, self.asymptotic_length)
        s2_safe = s2 + _MIN_SHEAR2
        richardson = n2 / s2_safe
        unstable_m = jnp.sqrt(s2_safe - self.gamma * jnp.minimum(n2, 0.0))
        unstable_ratio = (1.0 - self.gamma * jnp.clip(richardson, -10.0, 0.0)) ** 0.25
        stable = jnp.sqrt(s2_safe) / (
            1.0 + self.stable_coefficient * jnp.maximum(richardson, 0.0)) ** 2
        k_m = length**2 * jnp.where(n2 < 0, unstable_m, stable)
        k_h = k_m * jnp.where(n2 < 0, unstable_ratio, 1.0)
        return k_m + self.background_diffusivity, k_h + self.background_diffusivity

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        fluxes = self.surface.fluxes(state, forcing, grid)
        k_m, k_h = self.diffusivities(state, grid)
        if self.time_step is not None:
            trial = assemble(state, grid, fluxes, k_m, k_h)
            provisional = state + trial.explicit_rate(grid) * self.time_step
            predicted = implicit_diffusion(grid, provisional, trial.diffusivity, self.time_step)
            k_m1, k_h1 = self.diffusivities(predicted, grid)
            w = self.predictor_weight
            k_m, k_h = (1 - w) * k_m + w * k_m1, (1 - w) * k_h + w * k_h1
        return assemble(state, grid, fluxes, k_m, k_h, diagnostics=surface_diagnostics(fluxes))


class TKEClosure(AbstractParameterization):
    """1.5-order closure with prognostic TKE e (tracer ``"tke"``) plus a dry mass-flux updraft
    (eddy-diffusivity mass-flux, EDMF; Siebesma, Soares & Teixeira 2007, JAS 64, "SST07").

    Eddy diffusivities (Deardorff 1980; Cuxart et al. 2000, section 3):
    K_m = c_m l √e, K_h = K_m / Pr, K_e = c_e K_m for the transport of e, with the
    stability-dependent turbulent Prandtl number of Schumann & Gerz (1995)
    Pr = Pr0 exp(−Ri/(Pr0 Rf∞)) + Ri/Rf∞, Rf∞ = 0.25, for Ri = N²/S² ≥ 0 (Pr0 below).
    Mixing length: the Blackadar length l_B = κz/(1 + κz/λ) combined harmonically with the
    stratified length of Deardorff (1980), 1/l = 1/l_B + N/(c_n √e) where N² > 0 (the
    harmonic form reproduces φm = 1 + βζ in a stable surface layer).

    TKE budget (Cuxart et al. 2000, section 3), the updraft's interface fluxes F_mf included
    in the buoyancy production:
    ∂e/∂t = K_m S² − K_h N² + (g/θv) F_mf − c_ε e^(3/2)/l + ∂/∂z(K_e ∂e/∂z).
    Production and dissipation are integrated over ``time_step`` with the positive,
    linearized-implicit update of Patankar (1980, section 7.2)
    e⁺ = (e + Δt P⁺) / (1 + Δt (c_ε √e / l + P⁻/e)), and the scheme returns (e⁺ − e)/Δt;
    set ``time_step`` to the model time step (the case builder does), so stiff dissipation
    near the ground never overshoots. Transport is the solver's implicit diffusion.

    Constants: c_m = 3.75^(−1/2) and c_ε = c_m³, so that a neutral surface layer (l = κz) in
    local equilibrium carries the log law (K_m = κ z u*) with e = 3.75 u*². c_n = 0.3 makes
    the equilibrium of shear production, buoyancy loss and dissipation with l = c_n √e/N,
    1/Ri = 1/Pr + c_ε/(c_m c_n²), fall at Ri ≈ 0.25 (Deardorff's 0.76 goes with his
    c_m = 0.1). TKE stays ≥ ``tke_min``.

    Lowest level: e is set to its surface-layer value (André et al. 1978)
    e1 = 3.75 u*² + 0.2 w*² + (κ z1 (g/θv) w'θv'_s)^(2/3) (the last two only when the
    surface heats the air), w* = ((g/θv) w'θv'_s h)^(1/3) with h the updraft top.

    Updraft (only when the surface buoyancy flux is positive), integrated upward level by level
    (``lax.scan``): ∂φu/∂z = −ε (φu − φ̄) for φ = θl, qt (SST07, eq. 10);
    (1/2) ∂wu²/∂z = a B − b ε wu², B = g (θv,u − θ̄v)/θ̄v, in the form of Soares et al. (2004)
    with a = 2, b = 1 (both discretized Crank–Nicolson between levels); lateral entrainment
    ε = c_εu [1/(z + Δz) + 1/(h − z + Δz)] (SST07, eq. 16), with h the level of neutral
    buoyancy of the undiluted surface parcel (the upper term limits the overshoot into the
    inversion); initial excess φu − φ̄ = b_x w'φ'_s / σw with
    σw = 1.3 (u*³ + 0.6 (g/θv) w'θv'_s z1)^(1/3) (SST07, eqs. 7 and 17 for z1 ≪ h).
    Mass flux M = a_u wu (a_u = 0.1; SST07), at most Δz/Δt, and interface flux
    F_mf = M (φu − φ̄), each part upwind: M φu from the level below (the rising updraft),
    M φ̄ from the level above (the subsiding environment), which keeps the explicit mass-flux
    transport monotone for M Δt/Δz ≤ 1.
    """

    surface: AbstractSurfaceLayer
    c_m: Float[Array, ""]
    c_eps: Float[Array, ""]
    c_n: Float[Array, ""]
    c_e: Float[Array, ""]
    asymptotic_length: Float[Array, ""]
    prandtl_neutral: Float[Array, ""]
    surface_tke_coefficient: Float[Array, ""]
    updraft_area: Float[Array, ""]
    updraft_entrainment: Float[Array, ""]
    updraft_excess: Float[Array, ""]
    updraft_buoyancy_coefficient: Float[Array, ""]
    updraft_drag_coefficient: Float[Array, ""]
    tke_min: Float[Array, ""]
    time_step: float = eqx.field(static=True)
    mass_flux: bool = eqx.field(static=True)

    def __init__(self, surface: AbstractSurfaceLayer, time_step: float = 60.0, *,
                 c_m=3.75**-0.5, c_eps=3.75**-1.5, c_n=0.3, c_e=2.0, asymptotic_length=80.0,
                 prandtl_neutral=1.0, surface_tke_coefficient=3.75, updraft_area=0.1,
                 updraft_entrainment=0.4, updraft_excess=1.0, updraft_buoyancy_coefficient=2.0,
                 updraft_drag_coefficient=1.0, tke_min=1.0e-4, mass_flux: bool = True):
        check_positive("time_step", time_step, "s")
        for name, value, low, high in (
            ("c_m", c_m, 0.01, 2.0), ("c_eps", c_eps, 0.01, 2.0), ("c_n", c_n, 0.1, 5.0),
            ("c_e", c_e, 0.0, 5.0), ("asymptotic_length", asymptotic_length, 1.0, 1.0e4),
            ("prandtl_neutral", prandtl_neutral, 0.3, 3.0),
            ("surface_tke_coefficient", surface_tke_coefficient, 0.0, 20.0),
            ("updraft_area", updraft_area, 0.0, 0.5),
            ("updraft_entrainment", updraft_entrainment, 0.01, 5.0),
            ("updraft_excess", updraft_excess, 0.0, 5.0),
            ("updraft_buoyancy_coefficient", updraft_buoyancy_coefficient, 0.1, 10.0),
            ("updraft_drag_coefficient", updraft_drag_coefficient, 0.0, 10.0),
            ("tke_min", tke_min, 1.0e-8, 1.0e-2),
        ):
            check_range(name, value, low, high)
        self.surface = surface
        self.time_step = float(time_step)
        self.mass_flux = bool(mass_flux)
        self.c_m, self.c_eps, self.c_n, self.c_e = (as_float(c) for c in (c_m, c_eps, c_n, c_e))
        self.asymptotic_length = as_float(asymptotic_length)
        self.prandtl_neutral = as_float(prandtl_neutral)
        self.surface_tke_coefficient = as_float(surface_tke_coefficient)
        self.updraft_area = as_float(updraft_area)
        self.updraft_entrainment = as_float(updraft_entrainment)
        self.updraft_excess = as_float(updraft_excess)
        self.updraft_buoyancy_coefficient = as_float(updraft_buoyancy_coefficient)
        self.updraft_drag_coefficient = as_float(updraft_drag_coefficient)
        self.tke_min = as_float(tke_min)

    def required_tracers(self) -> tuple[str, ...]:
        return ("tke",)

    def initial_tracers(self, grid: ColumnGrid) -> dict[str, Float[Array, " z"]]:
        return {"tke": jnp.full_like(grid.z, self.tke_min)}

    def mixing_length(self, z, tke, n2):
        """Harmonic combination of the Blackadar length and c_n √e / N (N² > 0 only)."""
        blackadar = blackadar_length(z, self.asymptotic_length)
        stratified = self.c_n * jnp.sqrt(tke) / jnp.sqrt(jnp.maximum(n2, _TINY))
        limited = 1.0 / (1.0 / jnp.maximum(blackadar, _TINY) + 1.0 / stratified)
        return jnp.where(n2 > 0, limited, blackadar)

    def prandtl_number(self, richardson):
        """Schumann & Gerz (1995) with Rf∞ = 0.25; Pr0 for Ri ≤ 0."""
        ri = jnp.clip(richardson, 0.0, 100.0)
        pr0 = self.prandtl_neutral
        return pr0 * jnp.exp(-ri / (0.25 * pr0)) + ri / 0.25

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        fluxes = self.surface.fluxes(state, forcing, grid)
        theta_v = virtual_potential_temperature(state)
        tke = jnp.maximum(state.tracers["tke"], self.tke_min)
        n2, s2 = buoyancy_frequency_squared(state, grid), shear_squared(state, grid)
        tke_i = grid.to_interfaces(tke)
        length_i = self.mixing_length(grid.z_interface, tke_i, n2)
        k_m = self.c_m * length_i * jnp.sqrt(tke_i)
        k_h = k_m / self.prandtl_number(n2 / (s2 + _MIN_SHEAR2))

        surface_buoyancy = (fluxes.heat_flux
                            + VIRTUAL_COEFFICIENT * state.thl[0] * fluxes.moisture_flux)
        buoyancy_parameter = GRAVITY / theta_v[0]
        if self.mass_flux:
            updraft = self.updraft(state, grid, fluxes, surface_buoyancy)
            mf_thl, mf_qt, top = updraft
        else:
            mf_thl = mf_qt = jnp.zeros_like(grid.z_interface)
            top = jnp.zeros_like(grid.z[0])
        mf_thv = (1.0 + VIRTUAL_COEFFICIENT * grid.to_interfaces(state.qt)) * mf_thl + (
            VIRTUAL_COEFFICIENT * grid.to_interfaces(state.thl) * mf_qt)
        heating = jnp.maximum(surface_buoyancy, 0.0)
        convective_velocity = (buoyancy_parameter * heating * top + _TINY) ** (1.0 / 3.0)

        # TKE sources on interfaces, averaged to centres (nothing is produced at the top).
        shear_production = _interior(k_m * s2)
        buoyancy_production = _interior(-k_h * n2 + GRAVITY * mf_thv / grid.to_interfaces(theta_v))
        production = 0.5 * (shear_production[1:] + shear_production[:-1])
        buoyancy = 0.5 * (buoyancy_production[1:] + buoyancy_production[:-1])
        n2_c = 0.5 * (n2[1:] + n2[:-1])
        length_c = self.mixing_length(grid.z, tke, n2_c)
        dt = self.time_step
        source = production + jnp.maximum(buoyancy, 0.0)
        sink_rate = (self.c_eps * jnp.sqrt(tke) / length_c + jnp.maximum(-buoyancy, 0.0) / tke)
        updated = (tke + dt * source) / (1.0 + dt * sink_rate)
        surface_tke = (self.surface_tke_coefficient * fluxes.ustar**2
                       + 0.2 * convective_velocity**2
                       + (VON_KARMAN * grid.z[0] * buoyancy_parameter * heating + _TINY)
                       ** (2.0 / 3.0))
        updated = jnp.maximum(updated.at[0].set(surface_tke), self.tke_min)
        tke_tendency = (updated - state.tracers["tke"]) / dt

        zeros = Tendency.zeros(state)
        tendency = State(zeros.tendency.u, zeros.tendency.v, zeros.tendency.thl,
                         zeros.tendency.qt, {**zeros.tendency.tracers, "tke": tke_tendency})
        explicit = State(zeros.flux.u, zeros.flux.v, mf_thl, mf_qt, zeros.flux.tracers)
        diagnostics = surface_diagnostics(fluxes)
        diagnostics["updraft_top_height"] = top
        diagnostics["convective_velocity"] = jnp.where(heating > 0, convective_velocity, 0.0)
        return assemble(state, grid, fluxes, k_m, k_h, explicit_flux=explicit,
                        tendency=tendency, tracer_diffusivity={"tke": self.c_e * k_m},
                        diagnostics=diagnostics)

    def updraft(self, state: State, grid: ColumnGrid, fluxes: SurfaceFluxes, surface_buoyancy):
        """Mass-flux interface fluxes of θl and qt and the updraft top height (m)."""
        z, dz = grid.z, grid.dz
        theta_v = virtual_potential_temperature(state)
        active = surface_buoyancy > 0
        heating = jnp.maximum(surface_buoyancy, 0.0)
        sigma_w = 1.3 * (fluxes.ustar**3 + 0.6 * GRAVITY / theta_v[0] * heating * z[0]
                         + _TINY) ** (1.0 / 3.0)
        excess_thl = jnp.where(active, self.updraft_excess * fluxes.heat_flux / sigma_w, 0.0)
        excess_qt = jnp.where(active, self.updraft_excess * fluxes.moisture_flux / sigma_w, 0.0)
        # h in the upper entrainment term: the level of neutral buoyancy of the undiluted
        # surface parcel (the entraining updraft stops a little below it).
        parcel = (state.thl[0] + excess_thl) * (1.0 + VIRTUAL_COEFFICIENT * (
            state.qt[0] + excess_qt))
        warmer = theta_v > parcel
        neutral = jax.lax.stop_gradient(jnp.where(warmer.any(), z[jnp.argmax(warmer)], z[-1]))
        entrainment = self.updraft_entrainment * (1.0 / (z + dz)
                                                  + 1.0 / jnp.maximum(neutral - z + dz, dz))
        thl_u, qt_u, w2, top, alive = self._plume(state, grid, entrainment, excess_thl,
                                                  excess_qt, active)
        w = jnp.sqrt(jnp.maximum(w2, _TINY)) * alive
        mass_flux = jnp.minimum(self.updraft_area * w, dz / self.time_step)
        zero = jnp.zeros_like(z[:1])
        # Upwind for both parts of M (φu − φ̄) through interface k: the updraft rises from
        # centre k − 1, the compensating environmental subsidence comes from centre k.
        mf_thl = jnp.concatenate([zero, (mass_flux * thl_u)[:-1] - mass_flux[:-1] * state.thl[1:],
                                  zero])
        mf_qt = jnp.concatenate([zero, (mass_flux * qt_u)[:-1] - mass_flux[:-1] * state.qt[1:],
                                 zero])
        return mf_thl, mf_qt, top

    def _plume(self, state: State, grid: ColumnGrid, entrainment, excess_thl, excess_qt,
               active):
        """Integrate the updraft from the first level up; returns centre profiles of θl,u,
        qt,u, wu², the top height, and the mask of levels the updraft reaches."""
        z = grid.z
        theta_v = virtual_potential_temperature(state)
        a, b = self.updraft_buoyancy_coefficient, self.updraft_drag_coefficient

        def virtual(thl, qt):
            return thl * (1.0 + VIRTUAL_COEFFICIENT * qt)

        thl0 = state.thl[0] + excess_thl
        qt0 = state.qt[0] + excess_qt
        buoyancy0 = GRAVITY * (virtual(thl0, qt0) / theta_v[0] - 1.0)
        w2_0 = 2.0 * a * buoyancy0 * z[0] / (1.0 + b * entrainment[0] * z[0])
        alive0 = active & (w2_0 > 0)
        w2_0 = jnp.where(alive0, w2_0, 0.0)

        def step(carry, level):
            thl_u, qt_u, w2, alive, top = carry
            thl_lo, qt_lo, thl_hi, qt_hi, thv_hi, z_lo, z_hi, eps_lo, eps_hi = level
            dz = z_hi - z_lo
            mix = 0.5 * eps_lo * dz
            thl_new = ((1.0 - mix) * thl_u + mix * (thl_lo + thl_hi)) / (1.0 + mix)
            qt_new = ((1.0 - mix) * qt_u + mix * (qt_lo + qt_hi)) / (1.0 + mix)
            buoyancy = GRAVITY * (virtual(thl_new, qt_new) / thv_hi - 1.0)
            drag = 0.5 * b * (eps_lo + eps_hi) * dz
            w2_new = ((1.0 - drag) * w2 + 2.0 * a * buoyancy * dz) / (1.0 + drag)
            alive_new = alive & (w2_new > 0)
            # Top: where wu² crosses zero, interpolated linearly between the two levels.
            fraction = w2 / jnp.where(alive_new, 1.0, jnp.maximum(w2 - w2_new, _TINY))
            top = jnp.where(alive & ~alive_new, z_lo + jnp.clip(fraction, 0.0, 1.0) * dz, top)
            top = jnp.where(alive_new, z_hi, top)
            w2_new = jnp.where(alive_new, w2_new, 0.0)
            thl_new = jnp.where(alive_new, thl_new, thl_hi)
            qt_new = jnp.where(alive_new, qt_new, qt_hi)
            out = (thl_new, qt_new, w2_new, alive_new)
            return (thl_new, qt_new, w2_new, alive_new, top), out

        levels = (state.thl[:-1], state.qt[:-1], state.thl[1:], state.qt[1:], theta_v[1:],
                  z[:-1], z[1:], entrainment[:-1], entrainment[1:])
        top0 = jnp.where(alive0, z[0], 0.0)
        carry0 = (jnp.where(alive0, thl0, state.thl[0]), jnp.where(alive0, qt0, state.qt[0]),
                  w2_0, alive0, top0)
        (_, _, _, _, top), (thl_u, qt_u, w2, alive) = jax.lax.scan(step, carry0, levels)

        def prepend(first, rest):
            return jnp.concatenate([jnp.reshape(first, (1,)), rest])

        return (prepend(carry0[0], thl_u), prepend(carry0[1], qt_u), prepend(w2_0, w2), top,
                prepend(alive0, alive).astype(z.dtype))
