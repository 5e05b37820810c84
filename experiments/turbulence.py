"""The canonical experiment: learn the turbulence of a coarse dry column from resolved truth.

``run_experiment(out, ExperimentConfig())`` (command line: ``scm experiment turbulence``):

1. **Truth** (``experiments.truth``): training, held-out and out-of-distribution (OOD)
   scenarios of the ``diurnal`` case at 4× the coarse vertical resolution with the TKE–mass-flux
   closure, coarse-grained onto the coarse grid, saved every coarse step. Files are reused when
   ``DIR/truth_<split>.nc`` already holds the same configuration.
2. **Baseline**: the coarse model (``coarse_levels`` levels, step ``coarse_dt``) with the
   first-order ``LocalClosure``.
3. **Networks**, each trained offline and online (``nn.training``) from the same
   initialization, data and seed, for each of ``seeds``:
   - ``replace``: a ``NeuralParameterization`` with a ``DiffusivityHead`` takes the turbulence
     slot (the Monin–Obukhov surface layer is kept; K ≥ 0, integrated implicitly);
   - ``residual``: ``Residual(LocalClosure, network)`` with a ``FluxHead`` correction (zero at
     the top and at the surface, so the column budget is untouched); untrained, it is the
     baseline exactly.
4. **Evaluation** on the held-out and OOD scenarios: every model runs ``evaluation_days`` from
   the truth state at the end of the spin-up, saving hourly. Scores (per scenario, then
   averaged): 24 h RMSE of θ (K) and of the wind vector, √⟨(u − u_t)² + (v − v_t)²⟩ (m s-1),
   over all levels and the hourly saves of the first day; whether the column stays finite and
   in bounds (``scm.integration.DEFAULT_BOUNDS``) for the whole run; the day-30 climate error,
   the RMSE over levels of the last day's mean θ profile against the truth's.

Outputs in ``DIR``: ``summary.json`` (per model, averaged over seeds, with the spread),
``summary.md`` (the table), ``artifacts/<model>_seed<k>/`` (loadable with
``scm run CASE --parameterization PATH``), learning curves (CSV, JSON, PNG) and
``rmse_24h.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from experiments.cases import DAY, Case, build_case, turbulence_scheme
from experiments.run import first_day_rmse, run_from_truth, state_only
from experiments.scenarios import CASE, sample_scenarios, stack_pytrees
from experiments.truth import check_truth_grid, generate_truth, load_truth, truth_plan
from nn.artifact import Artifact, load_artifact, save_artifact
from nn.features import Normalization
from nn.heads import DiffusivityHead, FluxHead
from nn.parameterization import NeuralParameterization, make_network
from nn.training import TrainingConfig, TrainingData, model_on, train, write_learning_curve
from nn.wrappers import Residual
from scm.compilation import compile_time_first
from scm.errors import ConfigurationError, check_range
from scm.io import package_version, write_atomic, write_netcdf
from scm.model import Model
from scm.state import State

MODELS = ("baseline", "replace_offline", "replace_online", "residual_offline",
          "residual_online")
COUPLINGS = ("replace", "residual")
#: The physics scheme the residual network corrects and the baseline uses.
BASELINE_CLOSURE = "local"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything the experiment depends on (recorded in ``summary.json``)."""

    train_scenarios: int = 16
    heldout_scenarios: int = 8
    ood_scenarios: int = 8
    scenario_seed: int = 0
    coarse_levels: int = 32
    refinement: int = 4
    fine_dt: float = 30.0
    coarse_dt: float = 300.0
    spinup_days: float = 5.0
    train_days: float = 10.0
    evaluation_days: float = 30.0
    seeds: tuple[int, ...] = (0, 1, 2)
    network: str = "mlp"
    width: int = 64
    depth: int = 2
    diffusivity_scale: float = 10.0
    flux_scale: float = 0.1
    batch_size: int = 32
    learning_rate: float = 1.0e-3
    offline_iterations: int = 600
    curriculum: tuple[tuple[int, int], ...] = ((3, 300), (12, 300), (36, 300), (96, 300),
                                               (288, 100))
    #: Compile the programs for compile time rather than run time (``scm.compilation``):
    #: worth it when compiling is most of the experiment, as in quick mode.
    compile_time_first: bool = False

    def __post_init__(self):
        for name in ("train_scenarios", "heldout_scenarios", "ood_scenarios"):
            check_range(name, getattr(self, name), 1, 10_000)
        check_range("evaluation_days", self.evaluation_days, 1.0, 3650.0, "days")
        if not self.seeds:
            raise ConfigurationError("seeds must name at least one seed")

    @classmethod
    def quick(cls) -> ExperimentConfig:
        """A small version of everything (46–55 s on two CPU cores, 45 s when the
        compilation cache is warm): for tests and for trying the pipeline, not for
        conclusions. Training and evaluation truth are equally long, so that all three are
        made by one compiled program; compiling is most of the run, so the programs are
        compiled for compile time (``scm.compilation``)."""
        return cls(train_scenarios=2, heldout_scenarios=2, ood_scenarios=2, coarse_levels=16,
                   refinement=2, fine_dt=60.0, coarse_dt=600.0, spinup_days=0.5,
                   train_days=2.0, evaluation_days=2.0, seeds=(0,), width=16, depth=1,
                   batch_size=8, offline_iterations=20, curriculum=((3, 15),),
                   compile_time_first=True)

    def training(self, mode: str, seed: int) -> TrainingConfig:
        curriculum = ((1, self.offline_iterations),) if mode == "offline" else self.curriculum
        return TrainingConfig(mode=mode, curriculum=curriculum, batch_size=self.batch_size,
                              learning_rate=self.learning_rate, seed=seed)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["seeds"] = list(self.seeds)
        out["curriculum"] = [list(c) for c in self.curriculum]
        return out


