"""Turbulence closures (model slot ``"turbulence"``): vertical mixing by eddy diffusivities,
integrated implicitly by the solver, plus explicit nonlocal (mass-flux) fluxes.

Each closure holds its surface layer (``physics.surface``) and writes the surface exchange
into the ``Tendency``: the heat and moisture fluxes in ``flux.thl[0]``, ``flux.qt[0]``, the
momentum drag u*²/|U1| as the surface-interface diffusivity ``drag * z1`` of u and v (the
solver couples the lowest level to a ground wind of zero). Diagnostics (scalars): ``ustar``
(m/s), ``surface_heat_flux`` (K m/s), ``obukhov_length`` (m), and closure-specific ones.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from physics.clouds import AbstractCloudSource, Cloud, StatisticalCloud, cloud_diagnostics
from physics.surface import AbstractSurfaceLayer, SurfaceFluxes, surface_fluxes
from physics.thermodynamics import (
    Thermodynamics,
    clear_air_coefficients,
    cloudy_air_coefficients,
    diagnose,
)
from physics.updraft import MassFluxUpdraft, UpdraftProfile
from scm.constants import GRAVITY, VON_KARMAN
from scm.errors import ConfigurationError, check_positive, check_range
from scm.fastmath import cube_root, fourth_root, three_halves_power
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.integration import implicit_diffusion
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State, as_float

#: Floor on the squared shear (s-2) where Richardson numbers divide by it: (10⁻³ s-1)², far
#: below boundary-layer shears, yet large enough that Ri, and with it K, changes smoothly
#: across a layer that is neutral and at rest (a floor of 10⁻¹⁰ s-2 made K jump there within
#: 10⁻⁸ s-2 of N², and gradients through such layers useless).
MIN_SHEAR2 = 1.0e-6
#: Buoyancy production (m2 s-3) across which the TKE budget moves it from source to sink.
_PRODUCTION_SCALE = 1.0e-6
#: Velocity (m/s) below which the convective velocity scales are regularized (``_cube_root``).
_VELOCITY_SCALE = 0.01
#: The buoyancy frequency (s-1) below which the mixing length's stratification term is
#: regularized (``TKEClosure.mixing_length``).
_STABILITY_SCALE = 1.0e-3
#: Added under square roots whose argument may vanish, so their gradients stay finite.
_TINY = 1.0e-12


def _cube_root(x):
    """x^(1/3) of a velocity cubed (m3 s-3, ≥ 0), regularized as (x + w_r³)^(1/3) − w_r with
    w_r = 0.01 m/s: the same to 10⁻⁴ m/s for convective velocities, with a finite derivative
    where the surface buoyancy flux vanishes (x^(1/3) has none at 0)."""
    return cube_root(x + _VELOCITY_SCALE**3) - _VELOCITY_SCALE


def _interior(x: Float[Array, " n_interface"]) -> Float[Array, " n_interface"]:
    """Zero at the surface and top interfaces."""
    return x.at[0].set(0.0).at[-1].set(0.0)


def buoyancy_frequency_squared(state: State, grid: ColumnGrid, mean: Thermodynamics,
                               cloud_fraction=None, moist: bool = True
                               ) -> Float[Array, " n_interface"]:
    """N² = (g/θv)(A ∂θl/∂z + B ∂qt/∂z) on interfaces (zero at the surface and the top):
    the static stability that turbulent fluxes of θl and qt feel, with the coefficients A, B
    of clear and of saturated air (``physics.thermodynamics``) weighted by the cloud fraction
    at the centres (by default the grid mean's saturation, 0 or 1). In clear air this is
    (g/θv) ∂θv/∂z; in cloud it is the moist stability, near zero in a well-mixed cloud layer
    (where ∂θv/∂z > 0 although the layer is neutral for saturated parcels). Without
    ``moist`` the air is clear everywhere (the coefficients of saturated air are not
    computed)."""
    if not moist:
        a, b = clear_air_coefficients(mean.theta, state.qt)
    else:
        if cloud_fraction is None:
            cloud_fraction = (mean.liquid > 0).astype(state.thl.dtype)
        a, b = moist_buoyancy_coefficients(mean, state, grid, cloud_fraction)
    return GRAVITY * (grid.to_interfaces(a) * grid.gradient_at_interfaces(state.thl)
                      + grid.to_interfaces(b) * grid.gradient_at_interfaces(state.qt)
                      ) / grid.to_interfaces(mean.theta_v)


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
        reported = surface_fluxes(ustar, heat, moisture, jnp.zeros_like(ustar), state, grid,
                                  min_ustar=1.0e-3)
        return assemble(state, grid, fluxes, self.K_m * ones, self.K_h * ones,
                        wall_momentum=wall, diagnostics=surface_diagnostics(reported))


class LocalClosure(AbstractParameterization):
    """First-order local closure, K = l² |∂U/∂z| f(Ri), on interior interfaces.

    Mixing length l = κz / (1 + κz/λ) (Blackadar 1962). Gradient Richardson number
    Ri = N²/S², N² the moist static stability of ``buoyancy_frequency_squared`` ((g/θv) ∂θv/∂z
    in clear air), S² = |∂U/∂z|² (Louis 1979 form of the closure).
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
    ``moist=False`` (the dry cases): water vapour only, never condensing
    (``physics.thermodynamics.condensation``).
    """

    surface: AbstractSurfaceLayer
    asymptotic_length: Float[Array, ""]
    stable_coefficient: Float[Array, ""]
    gamma: Float[Array, ""]
    background_diffusivity: Float[Array, ""]
    time_step: float | None = eqx.field(static=True)
    predictor_weight: float = eqx.field(static=True)
    moist: bool = eqx.field(static=True)

    def __init__(self, surface: AbstractSurfaceLayer, asymptotic_length=80.0,
                 stable_coefficient=4.7, gamma=16.0, background_diffusivity=0.01,
                 time_step: float | None = None, predictor_weight: float = 0.5,
                 moist: bool = True):
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
        self.moist = bool(moist)

    def diffusivities(self, state: State, grid: ColumnGrid):
        """(K_m, K_h) on interfaces (the end values are not used)."""
        n2 = buoyancy_frequency_squared(state, grid, diagnose(state, grid, self.moist),
                                        moist=self.moist)
        s2 = shear_squared(state, grid)
        length = blackadar_length(grid.z_interface, self.asymptotic_length)
        s2_safe = s2 + MIN_SHEAR2
        richardson = n2 / s2_safe
        # The two branches meet continuously at Ri = 0; written with min and max (rather than
        # a switch on the sign of N²) the gradient at a neutral layer is the mean of the two
        # one-sided ones, which is what finite differences converge to.
        k_m = length**2 * jnp.sqrt(s2_safe - self.gamma * jnp.minimum(n2, 0.0)) / (
            1.0 + self.stable_coefficient * jnp.maximum(richardson, 0.0)) ** 2
        k_h = k_m * fourth_root(1.0 - self.gamma * jnp.clip(richardson, -10.0, 0.0))
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


class TKEClosure(AbstractParameterization, AbstractCloudSource):
    """1.5-order closure with prognostic TKE e (tracer ``"tke"``), a moist mass-flux updraft
    (eddy-diffusivity mass-flux, EDMF; Siebesma, Soares & Teixeira 2007, JAS 64; the plume in
    ``physics.updraft``) and a statistical cloud scheme for the updraft's environment
    (``physics.clouds``).

    Eddy diffusivities (Deardorff 1980; Cuxart et al. 2000, section 3):
    K_m = c_m l √e, K_h = K_m / Pr, K_e = c_e K_m for the transport of e, with the
    stability-dependent turbulent Prandtl number of Schumann & Gerz (1995)
    Pr = Pr0 exp(−Ri/(Pr0 Rf∞)) + Ri/Rf∞, Rf∞ = 0.25, for Ri = N²/S² ≥ 0 (Pr0 below).
    Mixing length: the Blackadar length l_B = κz/(1 + κz/λ) combined harmonically with the
    stratified length of Deardorff (1980), 1/l = 1/l_B + N/(c_n √e) where N² > 0 (the
    harmonic form reproduces φm = 1 + βζ in a stable surface layer). N² is the moist static
    stability of ``buoyancy_frequency_squared`` with the grid mean's saturation as the weight.

    TKE budget (Cuxart et al. 2000, section 3), the updraft's buoyancy flux included:
    ∂e/∂t = K_m S² − K_h N²_b + (g/θv) M (θv,u − θ̄v) − c_ε e^(3/2)/l + ∂/∂z(K_e ∂e/∂z),
    where the buoyancy production of the down-gradient fluxes uses the moist coefficients,
    N²_b = (g/θv)(A ∂θl/∂z + B ∂qt/∂z), with A, B those of clear air and of saturated air
    (``physics.thermodynamics``) weighted by the statistical scheme's cloud fraction (e.g.
    Cuijpers & Bechtold 1995; for a Gaussian distribution the weight of the saturated
    coefficients is the cloud fraction). Dry, A = 1 + 0.608 qt and B = 0.608 θ: N²_b = N² =
    (g/θv) ∂θv/∂z.
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
    surface heats the air), w* = ((g/θv) w'θv'_s h)^(1/3) with h the depth of the dry
    convective layer: the updraft's cloud base when it condenses, else its top.

    ``updraft``: a ``MassFluxUpdraft`` (``True``: the default one; ``False``: none). Besides
    the surface diagnostics, the closure reports the updraft's top (``updraft_top_height``),
    w* (``convective_velocity``), and the cloud (``physics.clouds.cloud_diagnostics``: the
    profiles ``ql`` and ``cloud_fraction``, liquid water path, cloud cover, base and top), and
    the updraft's ``updraft_area`` and ``updraft_mass_flux`` (a w, m/s) profiles. It is also a
    cloud source (``cloud``) for the microphysics and the radiation.

    ``moist=False`` (the dry cases): water vapour only, never condensing
    (``physics.thermodynamics.condensation``): no cloud, no cloud diagnostics, and a plume
    that stays dry; the program then holds none of the moist parts (about 40 % less time per
    step in GABLS1), and for air far from saturation its results are those of
    ``moist=True``.
    """

    surface: AbstractSurfaceLayer
    c_m: Float[Array, ""]
    c_eps: Float[Array, ""]
    c_n: Float[Array, ""]
    c_e: Float[Array, ""]
    asymptotic_length: Float[Array, ""]
    prandtl_neutral: Float[Array, ""]
    surface_tke_coefficient: Float[Array, ""]
    tke_min: Float[Array, ""]
    updraft: MassFluxUpdraft | None
    clouds: StatisticalCloud
    time_step: float = eqx.field(static=True)
    moist: bool = eqx.field(static=True)

    def __init__(self, surface: AbstractSurfaceLayer, time_step: float = 60.0, *,
                 c_m=3.75**-0.5, c_eps=3.75**-1.5, c_n=0.3, c_e=2.0, asymptotic_length=80.0,
                 prandtl_neutral=1.0, surface_tke_coefficient=3.75, tke_min=1.0e-4,
                 updraft: MassFluxUpdraft | bool = True, clouds: StatisticalCloud | None = None,
                 moist: bool = True):
        check_positive("time_step", time_step, "s")
        for name, value, low, high in (
            ("c_m", c_m, 0.01, 2.0), ("c_eps", c_eps, 0.01, 2.0), ("c_n", c_n, 0.1, 5.0),
            ("c_e", c_e, 0.0, 5.0), ("asymptotic_length", asymptotic_length, 1.0, 1.0e4),
            ("prandtl_neutral", prandtl_neutral, 0.3, 3.0),
            ("surface_tke_coefficient", surface_tke_coefficient, 0.0, 20.0),
            ("tke_min", tke_min, 1.0e-8, 1.0e-2),
        ):
            check_range(name, value, low, high)
        self.surface = surface
        self.time_step = float(time_step)
        self.c_m, self.c_eps, self.c_n, self.c_e = (as_float(c) for c in (c_m, c_eps, c_n, c_e))
        self.asymptotic_length = as_float(asymptotic_length)
        self.prandtl_neutral = as_float(prandtl_neutral)
        self.surface_tke_coefficient = as_float(surface_tke_coefficient)
        self.tke_min = as_float(tke_min)
        if updraft is True:
            updraft = MassFluxUpdraft()
        self.updraft = updraft or None
        self.clouds = StatisticalCloud() if clouds is None else clouds
        self.moist = bool(moist)

    def required_tracers(self) -> tuple[str, ...]:
        return ("tke",)

    def initial_tracers(self, grid: ColumnGrid) -> dict[str, Float[Array, " z"]]:
        return {"tke": jnp.full_like(grid.z, self.tke_min)}

    def mixing_length(self, z, tke, n2):
        """Harmonic combination of the Blackadar length and c_n √e / N (N² > 0 only).

        N enters as N (N²⁺/(N²⁺ + N_r²))^(3/2), N²⁺ = max(N², 0), N_r = ``_STABILITY_SCALE``:
        within 1.5 (N_r/N)² of N where the layer is stratified (1.5 % at N = 0.01 s-1), zero
        where it is not, and continuously differentiable across neutrality, so that gradients
        through an exactly neutral layer agree with finite differences (√N² has an infinite
        derivative there)."""
        blackadar = blackadar_length(z, self.asymptotic_length)
        stable = jnp.maximum(n2, 0.0)
        frequency = stable**2 / three_halves_power(stable + _STABILITY_SCALE**2)
        return 1.0 / (1.0 / jnp.maximum(blackadar, _TINY)
                      + frequency / (self.c_n * jnp.sqrt(tke)))

    def prandtl_number(self, richardson):
        """Schumann & Gerz (1995) with Rf∞ = 0.25; Pr0 for Ri ≤ 0."""
        ri = jnp.clip(richardson, 0.0, 100.0)
        pr0 = self.prandtl_neutral
        return pr0 * jnp.exp(-ri / (0.25 * pr0)) + ri / 0.25

    def column(self, state: State, forcing: Forcing, grid: ColumnGrid) -> ClosureColumn:
        """Surface fluxes, grid-mean thermodynamics, the updraft and the cloud of a column:
        what ``__call__`` and ``cloud`` share (the same trace, so that a microphysics or
        radiation scheme holding this closure as its cloud source costs no second plume)."""
        fluxes = self.surface.fluxes(state, forcing, grid)
        mean = diagnose(state, grid, self.moist)
        tke = jnp.maximum(state.tracers["tke"], self.tke_min)
        plume = None if self.updraft is None else self.updraft(state, grid, mean, fluxes,
                                                                self.moist)

        def length(n2):
            return self.mixing_length(grid.z, tke, 0.5 * (n2[1:] + n2[:-1]))

        # The cloud's spread needs a mixing length before the cloud fraction is known: the
        # one of the grid mean's saturation; N² and the length of the closure itself then
        # weigh the saturated stability by the cloud fraction.
        if not self.moist:
            n2 = buoyancy_frequency_squared(state, grid, mean, moist=False)
            return ClosureColumn(fluxes, mean, plume, None, n2, length(n2))
        first_guess = length(buoyancy_frequency_squared(state, grid, mean))
        if plume is None:
            cloud = self.clouds(state.thl, state.qt, grid, first_guess)
        else:
            cloud = self.clouds(state.thl, state.qt, grid, first_guess, plume.area, plume.thl,
                                plume.qt, plume.liquid)
        n2 = buoyancy_frequency_squared(state, grid, mean, cloud.fraction)
        return ClosureColumn(fluxes, mean, plume, cloud, n2, length(n2))

    def cloud(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Cloud:
        if not self.moist:
            raise ConfigurationError("a TKE closure with moist=False has no cloud to give the "
                                     "microphysics or radiation; build it with moist=True")
        return self.column(state, forcing, grid).cloud

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        fluxes, mean, plume, cloud, n2, length_c = self.column(state, forcing, grid)
        theta_v = mean.theta_v
        theta_v_i = grid.to_interfaces(theta_v)
        tke = jnp.maximum(state.tracers["tke"], self.tke_min)
        s2 = shear_squared(state, grid)
        tke_i = grid.to_interfaces(tke)
        length_i = self.mixing_length(grid.z_interface, tke_i, n2)
        k_m = self.c_m * length_i * jnp.sqrt(tke_i)
        k_h = k_m / self.prandtl_number(n2 / (s2 + MIN_SHEAR2))

        zeros = Tendency.zeros(state)
        buoyancy_parameter = GRAVITY / theta_v[0]
        heating = jnp.maximum(fluxes.buoyancy_flux, 0.0)
        if plume is None:
            explicit, mf_thv = zeros.flux, jnp.zeros_like(grid.z_interface)
            depth = jnp.zeros_like(grid.z[0])
        else:
            explicit, mf_thv = self.updraft.interface_fluxes(plume, state, theta_v, grid,
                                                             self.time_step)
            depth = jnp.where(jnp.isfinite(plume.cloud_base), plume.cloud_base, plume.top)
        convective_velocity = _cube_root(buoyancy_parameter * heating * depth)

        # TKE sources on interfaces, averaged to centres (nothing is produced at the top).
        shear_production = _interior(k_m * s2)
        buoyancy_production = _interior(-k_h * n2 + GRAVITY * mf_thv / theta_v_i)
        production = 0.5 * (shear_production[1:] + shear_production[:-1])
        buoyancy = 0.5 * (buoyancy_production[1:] + buoyancy_production[:-1])
        dt = self.time_step
        # Buoyancy production as a source where positive, a sink where negative, split
        # smoothly (over _PRODUCTION_SCALE): a sharp split is not differentiable in neutral
        # layers, where the production is exactly zero.
        gain = 0.5 * (buoyancy + jnp.sqrt(buoyancy**2 + _PRODUCTION_SCALE**2))
        source = production + gain
        sink_rate = self.c_eps * jnp.sqrt(tke) / length_c + (gain - buoyancy) / tke
        updated = (tke + dt * source) / (1.0 + dt * sink_rate)
        surface_tke = (self.surface_tke_coefficient * fluxes.ustar**2
                       + 0.2 * convective_velocity**2
                       + _cube_root(VON_KARMAN * grid.z[0] * buoyancy_parameter * heating)**2)
        updated = jnp.maximum(updated.at[0].set(surface_tke), self.tke_min)
        tke_tendency = (updated - state.tracers["tke"]) / dt

        tendency = State(zeros.tendency.u, zeros.tendency.v, zeros.tendency.thl,
                         zeros.tendency.qt, {**zeros.tendency.tracers, "tke": tke_tendency})
        diagnostics = surface_diagnostics(fluxes)
        diagnostics["convective_velocity"] = jnp.where(heating > 0, convective_velocity, 0.0)
        if cloud is not None:
            diagnostics.update(cloud_diagnostics(cloud, grid))
        if plume is not None:
            diagnostics["updraft_top_height"] = plume.top
            diagnostics["cloud_base_mass_flux"] = plume.cloud_base_mass_flux
            diagnostics["updraft_area"] = plume.area
            diagnostics["updraft_mass_flux"] = plume.mass_flux / grid.rho
        return assemble(state, grid, fluxes, k_m, k_h, explicit_flux=explicit,
                        tendency=tendency, tracer_diffusivity={"tke": self.c_e * k_m},
                        diagnostics=diagnostics)


class ClosureColumn(NamedTuple):
    """What ``TKEClosure.column`` diagnoses from a column: surface fluxes, grid-mean
    thermodynamics, the updraft (None without one), the cloud (None when dry), N² on
    interfaces (s-2) and the mixing length at centres (m)."""

    fluxes: SurfaceFluxes
    mean: Thermodynamics
    plume: UpdraftProfile | None
    cloud: Cloud | None
    n2: Float[Array, " n_interface"]
    length: Float[Array, " z"]


def moist_buoyancy_coefficients(mean: Thermodynamics, state: State, grid: ColumnGrid,
                                cloud_fraction):
    """(A, B) of w'θv' = A w'θl' + B w'qt' at centres: the clear-air and saturated values
    weighted by the cloud fraction."""
    clear_a, clear_b = clear_air_coefficients(mean.theta, state.qt)
    cloudy_a, cloudy_b = cloudy_air_coefficients(mean.temperature, state.qt,
                                                 mean.saturation_humidity, mean.theta,
                                                 grid.exner)
    weight = cloud_fraction
    return ((1.0 - weight) * clear_a + weight * cloudy_a,
            (1.0 - weight) * clear_b + weight * cloudy_b)
