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
accumulated inside the checkpointed step loop (``scm.integration.checkpointed_steps``, chunks
of ∛K steps), so the gradient's memory grows far slower than K. A column that goes
non-finite or leaves the physical bounds during a rollout is held, **masked out of the loss
and counted**; an update whose loss or gradient is not finite is skipped
(``optax.apply_if_finite``). K follows a curriculum of
(K, iterations) stages (long rollouts only once short ones are learned: Um et al. 2020,
NeurIPS, "Solver-in-the-loop"; Kochkov et al. 2021, PNAS 118; Frezat et al. 2022, JAMES 14).

Optimizer: Adam (Kingma & Ba 2015) after global-norm gradient clipping. Batches are drawn with
``jax.random.fold_in(key(seed), iteration)``, so a run resumed from a checkpoint draws the
same batches and reproduces the uninterrupted losses exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from nn.parameterization import trainable_filter
from scm.columns import map_columns, replicate
from scm.compilation import filter_jit
from scm.errors import ConfigurationError, check_range
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

#: Fields in the losses (the dry boundary layer: potential temperature and wind).
LOSS_FIELDS: tuple[str, ...] = ("thl", "u", "v")
#: Smallest normalization scale (units of the field): a constant field does not divide by 0.
MIN_SCALE = 1.0e-6


class TrainingData(eqx.Module):
    """Coarse-grained truth of S scenarios on the coarse model's grid.

    ``grid`` and ``forcing``: each scenario's coarse grid and forcing, stacked on a leading
    scenario axis; ``states``: ``State`` of arrays ``(S, T, z)`` at ``times`` (T,) (s since the
    case start), one coarse time step ``dt`` apart; ``fluxes``: the truth's sub-grid upward
    fluxes ``(S, T, z + 1)`` (``State``; fields not in ``LOSS_FIELDS`` are unused).
    """

    grid: ColumnGrid
    forcing: ForcingSeries
    states: State
    fluxes: State
    times: jax.Array
    dt: float = eqx.field(static=True)

    def __check_init__(self):
        for name in LOSS_FIELDS:
            for role, tree in (("state", self.states), ("flux", self.fluxes)):
                values = np.asarray(getattr(tree, name))
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

    def state_scales(self) -> dict[str, jax.Array]:
        """σ_φ of the online loss: RMS over scenarios and levels of the std in time."""
        return {n: jnp.maximum(jnp.sqrt(jnp.mean(jnp.var(getattr(self.states, n), axis=1))),
                               MIN_SCALE) for n in LOSS_FIELDS}

    def flux_scales(self) -> dict[str, jax.Array]:
        """σ_Fφ of the offline loss: pooled std of the truth's interior fluxes."""
        return {n: jnp.maximum(jnp.std(getattr(self.fluxes, n)[..., 1:-1]), MIN_SCALE)
                for n in LOSS_FIELDS}


def model_on(model: Model, grid: ColumnGrid) -> Model:
    """``model`` with its grid replaced by one scenario's grid (same number of levels)."""
    return eqx.tree_at(lambda m: m.grid, model, grid)


def normalized_error(estimate: State, target: State, scales: dict) -> jax.Array:
    """Σ_φ ⟨(estimate_φ − target_φ)²⟩ / σ_φ² over ``LOSS_FIELDS`` (one column)."""
    return sum(jnp.mean((getattr(estimate, n) - getattr(target, n)) ** 2) / scales[n] ** 2
               for n in LOSS_FIELDS)


def rollout_error(model: Model, state0: State, forcing: ForcingSeries, target_at, n_steps: int,
                  t0, dt, scales: dict, bounds=DEFAULT_BOUNDS):
    """Mean normalized error of an ``n_steps`` rollout against ``target_at(k)``, the truth
    after step k + 1 (k = 0 … n_steps − 1), and the column's failure time (``inf`` if none).

    The error is summed inside the checkpointed step loop and each target is fetched when its
    step is taken, so the gradient's memory grows far slower than K. Chunks of ∛K steps:
    a step's residuals are about 16× its carry here (measured in ``benchmarks/training.py``),
    so short chunks and many stored carries use the least memory.
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
    carry = checkpointed_steps(step, carry0, n_steps, chunk=round(n_steps ** (1.0 / 3.0)))
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

        return rollout_error(model_on(model, _take(data.grid, s)),
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
        tendency = getattr(model_on(model, grid), slot)(state, forcing, grid)
        predicted = tendency.total_flux(state, grid)
        return normalized_error(predicted, _take(_take(data.fluxes, s), i), scales)

    errors = map_columns(one, (0, 0, None, None, None), scenario, index,
                         eqx.combine(params, static), data, scales)
    return jnp.mean(errors), jnp.zeros((), jnp.int32)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How to train. ``curriculum``: (rollout steps K, iterations) per stage; offline
    training uses only the total number of iterations (K does not apply)."""

    mode: str = "online"
    curriculum: tuple[tuple[int, int], ...] = ((3, 150), (12, 150), (36, 150), (96, 100))
    batch_size: int = 32
    learning_rate: float = 1.0e-3
    clip_norm: float = 1.0
    seed: int = 0
    slot: str = "turbulence"
    checkpoint_every: int = 50

    def __post_init__(self):
        if self.mode not in ("online", "offline"):
            raise ConfigurationError(f"mode must be 'online' or 'offline' (got {self.mode!r})")
        if not self.curriculum:
            raise ConfigurationError("curriculum must have at least one (steps, iterations)")
        for steps, iterations in self.curriculum:
            check_range("curriculum rollout steps", steps, 1, 100_000, "steps")
            check_range("curriculum iterations", iterations, 1, 10_000_000)
        check_range("batch_size", self.batch_size, 1, 1_000_000)
        check_range("learning_rate", self.learning_rate, 1.0e-8, 1.0)
        check_range("clip_norm", self.clip_norm, 1.0e-6, 1.0e6)
        check_range("checkpoint_every", self.checkpoint_every, 1, 10_000_000)

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

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "curriculum": [list(c) for c in self.curriculum]}


