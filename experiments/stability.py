"""Rollout-stability benchmark: is a parameterization safe to couple?

Every model (trained artifacts, or any ``Model``) runs the same held-out and
out-of-distribution ``diurnal`` scenarios for ``days`` days, all scenarios at once
(``experiments.run.run_ensemble``), from the coarse-grained truth at the end of its spin-up,
beside the physics baseline. Measured per model and scenario, against the truth
(``experiments.truth``), from hourly saves:

- **time to failure**: the first time the column is non-finite or leaves the physical bounds
  (``scm.integration.DEFAULT_BOUNDS``, configurable); the **survival curve** is the fraction
  of runs not failed by each time;
- **skill** over lead time: RMSE and bias (mean over levels) of θ, u and v, and of the
  diagnostics u*, surface heat flux, boundary-layer height and low-level jet (the largest wind
  speed below ``JET_TOP``), whether or not a network was trained on them;
- **climate**: time-mean profiles (bias against the truth's) and diurnal composites (mean by
  hour of day) of the surface heat flux and boundary-layer height; **drift**: the linear trend
  of the daily means of the column heat content and momentum, as mass-weighted column means
  of θ, u and v (heat content / (c_p × column mass), momentum / column mass), minus the
  truth's;
- **conservation**: the column heat budget of one step at every hourly state,
  Σ m_k Δθ_k − Δt (ρ₀ F₀ + Σ m_k R_k), with m_k = ρ_k Δz_k the layer mass, F₀ the surface heat
  flux and R the explicit tendencies of the slots other than the turbulence slot (large-scale
  forcing); a turbulence scheme in flux form leaves round-off, a "leaky" one does not. Reported
  as the equivalent change of the column-mean θ per day (K day-1);
- **linear stability**: eigenvalues λ of the Jacobian ∂yⁿ⁺¹/∂yⁿ of one coupled step
  (``jax.jacfwd``, over u, v and θ) at states sampled along the run; the largest |λ| and the
  fraction of states with a growing mode, |λ| > 1 + ``growth_tolerance``.

``run_benchmark`` writes ``summary.json``, ``metrics.nc`` (every metric), ``report.md`` and
PNG plots (survival, RMSE against lead time, bias profiles, Jacobian spectra). A column that
fails never stops the benchmark: it is held at its last valid state and recorded.
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

from experiments.cases import DAY, HOUR
from experiments.run import first_day_rmse, run_from_truth
from experiments.scenarios import stack_pytrees
from scm.columns import map_columns, to_host
from scm.errors import ConfigurationError, check_range
from scm.forcing import ForcingSeries
from scm.integration import DEFAULT_BOUNDS, ColumnTerm, SemiImplicitEuler
from scm.io import write_atomic, write_netcdf
from scm.model import Model
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


def daily_trend(series: np.ndarray, saves_per_day: int) -> np.ndarray:
    """Least-squares slope (per day) of the daily means of ``series`` ``(run, time)``; the
    first save (the initial state) is left out so each day has ``saves_per_day`` saves."""
    series = np.asarray(series, float)[:, 1:]
    days = series.shape[1] // saves_per_day
    if days < 2:
        return np.full(series.shape[0], np.nan)
    daily = series[:, : days * saves_per_day].reshape(len(series), days, -1).mean(axis=-1)
    x = np.arange(days) - (days - 1) / 2.0
    return (daily * x).sum(axis=1) / (x**2).sum()


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


# ---------------------------------------------------------------------------------------------
# quantities of one column step (jitted, vmapped over scenarios and samples)


def column_step(model: Model, forcing: ForcingSeries, state: State, t, dt) -> State:
    """One semi-implicit step of the coupled column (no failure guard: the raw map)."""
    return SemiImplicitEuler().step(ColumnTerm(model, forcing), t, t + dt, state, None, None,
                                    False)[0]


def heat_budget_residual(model: Model, forcing: ForcingSeries, state: State, t, dt,
                         turbulence_slot: str = "turbulence"):
    """Σ m Δθ − Δt (ρ₀ F₀ + Σ m R_other) over one step (K kg m-2), see the module docstring."""
    grid = model.grid
    new = column_step(model, forcing, state, t, dt)
    at = forcing.at(t)
    total = model.tendency(state, at)
    other = sum((getattr(model, name)(state, at, grid).tendency.thl
                 for name in model.slots() if name != turbulence_slot),
                jnp.zeros_like(state.thl))
    change = jnp.sum(grid.layer_mass * (new.thl - state.thl))
    supplied = dt * (grid.rho_interface[0] * total.flux.thl[0]
                     + jnp.sum(grid.layer_mass * other))
    return change - supplied


def jacobian_moduli(model: Model, forcing: ForcingSeries, state: State, t, dt):
    """|λ| of the one-step Jacobian over ``JACOBIAN_FIELDS`` (eigenvalues on the host)."""
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
def _column_quantities(models, forcing, states, times, dt, turbulence_slot: str):
    """Budget residuals ``(scenario, sample)`` and Jacobians ``(scenario, sample, n, n)``."""
    def per_scenario(model, forcing_s, states_s, times, dt):
        def per_sample(state, t):
            return (heat_budget_residual(model, forcing_s, state, t, dt, turbulence_slot),
                    jacobian_moduli(model, forcing_s, state, t, dt))
        return jax.vmap(per_sample)(states_s, times)
    return map_columns(per_scenario, (0, 0, 0, None, None), models, forcing, states, times, dt)


# ---------------------------------------------------------------------------------------------
# the benchmark


@dataclasses.dataclass(frozen=True)
class StabilityConfig:
    """Length of the runs and how the metrics are sampled."""

    days: float = 30.0
    jacobian_every_hours: float = 72.0
    growth_tolerance: float = 1.0e-4
    bounds: tuple[tuple[str, float, float], ...] = tuple(
        (name, low, high) for name, (low, high) in DEFAULT_BOUNDS.items())

    def __post_init__(self):
        check_range("days", self.days, 1.0 / 24.0, 3650.0, "days")
        check_range("jacobian_every_hours", self.jacobian_every_hours, 1.0, 1.0e5, "h")
        check_range("growth_tolerance", self.growth_tolerance, 0.0, 1.0)


class Candidate(NamedTuple):
    """A model to judge: its name and one ``Model`` per scenario (any grid-free builder)."""

    name: str
    build: Callable[[Model], Model]


class ScenarioSet(NamedTuple):
    """Scenarios of one split: coarse base models, forcings, truth."""

    name: str
    models: list[Model]
    forcings: list[ForcingSeries]
    truth: xr.Dataset
    dt: float


def _truth_series(hourly: xr.Dataset) -> dict[str, np.ndarray]:
    out = {name: hourly[name].values
           for name in (*VARIABLES, "ustar", "surface_heat_flux", "boundary_layer_height")}
    out["low_level_jet"] = low_level_jet(out["u"], out["v"], hourly["z"].values)
    out["time"] = hourly["time"].values
    return out


def low_level_jet(u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Largest wind speed below ``JET_TOP`` (m s-1), over the last axis."""
    below = np.asarray(z) < JET_TOP
    return np.sqrt(np.asarray(u) ** 2 + np.asarray(v) ** 2)[..., below].max(axis=-1)


