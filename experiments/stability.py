"""Rollout-stability benchmark: is a parameterization safe to couple, and does its skill hold
outside its training scenarios?

Every model (trained artifacts, grouped by model name over their seeds, and physics
closures) runs the same ``test`` and ``extrapolation`` scenarios of the ``diurnal`` case
(``experiments.scenarios``) for ``days`` days, all scenarios at once
(``experiments.run.run_ensemble``), from the coarse-grained truth at the end of its spin-up,
beside the physics baseline. Measured per model, seed and scenario, from hourly saves:

- **failure**: the first time the column is non-finite or leaves the physical bounds
  (``scm.integration.DEFAULT_BOUNDS``, configurable), or **drifts**: the first day whose
  daily-mean θ profile is farther than ``drift_theta`` (K, RMS over levels) from the truth's,
  or whose daily-mean wind is farther than ``drift_wind`` (m s-1); a drifting run counts as
  failed (time to failure: the end of that day). The **survival curve** is the fraction of
  runs not failed by each time;
- **skill** over lead time: RMSE and bias (over levels) of θ, u and v, and of the
  diagnostics u*, surface heat flux, boundary-layer height and low-level jet (the largest
  wind speed below ``JET_TOP``); the 24 h RMSE of θ and of the wind vector
  (``experiments.run.first_day_rmse``) and the RMSE of the last day's mean θ profile;
- **confidence intervals**: the change of a model's mean error against the baseline's,
  mean(model)/mean(baseline) − 1 over scenarios and seeds, with a 95 % interval from
  resampling scenarios (paired with the baseline's) and seeds (``bootstrap_change``); per
  extrapolation family too;
- **out of distribution**: for an artifact with an input-distance detector
  (``nn.ood.InputDistance``), the fraction of hourly states it flags (physics weight > ½),
  per scenario and family; with ``fallback="both"`` every such artifact also runs with its
  physics fallback on (``<name>+fallback``), so the tables show whether it helps;
- **climate**: time-mean bias profiles and diurnal composites (by hour of day) of the
  surface heat flux and boundary-layer height beside the truth's; **drift**: the linear
  trend of the daily means of the mass-weighted column means of θ, u and v minus the truth's;
- **conservation**, for the slot the model's network fills (taken from the artifact, not a
  fixed name): the one-step column **heat** budget Σ m Δθ − Δt (ρ₀ F₀ + Σ m R) and
  **momentum** budget Σ m ΔW − Δt (ρ₀ F₀ − ρ₀ K₀ W₁ⁿ⁺¹/Δz₀ − i f Σ m (W̄ − W_g) + Σ m R)
  (W = u + i v, W̄ the step's trapezoidal mean, K₀ the surface-interface viscosity, F₀ the
  slot's explicit surface flux, R the explicit rates of the other slots), as column-mean
  changes per day; and the slot's **kinetic-energy source**, Σ m ½|W|² after the step minus
  after the same step with the slot's momentum exchange switched off, per second (W m-2):
  mixing with K ≥ 0 and surface drag only remove kinetic energy, so a positive source is a
  scheme that creates it;
- **linear stability**: eigenvalues λ of the Jacobian ∂yⁿ⁺¹/∂yⁿ of one coupled step
  (``jax.jacfwd``, over u, v and θ) at states sampled along the run; the largest |λ| and the
  fraction of states with a growing mode, |λ| > 1 + ``growth_tolerance``.

**Truth-free long runs** (``truth=False``; ``scm bench stability --no-truth --days 365``):
every model runs the scenarios from the case's initial state, saving every
``LONG_SAVE_HOURS``; measured are survival (bounds), the trend over the run after
``LONG_SPINUP_DAYS`` of the daily means of every prognostic (mass-weighted column means) and
of the column heat content c_p Σ m Π θ and kinetic energy Σ m ½|W|² (J m-2 day-1), the
periodicity of the daily cycle (RMS over levels of the change of the daily-mean θ profile
from one day to the next, over the last ``CLIMATE_DAYS``) and the model's climate against the
physics baseline's own (RMS difference of the last ``CLIMATE_DAYS``' mean θ and wind
profiles).

``run_benchmark`` writes ``summary.json``, ``metrics.nc`` (every metric), ``report.md`` and
PNG plots. A column that fails never stops the benchmark: it is held at its last valid state
and recorded. The benchmark depends on no experiment: artifacts are installed with
``nn.artifact.install_artifact``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from experiments.cases import DAY, HOUR, TURBULENCE_NAMES, build_case, turbulence_scheme
from experiments.run import first_day_rmse, run_ensemble, run_from_truth, state_only
from experiments.scenarios import sample_scenarios, scenario_labels, stack_pytrees
from experiments.truth import (
    check_truth_grid,
    generate_truth,
    load_truth,
    scenario_families,
    scenario_parameters,
)
from nn.artifact import install_artifact, load_artifact
from nn.ood import InputDistance
from scm.columns import map_columns, to_host
from scm.constants import DRY_AIR_HEAT_CAPACITY
from scm.errors import ConfigurationError, check_choice, check_range
from scm.forcing import ForcingSeries
from scm.integration import DEFAULT_BOUNDS, ColumnTerm, SemiImplicitEuler
from scm.io import (
    global_attributes,
    write_atomic,
    write_netcdf,
)
from scm.model import Model
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State

#: The low-level jet is the largest wind speed below this height (m).
JET_TOP = 1000.0
#: Fields of the Jacobian (qt is passive in the dry cases).
JACOBIAN_FIELDS = ("u", "v", "thl")
#: Diagnostics scored against the truth, with their units.
DIAGNOSTICS: dict[str, str] = {
    "ustar": "m s-1", "surface_heat_flux": "K m s-1", "boundary_layer_height": "m",
    "low_level_jet": "m s-1",
}
VARIABLES: dict[str, str] = {"theta": "K", "u": "m s-1", "v": "m s-1"}
#: The sets a model is judged on.
SETS: tuple[str, ...] = ("test", "extrapolation")
#: Drift thresholds: a run whose daily-mean θ profile (RMS over levels) is more than
#: ``DRIFT_THETA`` from the truth's, or its daily-mean wind more than ``DRIFT_WIND``, has
#: failed. The physics baseline's largest daily-mean errors over 30 days of the test and
#: extrapolation scenarios stay below a third of them (docs/stability.md); the offline
#: replacement's 25 K drift is far beyond.
DRIFT_THETA = 3.0  # K
DRIFT_WIND = 5.0  # m s-1
#: Physics weight above which the detector counts a state as out of distribution.
FLAGGED_WEIGHT = 0.5
#: Truth-free runs: save interval (h), days left out before trends are fitted, and the days
#: whose mean profiles are the model's climate.
LONG_SAVE_HOURS = 3
LONG_SPINUP_DAYS = 30
CLIMATE_DAYS = 30
#: Resamples of the bootstrap intervals.
BOOTSTRAP_SAMPLES = 2000


# ---------------------------------------------------------------------------------------------
# the metrics, each a plain function of arrays (tested on synthetic cases)


def survival_curve(failed_at: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Fraction of runs that have not failed by each time (``failed_at`` = inf: never)."""
    failed_at = np.asarray(failed_at, float)
    return (failed_at[:, None] > np.asarray(times, float)[None, :]).mean(axis=0)


