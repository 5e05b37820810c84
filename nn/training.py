"""Training a parameterization slot against coarse-grained truth, offline and online.

Both modes use the same data (``TrainingData``: coarse-grained truth of S scenarios, saved
every coarse time step Δt, with each scenario's coarse grid and forcing), the same model and
the same trainable subset (the networks' weights, ``nn.parameterization.trainable_filter``;
physics, head scales and normalization stay frozen).

**Offline** (regression of the sub-grid flux): for truth samples (scenario s, time tᵢ),

    L_off = Σ_φ ⟨(F̂_φ(x_s(tᵢ)) − F_φ,s(tᵢ))²⟩_{z, batch} / σ_Fφ²,   φ ∈ {θl, u, v},

where F̂ is the slot's total upward flux on the coarse interfaces (explicit plus diffusive,
``Tendency.total_flux``: the surface exchange at index 0) and F the truth's coarse-grained
sub-grid flux; σ_Fφ is the pooled standard deviation of F_φ over the training data.

**Online** (multi-step rollouts of the coupled model): from truth states x_s(tᵢ), integrate
the coarse model K steps with the scheme in its slot and minimize

    L_on = ⟨ (1/K) Σ_{k=1..K} Σ_φ ⟨(x̂_φ(tᵢ + kΔt) − x_φ,s(tᵢ + kΔt))²⟩_z / σ_φ² ⟩_columns,

σ_φ the pooled temporal standard deviation of the truth (the variability the model has to
follow: RMS over scenarios and levels of the standard deviation in time). The error is
accumulated inside the checkpointed step loop (``scm.integration.checkpointed_steps``: every
step's carry stored up to K = 100, chunks of √K beyond), so the gradient's memory grows far
slower than K. A column that goes non-finite or leaves the physical bounds during a rollout
is held, **masked out of the loss and counted**; an update whose loss or gradient is not
finite is skipped (``optax.apply_if_finite``). K follows a curriculum of (K, iterations)
stages (long rollouts only once short ones are learned: Um et al. 2020,
NeurIPS, "Solver-in-the-loop"; Kochkov et al. 2021, PNAS 118; Frezat et al. 2022, JAMES 14).

Loss weights w_φ (``TrainingConfig.loss_weights``; fields of the state, one each by default)
multiply each field's term: they enter as scales σ_φ / √w_φ.

Optimizer (``TrainingConfig``: Adam by default, Kingma & Ba 2015; AdamW or SGD with momentum;
a constant, cosine, warm-up-cosine or exponential learning-rate schedule) after global-norm
gradient clipping. An update whose loss or gradient is not finite is skipped; after
``max_nonfinite_updates`` skipped in a row training stops with ``TrainingDiverged`` (one
line: the iteration and what to change) rather than finish untrained. Batches are drawn with
``jax.random.fold_in(key(seed), iteration)``, so a run resumed from a checkpoint draws the
same batches and reproduces the uninterrupted losses exactly.

Model selection (early stopping): ``train(..., validate=score)`` calls ``score(model)`` (lower
is better; the experiment's is the 24 h error on the validation scenarios) every
``TrainingConfig.validate_every`` iterations and at the end, and returns the weights that
scored best; the learning curve records every score.

The feature normalization and the out-of-distribution detector are fitted on the training
data itself: ``feature_samples`` evaluates a network's features (with its surface layer) on
the truth states of every scenario, every ``stride`` saves.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from nn.parameterization import trainable_filter
from physics.surface import AbstractSurfaceLayer
from scm.columns import map_columns, replicate
from scm.compilation import filter_jit
from scm.errors import ConfigurationError, check_choice, check_range
from scm.forcing import ForcingSeries
from scm.grid import ColumnGrid
from scm.integration import (
    DEFAULT_BOUNDS,
    ColumnTerm,
    SemiImplicitEuler,
    checkpointed_steps,
    guarded_step,
)
from scm.io import write_atomic
from scm.model import Model
from scm.state import State

#: Fields in the losses by default (the dry boundary layer: potential temperature and wind).
LOSS_FIELDS: tuple[str, ...] = ("thl", "u", "v")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "warmup_cosine", "exponential")


class TrainingDiverged(ConfigurationError):
    """Training skipped ``max_nonfinite_updates`` updates in a row (non-finite loss or
    gradient): it stops, and the message says where and what to change."""
#: Smallest normalization scale (units of the field): a constant field does not divide by 0.
MIN_SCALE = 1.0e-6


class TrainingData(eqx.Module):
    """Coarse-grained truth of S scenarios on the coarse model's grid.

    ``grid`` and ``forcing``: each scenario's coarse grid and forcing, stacked on a leading
    scenario axis; ``states``: ``State`` of arrays ``(S, T, z)`` at ``times`` (T,) (s since the
    case start), one coarse time step ``dt`` apart; ``fluxes``: the truth's sub-grid upward
    fluxes ``(S, T, z + 1)`` (``State``; fields not in the loss are unused); ``surface``:
    each scenario's surface layer, stacked (its roughness is a scenario parameter the model
    holds, not the forcing), or ``None`` to keep the model's own.
    """

    grid: ColumnGrid
    forcing: ForcingSeries
    states: State
    fluxes: State
    times: jax.Array
    dt: float = eqx.field(static=True)
    surface: AbstractSurfaceLayer | None = None

    def __check_init__(self):
        for name in self.states.fields():
            for role, tree in (("state", self.states), ("flux", self.fluxes)):
                values = np.asarray(tree.fields()[name])
                bad = ~np.isfinite(values)
                if bad.any():
                    s, t = np.unravel_index(int(np.argmax(bad)), values.shape)[:2]
                    raise ConfigurationError(
                        f"training data: {role} {name} is not finite at scenario {s}, "
                        f"time {float(self.times[t]):g} s")
        steps = np.diff(np.asarray(self.times))
        if steps.size and not np.allclose(steps, self.dt, rtol=1e-6):
            raise ConfigurationError(
                f"training data: times must be one model step dt = {self.dt:g} s apart "
                f"(found spacings {np.unique(steps.round(3))[:5]} s)")

    @property
    def n_scenarios(self) -> int:
        return int(self.states.thl.shape[0])

    @property
    def n_times(self) -> int:
        return int(self.states.thl.shape[1])

    def state_scales(self, names: tuple[str, ...] = LOSS_FIELDS) -> dict[str, jax.Array]:
        """σ_φ of the online loss: RMS over scenarios and levels of the std in time."""
        fields = self.states.fields()
        return {n: jnp.maximum(jnp.sqrt(jnp.mean(jnp.var(fields[n], axis=1))), MIN_SCALE)
                for n in names}

    def flux_scales(self, names: tuple[str, ...] = LOSS_FIELDS) -> dict[str, jax.Array]:
        """σ_Fφ of the offline loss: pooled std of the truth's interior fluxes."""
        fields = self.fluxes.fields()
        return {n: jnp.maximum(jnp.std(fields[n][..., 1:-1]), MIN_SCALE) for n in names}


