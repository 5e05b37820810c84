"""Run many columns at once, compiled once, with a progress bar.

``run_ensemble`` integrates columns at once (``jax.vmap`` of the per-column rollout, the columns
split over every device by ``scm.columns.map_columns``), each with its own initial state and
either one shared model and forcing or one per column (scenarios, stacked along a leading
axis by ``experiments.scenarios.stack_pytrees``). ``run_case`` uses it for ``n_columns``
copies of one case: column 0 is always the unperturbed control (so a one-column run is the
case itself); columns 1, 2, ... start from the initial state plus seeded random perturbations
of θ and of the wind in the lowest levels, which is how an ensemble of the same case is
spread.

The run is split into segments of equal length (about 20), each one ``scm.integration.rollout``
call of the same compiled function (the start time is an array argument, so every segment
reuses one compilation), so that a progress bar can advance. Segments chain exactly: a column
that failed in an earlier segment is held at its last valid state in all later ones, as in a
single rollout.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from experiments.cases import CASE_NAMES, HOUR, MAX_STEPS, definition
from scm.columns import map_columns, to_host
from scm.compilation import filter_jit
from scm.errors import ConfigurationError, check_positive, check_range, whole_count
from scm.forcing import ForcingSeries
from scm.integration import DEFAULT_BOUNDS, Trajectory, check_state, check_time_step, rollout
from scm.io import STATE_NAMES, dataset_to_trajectory, flux_name, trajectory_to_dataset
from scm.model import Model
from scm.state import State

#: Number of segments a run is split into for the progress bar (fewer for short runs).
SEGMENTS = 20

#: Seconds a run must take before its progress bar appears.
PROGRESS_DELAY = 2.0

#: Largest output a run may produce (bytes): the whole trajectory is kept in memory until it
#: is written, about three times over while the file is made.
MAX_OUTPUT_BYTES = 4 * 2**30


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """Seeded random perturbations of the initial state of columns 1, 2, ... of a run.

    Independent uniform noise in ``[-a, a]`` on θl (``theta_amplitude``, K) and on u and v
    (``wind_amplitude``, m s-1) at every level whose centre lies below ``depth`` (m); the
    lowest level is always perturbed.
    """

    theta_amplitude: float = 0.1
    wind_amplitude: float = 0.1
    depth: float = 200.0

    def __post_init__(self):
        check_range("perturbation theta_amplitude", self.theta_amplitude, 0.0, 10.0, "K")
        check_range("perturbation wind_amplitude", self.wind_amplitude, 0.0, 10.0, "m s-1")
        check_range("perturbation depth", self.depth, 0.0, 1.0e5, "m")

    def apply(self, state: State, z, key: jax.Array) -> State:
        """One perturbed copy of ``state`` (one column) on centres ``z``."""
        z = jnp.asarray(z)
        mask = (z <= jnp.maximum(self.depth, z[0])).astype(state.thl.dtype)
        k_theta, k_u, k_v = jax.random.split(key, 3)

        def noise(k, amplitude):
            return amplitude * mask * jax.random.uniform(
                k, state.thl.shape, state.thl.dtype, minval=-1.0, maxval=1.0)

        return dataclasses.replace(
            state,
            thl=state.thl + noise(k_theta, self.theta_amplitude),
            u=state.u + noise(k_u, self.wind_amplitude),
            v=state.v + noise(k_v, self.wind_amplitude),
        )


#: The perturbation ``run_case`` applies unless told otherwise.
DEFAULT_PERTURBATION = Perturbation()


class CaseRun(NamedTuple):
    """Result of ``run_case``.

    ``trajectory`` and ``state0`` (the initial state of every column) have a leading column
    axis; ``seconds`` is the wall time of the run, compilation included; ``seed`` and
    ``perturbation`` are those the columns were perturbed with.
    """

    trajectory: Trajectory
    state0: State
    seconds: float
    seed: int
    perturbation: Perturbation | None


class RunPlan(NamedTuple):
    """How a run of ``n_steps`` steps is cut into equal segments of whole output intervals."""

    n_steps: int
    save_every: int
    n_saves: int
    saves_per_segment: int
    n_segments: int


def plan_run(hours: float, dt: float, save_every: int, segments: int = SEGMENTS) -> RunPlan:
    """Segments for a run of ``hours`` at step ``dt`` (s) saving every ``save_every`` steps.

    The run must be a whole number of steps and of output intervals: lengths are never
    rounded (``ConfigurationError`` naming them otherwise); then as ``plan_steps``.
    """
    check_range("hours", hours, 1.0e-9, math.inf, "h")
    check_range("dt", dt, 1.0e-9, math.inf, "s")
    n_steps = whole_count(f"hours = {hours:g} h", hours * HOUR, "time steps dt", dt)
    return plan_steps(n_steps, save_every, segments)


def plan_steps(n_steps: int, save_every: int, segments: int = SEGMENTS) -> RunPlan:
    """Segments for a run of exactly ``n_steps`` steps saving every ``save_every`` steps.

    ``n_steps`` must be a whole number of output intervals. All segments have the same
    length (about ``segments`` of them), so they share one compilation; the last may reach
    past the end, and what it computes there is dropped.
    """
    check_range("save_every", save_every, 1, math.inf, "steps")
    check_range("n_steps", n_steps, 1, MAX_STEPS, "steps")
    if n_steps % save_every:
        raise ConfigurationError(
            f"n_steps ({n_steps}) must be a multiple of save_every ({save_every})")
    n_saves = int(n_steps) // int(save_every)
    saves_per_segment = -(-n_saves // max(1, segments))
    n_segments = -(-n_saves // saves_per_segment)
    return RunPlan(int(n_steps), int(save_every), n_saves, saves_per_segment, n_segments)


def initial_states(
    state0: State, z, n_columns: int, seed: int, perturbation: Perturbation | None
) -> State:
    """``n_columns`` initial states with a leading column axis; column 0 is ``state0``."""
    check_range("columns", n_columns, 1, 1_000_000)
    if perturbation is None or n_columns == 1:
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (n_columns, *a.shape)), state0)
    return _perturbed_states(state0, jnp.asarray(z), jax.random.key(seed), n_columns,
                             perturbation)


@eqx.filter_jit
def _perturbed_states(state0: State, z, key, n_columns: int, perturbation: Perturbation):
    keys = jax.random.split(key, n_columns - 1)
    members = jax.vmap(lambda k: perturbation.apply(state0, z, k))(keys)
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), state0, members)


@filter_jit
def _segment(models: Model, forcings: ForcingSeries, states: State, failed_at, failed_level,
             t0, dt, n_steps: int, save_every: int, model_axis: int | None,
             forcing_axis: int | None, output: Callable | None, bounds: tuple,
             devices: tuple | None):
    """One segment of every column; returns its trajectory, the last states and the failure
    records so far (time and level of each column's first failure in any segment).

    ``model_axis`` / ``forcing_axis`` are the ``vmap`` axes of models and forcings (0: one per
    column, ``None``: shared). A column that failed in an earlier segment stays held at its
    last valid state, exactly as in one long rollout. ``output`` (if any) maps every saved
    ``(model, state, flux, diagnostics)`` of one column to what is kept; the last states stay
    untransformed, since the next segment starts from them. The columns are split over
    ``devices`` (``scm.columns.map_columns``; None: all). A single column skips ``vmap``
    (same result; it compiles faster).
    """

    def one_column(model, forcing, state, column_failed_at, column_failed_level, t0, dt):
        piece = rollout(model, state, forcing, t0, dt, n_steps, save_every,
                        bounds={name: (low, high) for name, low, high in bounds},
                        failed_at=column_failed_at, failed_level=column_failed_level)
        last = jax.tree.map(lambda a: a[-1], piece.state)
        if output is not None:
            kept = jax.vmap(lambda s, f, d: output(model, s, f, d))(
                piece.state, piece.flux, piece.diagnostics)
            piece = Trajectory(piece.time, *kept, piece.failed_at, piece.failed_level)
        return piece, last

    columns = (states, failed_at, failed_level)
    if states.u.shape[0] == 1:
        first = lambda tree, axis: tree if axis is None else jax.tree.map(  # noqa: E731
            lambda a: a[0] if eqx.is_array(a) else a, tree)
        result = one_column(first(models, model_axis), first(forcings, forcing_axis),
                            *first(columns, 0), t0, dt)
        piece, last = jax.tree.map(lambda a: a[None], result)
    else:
        piece, last = map_columns(one_column, (model_axis, forcing_axis, 0, 0, 0, None, None),
                                  models, forcings, *columns, t0, dt, devices=devices)
    return piece, last, piece.failed_at, piece.failed_level


def ensemble_axis(name: str, leading, n_columns: int) -> int | None:
    """The ``vmap`` axis of models or forcings: 0 when ``leading`` (a leaf that is 1-D for a
    single column: the grid's ``z_interface``, the forcing's ``times``) has a column axis of
    length ``n_columns``, ``None`` when it is shared by all columns."""
    shape = np.shape(leading)
    if len(shape) == 1:
        return None
    if len(shape) == 2 and shape[0] == n_columns:
        return 0
    raise ConfigurationError(
        f"{name} must be shared (unstacked) or stacked with one entry per column: got a "
        f"leading axis of {shape[0] if len(shape) > 1 else 'none'} for {n_columns} column(s)")


def _time_from_here(bar: tqdm, done: int) -> None:
    """Count ``done`` steps and time the bar's rate from now on: the first segment's time was
    mostly compiling, and an ETA that included it would be far too long."""
    bar.reset(total=bar.total)
    bar.initial = done
    bar.set_postfix_str("", refresh=False)
    bar.update(done)


def run_ensemble(
    models: Model,
    forcings: ForcingSeries,
    states: State,
    dt: float,
    t0: float,
    n_steps: int,
    save_every: int,
    *,
    progress: bool = True,
    desc: str = "run",
    failed_at=None,
    failed_level=None,
    output: Callable | None = None,
    segments: int = SEGMENTS,
    bounds: tuple[tuple[str, float, float], ...] | None = None,
    devices: tuple | None = None,
) -> Trajectory:
    """Integrate many columns at once from ``t0`` (s) for ``n_steps`` steps of ``dt`` (s),
    saving at ``t0`` and every ``save_every`` steps (``n_steps`` a multiple of it).

    ``states`` has a leading column axis. ``models`` and ``forcings`` are either one model /
    forcing shared by every column, or one per column stacked along a leading axis
    (``experiments.scenarios.stack_pytrees``); which one is read from the grid's
    ``z_interface`` and the forcing's ``times``. The run is cut into equal segments of one
    compiled function (see ``plan_steps``) so that a tqdm bar (stderr, ``desc``, after a couple
    of seconds) can advance. To continue an earlier run pass its last states, its end time as
    ``t0`` and its ``failed_at`` / ``failed_level``: failed columns stay held.

    ``output(model, state, flux, diagnostics) -> (state, flux, diagnostics)``, for one column
    at one saved time, reduces what is kept before it leaves the device (coarse-graining, for
    example); it must be hashable (a module-level function or an ``eqx.Module``) so that
    repeated runs reuse the compilation.

    ``bounds``: the physical bounds as ``(field, low, high)`` triples (default
    ``scm.integration.DEFAULT_BOUNDS``); leaving them counts as failure.

    The columns are split evenly over ``devices`` (default: every device of every process;
    ``scm.columns``); the result does not depend on how many there are.

    Returns a ``Trajectory`` with a leading column axis; a failure later than the end (in the
    padding of the last segment) is not reported.
    """
    check_positive("dt", dt, "s")
    check_range("t0", t0, units="s")
    t0, dt = float(t0), float(dt)
    n_columns = int(states.u.shape[0]) if states.u.ndim == 2 else 0
    if n_columns < 1:
        raise ConfigurationError(
            f"states need a leading column axis (got u of shape {states.u.shape})")
    model_axis = ensemble_axis("models", models.grid.z_interface, n_columns)
    forcing_axis = ensemble_axis("forcings", forcings.times, n_columns)
    plan = plan_steps(n_steps, save_every, segments)
    check_state(states)
    check_time_step(models, dt)
    dtype = states.u.dtype
    step = jnp.asarray(dt, dtype)
    segment_steps = plan.saves_per_segment * plan.save_every
    if bounds is None:
        bounds = tuple((name, low, high) for name, (low, high) in DEFAULT_BOUNDS.items())
    if failed_at is None:
        failed_at = jnp.full((n_columns,), jnp.inf, dtype)
    if failed_level is None:
        failed_level = jnp.full((n_columns,), -1, jnp.int32)
    failed_at = jnp.asarray(failed_at, dtype)
    failed_level = jnp.asarray(failed_level, jnp.int32)

    pieces = []
    current = states
    # disable=None: no bar where stderr is not a terminal (a log file gets no escape codes)
    with tqdm(total=plan.n_steps, desc=desc, unit="step", disable=None if progress else True,
              delay=PROGRESS_DELAY, leave=False, postfix="compiling") as bar:
        for index in range(plan.n_segments):
            start = jnp.asarray(t0 + index * segment_steps * dt, dtype)
            piece, current, failed_at, failed_level = _segment(
                models, forcings, current, failed_at, failed_level, start, step,
                segment_steps, plan.save_every, model_axis, forcing_axis, output, bounds,
                None if devices is None else tuple(devices))
            # to the host as it goes (this also waits, so the bar follows the computation);
            # a later segment's first save repeats the previous segment's last
            series = to_host((piece.time, piece.state, piece.flux, piece.diagnostics))
            pieces.append(series if index == 0 else jax.tree.map(lambda a: a[:, 1:], series))
            done = min(segment_steps, plan.n_steps - index * segment_steps)
            if index == 0:
                _time_from_here(bar, done)
            else:
                bar.update(done)

    keep = plan.n_saves + 1
    time_series = jax.tree.map(
        lambda *parts: jnp.asarray(np.concatenate(parts, axis=1)[:, :keep]), *pieces)
    failed_at, failed_level = to_host((failed_at, failed_level))
    # failure times are whole steps: half a step past the end is beyond it
    beyond_end = failed_at > t0 + (plan.n_steps + 0.5) * dt
    return Trajectory(
        *time_series,
        failed_at=jnp.asarray(np.where(beyond_end, np.inf, failed_at).astype(failed_at.dtype)),
        failed_level=jnp.asarray(np.where(beyond_end, -1, failed_level).astype(np.int32)),
    )


class Restart(NamedTuple):
    """Where a run continues (``run_case(..., start=)``): every column's state (a leading
    column axis), the time (s) and the failure records, as a run's last save holds them."""

    states: State
    time: float
    failed_at: jax.Array
    failed_level: jax.Array