# ---------------------------------------------------------------------------------------------
# truth and the coarse model


def n_scenarios(split: str, config: ExperimentConfig) -> int:
    """How many scenarios a split ("train", "heldout" or "ood") has."""
    return {"train": config.train_scenarios, "heldout": config.heldout_scenarios,
            "ood": config.ood_scenarios}[split]


def split_scenarios(split: str, config: ExperimentConfig) -> list[dict[str, float]]:
    """The case parameters of a split's scenarios (drawn before any truth is made)."""
    return sample_scenarios(split, n_scenarios(split, config), config.scenario_seed)


def truth_settings(split: str, config: ExperimentConfig) -> dict:
    """``generate_truth``'s (and ``truth_plan``'s) grid and time settings for a split."""
    days = config.train_days if split == "train" else config.evaluation_days
    return dict(coarse_levels=config.coarse_levels, refinement=config.refinement,
                fine_dt=config.fine_dt, coarse_dt=config.coarse_dt,
                days=config.spinup_days + days, spinup_days=config.spinup_days)


def truth_for(split: str, config: ExperimentConfig, directory: Path,
              progress: bool) -> xr.Dataset:
    """The truth of one split, from ``directory/truth_<split>.nc`` if it was made with the
    same settings and package version, else generated and written there."""
    settings = truth_settings(split, config)
    path = directory / f"truth_{split}.nc"
    signature = json.dumps({"split": split, "n": n_scenarios(split, config),
                            "seed": config.scenario_seed, "version": package_version(),
                            **settings}, sort_keys=True)
    if path.exists():
        dataset = load_truth(path)
        if dataset.attrs.get("experiment_signature") == signature:
            return dataset
    parameters = split_scenarios(split, config)
    dataset = generate_truth(parameters, progress=progress, split=split,
                             seed=config.scenario_seed, **settings)
    dataset.attrs["experiment_signature"] = signature
    write_netcdf(dataset, path)
    return dataset


def scenario_parameters(dataset: xr.Dataset) -> list[dict[str, float]]:
    """The case parameters of every scenario of a truth dataset."""
    names = [n.removeprefix("parameter_") for n in dataset.data_vars
             if n.startswith("parameter_")]
    return [{n: float(dataset[f"parameter_{n}"].values[i]) for n in names}
            for i in range(dataset.sizes["column"])]