def model_on(model: Model, grid: ColumnGrid,
             surface: AbstractSurfaceLayer | None = None) -> Model:
    """``model`` with its grid replaced by one scenario's grid (same number of levels) and,
    given ``surface``, every surface layer it holds (its schemes', its networks', its
    detectors') by that scenario's."""
    model = eqx.tree_at(lambda m: m.grid, model, grid)
    if surface is None:
        return model

    def is_surface(x):
        return isinstance(x, AbstractSurfaceLayer)

    return jax.tree.map(lambda x: surface if is_surface(x) else x, model, is_leaf=is_surface)


def scenario_model(model: Model, data: TrainingData, s) -> Model:
    """``model`` on scenario ``s`` of ``data`` (its grid and surface layer)."""
    surface = None if data.surface is None else _take(data.surface, s)
    return model_on(model, _take(data.grid, s), surface)


def normalized_error(estimate: State, target: State, scales: dict) -> jax.Array:
    """Σ_φ ⟨(estimate_φ − target_φ)²⟩ / σ_φ² over the fields of ``scales`` (one column)."""
    estimate, target = estimate.fields(), target.fields()
    return sum(jnp.mean((estimate[n] - target[n]) ** 2) / scales[n] ** 2 for n in scales)


def rollout_error(model: Model, state0: State, forcing: ForcingSeries, target_at, n_steps: int,
                  t0, dt, scales: dict, bounds=DEFAULT_BOUNDS):
    """Mean normalized error of an ``n_steps`` rollout against ``target_at(k)``, the truth
    after step k + 1 (k = 0 … n_steps − 1), and the column's failure time (``inf`` if none).

    The error is summed inside the checkpointed step loop and each target is fetched when its
    step is taken, so the gradient stores carries and one step's residuals at a time
    (``scm.integration.checkpointed_steps``): K carries up to K = 100, about 2√K beyond.
    """
    solver, term = SemiImplicitEuler(), ColumnTerm(model, forcing)
    dtype = state0.thl.dtype

    def step(carry):
        state, k, failed_at, failed_level, total = carry
        state, failed_at, failed_level = guarded_step(
            solver, term, state, t0 + k.astype(dtype) * dt, dt, bounds, failed_at,
            failed_level)
        error = normalized_error(state, target_at(k), scales)
        return state, k + 1, failed_at, failed_level, total + error

    carry0 = (state0, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, dtype),
              jnp.asarray(-1, jnp.int32), jnp.zeros((), dtype))
    carry = checkpointed_steps(step, carry0, n_steps)
    return carry[4] / n_steps, carry[2]