def restart_point(dataset: xr.Dataset, case, source: str = "the dataset") -> Restart:
    """The last save of a run's dataset (``case_dataset``, read back with
    ``scm.io.read_netcdf``) as the ``Restart`` of ``case``, the same case: continuing from
    it repeats the continuous run bit for bit. ``ConfigurationError`` (naming ``source``) for
    a file that cannot restart ``case``: time means, a state variable left out, another grid.
    """
    check_instantaneous(dataset, source)
    trajectory = dataset_to_trajectory(dataset)
    written = trajectory.state.fields()
    missing = [STATE_NAMES.get(f, f) for f in case.state0.fields() if f not in written]
    if missing:
        raise ConfigurationError(f"{source} lacks the state variable(s) {', '.join(missing)} "
                                 "needed to continue the run (left out by --variables?)")
    levels = case.model.grid.n_levels
    if dataset.sizes.get("z") != levels:
        raise ConfigurationError(f"{source} has {dataset.sizes.get('z')} levels, the case "
                                 f"{levels}")
    dtype = case.state0.u.dtype
    last = {f: jnp.asarray(written[f][:, -1], dtype) for f in case.state0.fields()}
    return Restart(State.from_fields(last), float(dataset["time"].values[-1]),
                   trajectory.failed_at.astype(dtype), trajectory.failed_level)