def coarse_cases(dataset: xr.Dataset, config: ExperimentConfig) -> list[Case]:
    """The baseline coarse case of every scenario of a truth dataset (``ConfigurationError``
    if the truth is not on the coarse model's grid)."""
    cases = cases_of(scenario_parameters(dataset), config)
    check_truth_grid(dataset, cases[0].model.grid, dataset.attrs.get("split", "dataset"))
    return cases


def cases_of(parameters: list[dict[str, float]], config: ExperimentConfig) -> list[Case]:
    """The baseline coarse case of each scenario."""
    return [build_case(CASE, levels=config.coarse_levels, dt=config.coarse_dt, hours=24.0,
                       turbulence=BASELINE_CLOSURE, **p) for p in parameters]


def truth_states(dataset: xr.Dataset, template: State,
                 names: tuple[str, str, str] = ("u", "v", "theta")) -> State:
    """Truth fields ``names`` (u, v, θl) as a ``State`` ``(scenario, time, ...)`` with the
    structure of the coarse model's state (qt zero); ``("uw", "vw", "heat_flux")`` gives the
    sub-grid fluxes."""
    u, v, thl = (jnp.asarray(dataset[name].transpose("column", "time", ...).values,
                             template.u.dtype) for name in names)
    return State(u, v, thl, jnp.zeros_like(u))


def training_data(dataset: xr.Dataset, cases: list[Case], config: ExperimentConfig):
    """``nn.training.TrainingData`` from a (training) truth dataset."""
    template = cases[0].state0
    return TrainingData(stack_pytrees([c.model.grid for c in cases]),
                        stack_pytrees([c.forcing for c in cases]),
                        truth_states(dataset, template),
                        truth_states(dataset, template, ("uw", "vw", "heat_flux")),
                        jnp.asarray(dataset["time"].values, template.u.dtype),
                        config.coarse_dt)


def stand_in_training_data(cases: list[Case], config: ExperimentConfig) -> TrainingData:
    """Training data of the training truth's shapes, dtypes and structure
    (``training_data``), made without the truth: every time holds the scenario's initial
    state and every flux is zero. A compiled training step depends on nothing else, so steps
    compiled on it are ready when the truth is (``run_experiment``)."""
    times = truth_plan(**truth_settings("train", config)).kept_times(config.coarse_dt)
    template = cases[0].state0

    def held(name: str) -> jax.Array:
        profiles = jnp.stack([getattr(c.state0, name) for c in cases])[:, None]
        return jnp.broadcast_to(profiles, (len(cases), times.size, profiles.shape[-1]))

    u = held("u")
    zeros = jnp.zeros((len(cases), times.size, template.u.shape[0] + 1), template.u.dtype)
    return TrainingData(stack_pytrees([c.model.grid for c in cases]),
                        stack_pytrees([c.forcing for c in cases]),
                        State(u, held("v"), held("thl"), jnp.zeros_like(u)),
                        State(zeros, zeros, zeros, zeros),
                        jnp.asarray(times, template.u.dtype), config.coarse_dt)


# ---------------------------------------------------------------------------------------------
# the hybrid models


def hybrid_model(coupling: str, baseline: Model, normalization: Normalization,
                 config: ExperimentConfig, seed: int) -> Model:
    """The untrained ``replace`` or ``residual`` model (last layer zero)."""
    surface = baseline.turbulence.surface
    key = jax.random.key(seed)
    options = dict(width=config.width, depth=config.depth)
    if coupling == "replace":
        head = DiffusivityHead(config.diffusivity_scale)
        network = make_network(config.network, head, config.coarse_levels, key=key, **options)
        return baseline.with_slot("turbulence", NeuralParameterization(
            surface, normalization, network, head))
    head = FluxHead(config.flux_scale, config.flux_scale)
    network = make_network(config.network, head, config.coarse_levels, key=key, **options)
    correction = NeuralParameterization(surface, normalization, network, head,
                                        surface_exchange=False)
    return baseline.with_slot("turbulence", Residual(baseline.turbulence, correction))