def _take(tree, index):
    return jax.tree.map(lambda a: a[index], tree)


def draw(key, data: TrainingData, batch_size: int, horizon: int):
    """Random (scenario, start index) pairs whose ``horizon`` steps stay inside the data."""
    k1, k2 = jax.random.split(key)
    scenario = jax.random.randint(k1, (batch_size,), 0, data.n_scenarios)
    start = jax.random.randint(k2, (batch_size,), 0, data.n_times - horizon)
    return scenario, start


def online_loss(params, static, data: TrainingData, scenario, start, n_steps: int,
                scales: dict, bounds=DEFAULT_BOUNDS):
    """(L_on over the columns that stayed valid, number of masked columns)."""

    def one(s, i, model, data, scales):
        def target_at(k):
            return jax.tree.map(lambda a: a[s, i + k + 1], data.states)

        return rollout_error(scenario_model(model, data, s),
                             jax.tree.map(lambda a: a[s, i], data.states),
                             _take(data.forcing, s), target_at, n_steps, data.times[i],
                             data.dt, scales, bounds)

    errors, failed_at = map_columns(one, (0, 0, None, None, None), scenario, start,
                                    eqx.combine(params, static), data, scales)
    valid = ~jnp.isfinite(failed_at) & jnp.isfinite(errors)
    count = jnp.sum(valid)
    loss = jnp.sum(jnp.where(valid, errors, 0.0)) / jnp.maximum(count, 1)
    return loss, scenario.shape[0] - count