def check_instantaneous(dataset: xr.Dataset, source: str = "the dataset") -> None:
    """``ConfigurationError`` unless ``dataset`` holds saved states (not time means)."""
    if "time_bounds" in dataset:
        raise ConfigurationError(f"{source} holds time means (--average), not the state a run "
                                 "can continue from")


def output_shapes(case) -> dict[str, tuple[int, ...]]:
    """Output variable name → shape of one column at one save, for ``case`` (from the shapes
    of its schemes' results: nothing is computed or compiled)."""
    tendency = jax.eval_shape(lambda: case.model.tendency(case.state0, case.forcing.at(0.0)))
    n = case.model.grid.n_levels
    fields = case.state0.fields()
    return ({STATE_NAMES.get(f, f): (n,) for f in fields}
            | {flux_name(f): (n + 1,) for f in fields}
            | {name: tuple(d.shape) for name, d in tendency.diagnostics.items()}
            | {"boundary_layer_height": ()})


def check_output_size(case, n_columns: int, n_saves: int,
                      limit: float = MAX_OUTPUT_BYTES) -> float:
    """The bytes a run's output will take (``n_saves`` + 1 times, ``n_columns`` columns);
    ``ConfigurationError`` above ``limit`` (the run keeps all of it in memory)."""
    values = sum(math.prod(shape) for shape in output_shapes(case).values())
    size = float(values) * n_columns * (n_saves + 1) * case.state0.u.dtype.itemsize
    if size > limit:
        raise ConfigurationError(
            f"the output would take {size / 2**30:.3g} GiB ({n_saves + 1} saves x {n_columns} "
            f"column(s) x {values} values), more than the {limit / 2**30:g} GiB allowed: save "
            "less often (--save-every), run fewer columns or a shorter run")
    return size