def evaluate_candidate(candidate: Candidate, scenarios: ScenarioSet, config: StabilityConfig,
                       progress: bool = True) -> dict:
    """Run one model on one scenario set and compute every metric (arrays per scenario)."""
    dt = scenarios.dt
    n_hours = round(config.days * 24)
    models = stack_pytrees([candidate.build(m) for m in scenarios.models])
    forcings = stack_pytrees(scenarios.forcings)
    dtype = scenarios.models[0].grid.z.dtype
    start = time.perf_counter()
    run, hourly = run_from_truth(models, forcings, scenarios.truth, dt, n_hours,
                                 progress=progress, desc=f"{candidate.name} {scenarios.name}",
                                 bounds=config.bounds)
    seconds = time.perf_counter() - start
    truth = _truth_series(hourly)
    state = jax.tree.map(np.asarray, run.state)
    series = {"theta": state.thl, "u": state.u, "v": state.v}
    for name in ("ustar", "surface_heat_flux", "boundary_layer_height"):
        series[name] = np.asarray(run.diagnostics[name])
    z = np.asarray(scenarios.models[0].grid.z)
    series["low_level_jet"] = low_level_jet(state.u, state.v, z)
    times = np.asarray(run.time[0])
    out = {"time": times - times[0], "failed_at": np.asarray(run.failed_at) - times[0],
           "run_seconds": seconds}
    for name in (*VARIABLES, *DIAGNOSTICS):
        out[f"rmse_{name}"], out[f"bias_{name}"] = lead_time_skill(series[name], truth[name])
    out["rmse_wind"] = np.sqrt(((state.u - truth["u"]) ** 2
                                + (state.v - truth["v"]) ** 2).mean(axis=-1))
    out["rmse_theta_24h"] = first_day_rmse(state.thl - truth["theta"])
    out["rmse_wind_24h"] = first_day_rmse(state.u - truth["u"], state.v - truth["v"])
    for name, model_x, truth_x in (("theta", state.thl, truth["theta"]),
                                   ("u", state.u, truth["u"]), ("v", state.v, truth["v"])):
        out[f"mean_bias_profile_{name}"] = (model_x[:, 1:] - truth_x[:, 1:]).mean(axis=1)
    for name in ("surface_heat_flux", "boundary_layer_height"):
        out[f"diurnal_{name}"] = diurnal_composite(series[name][:, 1:], times[1:])
        out[f"diurnal_{name}_truth"] = diurnal_composite(truth[name][:, 1:], times[1:])
    # mass-weighted column means: heat content and momentum per unit column mass
    mass = np.stack([np.asarray(m.grid.layer_mass, float) for m in scenarios.models])
    weights = (mass / mass.sum(axis=1, keepdims=True))[:, None, :]
    for name, model_x, truth_x in (("theta", state.thl, truth["theta"]),
                                   ("u", state.u, truth["u"]), ("v", state.v, truth["v"])):
        out[f"drift_{name}"] = (daily_trend((model_x * weights).sum(axis=-1), 24)
                                - daily_trend((truth_x * weights).sum(axis=-1), 24))

    # one-step budgets and Jacobians at sampled hourly states
    every = max(1, round(config.jacobian_every_hours))
    picks = np.arange(0, n_hours + 1, every)
    sampled = jax.tree.map(lambda a: jnp.asarray(a[:, picks]), run.state)
    sample_times = jnp.asarray(times[picks], dtype)
    residual, jacobians = to_host(_column_quantities(models, forcings, sampled, sample_times,
                                                     jnp.asarray(dt, dtype), "turbulence"))
    column_mass = float(np.sum(np.asarray(scenarios.models[0].grid.layer_mass)))
    steps_per_day = round(DAY / dt)
    out["budget_residual"] = np.asarray(residual) * steps_per_day / column_mass
    moduli = np.abs(np.linalg.eigvals(np.asarray(jacobians, float)))
    out["jacobian_moduli"] = moduli
    out["largest_modulus"], out["growing_fraction"] = spectrum_summary(
        moduli, config.growth_tolerance)
    return out