def offline_loss(params, static, data: TrainingData, scenario, index, slot: str,
                 scales: dict):
    """(L_off of the slot's total flux against the truth's sub-grid flux, 0 masked)."""

    def one(s, i, model, data, scales):
        grid, state = _take(data.grid, s), _take(_take(data.states, s), i)
        forcing = _take(data.forcing, s).at(data.times[i])
        tendency = getattr(scenario_model(model, data, s), slot)(state, forcing, grid)
        predicted = tendency.total_flux(state, grid)
        return normalized_error(predicted, _take(_take(data.fluxes, s), i), scales)

    errors = map_columns(one, (0, 0, None, None, None), scenario, index,
                         eqx.combine(params, static), data, scales)
    return jnp.mean(errors), jnp.zeros((), jnp.int32)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How to train. ``curriculum``: (rollout steps K, iterations) per stage; offline
    training uses only the total number of iterations (K does not apply).

    ``loss_weights``: (field, weight) pairs, the fields of the loss and their weights;
    ``optimizer``: ``OPTIMIZERS``; ``schedule``: ``SCHEDULES`` (``warmup_iterations`` for
    the warm-up, ``final_learning_rate`` as a fraction of ``learning_rate`` at the end);
    ``bounds``: (field, low, high) outside which a training column is masked;
    ``validate_every``: iterations between validation scores (with ``train(validate=)``).
    """

    mode: str = "online"
    curriculum: tuple[tuple[int, int], ...] = ((3, 150), (12, 150), (36, 150), (96, 100))
    batch_size: int = 32
    learning_rate: float = 1.0e-3
    clip_norm: float = 1.0
    seed: int = 0
    slot: str = "turbulence"
    checkpoint_every: int = 50
    loss_weights: tuple[tuple[str, float], ...] = tuple((n, 1.0) for n in LOSS_FIELDS)
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_iterations: int = 0
    final_learning_rate: float = 0.1
    bounds: tuple[tuple[str, float, float], ...] = tuple(
        (name, low, high) for name, (low, high) in DEFAULT_BOUNDS.items())
    max_nonfinite_updates: int = 20
    validate_every: int = 100

    def __post_init__(self):
        check_choice("mode", self.mode, ("online", "offline"))
        if not self.curriculum:
            raise ConfigurationError("curriculum must have at least one (steps, iterations)")
        for steps, iterations in self.curriculum:
            check_range("curriculum rollout steps", steps, 1, 100_000, "steps")
            check_range("curriculum iterations", iterations, 1, 10_000_000)
        check_range("batch_size", self.batch_size, 1, 1_000_000)
        check_range("learning_rate", self.learning_rate, 1.0e-8, 1.0)
        check_range("clip_norm", self.clip_norm, 1.0e-6, 1.0e6)
        check_range("checkpoint_every", self.checkpoint_every, 1, 10_000_000)
        if not self.loss_weights or not any(w > 0 for _, w in self.loss_weights):
            raise ConfigurationError("loss_weights must give at least one field a weight > 0")
        for name, weight in self.loss_weights:
            check_choice("loss field", name, ("u", "v", "thl", "qt"))
            check_range(f"loss weight of {name}", weight, 0.0, 1.0e6)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("warmup_iterations", self.warmup_iterations, 0, self.iterations)
        check_range("final_learning_rate", self.final_learning_rate, 0.0, 1.0)
        for name, low, high in self.bounds:
            if not low < high:
                raise ConfigurationError(f"training bounds of {name}: low ({low:g}) must be "
                                         f"below high ({high:g})")
        check_range("max_nonfinite_updates", self.max_nonfinite_updates, 1, 10_000_000)
        check_range("validate_every", self.validate_every, 1, 10_000_000)

    @property
    def iterations(self) -> int:
        return sum(n for _, n in self.curriculum)

    def stage(self, iteration: int) -> tuple[int, int]:
        """(stage index, rollout steps K) of a 0-based iteration."""
        end = 0
        for index, (steps, n) in enumerate(self.curriculum):
            end += n
            if iteration < end:
                return index, steps
        raise IndexError(iteration)

    def scales(self, data: TrainingData) -> dict[str, jax.Array]:
        """The loss's σ_φ / √w_φ for the fields with a weight (module docstring)."""
        weights = {n: w for n, w in self.loss_weights if w > 0}
        names = tuple(weights)
        raw = data.state_scales(names) if self.mode == "online" else data.flux_scales(names)
        return {n: raw[n] / math.sqrt(weights[n]) for n in names}

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for name in ("curriculum", "loss_weights", "bounds"):
            out[name] = [list(c) for c in getattr(self, name)]
        return out


