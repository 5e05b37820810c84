"""The case catalogue: idealized column cases with their published specifications.

``build_case(name, ...)`` validates every option against its documented range before building
anything, then returns a ``Case``: model (grid + schemes), initial state, forcing series, time
step, run length and output interval. Specifications: ``docs/cases.md``, with the case papers
cited in each builder.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

import scm.model
import scm.state
from physics.large_scale import LargeScaleForcing
from physics.surface import AbstractSurfaceLayer, MoninObukhovSurface
from physics.turbulence import ConstantDiffusivity, LocalClosure, TKEClosure
from scm.constants import coriolis_parameter
from scm.errors import ConfigurationError, check_choice, check_positive, check_range
from scm.forcing import Forcing, ForcingSeries
from scm.grid import MIN_LEVELS, ColumnGrid
from scm.integration import check_state
from scm.state import as_float

CASE_NAMES: tuple[str, ...] = ("ekman", "neutral_ekman", "gabls1", "dry_cbl", "diurnal")
TURBULENCE_NAMES: tuple[str, ...] = ("constant", "local", "tke")
MAX_LEVELS = 4096
#: Model time between saved outputs that ``build_case`` aims for (s).
OUTPUT_INTERVAL = 600.0
DAY = 86400.0
HOUR = 3600.0


@dataclasses.dataclass(frozen=True)
class Case:
    """A ready-to-run case: integrate with ``scm.integration.rollout(model, state0, forcing,
    0.0, dt, n_steps, save_every)``."""

    name: str
    description: str
    model: scm.model.Model
    state0: scm.state.State
    forcing: ForcingSeries
    dt: float
    hours: float
    save_every: int
    parameters: dict

    @property
    def n_steps(self) -> int:
        """Steps covering ``hours``, rounded to a whole number of output intervals."""
        intervals = max(1, round(self.hours * 3600.0 / (self.dt * self.save_every)))
        return intervals * self.save_every


@dataclasses.dataclass(frozen=True)
class _Spec:
    description: str
    levels: int
    top: float
    dt: float
    hours: float
    turbulence: str
    parameters: dict[str, tuple[float, float, float, str, str]]


_SPECS: dict[str, _Spec] = {
    "ekman": _Spec(
        "Ekman layer with constant eddy viscosity, impulsive start, no-slip ground "
        "(analytic solution)",
        64, 2000.0, 60.0, 24.0, "constant",
        {
            "coriolis_parameter": (1.0e-4, 2.0e-5, 1.5e-4, "s-1", "Coriolis parameter f"),
            "geostrophic_u": (10.0, -30.0, 30.0, "m s-1", "eastward geostrophic wind"),
            "geostrophic_v": (0.0, -30.0, 30.0, "m s-1", "northward geostrophic wind"),
            "eddy_viscosity": (5.0, 0.1, 50.0, "m2 s-1", "constant eddy viscosity K"),
        },
    ),
    "neutral_ekman": _Spec(
        "Neutral Ekman boundary layer over a rough surface (Andren et al. 1994)",
        64, 1500.0, 30.0, 24.0, "tke",
        {
            "geostrophic_wind": (10.0, 1.0, 25.0, "m s-1", "eastward geostrophic wind Ug"),
            "coriolis_parameter": (1.0e-4, 2.0e-5, 1.5e-4, "s-1", "Coriolis parameter f"),
            "roughness_length": (0.1, 1.0e-4, 1.0, "m", "roughness length z0"),
            "potential_temperature": (300.0, 250.0, 320.0, "K", "uniform potential temperature"),
        },
    ),
    "gabls1": _Spec(
        "GABLS1 moderately stable boundary layer over cooling ice, 73 N (Beare et al. 2006)",
        64, 400.0, 30.0, 9.0, "tke",
        {
            "surface_cooling_rate": (0.25, 0.0, 1.0, "K h-1", "cooling rate of the surface"),
            "geostrophic_wind": (8.0, 2.0, 15.0, "m s-1", "eastward geostrophic wind Ug"),
            "coriolis_parameter": (1.39e-4, 5.0e-5, 1.5e-4, "s-1", "Coriolis parameter f"),
            "roughness_length": (0.1, 1.0e-3, 0.5, "m", "roughness length (momentum and heat)"),
        },
    ),
    "dry_cbl": _Spec(
        "Dry convective boundary layer growing into an 8 K inversion (Sullivan & Patton 2011)",
        64, 2000.0, 30.0, 4.0, "tke",
        {
            "surface_heat_flux": (0.24, 0.01, 0.5, "K m s-1", "kinematic surface heat flux"),
            "geostrophic_wind": (1.0, 0.0, 15.0, "m s-1", "eastward geostrophic wind Ug"),
            "inversion_jump": (8.0, 1.0, 15.0, "K", "potential-temperature jump across the "
                               "100 m inversion above 974 m"),
            "lapse_rate": (3.0, 1.0, 10.0, "K km-1", "free-troposphere dθ/dz above the "
                           "inversion"),
            "roughness_length": (0.1, 1.0e-3, 1.0, "m", "roughness length"),
        },
    ),
    "diurnal": _Spec(
        "Periodic dry diurnal cycle: boundary layer over land heated by day and cooled by night "
        "(prescribed surface temperature), free troposphere relaxed aloft",
        32, 3200.0, 60.0, 720.0, "tke",
        {
            "latitude": (45.0, 10.0, 80.0, "degrees_north", "latitude (sets f)"),
            "geostrophic_wind": (10.0, 2.0, 20.0, "m s-1", "eastward geostrophic wind Ug"),
            "surface_temperature": (290.0, 270.0, 310.0, "K", "daily-mean surface potential "
                                    "temperature"),
            "diurnal_amplitude": (10.0, 0.0, 15.0, "K", "amplitude of the diurnal surface "
                                  "temperature cycle (maximum at 15 h local time)"),
            "lapse_rate": (5.0, 3.0, 8.0, "K km-1", "initial and reference dθ/dz"),
            "cooling_rate": (1.5, 0.5, 3.0, "K day-1", "uniform cooling below the relaxation "
                             "zone (clear-sky radiation)"),
            "relaxation_time": (6.0, 1.0, 24.0, "h", "relaxation time scale aloft"),
            "roughness_length": (0.1, 1.0e-3, 1.0, "m", "roughness length (momentum and heat)"),
        },
    ),
}


def describe_cases() -> dict[str, str]:
    """Case name → one-line description."""
    return {name: _SPECS[name].description for name in CASE_NAMES}


def case_parameters(name: str) -> dict[str, tuple[float, float, float, str, str]]:
    """Tunable parameters of a case: name → (default, low, high, units, description)."""
    check_choice("case", name, CASE_NAMES)
    return dict(_SPECS[name].parameters)


def build_case(name: str, *, levels: int | None = None, dt: float | None = None,
               hours: float | None = None, turbulence: str | None = None,
               **parameters) -> Case:
    """Build a case; every option is checked against its documented range first."""
    check_choice("case", name, CASE_NAMES)
    spec = _SPECS[name]
    turbulence = spec.turbulence if turbulence is None else turbulence
    check_choice("turbulence", turbulence, TURBULENCE_NAMES)
    levels = spec.levels if levels is None else levels
    if isinstance(levels, bool) or not isinstance(levels, int | np.integer):
        raise ConfigurationError(f"levels must be an integer (got {levels!r})")
    check_range("levels", levels, MIN_LEVELS, MAX_LEVELS)
    dt = spec.dt if dt is None else dt
    hours = spec.hours if hours is None else hours
    check_positive("dt", dt, "s")
    check_range("dt", dt, 0.0, 3600.0, "s")
    check_positive("hours", hours, "h")
    unknown = sorted(set(parameters) - set(spec.parameters))
    if unknown:
        raise ConfigurationError(
            f"unknown parameter(s) {unknown} for case {name!r}; known: {sorted(spec.parameters)}"
        )
    values = {}
    for key, (default, low, high, units, _) in spec.parameters.items():
        value = parameters.get(key, default)
        check_range(key, value, low, high, units)
        values[key] = float(value)
    dt, hours = float(dt), float(hours)
    save_every = max(1, round(OUTPUT_INTERVAL / dt))
    if hours * 3600.0 < dt * save_every:
        raise ConfigurationError(
            f"hours = {hours:g} h is shorter than one output interval ({dt * save_every:g} s)")
    builder = _BUILDERS[name]
    model, state0, forcing, extra = builder(values, int(levels), spec.top, dt, hours,
                                           turbulence)
    check_state(state0)
    recorded = {"case": name, "levels": int(levels), "top": spec.top, "dt": dt,
                "hours": hours, "save_every": save_every, "turbulence": turbulence,
                **values, **extra}
    return Case(name, spec.description, model, state0, forcing, dt, hours, save_every, recorded)


# ---------------------------------------------------------------------------------------------
# Helpers


def _piecewise(heights, values):
    """θ(z) piecewise linear through the nodes, continued with the last slope above them."""
    heights, values = np.asarray(heights, float), np.asarray(values, float)
    slope = (values[-1] - values[-2]) / (heights[-1] - heights[-2])

    def profile(z):
        z = np.asarray(z, float)
        inside = np.interp(z, heights, values)
        return np.where(z > heights[-1], values[-1] + slope * (z - heights[-1]), inside)

    return profile


def turbulence_scheme(kind: str, surface: AbstractSurfaceLayer | None, dt: float,
                      eddy_viscosity: float = 5.0):
    """The closure named ``kind`` (``TURBULENCE_NAMES``) over ``surface`` for time step dt."""
    if kind == "constant":
        return ConstantDiffusivity(eddy_viscosity, eddy_viscosity, no_slip=surface is None,
                                   surface=surface)
    if surface is None:
        surface = MoninObukhovSurface(0.1, heat_boundary="flux")
    if kind == "local":
        return LocalClosure(surface, time_step=dt)
    return TKEClosure(surface, time_step=dt)


def _state(model: scm.model.Model, u, v, thl, tke=None) -> scm.state.State:
    to = lambda a: as_float(np.broadcast_to(a, model.grid.z.shape))  # noqa: E731
    tracers = model.initial_tracers()
    if tke is not None and "tke" in tracers:
        tracers["tke"] = jnp.maximum(to(tke), tracers["tke"])
    return scm.state.State(to(u), to(v), to(thl), to(0.0), tracers)


def _constant_forcing(grid: ColumnGrid, **values) -> ForcingSeries:
    return ForcingSeries.constant(Forcing.create(grid.n_levels, **values))


# ---------------------------------------------------------------------------------------------
# Cases


def _ekman(p, levels, top, dt, hours, turbulence):
    """Constant-K Ekman layer (Ekman 1905; analytic solutions in ``ekman_*_solution``)."""
    theta = 300.0
    grid = ColumnGrid.uniform(top, levels, 1.0e5, lambda z: np.full_like(z, theta))
    surface = None if turbulence == "constant" else MoninObukhovSurface(
        0.1, heat_boundary="flux")
    model = scm.model.Model(grid, turbulence=turbulence_scheme(turbulence, surface, dt,
                                                         p["eddy_viscosity"]),
                            large_scale=LargeScaleForcing())
    forcing = _constant_forcing(grid, coriolis_parameter=p["coriolis_parameter"],
                                geostrophic_u=p["geostrophic_u"],
                                geostrophic_v=p["geostrophic_v"], surface_temperature=theta)
    state0 = _state(model, p["geostrophic_u"], p["geostrophic_v"], theta)
    return model, state0, forcing, {"surface_pressure": 1.0e5}


def _neutral_ekman(p, levels, top, dt, hours, turbulence):
    """Neutral Ekman layer (Andrén et al. 1994): Ug, f, z0, constant θ, zero heat flux."""
    theta = p["potential_temperature"]
    grid = ColumnGrid.uniform(top, levels, 1.0e5, lambda z: np.full_like(z, theta))
    surface = MoninObukhovSurface(p["roughness_length"], heat_boundary="flux")
    model = scm.model.Model(grid, turbulence=turbulence_scheme(turbulence, surface, dt),
                            large_scale=LargeScaleForcing())
    forcing = _constant_forcing(grid, coriolis_parameter=p["coriolis_parameter"],
                                geostrophic_u=p["geostrophic_wind"], surface_temperature=theta)
    z = np.asarray(grid.z)
    state0 = _state(model, p["geostrophic_wind"], 0.0, theta, 0.4 * np.clip(1 - z / 500, 0, 1))
    return model, state0, forcing, {"surface_pressure": 1.0e5}


def _gabls1(p, levels, top, dt, hours, turbulence):
    """GABLS1 (Beare et al. 2006, section 2; Cuxart et al. 2006, section 2)."""
    theta = _piecewise([0.0, 100.0, 400.0], [265.0, 265.0, 268.0])
    grid = ColumnGrid.uniform(top, levels, 1.0e5, theta)
    surface = MoninObukhovSurface(p["roughness_length"], p["roughness_length"], beta_m=4.8,
                                  beta_h=7.8, heat_boundary="temperature")
    model = scm.model.Model(grid, turbulence=turbulence_scheme(turbulence, surface, dt),
                            large_scale=LargeScaleForcing())
    horizon = hours * 3600.0

    def at(t):
        return Forcing.create(grid.n_levels, coriolis_parameter=p["coriolis_parameter"],
                              geostrophic_u=p["geostrophic_wind"],
                              surface_temperature=265.0 - p["surface_cooling_rate"] * t / 3600.0)

    forcing = ForcingSeries.from_list([0.0, horizon], [at(0.0), at(horizon)])
    z = np.asarray(grid.z)
    tke0 = 0.4 * np.clip(1.0 - z / 250.0, 0.0, 1.0) ** 3
    state0 = _state(model, p["geostrophic_wind"], 0.0, theta(z), tke0)
    return model, state0, forcing, {"surface_pressure": 1.0e5}


def _dry_cbl(p, levels, top, dt, hours, turbulence):
    """Dry CBL (Sullivan & Patton 2011, section 2): fixed surface heat flux, MO momentum."""
    jump, gamma = p["inversion_jump"], p["lapse_rate"] * 1.0e-3
    theta = _piecewise([0.0, 974.0, 1074.0, 1074.0 + 1000.0],
                       [300.0, 300.0, 300.0 + jump, 300.0 + jump + 1000.0 * gamma])
    grid = ColumnGrid.uniform(top, levels, 1.0e5, theta)
    surface = MoninObukhovSurface(p["roughness_length"], heat_boundary="flux")
    model = scm.model.Model(grid, turbulence=turbulence_scheme(turbulence, surface, dt),
                            large_scale=LargeScaleForcing())
    forcing = _constant_forcing(grid, coriolis_parameter=1.0e-4,
                                geostrophic_u=p["geostrophic_wind"],
                                surface_heat_flux=p["surface_heat_flux"],
                                surface_temperature=300.0)
    z = np.asarray(grid.z)
    state0 = _state(model, p["geostrophic_wind"], 0.0, theta(z),
                    0.1 * (z < 974.0))
    return model, state0, forcing, {"surface_pressure": 1.0e5, "coriolis_parameter": 1.0e-4}


def diurnal_profiles(grid_z, p):
    """Reference θ, relaxation rate (s-1) and prescribed cooling (K/s) of the diurnal case.

    The relaxation rate ramps linearly from zero at 2 km to 1/τ at 2.8 km and above; the
    uniform cooling acts below 2 km and ramps to zero across the same zone (a column relaxed
    only aloft keeps warming from the surface; the cooling closes the daily heat budget).
    """
    z = np.asarray(grid_z, float)
    theta_ref = p["surface_temperature"] + p["lapse_rate"] * 1.0e-3 * z
    ramp = np.clip((z - 2000.0) / 800.0, 0.0, 1.0)
    rate = ramp / (p["relaxation_time"] * 3600.0)
    cooling = -(1.0 - ramp) * p["cooling_rate"] / DAY
    return theta_ref, rate, cooling


def _diurnal(p, levels, top, dt, hours, turbulence):
    """Dry diurnal cycle, periodic in time (one day of forcing nodes, ``period`` = 1 day).

    Surface potential temperature θs(t) = θ̄s + A sin(2π (t/day − 3/8)) (minimum 03 h,
    maximum 15 h local time; t = 0 is midnight), Monin–Obukhov exchange with the first level.
    Geostrophic wind (Ug, 0); f = 2Ω sin(latitude).
    """
    theta_ref_fn = lambda z: p["surface_temperature"] + p["lapse_rate"] * 1.0e-3 * z  # noqa: E731
    grid = ColumnGrid.uniform(top, levels, 1.0e5, theta_ref_fn)
    z = np.asarray(grid.z)
    theta_ref, rate, cooling = diurnal_profiles(z, p)
    surface = MoninObukhovSurface(p["roughness_length"], p["roughness_length"],
                                  heat_boundary="temperature")
    model = scm.model.Model(grid, turbulence=turbulence_scheme(turbulence, surface, dt),
                            large_scale=LargeScaleForcing())
    f = coriolis_parameter(p["latitude"])
    times = np.linspace(0.0, DAY, 49)

    def at(t):
        theta_s = p["surface_temperature"] + p["diurnal_amplitude"] * math.sin(
            2.0 * math.pi * (t / DAY - 0.375))
        return Forcing.create(grid.n_levels, coriolis_parameter=f,
                              geostrophic_u=p["geostrophic_wind"], thl_tendency=cooling,
                              relaxation_rate=rate, thl_reference=theta_ref,
                              surface_temperature=theta_s)

    forcing = ForcingSeries.from_list(times, [at(t) for t in times], period=DAY)
    state0 = _state(model, p["geostrophic_wind"], 0.0, theta_ref)
    return model, state0, forcing, {"surface_pressure": 1.0e5, "coriolis_parameter": f}


_BUILDERS = {
    "ekman": _ekman,
    "neutral_ekman": _neutral_ekman,
    "gabls1": _gabls1,
    "dry_cbl": _dry_cbl,
    "diurnal": _diurnal,
}


# ---------------------------------------------------------------------------------------------
# Analytic solutions of the constant-K Ekman layer (f > 0)


def ekman_steady_solution(z, geostrophic_u=10.0, geostrophic_v=0.0, eddy_viscosity=5.0,
                          coriolis_parameter=1.0e-4):
    """Steady Ekman spiral over a no-slip ground (Ekman 1905; e.g. Holton 2004, chapter 5):
    u = ug [1 − e^(−z/δ) cos(z/δ)] − vg e^(−z/δ) sin(z/δ),
    v = vg [1 − e^(−z/δ) cos(z/δ)] + ug e^(−z/δ) sin(z/δ), δ = √(2K/f). Returns (u, v)."""
    z = np.asarray(z, float)
    depth = math.sqrt(2.0 * eddy_viscosity / coriolis_parameter)
    decay = np.exp(-z / depth)
    c, s = decay * np.cos(z / depth), decay * np.sin(z / depth)
    u = geostrophic_u * (1.0 - c) - geostrophic_v * s
    v = geostrophic_v * (1.0 - c) + geostrophic_u * s
    return u, v


def ekman_impulsive_solution(z, t, geostrophic_u=10.0, geostrophic_v=0.0, eddy_viscosity=5.0,
                             coriolis_parameter=1.0e-4):
    """Ekman layer spun up from u = ug, v = vg at t = 0 with no slip at z = 0: with
    W = (u − ug) + i (v − vg), W0 = −(ug + i vg), λ = (1 + i)/δ and √(ift) = (1 + i)√(ft/2),
    W = W0 ½ [e^(−λz) erfc(z/(2√(Kt)) − √(ift)) + e^(λz) erfc(z/(2√(Kt)) + √(ift))]
    (semi-infinite domain; e.g. Greenspan 1968, section 2.2). Returns (u, v) at time t > 0."""
    from scipy.special import erfc

    check_positive("t", t, "s")
    z = np.asarray(z, float)
    k, f = eddy_viscosity, coriolis_parameter
    depth = math.sqrt(2.0 * k / f)
    lam = (1.0 + 1.0j) / depth
    root = (1.0 + 1.0j) * math.sqrt(f * t / 2.0)
    x = z / (2.0 * math.sqrt(k * t))
    w0 = -(geostrophic_u + 1.0j * geostrophic_v)
    w = w0 * 0.5 * (np.exp(-lam * z) * erfc(x - root) + np.exp(lam * z) * erfc(x + root))
    return geostrophic_u + w.real, geostrophic_v + w.imag