__all__ = [
    "Candidate",
    "StabilityConfig",
    "daily_trend",
    "diurnal_composite",
    "evaluate_candidate",
    "heat_budget_residual",
    "jacobian_moduli",
    "lead_time_skill",
    "median_time_to_failure",
    "spectrum_summary",
    "survival_curve",
]


# ---------------------------------------------------------------------------------------------
# models, scenarios and the whole benchmark

SPLITS = ("heldout", "ood")


def physics_candidate(name: str, dt: float) -> Candidate:
    """The coarse model with the physics closure ``name`` (``experiments.cases``)."""
    from experiments.cases import TURBULENCE_NAMES, turbulence_scheme

    if name not in TURBULENCE_NAMES:
        raise ConfigurationError(
            f"baseline must be one of {', '.join(TURBULENCE_NAMES)} (got {name!r})")

    def build(model: Model) -> Model:
        return model.with_slot("turbulence", turbulence_scheme(
            name, model.turbulence.surface, dt))

    return Candidate(f"physics_{name}", build)


def artifact_candidate(path, dt: float) -> Candidate:
    """A trained artifact in the turbulence slot of the coarse model."""
    from experiments.turbulence import with_artifact
    from nn.artifact import load_artifact

    artifact = load_artifact(path)
    return Candidate(Path(path).name, lambda model: with_artifact(model, artifact, dt))