def median_time_to_failure(failed_at: np.ndarray) -> float:
    """Median failure time over runs (inf when half or more never fail)."""
    return float(np.median(np.asarray(failed_at, float)))


def lead_time_skill(model: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RMSE and bias over the last axis (levels), or of scalars: arrays ``(run, time[, z])``
    → two arrays ``(run, time)``."""
    error = np.asarray(model, float) - np.asarray(truth, float)
    if error.ndim == 2:
        return np.abs(error), error
    return np.sqrt((error**2).mean(axis=-1)), error.mean(axis=-1)


def daily_means(series: np.ndarray, saves_per_day: int) -> np.ndarray:
    """Daily means of ``series`` ``(run, time, ...)`` saved ``saves_per_day`` times a day
    from t = 0: the first save (the initial state) is left out, so day d averages saves
    d·n + 1 … (d + 1)·n; ``(run, days, ...)``."""
    series = np.asarray(series, float)[:, 1:]
    days = series.shape[1] // saves_per_day
    trimmed = series[:, : days * saves_per_day]
    return trimmed.reshape(len(series), days, saves_per_day, *series.shape[2:]).mean(axis=2)


def daily_trend(series: np.ndarray, saves_per_day: int, skip_days: int = 0) -> np.ndarray:
    """Least-squares slope (per day) of the daily means (``daily_means``) of ``series``
    ``(run, time)``, the first ``skip_days`` left out; NaN with fewer than two days."""
    daily = daily_means(series, saves_per_day)[:, skip_days:]
    days = daily.shape[1]
    if days < 2:
        return np.full(daily.shape[0], np.nan)
    x = np.arange(days) - (days - 1) / 2.0
    return (daily * x).sum(axis=1) / (x**2).sum()


def drift_failure_time(theta_error: np.ndarray, wind_error: np.ndarray,
                       drift_theta: float = DRIFT_THETA,
                       drift_wind: float = DRIFT_WIND) -> np.ndarray:
    """End (days since the start) of the first day whose daily-mean θ error ``(run, days)``
    exceeds ``drift_theta`` or wind error exceeds ``drift_wind``; inf where none does."""
    drifted = (np.asarray(theta_error) > drift_theta) | (np.asarray(wind_error) > drift_wind)
    first = np.argmax(drifted, axis=1).astype(float) + 1.0
    return np.where(drifted.any(axis=1), first, np.inf)


def diurnal_composite(series: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Mean of ``series`` ``(run, time)`` by hour of day (t = 0 at midnight): ``(run, 24)``."""
    hours = np.floor(np.mod(np.asarray(times, float), DAY) / HOUR).astype(int)
    return np.stack([np.asarray(series, float)[:, hours == h].mean(axis=1)
                     for h in range(24)], axis=1)


def spectrum_summary(moduli: np.ndarray, tolerance: float) -> tuple[float, float]:
    """(largest |λ|, fraction of sampled states with a mode |λ| > 1 + tolerance) from the
    eigenvalue moduli ``(..., n)`` of the sampled Jacobians."""
    largest = np.asarray(moduli).max(axis=-1)
    return float(largest.max()), float((largest > 1.0 + tolerance).mean())


def bootstrap_change(model: np.ndarray, baseline: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> tuple[float, float, float]:
    """(change, low, high): the relative change mean(model)/mean(baseline) − 1 of an error
    ``model`` ``(seed, scenario)`` against ``baseline`` ``(scenario,)``, and its 95 % interval
    from ``samples`` resamples of the scenarios (the same for model and baseline) and,
    independently, of the seeds."""
    model, baseline = np.atleast_2d(np.asarray(model, float)), np.asarray(baseline, float)
    change = model.mean() / baseline.mean() - 1.0
    rng = np.random.default_rng(seed)
    n_seeds, n_scenarios = model.shape
    scenarios = rng.integers(0, n_scenarios, (samples, n_scenarios))
    seeds = rng.integers(0, n_seeds, (samples, n_seeds))
    resampled = model[seeds[:, :, None], scenarios[:, None, :]].mean(axis=(1, 2))
    changes = resampled / baseline[scenarios].mean(axis=1) - 1.0
    low, high = np.percentile(changes, [2.5, 97.5])
    return float(change), float(low), float(high)


def periodicity(daily_profiles: np.ndarray, days: int = CLIMATE_DAYS) -> np.ndarray:
    """RMS over levels and the last ``days`` days of the change of a daily-mean profile
    ``(run, day, z)`` from one day to the next: zero for a periodic daily cycle."""
    change = np.diff(np.asarray(daily_profiles, float)[:, -(days + 1):], axis=1)
    return np.sqrt((change**2).mean(axis=(1, 2)))


# ---------------------------------------------------------------------------------------------
# quantities of one column step (jitted, vmapped over scenarios and samples)


def column_step(model: Model, forcing: ForcingSeries, state: State, t, dt) -> State:
    """One semi-implicit step of the coupled column (no failure guard: the raw map)."""
    return SemiImplicitEuler().step(ColumnTerm(model, forcing), t, t + dt, state, None, None,
                                    False)[0]


def _other_rates(model: Model, state: State, at, slot: str) -> State:
    """Explicit rates (tendencies plus flux convergence) of every slot but ``slot``."""
    grid = model.grid
    rates = [p(state, at, grid).explicit_rate(grid) for name, p in model.slots().items()
             if name != slot]
    return sum(rates[1:], rates[0]) if rates else state.zeros_like()


def heat_budget_residual(model: Model, forcing: ForcingSeries, state: State, t, dt,
                         slot: str = "turbulence"):
    """Σ m Δθ − Δt (ρ₀ F₀ + Σ m R) over one step (K kg m-2), module docstring."""
    grid = model.grid
    new = column_step(model, forcing, state, t, dt)
    at = forcing.at(t)
    surface_flux = getattr(model, slot)(state, at, grid).flux.thl[0]
    change = jnp.sum(grid.layer_mass * (new.thl - state.thl))
    supplied = dt * (grid.rho_interface[0] * surface_flux
                     + jnp.sum(grid.layer_mass * _other_rates(model, state, at, slot).thl))
    return change - supplied


def momentum_budget_residual(model: Model, forcing: ForcingSeries, state: State, t, dt,
                             slot: str = "turbulence"):
    """Σ m ΔW − Δt (ρ₀ F₀ − ρ₀ K₀ W₁ⁿ⁺¹/Δz₀ − i f Σ m (W̄ − W_g) + Σ m R) over one step,
    complex (kg m-1 s-1; real part u, imaginary v), module docstring."""
    grid = model.grid
    new = column_step(model, forcing, state, t, dt)
    at = forcing.at(t)
    tendency = getattr(model, slot)(state, at, grid)
    total = model.tendency(state, at)
    wind, new_wind = state.u + 1j * state.v, new.u + 1j * new.v
    other = _other_rates(model, state, at, slot)
    surface = (tendency.flux.u[0] + 1j * tendency.flux.v[0]
               - total.diffusivity.u[0] * new_wind[0] / grid.dz_interface[0])
    geostrophic = at.geostrophic_u + 1j * at.geostrophic_v
    coriolis = -1j * at.coriolis_parameter * jnp.sum(
        grid.layer_mass * (0.5 * (wind + new_wind) - geostrophic))
    supplied = dt * (grid.rho_interface[0] * surface + coriolis
                     + jnp.sum(grid.layer_mass * (other.u + 1j * other.v)))
    return jnp.sum(grid.layer_mass * (new_wind - wind)) - supplied


class _WithoutMomentum(AbstractParameterization):
    """``scheme`` with its momentum exchange (u, v tendencies, fluxes and viscosity) off."""

    scheme: AbstractParameterization

    def __call__(self, state, forcing, grid) -> Tendency:
        out = self.scheme(state, forcing, grid)

        def off(tree: State) -> State:
            return eqx.tree_at(lambda s: (s.u, s.v), tree, (tree.u * 0.0, tree.v * 0.0))

        return Tendency(off(out.tendency), off(out.flux), off(out.diffusivity),
                        out.diagnostics)

    def required_tracers(self):
        return self.scheme.required_tracers()


def kinetic_energy_source(model: Model, forcing: ForcingSeries, state: State, t, dt,
                          slot: str = "turbulence"):
    """(KE after the step − KE after the step without ``slot``'s momentum exchange) / Δt,
    KE = Σ m ½ (u² + v²) (W m-2; ≤ 0 for mixing with K ≥ 0 and drag), module docstring."""
    grid = model.grid
    without = model.with_slot(slot, _WithoutMomentum(getattr(model, slot)))

    def energy(m):
        new = column_step(m, forcing, state, t, dt)
        return jnp.sum(grid.layer_mass * 0.5 * (new.u**2 + new.v**2))

    return (energy(model) - energy(without)) / dt


def jacobian_moduli(model: Model, forcing: ForcingSeries, state: State, t, dt):
    """The one-step Jacobian over ``JACOBIAN_FIELDS`` (eigenvalues on the host)."""
    names = JACOBIAN_FIELDS
    n = state.thl.shape[-1]

    def step(x):
        fields = dict(state.fields())
        fields.update({name: x[i * n:(i + 1) * n] for i, name in enumerate(names)})
        new = column_step(model, forcing, State.from_fields(fields), t, dt).fields()
        return jnp.concatenate([new[name] for name in names])

    x0 = jnp.concatenate([state.fields()[name] for name in names])
    return jax.jacfwd(step)(x0)


@eqx.filter_jit
def _column_quantities(models, forcing, states, times, dt, slot: str):
    """Budgets ``(scenario, sample)`` and Jacobians ``(scenario, sample, n, n)``."""
    def per_scenario(model, forcing_s, states_s, times, dt):
        def per_sample(state, t):
            return (heat_budget_residual(model, forcing_s, state, t, dt, slot),
                    momentum_budget_residual(model, forcing_s, state, t, dt, slot),
                    kinetic_energy_source(model, forcing_s, state, t, dt, slot),
                    jacobian_moduli(model, forcing_s, state, t, dt))
        return jax.vmap(per_sample)(states_s, times)
    return map_columns(per_scenario, (0, 0, 0, None, None), models, forcing, states, times, dt)


@eqx.filter_jit
def _physics_weights(detector: InputDistance, models, forcing, states, times, slot: str):
    """The detector's physics weight at every saved state ``(scenario, time)``, over the
    surface layer of each scenario's slot."""
    def per_scenario(model, forcing_s, states_s):
        located = eqx.tree_at(lambda d: d.surface, detector, _surface_of(model, slot),
                              is_leaf=lambda x: x is None)

        def per_save(state, t):
            distance = located.distance(state, forcing_s.at(t), model.grid)
            return located.physics_weight(distance)
        return jax.vmap(per_save)(states_s, times)
    return map_columns(per_scenario, (0, 0, 0), models, forcing, states)


def _surface_of(model: Model, slot: str):
    """The surface layer of a model's slot: of the scheme, or of the physics or network it
    wraps (whichever holds one)."""
    scheme = getattr(model, slot)
    for part in (scheme, getattr(scheme, "physics", None), getattr(scheme, "learned", None),
                 getattr(scheme, "correction", None)):
        surface = getattr(part, "surface", None)
        if surface is not None:
            return surface
    raise ConfigurationError(f"no surface layer in the {slot!r} slot for the detector")


# ---------------------------------------------------------------------------------------------
# scores against the truth (the experiment's too)


def skill_scores(state: State, hourly: xr.Dataset, layer_mass: np.ndarray,
                 drift_theta: float = DRIFT_THETA, drift_wind: float = DRIFT_WIND) -> dict:
    """Per scenario, of hourly states ``(scenario, hour, z)`` (host arrays) against the
    truth at the same times: the 24 h RMSE of θ, u, v and the wind vector, the daily-mean
    θ and wind errors ``(scenario, day)`` (RMS over levels), the last day's mean-profile
    errors, the drift failure time (days, ``drift_failure_time``) and the column-mean trends
    against the truth's (``drift_<name>``, per day)."""
    du, dv = state.u - hourly["u"].values, state.v - hourly["v"].values
    dtheta = state.thl - hourly["theta"].values
    daily_theta = np.sqrt((daily_means(dtheta, 24) ** 2).mean(axis=-1))
    daily_wind = np.sqrt((daily_means(du, 24) ** 2 + daily_means(dv, 24) ** 2).mean(axis=-1))
    weights = (layer_mass / layer_mass.sum(axis=-1, keepdims=True))[:, None, :]
    out = {
        "rmse_theta_24h": first_day_rmse(dtheta), "rmse_u_24h": first_day_rmse(du),
        "rmse_v_24h": first_day_rmse(dv), "rmse_wind_24h": first_day_rmse(du, dv),
        "daily_theta_error": daily_theta, "daily_wind_error": daily_wind,
        "final_theta_error": daily_theta[:, -1], "final_wind_error": daily_wind[:, -1],
        "drift_failed_at_days": drift_failure_time(daily_theta, daily_wind, drift_theta,
                                                   drift_wind),
    }
    for name, model_x, truth_x in (("theta", state.thl, hourly["theta"].values),
                                   ("u", state.u, hourly["u"].values),
                                   ("v", state.v, hourly["v"].values)):
        out[f"drift_{name}"] = (daily_trend((model_x * weights).sum(axis=-1), 24)
                                - daily_trend((truth_x * weights).sum(axis=-1), 24))
    return out


# ---------------------------------------------------------------------------------------------
# the benchmark


@dataclasses.dataclass(frozen=True)
class StabilityConfig:
    """Length of the runs, failure criteria and how the metrics are sampled."""

    days: float = 30.0
    jacobian_every_hours: float = 72.0
    growth_tolerance: float = 1.0e-4
    bounds: tuple[tuple[str, float, float], ...] = tuple(
        (name, low, high) for name, (low, high) in DEFAULT_BOUNDS.items())
    drift_theta: float = DRIFT_THETA
    drift_wind: float = DRIFT_WIND
    truth: bool = True

    def __post_init__(self):
        check_range("days", self.days, 1.0 / 24.0, 3650.0, "days")
        check_range("jacobian_every_hours", self.jacobian_every_hours, 1.0, 1.0e5, "h")
        check_range("growth_tolerance", self.growth_tolerance, 0.0, 1.0)
        check_range("drift_theta", self.drift_theta, 0.01, 1000.0, "K")
        check_range("drift_wind", self.drift_wind, 0.01, 1000.0, "m s-1")
        if self.truth and self.days != round(self.days):
            raise ConfigurationError(f"days must be whole with truth (got {self.days:g})")


class Candidate(NamedTuple):
    """A model to judge: its name (shared by the seeds of one model), a builder from a
    scenario's physics model, the slot its network fills (the budgets' slot), its seed
    (``None`` for physics) and its input-distance detector (``None`` if it has none)."""

    name: str
    build: Callable[[Model], Model]
    slot: str = "turbulence"
    seed: int | None = None
    detector: InputDistance | None = None


class ScenarioSet(NamedTuple):
    """Scenarios of one set: coarse physics models, forcings, initial states, the truth
    (``None`` for truth-free runs), the time step and each scenario's family."""

    name: str
    models: list[Model]
    forcings: list[ForcingSeries]
    states: list[State]
    truth: xr.Dataset | None
    dt: float
    families: list[str]


def physics_candidate(name: str, dt: float) -> Candidate:
    """The coarse model with the physics closure ``name`` (``experiments.cases``)."""
    check_choice("baseline", name, TURBULENCE_NAMES)

    def build(model: Model) -> Model:
        return model.with_slot("turbulence", turbulence_scheme(
            name, model.turbulence.surface, dt, moist=getattr(model.turbulence, "moist", True)))

    return Candidate(f"physics_{name}", build)


def artifact_candidates(path, fallback: str = "off") -> list[Candidate]:
    """A trained artifact (``nn.artifact``) in its slot of the coarse model: without its
    out-of-distribution fallback, with it, or both (``fallback`` "off", "on", "both")."""
    check_choice("fallback", fallback, ("off", "on", "both"))
    artifact = load_artifact(path)
    slot, seed, detector = artifact.config["slot"], artifact.config.get("seed"), \
        artifact.detector
    settings = {"off": (False,), "on": (True,), "both": (False, True)}[fallback]
    if detector is None:
        settings = (False,)
    out = []
    for on in settings:
        name = artifact.name + ("+fallback" if on else "")
        out.append(Candidate(name, lambda m, on=on: install_artifact(m, artifact, fallback=on),
                             slot, seed, detector))
    return out


def _models_and_states(cases) -> tuple[list[Model], list[ForcingSeries], list[State]]:
    return ([c.model for c in cases], [c.forcing for c in cases],
            [dataclasses.replace(c.state0, tracers={}) for c in cases])


def scenario_set(name: str, truth: xr.Dataset) -> ScenarioSet:
    """Coarse physics models (local closure) and forcings of every scenario of a truth
    file (on its grid and at its save interval)."""
    times = truth["time"].values
    dt = float(times[1] - times[0])
    cases = [build_case("diurnal", levels=truth.sizes["z"], dt=dt, hours=24.0,
                        turbulence="local", **p) for p in scenario_parameters(truth)]
    check_truth_grid(truth, cases[0].model.grid, name)
    return ScenarioSet(name, *_models_and_states(cases), truth, dt, scenario_families(truth))


def sampled_set(name: str, n: int, seed: int, levels: int = 32,
                dt: float = 300.0) -> ScenarioSet:
    """A set drawn without truth (``sample_scenarios``), from the case's initial state."""
    parameters = sample_scenarios(name, n, seed)
    cases = [build_case("diurnal", levels=levels, dt=dt, hours=24.0, turbulence="local", **p)
             for p in parameters]
    return ScenarioSet(name, *_models_and_states(cases), None, dt, scenario_labels(name, n))


#: Default sampling seeds of the sets (``experiments.scenarios``; the experiment's too).
SET_SEEDS = {"train": 0, "validation": 1, "test": 2, "extrapolation": 3}


def load_scenarios(sets: tuple[str, ...], truth_dir: Path, sizes: dict[str, int], days: float,
                   progress: bool, log) -> dict[str, ScenarioSet]:
    """Scenario sets from ``truth_dir/truth_<set>.nc``; missing files are generated there
    (``sizes[set]`` scenarios, per family for ``extrapolation``; 5 days of spin-up,
    ``days`` kept)."""
    out = {}
    for name in sets:
        path = truth_dir / f"truth_{name}.nc"
        if not path.exists():
            log(f"generating the {name} truth into {path}")
            truth_dir.mkdir(parents=True, exist_ok=True)
            seed = SET_SEEDS[name]
            write_netcdf(generate_truth(
                sample_scenarios(name, sizes[name], seed), days=5.0 + days + 1.0 / 24.0,
                spinup_days=5.0, progress=progress, split=name, seed=seed,
                labels=scenario_labels(name, sizes[name])), path)
        out[name] = scenario_set(name, load_truth(path))
    return out


def _truth_series(hourly: xr.Dataset) -> dict[str, np.ndarray]:
    out = {name: hourly[name].values
           for name in (*VARIABLES, "ustar", "surface_heat_flux", "boundary_layer_height")}
    out["low_level_jet"] = low_level_jet(out["u"], out["v"], hourly["z"].values)
    return out


def low_level_jet(u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Largest wind speed below ``JET_TOP`` (m s-1), over the last axis."""
    below = np.asarray(z) < JET_TOP
    return np.sqrt(np.asarray(u) ** 2 + np.asarray(v) ** 2)[..., below].max(axis=-1)


def _stacked(candidate: Candidate, scenarios: ScenarioSet):
    models = [candidate.build(m) for m in scenarios.models]
    return stack_pytrees(models), stack_pytrees(scenarios.forcings), initial_tracers(models)


def initial_tracers(models: list[Model]) -> dict:
    """The initial tracers of every scenario's model (the schemes' defaults), stacked:
    truth holds none, so a scheme that owns one (TKE) starts from its default."""
    return stack_pytrees([m.initial_tracers() for m in models]) if models[0].initial_tracers(
    ) else {}


def flagged_fraction(detector: InputDistance | None, models: Model, forcings: ForcingSeries,
                     states: State, times, slot: str = "turbulence") -> np.ndarray:
    """Fraction of the saved states ``(scenario, time, z)`` after the first that
    ``detector`` flags (physics weight > ``FLAGGED_WEIGHT``), per scenario, over the surface
    layer of each stacked model's ``slot``; NaN without a detector."""
    if detector is None:
        return np.full(states.u.shape[0], np.nan)
    weights = _physics_weights(detector, models, forcings, states, jnp.asarray(times), slot)
    return (to_host(weights)[:, 1:] > FLAGGED_WEIGHT).mean(axis=1)


def evaluate_candidate(candidate: Candidate, scenarios: ScenarioSet, config: StabilityConfig,
                       progress: bool = True) -> dict:
    """Run one model on one scenario set against its truth; every metric (arrays per
    scenario)."""
    dt = scenarios.dt
    n_hours = round(config.days * 24)
    models, forcings, tracers = _stacked(candidate, scenarios)
    start = time.perf_counter()
    run, hourly = run_from_truth(models, forcings, scenarios.truth, dt, n_hours,
                                 progress=progress, desc=f"{candidate.name} {scenarios.name}",
                                 bounds=config.bounds, tracers=tracers)
    seconds = time.perf_counter() - start
    truth = _truth_series(hourly)
    state = jax.tree.map(np.asarray, run.state)
    series = {"theta": state.thl, "u": state.u, "v": state.v}
    for name in ("ustar", "surface_heat_flux", "boundary_layer_height"):
        series[name] = np.asarray(run.diagnostics[name])
    z = np.asarray(scenarios.models[0].grid.z)
    series["low_level_jet"] = low_level_jet(state.u, state.v, z)
    times = np.asarray(run.time[0])
    mass = np.stack([np.asarray(m.grid.layer_mass, float) for m in scenarios.models])
    out = {"time": times - times[0], "run_seconds": seconds, "families": scenarios.families,
           **skill_scores(state, hourly, mass, config.drift_theta, config.drift_wind)}
    bounds_failed = np.asarray(run.failed_at) - times[0]
    out["bounds_failed_at"] = bounds_failed
    out["failed_at"] = np.minimum(bounds_failed, out["drift_failed_at_days"] * DAY)
    for name in (*VARIABLES, *DIAGNOSTICS):
        out[f"rmse_{name}"], out[f"bias_{name}"] = lead_time_skill(series[name], truth[name])
    out["rmse_wind"] = np.sqrt(((state.u - truth["u"]) ** 2
                                + (state.v - truth["v"]) ** 2).mean(axis=-1))
    for name, model_x, truth_x in (("theta", state.thl, truth["theta"]),
                                   ("u", state.u, truth["u"]), ("v", state.v, truth["v"])):
        out[f"mean_bias_profile_{name}"] = (model_x[:, 1:] - truth_x[:, 1:]).mean(axis=1)
    for name in ("surface_heat_flux", "boundary_layer_height"):
        out[f"diurnal_{name}"] = diurnal_composite(series[name][:, 1:], times[1:])
        out[f"diurnal_{name}_truth"] = diurnal_composite(truth[name][:, 1:], times[1:])
    out["flagged_fraction"] = flagged_fraction(candidate.detector, models, forcings,
                                               run.state, times, candidate.slot)
    out.update(_step_quantities(candidate, models, forcings, run.state, times, dt, n_hours,
                                config, mass))
    return out


def _step_quantities(candidate, models, forcings, states, times, dt, n_saves, config,
                     mass, saves_per_hour: float = 1.0) -> dict:
    """One-step budgets, kinetic-energy source and Jacobians at states sampled along a run."""
    every = max(1, round(config.jacobian_every_hours * saves_per_hour))
    picks = np.arange(0, n_saves + 1, every)
    sampled = jax.tree.map(lambda a: jnp.asarray(a[:, picks]), states)
    dtype = states.u.dtype
    heat, momentum, energy, jacobians = to_host(_column_quantities(
        models, forcings, sampled, jnp.asarray(times[picks], dtype), jnp.asarray(dt, dtype),
        candidate.slot))
    per_day = round(DAY / dt) / mass.sum(axis=1)[:, None]
    moduli = np.abs(np.linalg.eigvals(np.asarray(jacobians, float)))
    largest, growing = spectrum_summary(moduli, config.growth_tolerance)
    return {"budget_residual": np.asarray(heat) * per_day,
            "momentum_residual": np.abs(np.asarray(momentum)) * per_day,
            "kinetic_energy_source": np.asarray(energy), "jacobian_moduli": moduli,
            "largest_modulus": largest, "growing_fraction": growing}


def evaluate_long(candidate: Candidate, scenarios: ScenarioSet, config: StabilityConfig,
                  progress: bool = True) -> dict:
    """Run one model from the case's initial states for ``config.days`` without truth;
    survival, trends, periodicity and the climate (module docstring)."""
    dt = scenarios.dt
    saves_per_day = 24 // LONG_SAVE_HOURS
    steps_per_save = round(LONG_SAVE_HOURS * HOUR / dt)
    n_saves = round(config.days * saves_per_day)
    models, forcings, tracers = _stacked(candidate, scenarios)
    states = dataclasses.replace(stack_pytrees(scenarios.states), tracers=tracers)
    start = time.perf_counter()
    run = run_ensemble(models, forcings, states, dt, 0.0, n_saves * steps_per_save,
                       steps_per_save, progress=progress,
                       desc=f"{candidate.name} {scenarios.name}", output=state_only,
                       bounds=config.bounds)
    seconds = time.perf_counter() - start
    state = jax.tree.map(np.asarray, run.state)
    times = np.asarray(run.time[0])
    mass = np.stack([np.asarray(m.grid.layer_mass, float) for m in scenarios.models])
    exner = np.stack([np.asarray(m.grid.exner, float) for m in scenarios.models])
    weights = (mass / mass.sum(axis=-1, keepdims=True))[:, None, :]
    skip = min(LONG_SPINUP_DAYS, max(0, int(config.days) // 2))
    out = {"time": times, "run_seconds": seconds, "families": scenarios.families,
           "failed_at": np.asarray(run.failed_at)}
    for name, x in state.fields().items():
        out[f"trend_{name}"] = daily_trend((x * weights).sum(axis=-1), saves_per_day, skip)
    heat = DRY_AIR_HEAT_CAPACITY * (mass[:, None, :] * exner[:, None, :] * state.thl).sum(-1)
    energy = (mass[:, None, :] * 0.5 * (state.u**2 + state.v**2)).sum(-1)
    out["trend_heat_content"] = daily_trend(heat, saves_per_day, skip)
    out["trend_kinetic_energy"] = daily_trend(energy, saves_per_day, skip)
    daily_theta = daily_means(state.thl, saves_per_day)
    out["periodicity_theta"] = periodicity(daily_theta)
    last = slice(-CLIMATE_DAYS, None)
    out["climate_theta"] = daily_theta[:, last].mean(axis=1)
    out["climate_u"] = daily_means(state.u, saves_per_day)[:, last].mean(axis=1)
    out["climate_v"] = daily_means(state.v, saves_per_day)[:, last].mean(axis=1)
    out["flagged_fraction"] = flagged_fraction(candidate.detector, models, forcings,
                                               run.state, times, candidate.slot)
    out.update(_step_quantities(candidate, models, forcings, run.state, times, dt, n_saves,
                                config, mass, 1.0 / LONG_SAVE_HOURS))
    return out


def climate_differences(results: dict, baseline: str) -> None:
    """Add to every truth-free result the RMS difference (over levels) of its climate from
    the baseline's, per scenario: ``climate_theta_difference`` (K) and
    ``climate_wind_difference`` (m s-1)."""
    for by_set in results.values():
        for name, runs in by_set.items():
            reference = results[baseline][name][0]
            for r in runs:
                r["climate_theta_difference"] = np.sqrt(
                    ((r["climate_theta"] - reference["climate_theta"]) ** 2).mean(axis=-1))
                r["climate_wind_difference"] = np.sqrt(
                    ((r["climate_u"] - reference["climate_u"]) ** 2
                     + (r["climate_v"] - reference["climate_v"]) ** 2).mean(axis=-1))


# ---------------------------------------------------------------------------------------------
# summaries, report and plots


def _stack(runs: list[dict], key: str) -> np.ndarray:
    """``key`` of every seed's result, ``(seed, scenario, ...)``."""
    return np.stack([np.asarray(r[key], float) for r in runs])


def _finite_mean(values: np.ndarray, missing):
    """The mean of the finite ``values``; ``missing`` where there are none (no detector, or
    a run too short for the quantity)."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else missing


def _interval(model: np.ndarray, baseline: np.ndarray) -> list[float]:
    return list(bootstrap_change(model, baseline.mean(axis=0)))


def skill_summary(runs: list[dict], reference: list[dict], select: np.ndarray) -> dict:
    """Of the scenarios ``select`` of per-seed results ``runs`` (``skill_scores`` keys,
    ``failed_at``, ``flagged_fraction``): runs, failed and drifted runs, mean errors and
    their changes against ``reference`` (the baseline's results) with 95 % intervals
    (``bootstrap_change``), and the mean flagged fraction."""
    out = {"runs": int(select.sum() * len(runs))}
    failed = _stack(runs, "failed_at")[:, select]
    out["failed"] = int(np.isfinite(failed).sum())
    out["drifted"] = int(np.isfinite(_stack(runs, "drift_failed_at_days")[:, select]).sum())
    for key in ("rmse_theta_24h", "rmse_wind_24h", "final_theta_error", "final_wind_error"):
        model, base = _stack(runs, key)[:, select], _stack(reference, key)[:, select]
        out[key] = float(model.mean())
        out[f"change_{key}"] = _interval(model, base)
    out["flagged_fraction"] = _finite_mean(_stack(runs, "flagged_fraction")[:, select], None)
    return out


def skill_table(results: dict[str, dict[str, list[dict]]], baseline: str) -> dict:
    """Per model and set: ``skill_summary`` of all scenarios with the number of seeds, and
    of each family (``families``)."""
    table: dict = {}
    for model, by_set in results.items():
        table[model] = {}
        for name, runs in by_set.items():
            reference = results[baseline][name]
            families = np.asarray(runs[0]["families"])
            entry = {"seeds": len(runs),
                     **skill_summary(runs, reference, np.ones(families.size, bool))}
            entry["families"] = {family: skill_summary(runs, reference, families == family)
                                 for family in dict.fromkeys(families.tolist())}
            table[model][name] = entry
    return table


def summarize(results: dict[str, dict[str, list[dict]]], baseline: str) -> dict:
    """Per model and set, over seeds and scenarios: ``skill_table`` and the stability
    figures (survival, Jacobians, budgets, kinetic-energy source, drift)."""
    summary = skill_table(results, baseline)
    for model, by_set in results.items():
        for name, runs in by_set.items():
            failed_at = _stack(runs, "failed_at").ravel()
            summary[model][name].update({
                "fraction_alive_at_end": float(np.mean(~np.isfinite(failed_at))),
                "median_time_to_failure_days": median_time_to_failure(failed_at) / DAY,
                "largest_jacobian_modulus": max(r["largest_modulus"] for r in runs),
                "growing_mode_fraction": float(np.mean([r["growing_fraction"] for r in runs])),
                "budget_residual_max_K_per_day": float(np.abs(_stack(
                    runs, "budget_residual")).max()),
                "momentum_residual_max_m_s_per_day": float(_stack(
                    runs, "momentum_residual").max()),
                "kinetic_energy_source_max_W_m2": float(_stack(
                    runs, "kinetic_energy_source").max()),
                "kinetic_energy_source_mean_W_m2": float(_stack(
                    runs, "kinetic_energy_source").mean()),
                "drift_theta_K_per_day": float(_stack(runs, "drift_theta").mean()),
                "drift_u_m_s_per_day": float(_stack(runs, "drift_u").mean()),
                "drift_v_m_s_per_day": float(_stack(runs, "drift_v").mean()),
                "run_seconds": float(sum(r["run_seconds"] for r in runs)),
            })
    return summary


def summarize_long(results: dict[str, dict[str, list[dict]]]) -> dict:
    """Per model and set of a truth-free run: survival, trends, periodicity, climate
    difference from the baseline (means over seeds and scenarios)."""
    summary: dict = {}
    for model, by_set in results.items():
        summary[model] = {}
        for name, runs in by_set.items():
            failed_at = _stack(runs, "failed_at").ravel()
            entry = {"seeds": len(runs), "runs": int(failed_at.size),
                     "failed": int(np.isfinite(failed_at).sum()),
                     "fraction_alive_at_end": float(np.mean(~np.isfinite(failed_at)))}
            for key, value in runs[0].items():
                per_scenario = np.ndim(value) == 1
                if per_scenario and (key.startswith(("trend_", "periodicity_"))
                                     or key.endswith("_difference")):
                    entry[key] = _finite_mean(_stack(runs, key), float("nan"))
            entry["flagged_fraction"] = _finite_mean(_stack(runs, "flagged_fraction"), None)
            entry["largest_jacobian_modulus"] = max(r["largest_modulus"] for r in runs)
            entry["budget_residual_max_K_per_day"] = float(np.abs(_stack(
                runs, "budget_residual")).max())
            entry["kinetic_energy_source_max_W_m2"] = float(_stack(
                runs, "kinetic_energy_source").max())
            entry["run_seconds"] = float(sum(r["run_seconds"] for r in runs))
            summary[model][name] = entry
    return summary


def _change(cell: list[float]) -> str:
    change, low, high = (100.0 * x for x in cell)
    return f"{change:+.0f} % [{low:+.0f}, {high:+.0f}]"


def _flag(value) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def verdict(entry: dict) -> str:
    """One line per model and set, from the summary figures."""
    notes = []
    if entry["failed"]:
        notes.append(f"UNSAFE: {entry['failed']} of {entry['runs']} runs failed "
                     f"({entry['drifted']} by drift)")
    else:
        notes.append("every run stable and within the drift thresholds")
    if entry["growing_mode_fraction"] > 0:
        notes.append(f"growing linear modes in {100 * entry['growing_mode_fraction']:.0f} % "
                     "of sampled states")
    if entry["budget_residual_max_K_per_day"] > 1.0e-2:
        notes.append(f"leaks heat (up to {entry['budget_residual_max_K_per_day']:.2g} K/day)")
    if entry["kinetic_energy_source_max_W_m2"] > 1.0e-3:
        notes.append(f"creates kinetic energy (up to "
                     f"{entry['kinetic_energy_source_max_W_m2']:.2g} W m-2)")
    notes.append(f"24 h θ error {_change(entry['change_rmse_theta_24h'])}, wind "
                 f"{_change(entry['change_rmse_wind_24h'])} vs baseline")
    return "; ".join(notes)


def markdown_report(summary: dict, baseline: str, config: StabilityConfig,
                    seconds: float) -> str:
    """The report of a run against truth: per set a table, the families, verdicts."""
    days = f"{config.days:g}"
    lines = [
        "# Rollout-stability report",
        "",
        f"Every model ran {days} days on every scenario from the coarse-grained truth at the "
        "end of its spin-up. A run **fails** when it goes non-finite or leaves the physical "
        f"bounds ({', '.join(f'{n} {lo:g}..{hi:g}' for n, lo, hi in config.bounds)}), or "
        f"**drifts**: a daily-mean θ profile more than {config.drift_theta:g} K (RMS over "
        f"levels) or a daily-mean wind more than {config.drift_wind:g} m/s from the truth's. "
        "Errors are means over scenarios and seeds; changes are against the baseline, with "
        "95 % intervals from resampling scenarios and seeds. Flagged: the fraction of hourly "
        "states the artifact's input-distance detector puts outside its training "
        f"distribution. Jacobian eigenvalues at states every {config.jacobian_every_hours:g} "
        f"h (a mode grows when |λ| > 1 + {config.growth_tolerance:g}; the time step's own "
        f"Coriolis turning is neutral). Wall time {seconds:.0f} s for the runs and their "
        "metrics (truth generation not included).",
        "",
    ]
    for name in next(iter(summary.values())):
        lines += [
            f"## {name} scenarios ({summary[baseline][name]['runs']} runs of the baseline)",
            "",
            "| model | seeds | failed (drift) | θ 24 h (K) | θ change | wind 24 h (m/s) | "
            f"wind change | day-{days} θ (K) | day-{days} θ change | flagged | largest |λ| | "
            "heat / momentum residual (per day) | KE source max (W/m²) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for model, by_set in summary.items():
            e = by_set[name]
            lines.append(
                f"| {model} | {e['seeds']} | {e['failed']}/{e['runs']} ({e['drifted']}) | "
                f"{e['rmse_theta_24h']:.3f} | {_change(e['change_rmse_theta_24h'])} | "
                f"{e['rmse_wind_24h']:.3f} | {_change(e['change_rmse_wind_24h'])} | "
                f"{e['final_theta_error']:.3f} | {_change(e['change_final_theta_error'])} | "
                f"{_flag(e['flagged_fraction'])} | {e['largest_jacobian_modulus']:.3f} | "
                f"{e['budget_residual_max_K_per_day']:.2g} K / "
                f"{e['momentum_residual_max_m_s_per_day']:.2g} m/s | "
                f"{e['kinetic_energy_source_max_W_m2']:.2g} |")
        families = list(summary[baseline][name]["families"])
        if len(families) > 1:
            lines += ["", f"Per family ({name}): 24 h θ and wind RMSE, change against "
                      "the baseline [95 % interval], failed runs, flagged states.", "",
                      "| family | model | θ 24 h (K) | θ change | wind 24 h (m/s) | "
                      "wind change | failed | flagged |",
                      "|---|---|---:|---:|---:|---:|---:|---:|"]
            for family in families:
                for model, by_set in summary.items():
                    f = by_set[name]["families"][family]
                    lines.append(
                        f"| {family} | {model} | {f['rmse_theta_24h']:.3f} | "
                        f"{_change(f['change_rmse_theta_24h'])} | {f['rmse_wind_24h']:.3f} | "
                        f"{_change(f['change_rmse_wind_24h'])} | {f['failed']}/{f['runs']} | "
                        f"{_flag(f['flagged_fraction'])} |")
        lines += ["", "Verdicts:", ""]
        for model, by_set in summary.items():
            lines.append(f"- **{model}**: {verdict(by_set[name])}")
        lines.append("")
    return "\n".join(lines)


def markdown_long_report(summary: dict, config: StabilityConfig, seconds: float) -> str:
    """The report of a truth-free run."""
    lines = [
        "# Rollout-stability report: truth-free long runs",
        "",
        f"Every model ran {config.days:g} days on every scenario from the case's initial "
        f"state, saved every {LONG_SAVE_HOURS} h. Trends are least-squares slopes of daily "
        f"means after the first {LONG_SPINUP_DAYS} days (column means of θ, u, v; column heat "
        "content c_p Σ m Π θ and kinetic energy Σ m |W|²/2); periodicity is the RMS change of "
        f"the daily-mean θ profile from one day to the next over the last {CLIMATE_DAYS} "
        f"days; the climate difference is the RMS difference of the last {CLIMATE_DAYS} days' "
        "mean profiles from the physics baseline's own. Means over scenarios and seeds. "
        f"Wall time {seconds:.0f} s.",
        "",
    ]
    for name in next(iter(summary.values())):
        lines += [
            f"## {name} scenarios",
            "",
            "| model | alive at end | θ trend (K/day) | u, v trend (m/s/day) | heat content "
            "trend (J/m²/day) | KE trend (J/m²/day) | periodicity θ (K) | climate vs "
            "baseline θ (K) | wind (m/s) | flagged |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for model, by_set in summary.items():
            e = by_set[name]
            lines.append(
                f"| {model} | {100 * e['fraction_alive_at_end']:.0f} % "
                f"({e['runs'] - e['failed']}/{e['runs']}) | {e['trend_thl']:+.2e} | "
                f"{e['trend_u']:+.2e}, {e['trend_v']:+.2e} | {e['trend_heat_content']:+.3g} | "
                f"{e['trend_kinetic_energy']:+.3g} | {e['periodicity_theta']:.3g} | "
                f"{e['climate_theta_difference']:.3g} | {e['climate_wind_difference']:.3g} | "
                f"{_flag(e['flagged_fraction'])} |")
        lines.append("")
    return "\n".join(lines)


_SCALAR_UNITS = {
    "failed_at": ("s", "time of failure by bounds or drift (inf: never)"),
    "bounds_failed_at": ("s", "time of leaving the physical bounds (inf: never)"),
    "drift_failed_at_days": ("day", "end of the first day beyond the drift thresholds"),
    "rmse_theta_24h": ("K", "24 h RMSE of theta"),
    "rmse_wind_24h": ("m s-1", "24 h RMSE of the wind vector"),
    "final_theta_error": ("K", "RMSE of the last day's mean theta profile"),
    "final_wind_error": ("m s-1", "RMSE of the last day's mean wind profile"),
    "flagged_fraction": ("1", "fraction of saved states out of the training distribution"),
    "drift_theta": ("K day-1", "trend of the column-mean theta minus the truth's"),
    "periodicity_theta": ("K", "RMS change of the daily-mean theta profile day to day"),
    "trend_heat_content": ("J m-2 day-1", "trend of the column heat content"),
    "trend_kinetic_energy": ("J m-2 day-1", "trend of the column kinetic energy"),
    "climate_theta_difference": ("K", "RMS difference of the mean theta profile from the "
                                      "baseline's"),
    "climate_wind_difference": ("m s-1", "RMS difference of the mean wind profile from the "
                                         "baseline's"),
}


def metrics_dataset(results: dict[str, dict[str, list[dict]]], attrs: dict) -> xr.Dataset:
    """The per-run metrics as a CF-annotated dataset: one variable per metric, model and
    set over the runs (seed-major) of that model and set, with each run's seed and family."""
    variables = {}
    for model, by_set in results.items():
        for name, runs in by_set.items():
            key = f"{model}_{name}".replace("+", "_")
            dim = f"run_{key}"
            families = [f for r in runs for f in r["families"]]
            variables[f"family_{key}"] = xr.Variable(dim, np.asarray(families, str),
                                                     {"long_name": "scenario family"})
            for metric, (units, text) in _SCALAR_UNITS.items():
                if metric in runs[0]:
                    variables[f"{metric}_{key}"] = xr.Variable(
                        dim, _stack(runs, metric).ravel(),
                        {"units": units, "long_name": f"{text} ({model}, {name})"})
            if "daily_theta_error" in runs[0]:
                for metric, units in (("daily_theta_error", "K"), ("daily_wind_error", "m s-1")):
                    values = _stack(runs, metric)
                    variables[f"{metric}_{key}"] = xr.Variable(
                        (dim, "day"), values.reshape(-1, values.shape[-1]),
                        {"units": units, "long_name": f"RMSE of the daily-mean profile "
                         f"({model}, {name})"})
    return xr.Dataset(variables, attrs=global_attributes(attrs))


def plot_results(results: dict, out: Path, truth: bool) -> list[Path]:
    """Survival curves, and (with truth) RMSE against lead time and mean bias profiles."""
    from scm.figures import new_figure, save_figure

    paths = []
    sets = list(next(iter(results.values())))
    figures = {"survival.png": ("survival (fraction alive)", None)}
    if truth:
        figures["rmse_lead_time.png"] = ("θ RMSE (K)", "rmse_theta")
        figures["rmse_wind_lead_time.png"] = ("wind RMSE (m s-1)", "rmse_wind")
    for filename, (ylabel, key) in figures.items():
        figure, axes = new_figure(len(sets))
        for axis, name in zip(axes, sets, strict=True):
            for model, by_set in results.items():
                runs = by_set[name]
                t = runs[0]["time"]
                y = (survival_curve(_stack(runs, "failed_at").ravel(), t) if key is None
                     else _stack(runs, key).mean(axis=(0, 1)))
                axis.plot(t / DAY, y, label=model, lw=1)
            axis.set_xlabel("lead time (days)")
            axis.set_ylabel(ylabel)
            axis.set_title(name)
            axis.legend(fontsize=7)
        paths.append(save_figure(figure, out / filename))
    if truth:
        figure, axes = new_figure(len(sets))
        for axis, name in zip(axes, sets, strict=True):
            for model, by_set in results.items():
                profile = _stack(by_set[name], "mean_bias_profile_theta").mean(axis=(0, 1))
                axis.plot(profile, np.arange(profile.size), label=model, lw=1)
            axis.axvline(0.0, color="0.6", lw=0.8)
            axis.set_xlabel("time-mean θ bias (K)")
            axis.set_ylabel("level")
            axis.set_title(name)
            axis.legend(fontsize=7)
        paths.append(save_figure(figure, out / "bias_profiles.png"))
    return paths


def _artifact_grid(model_paths) -> tuple[int, float]:
    """(levels, time step) for truth-free runs: the first artifact's (its network's levels,
    the step it was trained at), else 32 levels and 300 s."""
    for path in model_paths:
        config = load_artifact(path).config
        return config["network"]["levels"], float(config.get("time_step") or 300.0)
    return 32, 300.0


def run_benchmark(model_paths, out, *, baseline: str = "local", physics: tuple[str, ...] = (),
                  sets: str = "all", config: StabilityConfig | None = None, truth_dir=None,
                  sizes: dict[str, int] | None = None, fallback: str = "off",
                  progress: bool = True, log=print) -> dict:
    """Judge every artifact in ``model_paths`` (the seeds of one model grouped by its name)
    beside the physics ``baseline`` and the closures ``physics`` on the ``test`` and
    ``extrapolation`` sets (``sets``: one of them or "all"); writes the outputs into
    ``out`` and returns the record. With ``config.truth`` False the runs are truth-free
    (module docstring). ``sizes``: scenarios per set (per family for extrapolation) when
    truth or scenarios are drawn."""
    config = StabilityConfig() if config is None else config
    check_choice("scenarios", sets, (*SETS, "all"))
    chosen = SETS if sets == "all" else (sets,)
    sizes = {"test": 16, "extrapolation": 4, **(sizes or {})}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if config.truth:
        scenario_sets = load_scenarios(chosen, out if truth_dir is None else Path(truth_dir),
                                       sizes, config.days, progress, log)
    else:
        grid = _artifact_grid(model_paths)
        scenario_sets = {name: sampled_set(name, sizes[name], SET_SEEDS[name], *grid)
                         for name in chosen}
    truth_seconds = time.perf_counter() - start
    start = time.perf_counter()
    dt = next(iter(scenario_sets.values())).dt
    candidates = [physics_candidate(name, dt) for name in dict.fromkeys((baseline, *physics))]
    for path in model_paths:
        candidates += artifact_candidates(path, fallback)
    seen = [(c.name, c.seed) for c in candidates]
    if len(set(seen)) != len(seen):
        raise ConfigurationError(f"two models share a name and seed: {seen}")
    evaluate = evaluate_candidate if config.truth else evaluate_long
    results: dict[str, dict[str, list[dict]]] = {}
    for candidate in candidates:
        by_set = results.setdefault(candidate.name, {})
        for name, scenarios in scenario_sets.items():
            by_set.setdefault(name, []).append(evaluate(candidate, scenarios, config, progress))
            log(f"{candidate.name} seed {candidate.seed} {name}: "
                f"{time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    reference = candidates[0].name
    if config.truth:
        summary = summarize(results, reference)
        report = markdown_report(summary, reference, config, seconds)
    else:
        climate_differences(results, reference)
        summary = summarize_long(results)
        report = markdown_long_report(summary, config, seconds)
    record = {"models": summary, "baseline": reference, "days": config.days,
              "truth": config.truth, "drift_theta_K": config.drift_theta,
              "drift_wind_m_s": config.drift_wind, "wall_time_s": seconds,
              "truth_time_s": truth_seconds}
    write_atomic(out / "summary.json",
                 lambda p: p.write_text(json.dumps(record, indent=2, default=float)))
    write_netcdf(metrics_dataset(results, {"title": "rollout-stability metrics",
                                           "days": config.days}), out / "metrics.nc")
    write_atomic(out / "report.md", lambda p: p.write_text(report))
    plot_results(results, out, config.truth)
    log(report)
    return record


__all__ = [
    "BOOTSTRAP_SAMPLES",
    "Candidate",
    "DRIFT_THETA",
    "DRIFT_WIND",
    "SETS",
    "StabilityConfig",
    "bootstrap_change",
    "daily_means",
    "daily_trend",
    "diurnal_composite",
    "drift_failure_time",
    "evaluate_candidate",
    "evaluate_long",
    "flagged_fraction",
    "initial_tracers",
    "artifact_candidates",
    "heat_budget_residual",
    "jacobian_moduli",
    "kinetic_energy_source",
    "lead_time_skill",
    "median_time_to_failure",
    "momentum_budget_residual",
    "periodicity",
    "run_benchmark",
    "skill_scores",
    "skill_summary",
    "skill_table",
    "spectrum_summary",
    "summarize",
    "survival_curve",
]