def make_optimizer(config: TrainingConfig) -> optax.GradientTransformation:
    """The clipped optimizer of ``config``, skipping non-finite updates (one object per
    setting, so compiled training steps are shared between runs)."""
    return _optimizer(config.optimizer, config.learning_rate, config.schedule,
                      config.iterations, config.warmup_iterations, config.final_learning_rate,
                      config.weight_decay, config.clip_norm)


@functools.cache
def _optimizer(kind, learning_rate, schedule, iterations, warmup, final, weight_decay,
               clip_norm) -> optax.GradientTransformation:
    end = learning_rate * final
    rate = {
        "constant": lambda: learning_rate,
        "cosine": lambda: optax.cosine_decay_schedule(learning_rate, iterations, final),
        "warmup_cosine": lambda: optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, max(warmup, 1), iterations, end),
        "exponential": lambda: optax.exponential_decay(learning_rate, iterations,
                                                       max(final, 1.0e-12)),
    }[schedule]()
    inner = {
        "adam": lambda: optax.adam(rate),
        "adamw": lambda: optax.adamw(rate, weight_decay=weight_decay),
        "sgd": lambda: optax.sgd(rate, momentum=0.9),
    }[kind]()
    # the streak is counted (and stopped) by ``train``: the optimizer itself never gives up
    return optax.apply_if_finite(optax.chain(optax.clip_by_global_norm(clip_norm), inner),
                                 max_consecutive_errors=2**31 - 1)


@filter_jit
def _train_step(params, static, opt_state, optimizer, data, key, n_steps, config_static,
                scales, bounds):
    mode, batch_size, slot = config_static
    if mode == "online":
        scenario, start = draw(key, data, batch_size, n_steps)
        loss_fn = functools.partial(online_loss, n_steps=n_steps, scales=scales, bounds=bounds)
    else:
        scenario, start = draw(key, data, batch_size, 0)
        loss_fn = functools.partial(offline_loss, slot=slot, scales=scales)
    (loss, masked), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
        params, static, data, scenario, start)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = eqx.apply_updates(params, updates)
    return params, opt_state, loss, masked


class TrainingResult(NamedTuple):
    """The trained model (the best-validated weights when validated) and its learning curve
    (one row per iteration; ``validation`` scores where taken)."""

    model: Model
    history: list[dict]


def _checkpoint_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "checkpoint.eqx", directory / "checkpoint.json"


def save_checkpoint(directory: Path, params, opt_state, history: list, config,
                    best=None) -> None:
    """Weights, optimizer state and the best-validated weights so far (``checkpoint.eqx``)
    and the iterations done with their losses (``checkpoint.json``), each written
    atomically (leaves first, then the record)."""
    weights, record = _checkpoint_paths(directory)
    best = params if best is None else best
    write_atomic(weights, lambda path: eqx.tree_serialise_leaves(path, (params, opt_state,
                                                                        best)))
    text = json.dumps({"iteration": len(history), "config": config.to_dict(),
                       "history": history})
    write_atomic(record, lambda path: path.write_text(text))


def load_checkpoint(directory: Path, params, opt_state, config):
    """(params, opt_state, history, best params) from ``directory``, or ``None``."""
    weights, record = _checkpoint_paths(directory)
    if not record.exists():
        return None
    try:
        saved = json.loads(record.read_text())
        params, opt_state, best = eqx.tree_deserialise_leaves(weights,
                                                              (params, opt_state, params))
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigurationError(
            f"training checkpoint in {directory} is unreadable: {error}") from None
    if saved["config"] != config.to_dict():
        raise ConfigurationError(
            f"training checkpoint in {directory} was made with another configuration "
            f"({saved['config']}); use a new directory or the same configuration")
    return params, opt_state, saved["history"], best