def scenario_set(split: str, truth: xr.Dataset) -> ScenarioSet:
    """Coarse base models (local closure) and forcings of every scenario of a truth file."""
    from experiments.cases import build_case
    from experiments.truth import check_truth_grid
    from experiments.turbulence import scenario_parameters

    times = truth["time"].values
    dt = float(times[1] - times[0])
    levels = truth.sizes["z"]
    cases = [build_case("diurnal", levels=levels, dt=dt, hours=24.0, turbulence="local", **p)
             for p in scenario_parameters(truth)]
    check_truth_grid(truth, cases[0].model.grid, split)
    return ScenarioSet(split, [c.model for c in cases], [c.forcing for c in cases], truth, dt)


def load_scenarios(splits: tuple[str, ...], truth_dir: Path, n_scenarios: int, days: float,
                   progress: bool, log) -> dict[str, ScenarioSet]:
    """Scenario sets from ``truth_dir/truth_<split>.nc``; missing files are generated there
    (``n_scenarios`` per split, 5 days of spin-up, ``days`` kept)."""
    from experiments.scenarios import sample_scenarios
    from experiments.truth import generate_truth, load_truth

    out = {}
    for split in splits:
        path = truth_dir / f"truth_{split}.nc"
        if not path.exists():
            log(f"generating the {split} truth ({n_scenarios} scenarios) into {path}")
            truth_dir.mkdir(parents=True, exist_ok=True)
            write_netcdf(generate_truth(sample_scenarios(split, n_scenarios, 0),
                                        days=5.0 + days + 1.0 / 24.0, spinup_days=5.0,
                                        progress=progress, split=split, seed=0), path)
        out[split] = scenario_set(split, load_truth(path))
    return out


def summarize(results: dict[str, dict[str, dict]]) -> dict:
    """Per model and scenario set: the figures of ``summary.json``."""
    summary = {}
    for model, by_split in results.items():
        summary[model] = {}
        for split, r in by_split.items():
            alive = survival_curve(r["failed_at"], r["time"])
            summary[model][split] = {
                "runs": int(len(r["failed_at"])),
                "fraction_alive_at_end": float(alive[-1]),
                "median_time_to_failure_days": median_time_to_failure(r["failed_at"]) / DAY,
                "rmse_theta_24h": float(r["rmse_theta_24h"].mean()),
                "rmse_wind_24h": float(r["rmse_wind_24h"].mean()),
                "rmse_theta_final": float(r["rmse_theta"][:, -1].mean()),
                "rmse_wind_final": float(r["rmse_wind"][:, -1].mean()),
                "largest_jacobian_modulus": r["largest_modulus"],
                "growing_mode_fraction": r["growing_fraction"],
                "budget_residual_max_K_per_day": float(np.abs(r["budget_residual"]).max()),
                "drift_theta_K_per_day": float(np.mean(r["drift_theta"])),
                "drift_u_m_s_per_day": float(np.mean(r["drift_u"])),
                "drift_v_m_s_per_day": float(np.mean(r["drift_v"])),
                "run_seconds": r["run_seconds"],
            }
    return summary


