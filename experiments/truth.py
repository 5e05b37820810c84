"""Coarse-grained high-resolution truth of the ``diurnal``, ``gabls1`` and ``dry_cbl`` cases,
for training and judging turbulence parameterizations of a coarse column model.

Truth run: every scenario of one case (``experiments.scenarios``) is built at ``coarse_levels
× refinement`` levels with the TKE–mass-flux closure (``TKEClosure``) and time step
``fine_dt``; all scenarios run together (``experiments.run.run_ensemble``) for ``days``, saving
every ``coarse_dt``; the first ``spinup_days`` are discarded. The defaults depend on the case
(``truth_length``): the dry diurnal column needs about a week to become periodic (15 days,
the first 5 discarded, see ``docs/truth.md``); GABLS1 and the dry CBL are transients from
their prescribed initial states, run for the case's own length with nothing discarded.

Coarse-graining (``coarse_grain``), for a fine grid whose interfaces include every
``refinement``-th one of the coarse grid (index 0 at the surface; coarse interface K is fine
interface K r). With fine layer masses m_k = ρ_k Δz_k and the coarse layer K holding the fine
layers k = K r, ..., K r + r − 1:

- coarse layer mass M_K = Σ_k m_k;
- cell values are mass-weighted means x̄_K = Σ_k m_k x_k / M_K, so column integrals
  Σ_K M_K x̄_K = Σ_k m_k x_k are kept exactly;
- interface fluxes are the fine fluxes at the coinciding interfaces, F̄_K = F_{K r}, so the
  coarse flux divergence equals the coarse-grained fine one in mass-weighted form:
  −[(ρF̄)_{K+1} − (ρF̄)_K] = Σ_k m_k T_k with the fine tendency
  T_k = −[(ρF)_{k+1} − (ρF)_k] / m_k (the sum telescopes), ρ being the fine grid's reference
  density at those interfaces; dividing by M_K gives the coarse-grained tendency.

Offline target (exact definition). For u, v and θ, the target flux at coarse interface K and
saved time t is the fine model's total upward turbulent flux at fine interface K r,
instantaneous at t: F = F_explicit − K_x ∂x/∂z, with the diffusivity K_x, the explicit
(mass-flux) part and the gradient all evaluated from the fine state at t (the
``Trajectory.flux`` of ``scm.integration.rollout``), in kinematic units (m2 s-2 for u'w' and
v'w', K m s-1 for w'θ'). At the bottom interface it is the surface flux (Monin–Obukhov drag
on the first fine level; surface heat flux), at the top it is zero. The coarse model has no
resolved vertical velocity (the diurnal case has no subsidence), so no resolved flux w̄ x̄ is
subtracted: the whole vertical transport is sub-grid and the target is the total turbulent
flux (the same holds for GABLS1 and the dry CBL, which have no subsidence either). Every other
process (Coriolis, relaxation aloft, prescribed cooling) is computed by the coarse model itself
and is not part of the target. The flux the fine model applies over a step uses the implicit
(end-of-step) gradient, so the saved instantaneous flux differs from the step-mean flux by
O(Δt_fine).

Files are CF netCDF written atomically (``scm.io.write_netcdf``) with the dims of run files,
``(time, column, z)`` and ``(time, column, z_interface)``, one column per scenario;
``load_truth`` reads and validates them. Layout:
``docs/truth.md``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import numpy as np
import xarray as xr
from jaxtyping import Array, Float

from experiments.cases import DAY, MAX_LEVELS, build_case, case_parameters, definition
from experiments.run import run_ensemble
from experiments.scenarios import CASE, scenario_family, stack_cases
from scm.constants import MIN_LEVELS
from scm.errors import ConfigurationError, check_range, whole_count
from scm.grid import ColumnGrid
from scm.io import (
    COORDINATE_METADATA,
    FAILURE_METADATA,
    REFERENCE_METADATA,
    STATE_NAMES,
    diagnostic_metadata,
    flux_metadata,
    flux_name,
    global_attributes,
    height_coordinates,
    layer_bounds,
    read_netcdf,
)
from scm.model import Model
from scm.state import State, field_metadata

#: Prognostic fields written to a truth file (model names; ``thl`` is written as ``theta``).
TRUTH_FIELDS: tuple[str, ...] = ("u", "v", "thl")

#: Variables every truth file has (besides the coordinates), checked by ``load_truth``.
REQUIRED_VARIABLES: tuple[str, ...] = (
    "u", "v", "theta", "uw", "vw", "heat_flux", "ustar", "surface_heat_flux",
    "obukhov_length", "boundary_layer_height", "failed_at",
)

#: Variables a training run reads; ``load_truth`` rejects any non-finite value in them.
TRAINING_VARIABLES: tuple[str, ...] = REQUIRED_VARIABLES[:-1]

#: Largest refinement factor (fine levels per coarse level) accepted.
MAX_REFINEMENT = 64

#: Longest truth run accepted (days).
MAX_DAYS = 3650.0

#: Default (days, spinup_days) of a truth run per case. The periodic diurnal column forgets its
#: initial state only after about a week; GABLS1 (9 h) and the dry CBL (4 h) are transients
#: whose initial state is part of the case, so they run for the case's own length and keep it.
DEFAULT_LENGTHS: dict[str, tuple[float, float]] = {
    "diurnal": (15.0, 5.0),
    "gabls1": (9.0 / 24.0, 0.0),
    "dry_cbl": (4.0 / 24.0, 0.0),
}

OFFLINE_TARGET = (
    "fluxes are the fine model's total upward turbulent flux (explicit plus -K dx/dz, from "
    "the fine state at the saved time) at the coarse interfaces: surface flux at the bottom, "
    "zero at the top; the coarse model has no resolved vertical velocity"
)

#: What the time coordinate counts from, where the case says more than "its start".
TIME_COMMENTS = {"diurnal": " (midnight local time: the time of day is that of the dates)"}

COARSE_MEAN = ("layer-mass weighted mean of the high-resolution values over the coarse layer "
               "(weights rho dz of the fine grid)")
COARSE_FLUX = ("high-resolution total upward turbulent flux at the coinciding interface "
               "(instantaneous at the saved time; the offline target)")


# ---------------------------------------------------------------------------------------------
# Coarse-graining (one column; vmap outside)


def _check_refinement_value(refinement) -> None:
    if isinstance(refinement, bool) or not isinstance(refinement, int | np.integer):
        raise ConfigurationError(f"refinement must be an integer (got {refinement!r})")
    check_range("refinement", refinement, 1, MAX_REFINEMENT)


def check_refinement(n_fine: int, refinement: int) -> int:
    """Number of coarse levels; ``n_fine`` must be a whole multiple of ``refinement`` ≥ 1."""
    _check_refinement_value(refinement)
    if n_fine % refinement:
        raise ConfigurationError(
            f"the fine grid's {n_fine} levels are not a whole multiple of refinement = "
            f"{refinement}")
    return n_fine // int(refinement)


def coarse_layer_mass(fine_grid: ColumnGrid, refinement: int) -> Float[Array, " z"]:
    """M_K = Σ_k ρ_k Δz_k over the fine layers of each coarse layer (kg m-2)."""
    n_coarse = check_refinement(fine_grid.n_levels, refinement)
    return fine_grid.layer_mass.reshape(n_coarse, refinement).sum(axis=-1)


def coarse_grain(fine_grid: ColumnGrid, centres, interfaces, refinement: int):
    """Conservative coarse-graining of one column (see the module docstring).

    ``centres``: a pytree (a ``State``, a dict, an array) of fields on the fine layer centres,
    last axis ``fine_grid.n_levels``; they become layer-mass weighted means Σ m_k x_k / Σ m_k
    over each group of ``refinement`` fine layers. ``interfaces``: a pytree of fields on the
    fine interfaces (last axis ``n_levels + 1``), e.g. fluxes; they are sampled at every
    ``refinement``-th interface (the coarse interfaces). Leading axes (time, say) broadcast.
    Returns ``(coarse centres, coarse interfaces)`` with the same structures.
    """
    n_fine = fine_grid.n_levels
    n_coarse = check_refinement(n_fine, refinement)
    mass = fine_grid.layer_mass.reshape(n_coarse, refinement)
    total = mass.sum(axis=-1)

    def mean(x):
        if x.shape[-1] != n_fine:
            raise ConfigurationError(
                f"a centre field has {x.shape[-1]} levels, the fine grid {n_fine}")
        grouped = x.reshape(*x.shape[:-1], n_coarse, refinement)
        return (grouped * mass).sum(axis=-1) / total

    def sample(x):
        if x.shape[-1] != n_fine + 1:
            raise ConfigurationError(
                f"an interface field has {x.shape[-1]} values, the fine grid {n_fine + 1}")
        return x[..., ::refinement]

    return jax.tree.map(mean, centres), jax.tree.map(sample, interfaces)


class CoarseGraining(eqx.Module):
    """What ``run_ensemble`` keeps of a truth run: state and fluxes coarse-grained onto every
    ``refinement``-th interface of the column's own grid, the scalar diagnostics (time series
    of the fine run) as they are; profile diagnostics are left out."""

    refinement: int = eqx.field(static=True)

    def __call__(self, model: Model, state: State, flux: State, diagnostics: dict):
        centres, interfaces = coarse_grain(model.grid, state, flux, self.refinement)
        return centres, interfaces, {n: d for n, d in diagnostics.items() if d.ndim == 0}


# ---------------------------------------------------------------------------------------------
# Generation


class TruthPlan(NamedTuple):
    """Steps of a truth run: ``save_every`` fine steps per coarse step, ``n_steps`` in all, the
    first ``n_spinup_saves`` output intervals discarded, ``n_saves`` kept intervals (the file
    holds ``n_saves + 1`` times, both ends included)."""

    fine_levels: int
    save_every: int
    n_steps: int
    n_spinup_saves: int
    n_saves: int

    def kept_times(self, coarse_dt: float) -> np.ndarray:
        """The times the truth file holds (s since the case's start)."""
        return (self.n_spinup_saves + np.arange(self.n_saves + 1)) * float(coarse_dt)


def truth_length(case: str = CASE, days: float | None = None,
                 spinup_days: float | None = None) -> tuple[float, float]:
    """``(days, spinup_days)`` of a truth run of ``case``: the given values, each ``None``
    replaced by the case's default (``DEFAULT_LENGTHS``). Unknown case → ``ConfigurationError``.
    """
    scenario_family(case)  # names the cases that have truth
    default_days, default_spinup = DEFAULT_LENGTHS[case]
    return (default_days if days is None else days,
            default_spinup if spinup_days is None else spinup_days)


def truth_plan(coarse_levels: int = 32, refinement: int = 4, fine_dt: float = 30.0,
               coarse_dt: float = 300.0, days: float = 15.0,
               spinup_days: float = 5.0) -> TruthPlan:
    """Validate a truth configuration (eagerly: before anything compiles) and plan its steps.

    Every error is a ``ConfigurationError`` naming the field and its allowed range.
    """
    if isinstance(coarse_levels, bool) or not isinstance(coarse_levels, int | np.integer):
        raise ConfigurationError(f"coarse levels must be an integer (got {coarse_levels!r})")
    check_range("coarse levels", coarse_levels, MIN_LEVELS, MAX_LEVELS)
    _check_refinement_value(refinement)
    fine_levels = int(coarse_levels) * int(refinement)
    check_range("fine levels (levels x refinement)", fine_levels, MIN_LEVELS, MAX_LEVELS)
    check_range("fine_dt", fine_dt, 1.0e-3, 3600.0, "s")
    check_range("coarse_dt", coarse_dt, fine_dt, DAY, "s")
    save_every = whole_count("coarse_dt", coarse_dt, "fine_dt", fine_dt)
    check_range("days", days, 1.0e-6, MAX_DAYS, "day")
    check_range("spinup_days", spinup_days, 0.0, days, "day")
    if spinup_days >= days:
        raise ConfigurationError(
            f"spinup_days = {spinup_days:g} day must be shorter than days = {days:g} day")
    n_saves_total = whole_count("days", days * DAY, "coarse_dt", coarse_dt)
    n_spinup_saves = whole_count("spinup_days", spinup_days * DAY, "coarse_dt", coarse_dt,
                                 minimum=0)
    return TruthPlan(fine_levels, save_every, n_saves_total * save_every, n_spinup_saves,
                     n_saves_total - n_spinup_saves)


def generate_truth(
    parameters_list: Sequence[Mapping[str, float]],
    *,
    coarse_levels: int = 32,
    refinement: int = 4,
    fine_dt: float = 30.0,
    coarse_dt: float = 300.0,
    days: float | None = None,
    spinup_days: float | None = None,
    progress: bool = True,
    split: str | None = None,
    seed: int | None = None,
    case: str = CASE,
    labels: Sequence[str] | None = None,
) -> xr.Dataset:
    """Run the high-resolution truth of ``parameters_list`` (scenarios of ``case``: "diurnal",
    "gabls1" or "dry_cbl", e.g. from ``experiments.scenarios.sample_scenarios``) and return it
    coarse-grained (module docstring).

    All scenarios run at once, vectorised. Returns a dataset with dims ``(time, column, z)``
    and ``(time, column, z_interface)`` (a column per scenario) on the coarse grid (the case
    at ``coarse_levels``, same top), times from ``spinup_days`` to ``days`` every
    ``coarse_dt`` (s since the case's start: for ``diurnal`` midnight, so the time of day is
    ``time mod 86400``); ``days`` and ``spinup_days`` default to the case's
    (``truth_length``); layout in ``docs/truth.md``. ``split`` and ``seed`` are only recorded
    (provenance), ``case`` is recorded too, and so are ``labels``, the family of each scenario
    (``experiments.scenarios.scenario_labels``; default: the split's name), as the variable
    ``family``. A scenario whose fine run fails is flagged in ``failed_at`` and warned about
    (``RuntimeWarning``); after the failure its values are held at the last valid state.
    """
    start = time.perf_counter()
    family = scenario_family(case)
    days, spinup_days = truth_length(case, days, spinup_days)
    plan = truth_plan(coarse_levels, refinement, fine_dt, coarse_dt, days, spinup_days)
    parameters_list = [dict(p) for p in parameters_list]
    if not parameters_list:
        raise ConfigurationError("generate_truth needs at least one scenario")
    labels = [str(split or "scenario")] * len(parameters_list) if labels is None else list(
        labels)
    if len(labels) != len(parameters_list):
        raise ConfigurationError(f"generate_truth: {len(labels)} family labels for "
                                 f"{len(parameters_list)} scenarios")
    fine = [build_case(case, levels=plan.fine_levels, dt=float(fine_dt), hours=days * 24.0,
                       turbulence="tke", **p) for p in parameters_list]
    coarse_grid = build_case(case, levels=int(coarse_levels), **parameters_list[0]).model.grid
    fine_interfaces = np.asarray(fine[0].model.grid.z_interface)[::refinement]
    if not np.allclose(fine_interfaces, np.asarray(coarse_grid.z_interface), rtol=1.0e-6):
        raise ConfigurationError("the coarse grid's interfaces are not fine-grid interfaces")
    models, forcings, states = stack_cases(fine)

    trajectory = run_ensemble(models, forcings, states, fine_dt, 0.0, plan.n_steps,
                              plan.save_every, progress=progress, desc="truth",
                              output=CoarseGraining(int(refinement)))
    keep = slice(plan.n_spinup_saves, None)
    times = plan.kept_times(coarse_dt)
    saved = np.asarray(trajectory.time[0, keep], dtype=float)
    if saved.shape != times.shape or not np.allclose(saved, times, rtol=1.0e-5, atol=1.0):
        raise RuntimeError("saved times do not follow the truth plan")  # a bug, not bad input

    fine_z = np.asarray(fine[0].model.grid.z)
    failed_at = np.asarray(trajectory.failed_at, dtype=float)
    failed_level = np.asarray(trajectory.failed_level)
    failed = np.isfinite(failed_at)
    variables = {}
    def time_first(values) -> np.ndarray:
        """``(scenario, time, ...)`` saves as ``(time, column, ...)``, the run files' order."""
        return np.swapaxes(np.asarray(values)[:, keep], 0, 1)

    for field in TRUTH_FIELDS:
        variables[STATE_NAMES.get(field, field)] = xr.Variable(
            ("time", "column", "z"), time_first(getattr(trajectory.state, field)),
            {**field_metadata(field), "comment": COARSE_MEAN})
    for field in TRUTH_FIELDS:
        variables[flux_name(field)] = xr.Variable(
            ("time", "column", "z_interface"), time_first(getattr(trajectory.flux, field)),
            {**flux_metadata(field), "comment": COARSE_FLUX})
    for name, values in trajectory.diagnostics.items():
        variables[name] = xr.Variable(("time", "column"), time_first(values),
                                      {**diagnostic_metadata(name),
                                       "comment": "from the high-resolution run"})
    variables["failed_at"] = xr.Variable(
        "column", np.where(failed, failed_at, np.nan), FAILURE_METADATA["failed_at"])
    variables["failed_height"] = xr.Variable(
        "column", np.where(failed, fine_z[np.clip(failed_level, 0, None)], np.nan),
        {**FAILURE_METADATA["failed_height"], "comment": "on the high-resolution grid; "
         + FAILURE_METADATA["failed_height"]["comment"]})
    fine_grids = models.grid
    variables["z_bounds"] = layer_bounds(coarse_grid.z_interface)
    variables["layer_mass"] = xr.Variable(
        ("column", "z"), np.asarray(jax.vmap(coarse_layer_mass, (0, None))(
            fine_grids, int(refinement))),
        {"units": "kg m-2", "long_name": "mass of the coarse layer: sum of rho dz of its "
         "high-resolution layers (the coarse-graining weights)"})
    variables["rho_interface"] = xr.Variable(
        ("column", "z_interface"), np.asarray(fine_grids.rho_interface[:, ::refinement]),
        {**REFERENCE_METADATA["rho"], "long_name": "reference air density of the "
         "high-resolution grid at the coarse interfaces"})
    variables["family"] = xr.Variable(
        "column", np.asarray(labels, dtype=str),
        {"units": "1", "long_name": "scenario family (train, validation, margin_<parameter>, "
         "test or an extrapolation family)"})
    specs = case_parameters(case)
    for name, (_, _, _, units, text) in specs.items():
        values = [float(built.parameters[name]) for built in fine]
        variables[f"parameter_{name}"] = xr.Variable(
            "column", np.asarray(values), {"units": units, "long_name": text})

    coords = {
        "time": xr.Variable("time", times, {
            **COORDINATE_METADATA["time"], "comment": COORDINATE_METADATA["time"]["comment"]
            + TIME_COMMENTS.get(case, "") + "; the spin-up (spinup_days) is discarded"}),
        "column": xr.Variable("column", np.arange(len(fine), dtype=np.int32),
                              {"units": "1", "long_name": "scenario index"}),
        **height_coordinates(coarse_grid),
    }
    attrs = {
        "title": f"hybrid-scm coarse-grained high-resolution truth of the {case} case",
        "case": case,
        "references": "; ".join(definition(case).references),
        "turbulence": "tke",
        "split": split,
        "seed": seed,
        "scenarios": len(fine),
        "coarse_levels": int(coarse_levels),
        "refinement": int(refinement),
        "fine_levels": plan.fine_levels,
        "top_m": float(coarse_grid.z_interface[-1]),
        "fine_dt_s": float(fine_dt),
        "coarse_dt_s": float(coarse_dt),
        "days": float(days),
        "spinup_days": float(spinup_days),
        "precision": str(states.u.dtype),
        "offline_target": OFFLINE_TARGET,
        "training_range": {name: list(limits) for name, limits in family.training.items()},
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
    if split == "validation" and family.margin:
        attrs["margin_range"] = {name: [x for band in bands for x in band]
                                 for name, bands in family.margin.items()}
    if split == "extrapolation":
        attrs["extrapolation_range"] = {
            f"{label}_{name}": [x for band in bands for x in band]
            for label, varied in family.extrapolation.items() for name, bands in varied.items()
            if label in labels}
    dataset = xr.Dataset(variables, coords=coords, attrs=global_attributes(attrs))
    for index in np.flatnonzero(failed):
        warnings.warn(
            f"truth scenario {index} failed (non-finite or out of bounds) at t = "
            f"{failed_at[index]:g} s ({failed_at[index] / DAY:.3g} day), height "
            f"{fine_z[max(int(failed_level[index]), 0)]:.4g} m; it is flagged in failed_at and "
            "held at its last valid state from then on", RuntimeWarning, stacklevel=2)
    return dataset


# ---------------------------------------------------------------------------------------------
# Reading


def load_truth(path, grid: ColumnGrid | None = None, case: str | None = None) -> xr.Dataset:
    """Read a truth file (``scm.io.read_netcdf``) and validate it.

    Checks that the required variables (``REQUIRED_VARIABLES``) and coordinates are there with
    the expected dims, that the training variables hold no NaN or inf (the error names the
    variable, scenario and time), with a coarse ``grid`` that the file's ``z_interface`` is the
    grid's, and with a ``case`` that the file holds truth of that case (its ``case``
    attribute). Failed scenarios (finite ``failed_at``) are kept but warned about. Every error
    is a ``ConfigurationError``.
    """
    if case is not None:
        scenario_family(case)  # an unknown case is an error before the file is opened
    dataset = read_netcdf(path)
    if case is not None and dataset.attrs.get("case") != case:
        raise ConfigurationError(
            f"truth file {path} holds truth of the case {dataset.attrs.get('case')!r}, "
            f"expected {case!r}")
    expected = {**{name: ("time", "column", "z") for name in ("u", "v", "theta")},
                **{name: ("time", "column", "z_interface") for name in ("uw", "vw",
                                                                        "heat_flux")},
                **{name: ("time", "column") for name in TRAINING_VARIABLES[6:]},
                "failed_at": ("column",)}
    missing = [name for name in (*REQUIRED_VARIABLES, "time", "z", "z_interface")
               if name not in dataset.variables]
    if missing:
        raise ConfigurationError(f"truth file {path} lacks the required variable(s) {missing}")
    for name, dims in expected.items():
        if dataset[name].dims != dims:
            raise ConfigurationError(
                f"truth file {path}: {name} has dims {dataset[name].dims}, expected {dims}")
    times = dataset["time"].values
    for name in TRAINING_VARIABLES:
        values = dataset[name].values
        bad = ~np.isfinite(values)
        if bad.any():
            index = np.unravel_index(int(np.argmax(bad)), values.shape)
            step, scenario = int(index[0]), int(index[1])
            raise ConfigurationError(
                f"truth file {path}: {name} is not finite ({values[index]}) at scenario "
                f"{scenario}, time {float(times[step]):g} s (time index {step}); "
                f"{int(bad.sum())} non-finite value(s) in all")
    if grid is not None:
        check_truth_grid(dataset, grid, path)
    failed = np.flatnonzero(np.isfinite(dataset["failed_at"].values))
    if failed.size:
        warnings.warn(
            f"truth file {path}: scenario(s) {failed.tolist()} failed during the truth run "
            "(see failed_at); after failing they are held at their last valid state",
            RuntimeWarning, stacklevel=2)
    return dataset


def check_truth_grid(dataset: xr.Dataset, grid: ColumnGrid, path="dataset") -> None:
    """``ConfigurationError`` unless the truth's ``z_interface`` equals the coarse grid's (for
    a stacked grid, every column's)."""
    file_interfaces = np.asarray(dataset["z_interface"].values, dtype=float)
    model_interfaces = np.asarray(grid.z_interface, dtype=float)
    model_interfaces = model_interfaces.reshape(-1, model_interfaces.shape[-1])
    n_file, n_model = file_interfaces.size - 1, model_interfaces.shape[-1] - 1
    if n_file != n_model:
        raise ConfigurationError(
            f"truth file {path} is on a grid of {n_file} levels (top {file_interfaces[-1]:g} "
            f"m) but the model has {n_model} levels (top {model_interfaces[0, -1]:g} m); "
            f"build the model with levels={n_file} or regenerate the truth")
    difference = np.abs(model_interfaces - file_interfaces).max()
    if not difference <= 1.0e-6 * max(1.0, float(file_interfaces[-1])):
        raise ConfigurationError(
            f"truth file {path} is on a grid of {n_file} levels (top {file_interfaces[-1]:g} "
            f"m) but the model has {n_model} levels with different interface heights (top "
            f"{model_interfaces[0, -1]:g} m; up to {difference:g} m apart)")


def scenario_parameters(dataset: xr.Dataset) -> list[dict[str, float]]:
    """The case parameters of every scenario of a truth dataset."""
    names = [n.removeprefix("parameter_") for n in dataset.data_vars
             if n.startswith("parameter_")]
    return [{n: float(dataset[f"parameter_{n}"].values[i]) for n in names}
            for i in range(dataset.sizes["column"])]


def scenario_families(dataset: xr.Dataset) -> list[str]:
    """The family of every scenario of a truth dataset (its ``family`` variable; files
    without one: the split's name)."""
    if "family" in dataset:
        return [str(x) for x in dataset["family"].values]
    return [str(dataset.attrs.get("split", "scenario"))] * dataset.sizes["column"]


def truth_summary(dataset: xr.Dataset) -> dict:
    """Scenarios, time span (s) and failed scenarios of a truth dataset, for reports."""
    times = dataset["time"].values
    failed = np.flatnonzero(np.isfinite(dataset["failed_at"].values))
    return {"scenarios": int(dataset.sizes["column"]), "start_s": float(times[0]),
            "end_s": float(times[-1]), "saves": int(times.size),
            "failed": [int(i) for i in failed]}


__all__ = [
    "CoarseGraining",
    "DEFAULT_LENGTHS",
    "OFFLINE_TARGET",
    "REQUIRED_VARIABLES",
    "TRAINING_VARIABLES",
    "TruthPlan",
    "check_refinement",
    "check_truth_grid",
    "coarse_grain",
    "coarse_layer_mass",
    "generate_truth",
    "load_truth",
    "scenario_families",
    "scenario_parameters",
    "truth_length",
    "truth_plan",
    "truth_summary",
]