def neural_part(model: Model) -> NeuralParameterization:
    slot = model.turbulence
    return slot.correction if isinstance(slot, Residual) else slot


def with_artifact(model: Model, artifact: Artifact, dt: float) -> Model:
    """``model`` with the artifact's network in its slot (replacing the scheme there, or
    correcting the physics scheme the artifact names, at time step ``dt``), over the surface
    layer of the scheme it replaces."""
    config = artifact.config
    slot = config["slot"]
    surface = getattr(getattr(model, slot), "surface", None)
    if surface is None:
        raise ConfigurationError(
            f"the model has no surface layer in its {slot!r} slot to give the network")
    levels = config["network"]["levels"]
    if config["network"]["kind"] == "mlp" and model.grid.n_levels != levels:
        raise ConfigurationError(
            f"the artifact's column network was trained on {levels} levels; the model has "
            f"{model.grid.n_levels} (use it on {levels} levels)")
    scheme = artifact.parameterization(surface)
    if config["coupling"] == "residual":
        scheme = Residual(turbulence_scheme(config["physics"], surface, dt), scheme)
    return model.with_slot(slot, scheme)


def install_artifact(case: Case, artifact: Artifact) -> Case:
    """``case`` with the artifact's network in its slot (``with_artifact``); tracers that no
    scheme uses any more are dropped from the initial state."""
    model = with_artifact(case.model, artifact, case.dt)
    tracers = {n: x for n, x in case.state0.tracers.items() if n in model.required_tracers()}
    state0 = dataclasses.replace(case.state0, tracers=tracers)
    return dataclasses.replace(case, model=model, state0=state0)


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(model: Model, cases: list[Case], dataset: xr.Dataset, config: ExperimentConfig,
             progress: bool = True, desc: str = "evaluation") -> dict:
    """Scores of ``model`` (any of the experiment's models, on the first case's grid) on the
    scenarios of a truth dataset; see the module docstring."""
    models = stack_pytrees([model_on(model, c.model.grid) for c in cases])
    forcings = stack_pytrees([c.forcing for c in cases])
    run, hourly = run_from_truth(models, forcings, dataset, config.coarse_dt,
                                 round(config.evaluation_days * 24), progress=progress,
                                 desc=desc, output=state_only)
    state = jax.tree.map(np.asarray, run.state)
    du, dv = state.u - hourly["u"].values, state.v - hourly["v"].values
    theta_truth = hourly["theta"].values
    last_day = slice(-24, None)
    day_mean = state.thl[:, last_day].mean(axis=1) - theta_truth[:, last_day].mean(axis=1)
    return {
        "rmse_theta_24h": first_day_rmse(state.thl - theta_truth),
        "rmse_u_24h": first_day_rmse(du),
        "rmse_v_24h": first_day_rmse(dv),
        "rmse_wind_24h": first_day_rmse(du, dv),
        "stable": ~np.isfinite(np.asarray(run.failed_at)),
        "failed_at_days": np.asarray(run.failed_at) / DAY,
        "final_theta_error": np.sqrt((day_mean**2).mean(axis=1)),
    }


def summarize(scores: dict[str, dict[str, list[dict]]], artifacts: dict[str, str]) -> dict:
    """Per model: scores averaged over scenarios, then mean and spread (std) over seeds."""
    summary = {}
    for model, by_split in scores.items():
        per_seed = []
        for heldout, ood in zip(by_split["heldout"], by_split["ood"], strict=True):
            row = {}
            for name in ("rmse_theta_24h", "rmse_wind_24h", "rmse_u_24h", "rmse_v_24h"):
                row[name] = float(np.mean(heldout[name]))
                row[f"{name}_ood"] = float(np.mean(ood[name]))
            row["day30_theta_error"] = float(np.mean(heldout["final_theta_error"]))
            row["day30_theta_error_ood"] = float(np.mean(ood["final_theta_error"]))
            per_seed.append(row)
        entry = {}
        for name in per_seed[0]:
            values = np.array([row[name] for row in per_seed])
            entry[name] = float(values.mean())
            entry[f"{name}_std"] = float(values.std())
        stable = np.concatenate([np.concatenate([h["stable"], o["stable"]]) for h, o in
                                 zip(by_split["heldout"], by_split["ood"], strict=True)])
        entry["stable_30d_fraction"] = float(stable.mean())
        entry["stable_runs"] = f"{int(stable.sum())}/{stable.size}"
        entry["seeds"] = len(per_seed)
        entry["artifact"] = artifacts.get(model)
        summary[model] = entry
    return summary