def metrics_dataset(results: dict[str, dict[str, dict]], z: np.ndarray,
                    attrs: dict) -> xr.Dataset:
    """Every metric as a CF-annotated dataset: one variable per metric, model and set."""
    variables = {}
    for model, by_split in results.items():
        for split, r in by_split.items():
            key = f"{model}_{split}"
            lead = ("scenario", "lead_time")

            def add(name, dims, data, units, long_name, key=key, model=model, split=split):
                variables[f"{name}_{key}"] = xr.Variable(
                    tuple(f"{d}_{key}" if d == "scenario" else d for d in dims), data,
                    {"units": units, "long_name": f"{long_name} ({model}, {split})"})

            add("survival", ("lead_time",), survival_curve(r["failed_at"], r["time"]), "1",
                "fraction of runs not failed")
            add("failed_at", ("scenario",), r["failed_at"] / DAY, "day",
                "time of failure (inf: never)")
            for name, units in {**VARIABLES, "wind": "m s-1", **DIAGNOSTICS}.items():
                add(f"rmse_{name}", lead, r[f"rmse_{name}"], units, f"RMSE of {name}")
                if f"bias_{name}" in r:
                    add(f"bias_{name}", lead, r[f"bias_{name}"], units, f"bias of {name}")
            for name, units in VARIABLES.items():
                add(f"mean_bias_profile_{name}", ("scenario", "z"),
                    r[f"mean_bias_profile_{name}"], units, f"time-mean bias of {name}")
            for name in ("surface_heat_flux", "boundary_layer_height"):
                units = DIAGNOSTICS[name]
                add(f"diurnal_{name}", ("scenario", "hour_of_day"), r[f"diurnal_{name}"],
                    units, f"diurnal composite of {name}")
                add(f"diurnal_{name}_truth", ("scenario", "hour_of_day"),
                    r[f"diurnal_{name}_truth"], units, f"truth's diurnal composite of {name}")
            for name, units in VARIABLES.items():
                add(f"drift_{name}", ("scenario",), r[f"drift_{name}"], f"{units} day-1",
                    f"trend of the daily mass-weighted column mean of {name} minus the "
                    "truth's")
            add("budget_residual", ("scenario", "sample"), r["budget_residual"], "K day-1",
                "one-step column heat budget residual as column-mean theta change per day")
            add("jacobian_moduli", ("scenario", "sample", "mode"), r["jacobian_moduli"], "1",
                "moduli of the eigenvalues of the one-step Jacobian")
    first = next(iter(next(iter(results.values())).values()))
    coords = {"lead_time": ("lead_time", first["time"] / HOUR, {"units": "h"}),
              "z": ("z", z, {"units": "m", "long_name": "height of layer centres"}),
              "hour_of_day": ("hour_of_day", np.arange(24) + 0.5, {"units": "h"})}
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def verdict(entry: dict, baseline: dict) -> str:
    """One line per model and scenario set, from the summary figures."""
    if entry["fraction_alive_at_end"] < 1.0:
        return (f"UNSAFE: {100 * (1 - entry['fraction_alive_at_end']):.0f} % of runs failed "
                f"(median time to failure {entry['median_time_to_failure_days']:.1f} days)")
    notes = []
    if entry["growing_mode_fraction"] > 0:
        notes.append(f"growing linear modes in {100 * entry['growing_mode_fraction']:.0f} % "
                     "of sampled states")
    if entry["budget_residual_max_K_per_day"] > 1.0e-2:
        notes.append(f"leaks heat (budget residual up to "
                     f"{entry['budget_residual_max_K_per_day']:.2g} K/day)")
    for name, label in (("theta", "θ"), ("wind", "wind")):
        ratio = entry[f"rmse_{name}_final"] / baseline[f"rmse_{name}_final"]
        if ratio > 2.0:
            notes.append(f"drifts away: end-of-run {label} error {ratio:.1f}× the baseline's")
    skill = entry["rmse_theta_24h"] / baseline["rmse_theta_24h"] - 1.0
    wind = entry["rmse_wind_24h"] / baseline["rmse_wind_24h"] - 1.0
    notes.append(f"24 h θ error {100 * skill:+.0f} %, wind {100 * wind:+.0f} % vs baseline")
    return "stable for the whole run; " + "; ".join(notes)