def _best_score(history: list[dict]) -> float:
    scores = [row["validation"] for row in history if row.get("validation") is not None]
    return min(scores, default=math.inf)


def train(model: Model, data: TrainingData, config: TrainingConfig, *,
          checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
          description: str = "training", stop_after: int | None = None,
          validate: Callable[[Model], float] | None = None,
          filter_spec=None) -> TrainingResult:
    """Train the slot ``config.slot`` of ``model`` (offline or online, per ``config``).

    What is trained: ``nn.parameterization.trainable_filter`` of that slot, or
    ``filter_spec`` (a filter for ``eqx.partition`` of ``model``) when given.
    With ``checkpoint_dir`` the weights, optimizer state and learning curve are saved every
    ``config.checkpoint_every`` iterations and at the end, and a run finds and continues from
    them (exactly: the batches depend only on the seed and the iteration). ``stop_after``
    ends the run after that many iterations in total (to interrupt it on purpose).
    ``validate(model) -> score`` selects the returned weights (module docstring).
    """
    if getattr(model, config.slot, None) is None:
        raise ConfigurationError(f"the model has no parameterization in slot {config.slot!r}")
    if filter_spec is None:
        filter_spec = trainable_filter(model, config.slot)
    params, static = eqx.partition(model, filter_spec)
    if not jax.tree.leaves(params):
        raise ConfigurationError(f"the model has nothing to train in slot {config.slot!r} "
                                 "(no network or weights outside the frozen physics)")
    optimizer = make_optimizer(config)
    opt_state = optimizer.init(params)
    history: list[dict] = []
    best = params
    directory = None if checkpoint_dir is None else Path(checkpoint_dir)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        restored = load_checkpoint(directory, params, opt_state, config)
        if restored is not None:
            params, opt_state, history, best = restored
    # what every column reads (data, weights), placed on every device once (scm.columns)
    data, params, static, opt_state = replicate((data, params, static, opt_state))
    scales = config.scales(data)
    bounds = {name: (low, high) for name, low, high in config.bounds}
    config_static = (config.mode, config.batch_size, config.slot)
    base_key = jax.random.key(config.seed)
    total = config.iterations if stop_after is None else min(stop_after, config.iterations)
    start_time = time.perf_counter()
    with tqdm(total=total, initial=len(history), desc=description, disable=not progress,
              leave=False) as bar:
        for iteration in range(len(history), total):
            stage, n_steps = config.stage(iteration)
            if config.mode == "offline":
                n_steps = 0
            key = jax.random.fold_in(base_key, iteration)
            params, opt_state, loss, masked = _train_step(
                params, static, opt_state, optimizer, data, key, n_steps, config_static,
                scales, bounds)
            loss, masked = float(loss), int(masked)
            streak = int(opt_state.notfinite_count)
            if streak >= config.max_nonfinite_updates:
                raise TrainingDiverged(
                    f"training stopped at iteration {iteration} (stage {stage}, K = "
                    f"{n_steps}): {streak} updates in a row had a non-finite loss or gradient "
                    "and were skipped; lower learning_rate or clip_norm, shorten the "
                    "curriculum's rollouts, or check the data")
            row = {"iteration": iteration, "stage": stage, "rollout_steps": n_steps,
                   "loss": loss, "masked_columns": masked, "validation": None,
                   "seconds": time.perf_counter() - start_time}
            done = iteration + 1
            if validate is not None and (done % config.validate_every == 0
                                         or done == config.iterations):
                row["validation"] = float(validate(eqx.combine(params, static)))
                if row["validation"] < _best_score(history):
                    best = params
            history.append(row)
            bar.set_postfix(loss=f"{loss:.4g}", K=n_steps, masked=masked)
            bar.update(1)
            if directory is not None and (done % config.checkpoint_every == 0 or done == total):
                save_checkpoint(directory, params, opt_state, history, config, best)
    return TrainingResult(eqx.combine(best if validate is not None else params, static),
                          history)