@functools.cache
def make_optimizer(learning_rate: float, clip_norm: float) -> optax.GradientTransformation:
    """Clipped Adam that skips non-finite updates (one object per setting, so compiled
    training steps are shared between runs)."""
    inner = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate))
    return optax.apply_if_finite(inner, max_consecutive_errors=1_000_000)


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
    """The trained model and its learning curve (one row per iteration)."""

    model: Model
    history: list[dict]


def _checkpoint_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "checkpoint.eqx", directory / "checkpoint.json"


def save_checkpoint(directory: Path, params, opt_state, history: list, config) -> None:
    """Weights and optimizer state (``checkpoint.eqx``) and the iterations done with their
    losses (``checkpoint.json``), each written atomically (leaves first, then the record)."""
    weights, record = _checkpoint_paths(directory)
    write_atomic(weights, lambda path: eqx.tree_serialise_leaves(path, (params, opt_state)))
    text = json.dumps({"iteration": len(history), "config": config.to_dict(),
                       "history": history})
    write_atomic(record, lambda path: path.write_text(text))


def load_checkpoint(directory: Path, params, opt_state, config):
    """(params, opt_state, history) from ``directory``, or ``None`` if it has none."""
    weights, record = _checkpoint_paths(directory)
    if not record.exists():
        return None
    try:
        saved = json.loads(record.read_text())
        params, opt_state = eqx.tree_deserialise_leaves(weights, (params, opt_state))
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigurationError(
            f"training checkpoint in {directory} is unreadable: {error}") from None
    if saved["config"] != config.to_dict():
        raise ConfigurationError(
            f"training checkpoint in {directory} was made with another configuration "
            f"({saved['config']}); use a new directory or the same configuration")
    return params, opt_state, saved["history"]


def train(model: Model, data: TrainingData, config: TrainingConfig, *,
          checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
          description: str = "training", stop_after: int | None = None) -> TrainingResult:
    """Train the networks of ``model`` (offline or online, per ``config``).

    With ``checkpoint_dir`` the weights, optimizer state and learning curve are saved every
    ``config.checkpoint_every`` iterations and at the end, and a run finds and continues from
    them (exactly: the batches depend only on the seed and the iteration). ``stop_after``
    ends the run after that many iterations in total (to interrupt it on purpose).
    """
    if getattr(model, config.slot, None) is None:
        raise ConfigurationError(f"the model has no parameterization in slot {config.slot!r}")
    filter_spec = trainable_filter(model)
    params, static = eqx.partition(model, filter_spec)
    if not jax.tree.leaves(params):
        raise ConfigurationError("the model has no network to train "
                                 "(no NeuralParameterization in any slot)")
    optimizer = make_optimizer(config.learning_rate, config.clip_norm)
    opt_state = optimizer.init(params)
    history: list[dict] = []
    directory = None if checkpoint_dir is None else Path(checkpoint_dir)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        restored = load_checkpoint(directory, params, opt_state, config)
        if restored is not None:
            params, opt_state, history = restored
    # what every column reads (data, weights), placed on every device once (scm.columns)
    data, params, static, opt_state = replicate((data, params, static, opt_state))
    scales = data.state_scales() if config.mode == "online" else data.flux_scales()
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
                scales, DEFAULT_BOUNDS)
            loss, masked = float(loss), int(masked)
            history.append({"iteration": iteration, "stage": stage, "rollout_steps": n_steps,
                            "loss": loss, "masked_columns": masked,
                            "seconds": time.perf_counter() - start_time})
            bar.set_postfix(loss=f"{loss:.4g}", K=n_steps, masked=masked)
            bar.update(1)
            done = iteration + 1
            if directory is not None and (done % config.checkpoint_every == 0 or done == total):
                save_checkpoint(directory, params, opt_state, history, config)
    return TrainingResult(eqx.combine(params, static), history)


def write_learning_curve(history: list[dict], directory: str | os.PathLike,
                         name: str = "learning_curve") -> list[Path]:
    """``name.csv``, ``name.json`` and ``name.png`` (loss against iteration, log scale, the
    curriculum stages marked) in ``directory``. Safe to call from several threads at once."""
    from scm.figures import new_figure, save_figure

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.csv", directory / f"{name}.json", directory / f"{name}.png"]
    columns = ["iteration", "stage", "rollout_steps", "loss", "masked_columns", "seconds"]

    lines = [",".join(columns)] + [",".join(str(row[c]) for c in columns) for row in history]
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
    axis.set_xlabel("iteration")
    axis.set_ylabel("normalized loss (1)")
    axis.set_title(name.replace("_", " "))
    save_figure(figure, paths[2])
    return paths


__all__ = [
    "LOSS_FIELDS",
    "TrainingConfig",
    "TrainingData",
    "TrainingResult",
    "load_checkpoint",
    "make_optimizer",
    "model_on",
    "normalized_error",
    "offline_loss",
    "online_loss",
    "rollout_error",
    "save_checkpoint",
    "train",
    "write_learning_curve",
]