def run_case(
    case,
    n_columns: int = 1,
    seed: int = 0,
    progress: bool = True,
    perturbation: Perturbation | None = DEFAULT_PERTURBATION,
    start: Restart | None = None,
) -> CaseRun:
    """Integrate ``case`` (an ``experiments.cases.Case``) for ``n_columns`` columns at once.

    Column 0 is the unperturbed control; columns 1.. are perturbed by ``perturbation`` with
    random numbers from ``seed`` (``None`` runs identical columns). Saves every
    ``case.save_every`` steps from t = 0 to the end (a whole number of output intervals, see
    ``plan_run``). With ``start`` (``restart_point``) the run continues an earlier one from
    its last save to the end of the case instead (``case.hours`` is then the end time: the
    forcing of a case is built up to it), every column as it was. With ``progress`` a
    tqdm bar (stderr) appears when the run takes more than a couple of seconds. All columns
    share the case's model and forcing (``run_ensemble``). A run whose output would not fit
    ``MAX_OUTPUT_BYTES`` is refused before anything compiles.
    """
    started = time.perf_counter()
    start_hours = 0.0 if start is None else start.time / HOUR
    plan = plan_run(case.hours - start_hours, case.dt, case.save_every)
    if start is None:
        states = initial_states(case.state0, case.model.grid.z, n_columns, seed, perturbation)
        start = Restart(states, 0.0, None, None)
    check_output_size(case, int(start.states.u.shape[0]), plan.n_saves)
    trajectory = run_ensemble(case.model, case.forcing, start.states, case.dt, start.time,
                              plan.n_steps, plan.save_every, progress=progress, desc=case.name,
                              failed_at=start.failed_at, failed_level=start.failed_level)
    return CaseRun(trajectory, start.states, time.perf_counter() - started, seed, perturbation)