def feature_samples(features, data: TrainingData, surface=None, stride: int = 12):
    """Raw features ``(profiles (N, P, z), scalars (N, S))`` of the truth states of every
    scenario, every ``stride`` saves (hourly at Δt = 300 s), with each scenario's surface
    layer (``data.surface``, else ``surface``; ``None``: without one), for
    ``Normalization.from_samples`` and ``nn.ood.InputDistance.fit``."""
    indices = jnp.arange(0, data.n_times, max(1, int(stride)))
    per_scenario = data.surface is not None

    def one(grid, forcing, states, scenario_surface):
        surface_ = scenario_surface if per_scenario else surface

        def at(i):
            state = jax.tree.map(lambda a: a[i], states)
            instant = forcing.at(data.times[i])
            fluxes = None if surface_ is None else surface_.fluxes(state, instant, grid)
            return features(state, instant, grid, fluxes)
        return jax.vmap(at)(indices)

    surfaces = data.surface if per_scenario else jnp.zeros(data.n_scenarios)
    profiles, scalars = eqx.filter_jit(jax.vmap(one))(data.grid, data.forcing, data.states,
                                                      surfaces)
    return (np.asarray(profiles).reshape(-1, *profiles.shape[-2:]),
            np.asarray(scalars).reshape(-1, scalars.shape[-1]))


def write_learning_curve(history: list[dict], directory: str | os.PathLike,
                         name: str = "learning_curve") -> list[Path]:
    """``name.csv``, ``name.json`` and ``name.png`` (loss against iteration, log scale, the
    curriculum stages marked, and the validation scores where taken) in ``directory``. Safe
    to call from several threads at once."""
    from scm.figures import new_figure, save_figure

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.csv", directory / f"{name}.json", directory / f"{name}.png"]
    columns = ["iteration", "stage", "rollout_steps", "loss", "masked_columns", "validation",
               "seconds"]

    lines = [",".join(columns)] + [",".join("" if row.get(c) is None else str(row[c])
                                            for c in columns) for row in history]
    write_atomic(paths[0], lambda path: path.write_text("\n".join(lines) + "\n"))
    write_atomic(paths[1], lambda path: path.write_text(json.dumps(history)))
    figure, (axis,) = new_figure(1, width=6, height=3.5)
    iterations = [row["iteration"] for row in history]
    losses = [row["loss"] if math.isfinite(row["loss"]) else np.nan for row in history]
    axis.semilogy(iterations, losses, lw=0.8)
    for previous, row in zip(history, history[1:], strict=False):
        if row["stage"] != previous["stage"]:
            axis.axvline(row["iteration"], color="0.7", lw=0.8, ls="--")
            axis.annotate(f"K={row['rollout_steps']}", (row["iteration"], 1), xycoords=(
                "data", "axes fraction"), va="top", fontsize=8, color="0.4")
    validated = [(row["iteration"], row["validation"]) for row in history
                 if row.get("validation") is not None]
    if validated:
        twin = axis.twinx()
        twin.plot(*zip(*validated, strict=True), "o-", color="C1", ms=3, lw=0.8)
        twin.set_ylabel("validation score (1 = baseline)", color="C1")
    axis.set_xlabel("iteration")
    axis.set_ylabel("normalized loss (1)")
    axis.set_title(name.replace("_", " "))
    save_figure(figure, paths[2])
    return paths


__all__ = [
    "LOSS_FIELDS",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainingConfig",
    "TrainingData",
    "TrainingDiverged",
    "TrainingResult",
    "feature_samples",
    "load_checkpoint",
    "make_optimizer",
    "model_on",
    "scenario_model",
    "normalized_error",
    "offline_loss",
    "online_loss",
    "rollout_error",
    "save_checkpoint",
    "train",
    "write_learning_curve",
]