def markdown_report(summary: dict, baseline_name: str, config: StabilityConfig,
                    seconds: float) -> str:
    lines = [
        "# Rollout-stability report",
        "",
        f"Every model ran {config.days:g} days on every scenario from the coarse-grained truth "
        "at the end of its spin-up; failure = non-finite or outside the physical bounds "
        f"({', '.join(f'{n} {lo:g}..{hi:g}' for n, lo, hi in config.bounds)}). Jacobian "
        f"eigenvalues at states every {config.jacobian_every_hours:g} h; a mode grows when "
        f"|λ| > 1 + {config.growth_tolerance:g} (the time step's own Coriolis turning is "
        f"neutral, |λ| = 1). Wall time {seconds:.0f} s for the "
        "runs and their metrics (truth generation not included).",
        "",
    ]
    for split in next(iter(summary.values())):
        baseline = summary[baseline_name][split]
        lines += [
            f"## {split} scenarios ({baseline['runs']} runs per model)",
            "",
            "| model | alive at end | median time to failure (days) | θ RMSE 24 h (K) | "
            "wind RMSE 24 h (m/s) | θ RMSE end (K) | wind RMSE end (m/s) | largest |λ| | "
            "states with growing modes | budget residual (K/day) | θ drift (K/day) | "
            "u, v drift (m/s/day) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for model, by_split in summary.items():
            e = by_split[split]
            lines.append(
                f"| {model} | {100 * e['fraction_alive_at_end']:.0f} % | "
                f"{e['median_time_to_failure_days']:.3g} | {e['rmse_theta_24h']:.3f} | "
                f"{e['rmse_wind_24h']:.3f} | {e['rmse_theta_final']:.3f} | "
                f"{e['rmse_wind_final']:.3f} | {e['largest_jacobian_modulus']:.4f} | "
                f"{100 * e['growing_mode_fraction']:.0f} % | "
                f"{e['budget_residual_max_K_per_day']:.2g} | "
                f"{e['drift_theta_K_per_day']:+.3f} | {e['drift_u_m_s_per_day']:+.3f}, "
                f"{e['drift_v_m_s_per_day']:+.3f} |")
        lines += ["", "Verdicts:", ""]
        for model, by_split in summary.items():
            lines.append(f"- **{model}**: {verdict(by_split[split], baseline)}")
        lines.append("")
    return "\n".join(lines)


def plot_results(results: dict, out: Path) -> list[Path]:
    """Survival curves, RMSE against lead time, bias profiles, Jacobian spectra."""
    from scm.figures import new_figure, save_figure

    paths = []
    splits = list(next(iter(results.values())))
    figures = {
        "survival.png": ("survival (fraction alive)", None),
        "rmse_lead_time.png": ("θ RMSE (K)", "rmse_theta"),
        "rmse_wind_lead_time.png": ("wind RMSE (m s-1)", "rmse_wind"),
    }
    for filename, (ylabel, key) in figures.items():
        figure, axes = new_figure(len(splits))
        for axis, split in zip(axes, splits, strict=True):
            for model, by_split in results.items():
                r = by_split[split]
                hours = r["time"] / HOUR
                y = survival_curve(r["failed_at"], r["time"]) if key is None else r[key].mean(0)
                axis.plot(hours / 24.0, y, label=model, lw=1)
            axis.set_xlabel("lead time (days)")
            axis.set_ylabel(ylabel)
            axis.set_title(split)
            axis.legend(fontsize=7)
        paths.append(save_figure(figure, out / filename))
    figure, axes = new_figure(len(splits))
    for axis, split in zip(axes, splits, strict=True):
        for model, by_split in results.items():
            profile = by_split[split]["mean_bias_profile_theta"].mean(axis=0)
            axis.plot(profile, np.arange(profile.size), label=model, lw=1)
        axis.axvline(0.0, color="0.6", lw=0.8)
        axis.set_xlabel("time-mean θ bias (K)")
        axis.set_ylabel("level")
        axis.set_title(split)
        axis.legend(fontsize=7)
    paths.append(save_figure(figure, out / "bias_profiles.png"))
    figure, axes = new_figure(len(splits))
    for axis, split in zip(axes, splits, strict=True):
        for model, by_split in results.items():
            moduli = np.sort(by_split[split]["jacobian_moduli"].reshape(
                -1, by_split[split]["jacobian_moduli"].shape[-1]), axis=-1)[:, ::-1]
            axis.plot(np.arange(moduli.shape[-1]), moduli.max(axis=0), label=model, lw=1)
        axis.axhline(1.0, color="0.6", lw=0.8, ls="--")
        axis.set_xlabel("mode (sorted by |λ|)")
        axis.set_ylabel("largest |λ| over sampled states")
        axis.set_title(split)
        axis.legend(fontsize=7)
    paths.append(save_figure(figure, out / "jacobian_spectra.png"))
    return paths


def run_benchmark(model_paths, out, *, baseline: str = "local", scenarios: str = "all",
                  days: float = 30.0, truth_dir=None, n_scenarios: int = 32,
                  config: StabilityConfig | None = None, progress: bool = True,
                  log=print) -> dict:
    """Judge every artifact in ``model_paths`` beside the physics ``baseline`` on the
    ``scenarios`` set(s); writes the outputs into ``out`` and returns the summary."""
    config = StabilityConfig(days=days) if config is None else config
    splits = SPLITS if scenarios == "all" else (scenarios,)
    if scenarios != "all" and scenarios not in SPLITS:
        raise ConfigurationError(f"scenarios must be heldout, ood or all (got {scenarios!r})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    truth_dir = out if truth_dir is None else Path(truth_dir)
    sets = load_scenarios(splits, truth_dir, n_scenarios, config.days, progress, log)
    truth_seconds = time.perf_counter() - start
    start = time.perf_counter()
    dt = next(iter(sets.values())).dt
    candidates = [physics_candidate(baseline, dt)]
    candidates += [artifact_candidate(path, dt) for path in model_paths]
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"two models share a name: {names}")
    results: dict[str, dict[str, dict]] = {}
    for candidate in candidates:
        results[candidate.name] = {}
        for split, scenario in sets.items():
            results[candidate.name][split] = evaluate_candidate(candidate, scenario, config,
                                                                progress)
            log(f"{candidate.name} {split}: {time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    summary = summarize(results)
    record = {"models": summary, "baseline": candidates[0].name, "days": config.days,
              "wall_time_s": seconds, "truth_time_s": truth_seconds}
    write_atomic(out / "summary.json", lambda p: p.write_text(json.dumps(record, indent=2)))
    z = np.asarray(next(iter(sets.values())).models[0].grid.z)
    write_netcdf(metrics_dataset(results, z, {"title": "rollout-stability metrics",
                                              "days": config.days}), out / "metrics.nc")
    report = markdown_report(summary, candidates[0].name, config, seconds)
    write_atomic(out / "report.md", lambda p: p.write_text(report))
    plot_results(results, out)
    log(report)
    return record