def case_attributes(case, n_columns: int = 1, seed: int = 0,
                    perturbation: Perturbation | None = None) -> dict:
    """Global attributes that document how a case was run: every option of ``build_case`` as
    ``parameter_<name>`` (what ``scm run --config`` reads back), the papers the case follows
    (``references``) and, with more than one column, the seed and perturbation."""
    attrs = {
        "title": f"hybrid-scm single-column run of case {case.name}",
        "case": case.name,
        "case_description": case.description,
        "columns": int(n_columns),
        "slots": ", ".join(f"{slot}={type(p).__name__}"
                           for slot, p in case.model.slots().items()),
    }
    if case.name in CASE_NAMES:
        attrs["references"] = "; ".join(definition(case.name).references)
    if perturbation is not None and n_columns > 1:
        attrs["seed"] = int(seed)
        attrs["perturbation"] = dataclasses.asdict(perturbation)
    attrs["parameter"] = {name: value for name, value in case.parameters.items()
                          if name != "case"}
    attrs["parameter"]["save_every"] = int(case.save_every)
    return attrs


def case_dataset(case, run: CaseRun, attrs: dict | None = None) -> xr.Dataset:
    """The dataset of a finished run, with global attributes from ``case`` and the run
    (``case_attributes``) and ``attrs``.

    Case parameters become ``parameter_<name>`` attributes, perturbation settings
    ``perturbation_<name>`` (see ``scm.io.trajectory_to_dataset`` for the layout).
    """
    n_columns = int(np.shape(run.trajectory.failed_at)[0])
    recorded = case_attributes(case, n_columns, run.seed, run.perturbation) | dict(attrs or {})
    return trajectory_to_dataset(run.trajectory, case.model.grid, recorded)