def markdown_table(summary: dict, config: ExperimentConfig) -> str:
    """The summary as a markdown table (mean ± spread over seeds)."""
    def cell(entry, name, digits=3):
        value, spread = entry[name], entry.get(f"{name}_std", 0.0)
        return f"{value:.{digits}f} ± {spread:.{digits}f}" if spread else f"{value:.{digits}f}"

    baseline = summary["baseline"]
    lines = [
        f"24 h RMSE against the coarse-grained truth ({config.heldout_scenarios} held-out and "
        f"{config.ood_scenarios} out-of-distribution scenarios; mean ± std over "
        f"{len(config.seeds)} seed(s)); stability over {config.evaluation_days:g} days, "
        "held-out and OOD runs of every seed together; day-N error: RMSE of the last day's "
        "mean θ profile (held-out).",
        "",
        "| model | θ (K) | u (m/s) | v (m/s) | wind (m/s) | θ OOD (K) | wind OOD (m/s) | "
        "θ change vs baseline | wind change vs baseline | stable runs | "
        f"day-{config.evaluation_days:g} θ error (K) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in summary.items():
        change_theta = entry["rmse_theta_24h"] / baseline["rmse_theta_24h"] - 1.0
        change_wind = entry["rmse_wind_24h"] / baseline["rmse_wind_24h"] - 1.0
        lines.append(
            f"| {name} | {cell(entry, 'rmse_theta_24h')} | {cell(entry, 'rmse_u_24h')} | "
            f"{cell(entry, 'rmse_v_24h')} | {cell(entry, 'rmse_wind_24h')} | "
            f"{cell(entry, 'rmse_theta_24h_ood')} | {cell(entry, 'rmse_wind_24h_ood')} | "
            f"{100 * change_theta:+.0f} % | {100 * change_wind:+.0f} % | "
            f"{entry['stable_runs']} | {cell(entry, 'day30_theta_error')} |")
    return "\n".join(lines) + "\n"


def plot_scores(summary: dict, path: Path) -> Path:
    """Bars of the 24 h RMSE of θ and wind per model, held-out beside OOD, seed spread."""
    from scm.figures import new_figure, save_figure

    names = list(summary)
    figure, axes = new_figure(2, width=5.0, height=3.6)
    for axis, metric, units in ((axes[0], "rmse_theta_24h", "K"),
                                (axes[1], "rmse_wind_24h", "m s-1")):
        x = np.arange(len(names))
        for offset, suffix, label in ((-0.2, "", "held-out"), (0.2, "_ood", "OOD")):
            values = [summary[n][metric + suffix] for n in names]
            spread = [summary[n].get(f"{metric}{suffix}_std", 0.0) for n in names]
            axis.bar(x + offset, values, 0.4, yerr=spread, label=label, capsize=2)
        axis.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel(f"24 h RMSE ({units})")
        axis.set_title(metric.replace("_", " "))
        axis.legend(fontsize=8)
    return save_figure(figure, path)


# ---------------------------------------------------------------------------------------------
# the whole experiment


def run_experiment(out: str | Path, config: ExperimentConfig | None = None,
                   progress: bool = True, log=print, workers: int = 2) -> dict:
    """Run the canonical experiment into ``out``; returns the summary (also written as
    ``summary.json``). Truth files and training checkpoints already in ``out`` are reused, so
    an interrupted experiment continues where it stopped.

    The baseline's evaluation and each model's training and evaluation (one per seed,
    coupling and mode) are independent jobs, run ``workers`` at a time in threads: compiling
    one job's programs overlaps with another's (compilation dominates the quick
    configuration; the results do not depend on ``workers``). The training steps are
    compiled on stand-in data (``stand_in_training_data``) while the truth is made."""
    config = ExperimentConfig() if config is None else config
    check_range("workers", workers, 1, 64)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def prepare(split: str) -> tuple[xr.Dataset, list[Case]]:
        dataset = truth_for(split, config, out, progress)
        log(f"truth {split}: {dataset.sizes['column']} scenarios "
            f"({time.perf_counter() - start:.0f} s)")
        return dataset, coarse_cases(dataset, config)

    def compile_training(coupling: str, mode: str, stand_in: TrainingData,
                         stand_in_baseline: Model) -> None:
        """One iteration on stand-in data, for its side effect: the model's training step
        is compiled (and cached) before the truth exists; every seed's training reuses it."""
        normalization = Normalization.fit(stand_in.states, stand_in_baseline.grid)
        seed = config.seeds[0]
        train(hybrid_model(coupling, stand_in_baseline, normalization, config, seed),
              stand_in, config.training(mode, seed), progress=False, stop_after=1)

    with compile_time_first(config.compile_time_first), \
            ThreadPoolExecutor(max_workers=workers) as pool:
        # Compiling the training steps needs only the data's shapes, so it overlaps with
        # making the truth (quick mode: about 10 s less); the largest program, the
        # residual online step, starts first. The evaluation truth is made while the
        # training data is prepared. Jobs are queued in the order they can start.
        prepared = {"train": pool.submit(prepare, "train")}
        stand_in_cases = cases_of(split_scenarios("train", config), config)
        stand_in = (stand_in_training_data(stand_in_cases, config), stand_in_cases[0].model)
        compiled = [pool.submit(compile_training, "residual", "online", *stand_in)]
        prepared |= {split: pool.submit(prepare, split) for split in ("heldout", "ood")}
        compiled += [pool.submit(compile_training, coupling, mode, *stand_in)
                     for coupling, mode in (("replace", "online"), ("residual", "offline"),
                                            ("replace", "offline"))]
        train_truth, train_cases = prepared["train"].result()
        data = training_data(train_truth, train_cases, config)
        baseline = train_cases[0].model
        normalization = Normalization.fit(data.states, baseline.grid)

        def score(name: str, model: Model) -> dict[str, dict]:
            by_split = {}
            for split in ("heldout", "ood"):
                dataset, cases = prepared[split].result()
                by_split[split] = evaluate(model, cases, dataset, config, progress,
                                           desc=f"{name} {split}")
            return by_split

        def fit(seed: int, coupling: str, mode: str) -> tuple[dict[str, dict], Path]:
            """Train one model from the coupling's untrained hybrid; its scores and artifact."""
            name = f"{coupling}_{mode}"
            model, directory, losses = train_model(out, config, data, baseline, normalization,
                                                   coupling, mode, seed, progress)
            by_split = score(name, model)
            log(f"{name} seed {seed}: loss {losses[0]:.4g} -> {losses[-1]:.4g} "
                f"({time.perf_counter() - start:.0f} s)")
            return by_split, directory

        # The residual online training (the largest program) first, beside the replace models,
        # so that the workers finish together and tracing (one thread at a time) overlaps with
        # compiling; offline and online models of a coupling share one compiled evaluation.
        plan = [(seed, coupling, mode) for seed in config.seeds
                for coupling, mode in (("residual", "online"), ("replace", "offline"),
                                       ("replace", "online"), ("residual", "offline"))]
        jobs = {job: pool.submit(fit, *job) for job in plan}
        # The untrained residual hybrid is the baseline bit for bit (its correction is exactly
        # zero), and it shares the residual models' compiled evaluation.
        untrained = hybrid_model("residual", baseline, normalization, config, config.seeds[0])
        baseline_scores = pool.submit(score, "baseline", untrained)
        for job in compiled:
            job.result()  # raises what it raised
        results = [("baseline", baseline_scores.result(), None)] + [
            (f"{coupling}_{mode}", *jobs[seed, coupling, mode].result())
            for seed in config.seeds for coupling in COUPLINGS for mode in ("offline", "online")]
    scores = {m: {"heldout": [], "ood": []} for m in MODELS}
    artifacts: dict[str, str] = {}
    for name, by_split, directory in results:  # in seed order, whatever finished first
        for split, result in by_split.items():
            scores[name][split].append(result)
        if directory is not None:
            artifacts.setdefault(name, str(directory))

    summary = summarize(scores, artifacts)
    record = {"models": summary, "config": config.to_dict(),
              "wall_time_s": time.perf_counter() - start}
    write_atomic(out / "summary.json",
                 lambda path: path.write_text(json.dumps({**summary, **record}, indent=2)))
    table = markdown_table(summary, config)
    write_atomic(out / "summary.md", lambda path: path.write_text(table))
    plot_scores(summary, out / "rmse_24h.png")
    log(table)
    log(f"wall time {time.perf_counter() - start:.0f} s; results in {out}")
    return summary


def train_model(out: Path, config: ExperimentConfig, data: TrainingData, baseline: Model,
                normalization: Normalization, coupling: str, mode: str, seed: int,
                progress: bool = True) -> tuple[Model, Path, list[float]]:
    """Train the ``coupling`` ("replace" or "residual") network ``mode`` ("offline" or
    "online") from its untrained hybrid of ``baseline`` and write its artifact (with learning
    curves) to ``out/artifacts/<coupling>_<mode>_seed<seed>``; a checkpoint there is resumed.
    Returns the trained model, the artifact directory and the losses."""
    name = f"{coupling}_{mode}"
    directory = out / "artifacts" / f"{name}_seed{seed}"
    training = config.training(mode, seed)
    result = train(hybrid_model(coupling, baseline, normalization, config, seed), data,
                   training, checkpoint_dir=directory / "checkpoint", progress=progress,
                   description=f"{name} seed {seed}")
    write_learning_curve(result.history, directory, "learning_curve")
    losses = [row["loss"] for row in result.history]
    save_artifact(directory, neural_part(result.model), n_levels=config.coarse_levels,
                  slot="turbulence", coupling=coupling,
                  physics=BASELINE_CLOSURE if coupling == "residual" else None,
                  metrics={"final_loss": losses[-1], "first_loss": losses[0],
                           "iterations": len(losses)},
                  provenance={"training": training.to_dict(), "experiment": config.to_dict()})
    return result.model, directory, losses


def train_artifact(out: str | Path, config: ExperimentConfig, coupling: str, mode: str,
                   seed: int, progress: bool = True) -> Path:
    """Train one network of the experiment on its training truth (``out/truth_train.nc``,
    made there if missing or made with other settings) and write its artifact
    (``train_model``); returns the artifact directory (``scm train``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = truth_for("train", config, out, progress)
    cases = coarse_cases(dataset, config)
    data = training_data(dataset, cases, config)
    baseline = cases[0].model
    normalization = Normalization.fit(data.states, baseline.grid)
    return train_model(out, config, data, baseline, normalization, coupling, mode, seed,
                       progress)[1]


def load_artifact_case(name: str, artifact_path, **options) -> Case:
    """Build case ``name`` (``experiments.cases.build_case`` options) with an artifact's
    network in its slot; the case's closure defaults to the baseline's, so no unused TKE is
    carried, and its levels to the artifact's."""
    artifact = load_artifact(artifact_path)
    options.setdefault("turbulence", BASELINE_CLOSURE)
    if options.get("levels") is None:
        options["levels"] = artifact.config["network"]["levels"]
    return install_artifact(build_case(name, **options), artifact)


__all__ = [
    "ExperimentConfig",
    "MODELS",
    "evaluate",
    "hybrid_model",
    "install_artifact",
    "load_artifact_case",
    "run_experiment",
    "summarize",
    "train_artifact",
    "train_model",
]