def state_only(model: Model, state: State, flux: State, diagnostics: dict):
    """A ``run_ensemble`` output that keeps the saved states alone: the fluxes and
    diagnostics at each save (one more evaluation of every scheme) are then never computed,
    nor compiled."""
    return state, None, {}


def run_from_truth(models: Model, forcings: ForcingSeries, truth: xr.Dataset, dt: float,
                   hours: int, *, progress: bool = True, desc: str = "run",
                   bounds: tuple[tuple[str, float, float], ...] | None = None,
                   output: Callable | None = None,
                   tracers: dict | None = None) -> tuple[Trajectory, xr.Dataset]:
    """Run every scenario of a coarse-grained truth dataset (``experiments.truth``) from its
    first state for ``hours`` hours with steps of ``dt`` (the truth's own spacing), saving
    hourly; ``models`` and ``forcings`` are stacked per scenario; ``output`` as for
    ``run_ensemble`` (``state_only`` when the fluxes and diagnostics are not wanted);
    ``tracers``: initial tracer profiles ``(scenario, z)`` of schemes that own some (the
    truth holds none).

    Returns the trajectory and the truth at the same hourly times, scenarios first like the
    trajectory (dims ``(column, time, ...)``), so that errors are
    ``trajectory.state.thl − hourly["theta"].values`` and so on.
    """
    times = truth["time"].values
    if len(times) > 1 and not np.isclose(times[1] - times[0], dt):
        raise ConfigurationError(
            f"the truth is saved every {times[1] - times[0]:g} s but the model steps {dt:g} s")
    steps_per_hour = round(HOUR / dt)
    hourly = truth.isel(time=slice(0, hours * steps_per_hour + 1, steps_per_hour)).transpose(
        "column", "time", ...)
    if hourly.sizes["time"] < hours + 1:
        raise ConfigurationError(
            f"the {truth.attrs.get('split', '')} truth covers {hourly.sizes['time'] - 1} h, "
            f"fewer than the {hours} h asked for")
    dtype = models.grid.z.dtype
    u, v, theta = (jnp.asarray(hourly[name].values[:, 0], dtype) for name in ("u", "v", "theta"))
    run = run_ensemble(models, forcings, State(u, v, theta, jnp.zeros_like(u), tracers or {}), dt,
                       float(hourly["time"].values[0]), hours * steps_per_hour, steps_per_hour,
                       progress=progress, desc=desc, bounds=bounds, output=output)
    return run, hourly


def first_day_rmse(*errors: np.ndarray) -> np.ndarray:
    """Per scenario, the RMS over all levels and the hourly saves of the first day (hours
    1–24) of errors ``(scenario, hour, z)``; several components (u and v: the wind vector)
    add their squares."""
    squared = sum(np.asarray(e)[:, 1:25] ** 2 for e in errors)
    return np.sqrt(squared.mean(axis=(1, 2)))


__all__ = [
    "CaseRun",
    "MAX_OUTPUT_BYTES",
    "Restart",
    "check_instantaneous",
    "check_output_size",
    "output_shapes",
    "restart_point",
    "DEFAULT_PERTURBATION",
    "Perturbation",
    "RunPlan",
    "case_attributes",
    "case_dataset",
    "initial_states",
    "ensemble_axis",
    "plan_run",
    "plan_steps",
    "first_day_rmse",
    "run_case",
    "run_ensemble",
    "run_from_truth",
    "state_only",
]
