"""The canonical experiment: learn the turbulence of a coarse dry column from resolved truth,
and judge it where it was not trained.

``run_experiment(out, ExperimentConfig())`` (command line: ``scm experiment turbulence``;
``ExperimentConfig.from_file`` reads the settings from a TOML or JSON file):

1. **Truth** (``experiments.truth``) of the four scenario sets of the ``diurnal`` case
   (``experiments.scenarios``: ``train``, ``validation``, ``test``, ``extrapolation``, each
   drawn with its own seed) at ``refinement``× the coarse vertical resolution with the
   TKE–mass-flux closure, coarse-grained onto the coarse grid, saved every coarse step. Files
   are reused when ``DIR/truth_<set>.nc`` already holds the same configuration.
2. **Baselines**: the coarse model (``coarse_levels`` levels, step ``coarse_dt``) with the
   first-order ``LocalClosure`` (the baseline every change is measured against), and with
   the coarse ``TKEClosure`` (a second physics baseline).
3. **Networks** (``config.couplings``), each trained offline and online (``nn.training``) from
   the same initialization, data and seed, for each of ``seeds``, and, for
   ``config.finetune``, an offline-pretrained model fine-tuned online:
   - ``replace``: a ``NeuralParameterization`` with a ``DiffusivityHead`` takes the turbulence
     slot (the Monin–Obukhov surface layer is kept; K ≥ 0, integrated implicitly);
   - ``residual``: ``Residual(LocalClosure, network)`` with a ``FluxHead`` correction (zero at
     the top and at the surface, so the column budget is untouched); untrained, it is the
     baseline exactly.
   Features (``config.features``), their normalization and the input-distance detector
   (``nn.ood``) are fitted on the training truth. The weights kept are those that scored
   best on the **validation** set (24 h error relative to the baseline's,
   ``validation_days`` runs every ``validate_every`` iterations): model selection never
   sees the test or extrapolation scenarios.
4. **Evaluation** on ``test`` and ``extrapolation``: every model runs ``evaluation_days``
   from the truth state at the end of the spin-up, saving hourly; online and fine-tuned
   models also with their out-of-distribution fallback (``<model>+fallback``). Scores
   (``experiments.stability.skill_scores``): 24 h RMSE of θ and of the wind vector,
   stability (finite, in bounds and within the drift thresholds for the whole run), and the
   day-N θ error (RMSE of the last day's mean θ profile); changes against the baseline with
   95 % intervals from resampling scenarios and seeds, per extrapolation family too.

Outputs in ``DIR``: ``summary.json`` and ``summary.md`` (tables, per family),
``artifacts/<model>_seed<k>/`` (loadable with ``scm run CASE --parameterization PATH`` and
``scm bench stability --model PATH``), learning curves (CSV, JSON, PNG) and
``rmse_24h.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from experiments.cases import DAY, Case, build_case
from experiments.run import run_from_truth, state_only
from experiments.scenarios import (
    CASE,
    SPLITS,
    extrapolation_families,
    sample_scenarios,
    scenario_labels,
    stack_pytrees,
)
from experiments.stability import (
    SET_SEEDS,
    flagged_fraction,
    initial_tracers,
    skill_scores,
    skill_summary,
    skill_table,
)
from experiments.truth import (
    check_truth_grid,
    generate_truth,
    load_truth,
    scenario_families,
    scenario_parameters,
    truth_plan,
)
from nn.artifact import install_artifact, load_artifact, save_artifact
from nn.features import EXPERIMENT_FEATURES, FeatureSet, Normalization
from nn.heads import DiffusivityHead, FluxHead
from nn.ood import InputDistance, OODFallback
from nn.parameterization import NeuralParameterization, make_network
from nn.training import (
    TrainingConfig,
    TrainingData,
    feature_samples,
    model_on,
    train,
    write_learning_curve,
)
from nn.wrappers import Residual
from scm.compilation import compile_time_first
from scm.errors import ConfigurationError, check_choice, check_range
from scm.io import package_version, write_atomic, write_netcdf
from scm.model import Model
from scm.state import State

COUPLINGS = ("replace", "residual")
MODES = ("offline", "online", "finetuned")
#: The physics scheme the residual network corrects and the baseline uses.
BASELINE_CLOSURE = "local"
#: The second physics baseline.
SECOND_CLOSURE = "tke"
EVALUATION_SETS = ("test", "extrapolation")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything the experiment depends on (recorded in ``summary.json``; any field can be
    set from a file, ``from_file``)."""

    # scenario sets (``experiments.scenarios``)
    train_scenarios: int = 32
    validation_scenarios: int = 16
    test_scenarios: int = 16
    extrapolation_per_family: int = 4
    extrapolation_families: tuple[str, ...] = ()
    scenario_seeds: tuple[int, int, int, int] = tuple(SET_SEEDS[s] for s in SPLITS)
    # grids and lengths
    coarse_levels: int = 32
    refinement: int = 4
    fine_dt: float = 30.0
    coarse_dt: float = 300.0
    spinup_days: float = 5.0
    train_days: float = 10.0
    validation_days: float = 2.0
    evaluation_days: float = 30.0
    # models
    seeds: tuple[int, ...] = (0, 1, 2)
    couplings: tuple[str, ...] = COUPLINGS
    finetune: tuple[str, ...] = ("replace",)
    features: tuple[str, ...] = EXPERIMENT_FEATURES
    network: str = "mlp"
    width: int = 64
    depth: int = 2
    kernel_size: int = 3
    diffusivity_scale: float = 10.0
    flux_scale: float = 0.1
    ood_quantile: float = 0.999
    ood_softness: float = 0.1
    ood_margin: float = 2.0
    # training (``nn.training.TrainingConfig``)
    batch_size: int = 32
    learning_rate: float = 1.0e-3
    clip_norm: float = 1.0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_iterations: int = 0
    final_learning_rate: float = 0.1
    loss_weights: tuple[tuple[str, float], ...] = (("thl", 1.0), ("u", 1.0), ("v", 1.0))
    max_nonfinite_updates: int = 20
    offline_iterations: int = 600
    curriculum: tuple[tuple[int, int], ...] = ((3, 300), (12, 300), (36, 300), (96, 300),
                                               (288, 100))
    finetune_curriculum: tuple[tuple[int, int], ...] = ((12, 200), (96, 200), (288, 100))
    validate_every: int = 100
    #: Compile the programs for compile time rather than run time (``scm.compilation``):
    #: worth it when compiling is most of the experiment, as in quick mode.
    compile_time_first: bool = False

    def __post_init__(self):
        for name in ("train_scenarios", "validation_scenarios", "test_scenarios",
                     "extrapolation_per_family"):
            check_range(name, getattr(self, name), 1, 10_000)
        for name in self.extrapolation_families:
            check_choice("extrapolation family", name, extrapolation_families())
        if len(self.scenario_seeds) != len(SPLITS):
            raise ConfigurationError(f"scenario_seeds must give one seed per set {SPLITS}")
        check_range("validation_days", self.validation_days, 1.0, 3650.0, "days")
        check_range("evaluation_days", self.evaluation_days, 1.0, 3650.0, "days")
        if not self.seeds:
            raise ConfigurationError("seeds must name at least one seed")
        for coupling in (*self.couplings, *self.finetune):
            check_choice("coupling", coupling, COUPLINGS)
        FeatureSet.from_names(self.features)
        check_range("ood_quantile", self.ood_quantile, 0.5, 1.0)
        check_range("ood_softness", self.ood_softness, 1.0e-3, 10.0)
        check_range("ood_margin", self.ood_margin, 0.1, 100.0)
        check_range("diffusivity_scale", self.diffusivity_scale, 1.0e-3, 1.0e4, "m2 s-1")
        check_range("flux_scale", self.flux_scale, 1.0e-6, 1.0e3)
        check_range("offline_iterations", self.offline_iterations, 1, 10_000_000)
        for mode in ("offline", "online"):
            self.training(mode, self.seeds[0])  # every training setting is checked here

    @classmethod
    def quick(cls) -> ExperimentConfig:
        """A small version of everything (about a minute on two CPU cores): for tests and
        for trying the pipeline, not for conclusions. Every set has two scenarios (two
        extrapolation families of one), all with equally long truth, so that one compiled
        program makes all four; compiling is most of the run, so the programs are compiled
        for compile time (``scm.compilation``)."""
        return cls(train_scenarios=2, validation_scenarios=2, test_scenarios=2,
                   extrapolation_per_family=1,
                   extrapolation_families=("strong_wind", "joint"), coarse_levels=16,
                   refinement=2, fine_dt=60.0, coarse_dt=600.0, spinup_days=0.5,
                   train_days=2.0, validation_days=2.0, evaluation_days=2.0, seeds=(0,),
                   width=16, depth=1, batch_size=8, offline_iterations=20,
                   curriculum=((3, 15),), finetune_curriculum=((3, 10),), validate_every=5,
                   compile_time_first=True)

    @classmethod
    def from_mapping(cls, settings: dict, base: ExperimentConfig | None = None
                     ) -> ExperimentConfig:
        """``base`` (default: the canonical settings) with ``settings`` applied: field names
        as keys, at the top level or in any table (``[training]``, ``[model]``, ...);
        lists become tuples. An unknown key is a ``ConfigurationError`` naming it."""
        base = cls() if base is None else base
        flat: dict = {}
        for key, value in settings.items():
            if isinstance(value, dict) and key not in ("loss_weights",):
                flat.update(value)
            else:
                flat[key] = value
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(flat) - fields)
        if unknown:
            raise ConfigurationError(f"unknown experiment setting(s) {unknown}; known: "
                                     f"{', '.join(sorted(fields))}")
        if isinstance(flat.get("loss_weights"), dict):
            flat["loss_weights"] = tuple(flat["loss_weights"].items())
        return dataclasses.replace(base, **{k: _frozen(v) for k, v in flat.items()})

    @classmethod
    def from_file(cls, path, base: ExperimentConfig | None = None) -> ExperimentConfig:
        """Settings from a TOML (``.toml``) or JSON file (``from_mapping``)."""
        path = Path(path)
        try:
            text = path.read_text()
            settings = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except FileNotFoundError:
            raise ConfigurationError(f"--config {path} does not exist") from None
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"--config {path} cannot be read: {error}") from None
        return cls.from_mapping(settings, base)

    def training(self, mode: str, seed: int) -> TrainingConfig:
        """The ``TrainingConfig`` of ``mode`` ("offline", "online" or "finetuned")."""
        curriculum = {"offline": ((1, self.offline_iterations),), "online": self.curriculum,
                      "finetuned": self.finetune_curriculum}[mode]
        return TrainingConfig(
            mode="offline" if mode == "offline" else "online", curriculum=curriculum,
            batch_size=self.batch_size, learning_rate=self.learning_rate,
            clip_norm=self.clip_norm, seed=seed, loss_weights=self.loss_weights,
            optimizer=self.optimizer, weight_decay=self.weight_decay, schedule=self.schedule,
            warmup_iterations=min(self.warmup_iterations, sum(n for _, n in curriculum)),
            final_learning_rate=self.final_learning_rate,
            max_nonfinite_updates=self.max_nonfinite_updates,
            validate_every=self.validate_every)

    def n_scenarios(self, split: str) -> int:
        """Scenarios of a set (per family for ``extrapolation``)."""
        return {"train": self.train_scenarios, "validation": self.validation_scenarios,
                "test": self.test_scenarios,
                "extrapolation": self.extrapolation_per_family}[split]

    def families(self) -> tuple[str, ...] | None:
        return self.extrapolation_families or None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _frozen(value):
    """Lists (from a file) as tuples, recursively, so the configuration stays hashable."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------
# truth and the coarse model


def split_scenarios(split: str, config: ExperimentConfig) -> list[dict[str, float]]:
    """The case parameters of a set's scenarios (drawn before any truth is made)."""
    return sample_scenarios(split, config.n_scenarios(split),
                            config.scenario_seeds[SPLITS.index(split)],
                            families=config.families() if split == "extrapolation" else None)


def truth_settings(split: str, config: ExperimentConfig) -> dict:
    """``generate_truth``'s (and ``truth_plan``'s) grid and time settings for a set."""
    days = {"train": config.train_days, "validation": config.validation_days}.get(
        split, config.evaluation_days)
    return dict(coarse_levels=config.coarse_levels, refinement=config.refinement,
                fine_dt=config.fine_dt, coarse_dt=config.coarse_dt,
                days=config.spinup_days + days, spinup_days=config.spinup_days)


def truth_for(split: str, config: ExperimentConfig, directory: Path,
              progress: bool) -> xr.Dataset:
    """The truth of one set, from ``directory/truth_<set>.nc`` if it was made with the
    same settings and package version, else generated and written there."""
    settings = truth_settings(split, config)
    path = directory / f"truth_{split}.nc"
    seed = config.scenario_seeds[SPLITS.index(split)]
    families = config.families() if split == "extrapolation" else None
    signature = json.dumps({"split": split, "n": config.n_scenarios(split), "seed": seed,
                            "families": families, "version": package_version(), **settings},
                           sort_keys=True)
    if path.exists():
        dataset = load_truth(path)
        if dataset.attrs.get("experiment_signature") == signature:
            return dataset
    labels = scenario_labels(split, config.n_scenarios(split), families=families)
    dataset = generate_truth(split_scenarios(split, config), progress=progress, split=split,
                             seed=seed, labels=labels, **settings)
    dataset.attrs["experiment_signature"] = signature
    write_netcdf(dataset, path)
    return dataset


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
                        config.coarse_dt, _surfaces(cases))


def _surfaces(cases: list[Case]):
    """Each scenario's surface layer (of the baseline closure), stacked."""
    return stack_pytrees([c.model.turbulence.surface for c in cases])


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
                        jnp.asarray(times, template.u.dtype), config.coarse_dt,
                        _surfaces(cases))


# ---------------------------------------------------------------------------------------------
# the hybrid models


class Inputs:
    """The features of the experiment's networks, fitted on the training data: their
    normalization and the input-distance detector (over the baseline's surface layer)."""

    def __init__(self, data: TrainingData, baseline: Model, config: ExperimentConfig):
        self.features = FeatureSet.from_names(config.features)
        surface = baseline.turbulence.surface
        profiles, scalars = feature_samples(self.features, data)
        self.normalization = Normalization.from_samples(profiles, scalars)
        self.detector = InputDistance.fit(self.features, surface, profiles, scalars,
                                          config.ood_quantile, config.ood_softness,
                                          config.ood_margin)


def hybrid_model(coupling: str, baseline: Model, normalization: Normalization,
                 config: ExperimentConfig, seed: int,
                 features: FeatureSet | None = None) -> Model:
    """The untrained ``replace`` or ``residual`` model (last layer zero)."""
    features = FeatureSet.from_names(config.features) if features is None else features
    surface = baseline.turbulence.surface
    key = jax.random.key(seed)
    options = dict(width=config.width, depth=config.depth)
    if config.network == "conv":
        options["kernel_size"] = config.kernel_size
    if coupling == "replace":
        head = DiffusivityHead(config.diffusivity_scale)
        network = make_network(config.network, head, config.coarse_levels, key=key,
                               features=features, **options)
        return baseline.with_slot("turbulence", NeuralParameterization(
            surface, normalization, network, head, features=features))
    head = FluxHead(config.flux_scale, config.flux_scale)
    network = make_network(config.network, head, config.coarse_levels, key=key,
                           features=features, **options)
    correction = NeuralParameterization(surface, normalization, network, head,
                                        surface_exchange=False, features=features)
    return baseline.with_slot("turbulence", Residual(baseline.turbulence, correction))


def neural_part(model: Model) -> NeuralParameterization:
    slot = model.turbulence
    return slot.correction if isinstance(slot, Residual) else slot


def with_fallback(model: Model, baseline: Model, detector: InputDistance) -> Model:
    """A trained hybrid with its out-of-distribution fallback on (``nn.ood``)."""
    scheme = model.turbulence
    if isinstance(scheme, Residual):
        return model.with_slot("turbulence", Residual(
            scheme.physics, OODFallback(scheme.correction, detector)))
    return model.with_slot("turbulence", OODFallback(scheme, detector, baseline.turbulence))


def install_artifact_case(case: Case, artifact, *, fallback: bool | None = None) -> Case:
    """``case`` with the artifact's network in its slot (``nn.artifact.install_artifact``);
    tracers that no scheme uses any more are dropped from the initial state."""
    model = install_artifact(case.model, artifact, fallback=fallback)
    tracers = {n: x for n, x in case.state0.tracers.items() if n in model.required_tracers()}
    state0 = dataclasses.replace(case.state0, tracers=tracers)
    return dataclasses.replace(case, model=model, state0=state0)


def load_artifact_case(name: str, artifact_path, **options) -> Case:
    """Build case ``name`` (``experiments.cases.build_case`` options) with an artifact's
    network in its slot; the case's closure defaults to the one the artifact corrects or
    replaced in training, so no unused TKE is carried, and its levels to the artifact's."""
    artifact = load_artifact(artifact_path)
    if options.get("turbulence") is None:
        options["turbulence"] = artifact.config.get("physics") or BASELINE_CLOSURE
    if options.get("levels") is None:
        options["levels"] = artifact.config["network"]["levels"]
    return install_artifact_case(build_case(name, **options), artifact)


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(model: Model, cases: list[Case], dataset: xr.Dataset, days: float,
             progress: bool = True, desc: str = "evaluation",
             detector: InputDistance | None = None) -> dict:
    """Per-scenario scores (``experiments.stability.skill_scores``, failure by bounds or
    drift) of ``model`` (on the first case's grid) on the scenarios of a truth dataset, run
    for ``days`` from its first state; with ``detector``, the fraction of hourly states it
    flags."""
    scenario_models = [model_on(model, c.model.grid, c.model.turbulence.surface)
                       for c in cases]
    models = stack_pytrees(scenario_models)
    forcings = stack_pytrees([c.forcing for c in cases])
    run, hourly = run_from_truth(models, forcings, dataset, cases[0].dt, round(days * 24),
                                 progress=progress, desc=desc, output=state_only,
                                 tracers=initial_tracers(scenario_models))
    state = jax.tree.map(np.asarray, run.state)
    mass = np.stack([np.asarray(c.model.grid.layer_mass, float) for c in cases])
    scores = skill_scores(state, hourly, mass)
    bounds_failed = np.asarray(run.failed_at) - float(hourly["time"].values[0])
    scores["failed_at"] = np.minimum(bounds_failed, scores["drift_failed_at_days"] * DAY)
    scores["families"] = scenario_families(dataset)
    times = np.asarray(run.time[0])
    scores["flagged_fraction"] = flagged_fraction(detector, models, forcings, run.state,
                                                  times)
    return scores


class Validator:
    """The validation score of a model: its 24 h θ and wind RMSE over the validation
    scenarios, each relative to the baseline's, averaged (lower is better; 1 is the
    baseline), plus one for every run that failed (model selection in ``nn.training``)."""

    def __init__(self, cases: list[Case], dataset: xr.Dataset, config: ExperimentConfig):
        self.cases, self.dataset, self.days = cases, dataset, config.validation_days
        self.reference = None
        self.reference = self.scores(cases[0].model)

    def scores(self, model: Model) -> dict:
        return evaluate(model, self.cases, self.dataset, self.days, progress=False)

    def __call__(self, model: Model) -> float:
        scores = self.scores(model)
        ratio = [np.mean(scores[k]) / np.mean(self.reference[k])
                 for k in ("rmse_theta_24h", "rmse_wind_24h")]
        return float(np.mean(ratio) + np.isfinite(scores["failed_at"]).sum())


def _cell(entry: dict, key: str) -> str:
    change, low, high = (100.0 * x for x in entry[f"change_{key}"])
    return f"{entry[key]:.3f} ({change:+.0f} % [{low:+.0f}, {high:+.0f}])"


def markdown_table(summary: dict, config: ExperimentConfig) -> str:
    """The summary as markdown: one table per set (mean over scenarios and seeds; change
    against the baseline with its 95 % interval), and the extrapolation families."""
    days = f"{config.evaluation_days:g}"
    lines = [
        f"Errors against the coarse-grained truth, mean over scenarios and {len(config.seeds)} "
        "seed(s), change against the baseline (local closure) with a 95 % interval from "
        "resampling scenarios and seeds: 24 h RMSE of θ and of the wind vector; day-"
        f"{days} θ error (RMSE of the last day's mean θ profile); failed runs over "
        f"{days} days (bounds or drift, `experiments.stability`).",
    ]
    for name in EVALUATION_SETS:
        lines += ["", f"### {name}", "",
                  f"| model | θ 24 h (K) | wind 24 h (m/s) | day-{days} θ (K) | failed | "
                  "flagged |", "|---|---:|---:|---:|---:|---:|"]
        for model, by_set in summary.items():
            e = by_set[name]
            flagged = "–" if e["flagged_fraction"] is None else \
                f"{100 * e['flagged_fraction']:.0f} %"
            lines.append(f"| {model} | {_cell(e, 'rmse_theta_24h')} | "
                         f"{_cell(e, 'rmse_wind_24h')} | {_cell(e, 'final_theta_error')} | "
                         f"{e['failed']}/{e['runs']} | {flagged} |")
    families = list(summary["baseline"]["extrapolation"]["families"])
    lines += ["", "### extrapolation families: 24 h θ / wind RMSE change against the "
              "baseline [95 % interval]", "",
              "| model | " + " | ".join(families) + " |",
              "|---|" + "---:|" * len(families)]
    for model, by_set in summary.items():
        cells = []
        for family in families:
            f = by_set["extrapolation"]["families"][family]
            theta, wind = (100.0 * np.asarray(f[k]) for k in ("change_rmse_theta_24h",
                                                              "change_rmse_wind_24h"))
            cells.append(f"{theta[0]:+.0f} [{theta[1]:+.0f}, {theta[2]:+.0f}] / "
                         f"{wind[0]:+.0f} [{wind[1]:+.0f}, {wind[2]:+.0f}]")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_scores(summary: dict, path: Path) -> Path:
    """Bars of the 24 h RMSE of θ and wind per model, test beside extrapolation, with the
    95 % intervals."""
    from scm.figures import new_figure, save_figure

    names = list(summary)
    figure, axes = new_figure(2, width=5.5, height=3.8)
    for axis, metric, units in ((axes[0], "rmse_theta_24h", "K"),
                                (axes[1], "rmse_wind_24h", "m s-1")):
        x = np.arange(len(names))
        for offset, name in ((-0.2, "test"), (0.2, "extrapolation")):
            values = np.array([summary[n][name][metric] for n in names])
            base = summary["baseline"][name][metric]
            bounds = np.array([summary[n][name][f"change_{metric}"][1:] for n in names])
            errors = np.abs((1.0 + bounds.T) * base - values)
            axis.bar(x + offset, values, 0.4, yerr=errors, label=name, capsize=2)
        axis.set_xticks(x, names, rotation=40, ha="right", fontsize=7)
        axis.set_ylabel(f"24 h RMSE ({units})")
        axis.set_title(metric.replace("_", " "))
        axis.legend(fontsize=8)
    return save_figure(figure, path)


# ---------------------------------------------------------------------------------------------
# training one model, and the whole experiment


class Setup:
    """What every model's training needs: the training data, the baseline coarse model, the
    fitted inputs and the validation score."""

    def __init__(self, train: tuple[xr.Dataset, list[Case]],
                 validation: tuple[xr.Dataset, list[Case]], config: ExperimentConfig):
        dataset, cases = train
        self.config = config
        self.data = training_data(dataset, cases, config)
        self.baseline = cases[0].model
        self.inputs = Inputs(self.data, self.baseline, config)
        self.validator = Validator(validation[1], validation[0], config)

    def untrained(self, coupling: str, seed: int) -> Model:
        return hybrid_model(coupling, self.baseline, self.inputs.normalization, self.config,
                            seed, self.inputs.features)


def train_model(setup: Setup, coupling: str, mode: str, seed: int, directory: Path,
                progress: bool = True, start: Model | None = None) -> Model:
    """Train one model (``mode`` "offline", "online", or "finetuned" from ``start``, the
    offline model), selected on the validation set; writes its artifact, learning curve
    and checkpoints into ``directory`` and returns it."""
    config = setup.config
    name = f"{coupling}_{mode}"
    training = config.training(mode, seed)
    initial = setup.untrained(coupling, seed) if start is None else start
    result = train(initial, setup.data, training, checkpoint_dir=directory / "checkpoint",
                   progress=progress, description=f"{name} seed {seed}",
                   validate=setup.validator)
    write_learning_curve(result.history, directory, "learning_curve")
    losses = [row["loss"] for row in result.history]
    validation = [row["validation"] for row in result.history if row["validation"] is not None]
    save_artifact(directory, neural_part(result.model), n_levels=config.coarse_levels,
                  slot="turbulence", coupling=coupling,
                  physics=BASELINE_CLOSURE if coupling == "residual" else None,
                  physics_class=type(setup.baseline.turbulence).__name__,
                  detector=setup.inputs.detector, name=name, seed=seed,
                  time_step=config.coarse_dt,
                  metrics={"final_loss": losses[-1], "first_loss": losses[0],
                           "iterations": len(losses),
                           "best_validation_score": min(validation, default=None)},
                  provenance={"training": training.to_dict(), "experiment": config.to_dict()})
    return result.model


def run_experiment(out: str | Path, config: ExperimentConfig | None = None,
                   progress: bool = True, log=print, workers: int = 2) -> dict:
    """Run the canonical experiment into ``out``; returns the summary (also written as
    ``summary.json``). Truth files and training checkpoints already in ``out`` are reused, so
    an interrupted experiment continues where it stopped.

    The baselines' evaluations and each model's training and evaluation (one per seed,
    coupling and mode) are independent jobs, run ``workers`` at a time in threads: compiling
    one job's programs overlaps with another's (the results do not depend on ``workers``).
    The training steps are compiled on stand-in data (``stand_in_training_data``) while the
    truth is made."""
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
        normalization = Normalization.identity(FeatureSet.from_names(config.features))
        seed = config.seeds[0]
        train(hybrid_model(coupling, stand_in_baseline, normalization, config, seed),
              stand_in, config.training(mode, seed), progress=False, stop_after=1)

    with compile_time_first(config.compile_time_first), \
            ThreadPoolExecutor(max_workers=workers) as pool:
        prepared = {"train": pool.submit(prepare, "train")}
        stand_in_cases = cases_of(split_scenarios("train", config), config)
        stand_in = (stand_in_training_data(stand_in_cases, config), stand_in_cases[0].model)
        first = ("residual", "online") if "residual" in config.couplings else (
            config.couplings[0], "online")
        compiled = [pool.submit(compile_training, *first, *stand_in)]
        prepared |= {split: pool.submit(prepare, split) for split in SPLITS[1:]}
        compiled += [pool.submit(compile_training, coupling, mode, *stand_in)
                     for coupling in config.couplings for mode in ("online", "offline")
                     if (coupling, mode) != first]
        setup = Setup(prepared["train"].result(), prepared["validation"].result(), config)

        def score(name: str, model: Model, detector=None) -> dict[str, dict]:
            by_set = {}
            for split in EVALUATION_SETS:
                dataset, cases = prepared[split].result()
                by_set[split] = evaluate(model, cases, dataset, config.evaluation_days,
                                         progress, f"{name} {split}", detector)
            return by_set

        def fit(seed: int, coupling: str, mode: str, start_from=None) -> dict[str, dict]:
            """Train one model; its scores (and with the fallback, for online modes)."""
            name = f"{coupling}_{mode}"
            directory = out / "artifacts" / f"{name}_seed{seed}"
            initial = None if start_from is None else start_from.result()[0]
            model = train_model(setup, coupling, mode, seed, directory, progress, initial)
            detector = setup.inputs.detector
            scores = {name: score(name, model, detector)}
            if mode != "offline":
                scores[f"{name}+fallback"] = score(
                    f"{name}+fallback", with_fallback(model, setup.baseline, detector),
                    detector)
            log(f"{name} seed {seed} done ({time.perf_counter() - start:.0f} s)")
            return model, scores

        jobs = {}
        for seed in config.seeds:
            for coupling in config.couplings:
                for mode in ("online", "offline"):
                    jobs[seed, coupling, mode] = pool.submit(fit, seed, coupling, mode)
            for coupling in config.finetune:
                if (seed, coupling, "offline") not in jobs:
                    jobs[seed, coupling, "offline"] = pool.submit(fit, seed, coupling,
                                                                  "offline")
                jobs[seed, coupling, "finetuned"] = pool.submit(
                    fit, seed, coupling, "finetuned", jobs[seed, coupling, "offline"])
        # The untrained residual hybrid is the baseline bit for bit (its correction is exactly
        # zero), and it shares the residual models' compiled evaluation.
        baseline = pool.submit(score, "baseline", setup.untrained("residual", config.seeds[0]))
        tke = build_case(CASE, levels=config.coarse_levels, dt=config.coarse_dt,
                         turbulence=SECOND_CLOSURE).model.turbulence
        second = pool.submit(score, f"physics_{SECOND_CLOSURE}",
                             setup.baseline.with_slot("turbulence", tke))
        for job in compiled:
            job.result()  # raises what it raised
        results = {"baseline": [baseline.result()],
                   f"physics_{SECOND_CLOSURE}": [second.result()]}
        for key in sorted(jobs, key=lambda k: (MODES.index(k[2]), k[1], k[0])):
            for name, by_set in jobs[key].result()[1].items():
                results.setdefault(name, []).append(by_set)
    scores = {model: {s: [r[s] for r in runs] for s in EVALUATION_SETS}
              for model, runs in results.items()}
    summary = skill_table(scores, "baseline")
    table = write_summary(out, summary, config, time.perf_counter() - start)
    log(table)
    log(f"wall time {time.perf_counter() - start:.0f} s; results in {out}")
    return summary


def write_summary(out: Path, summary: dict, config: ExperimentConfig,
                  wall_time_s: float) -> str:
    """``summary.json``, ``summary.md`` (tables and the target check) and ``rmse_24h.png``
    of a finished experiment in ``out``; returns the markdown."""
    best = best_online_model(out, summary)
    checks = target_checks(summary, best)
    record = {"models": summary, "best_online_model": best, "targets": checks,
              "config": config.to_dict(), "wall_time_s": wall_time_s}
    write_atomic(out / "summary.json",
                 lambda path: path.write_text(json.dumps(record, indent=2, default=float)))
    table = markdown_table(summary, config) + markdown_targets(best, checks)
    write_atomic(out / "summary.md", lambda path: path.write_text(table))
    plot_scores(summary, out / "rmse_24h.png")
    return table


def best_online_model(out: Path, summary: dict) -> str:
    """The online-trained model (online or fine-tuned) whose artifacts scored best on the
    validation set, mean over seeds (``metrics.json``): the model is chosen without looking
    at the test or extrapolation sets."""
    scores = {}
    for name in summary:
        if name.endswith(("_online", "_finetuned")):
            values = [json.loads(path.read_text())["best_validation_score"]
                      for path in sorted((out / "artifacts").glob(f"{name}_seed*/metrics.json"))]
            scores[name] = float(np.mean(values))
    return min(scores, key=scores.get)


#: The issue's targets for the best online model: (set, error, largest change allowed).
TARGETS = (("test", "rmse_theta_24h", -0.50), ("test", "rmse_wind_24h", -0.50),
           ("extrapolation", "rmse_theta_24h", -0.25),
           ("extrapolation", "rmse_wind_24h", -0.25))


def target_checks(summary: dict, model: str) -> list[dict]:
    """Each target of ``model``: what is required, the measured change with its 95 %
    interval (which must exclude zero improvement), and whether it holds."""
    entry = summary[model]
    checks = []
    for name, key, limit in TARGETS:
        change = entry[name][f"change_{key}"]
        checks.append({"target": f"{name} {key} change <= {100 * limit:+.0f} %, interval "
                       "below 0", "value": change,
                       "holds": change[0] <= limit and change[2] < 0.0})
    for key in ("rmse_theta_24h", "rmse_wind_24h"):
        families = entry["extrapolation"]["families"]
        worst = max(families, key=lambda f: families[f][f"change_{key}"][0])
        change = families[worst][f"change_{key}"]
        checks.append({"target": f"every extrapolation family: {key} not worse than the "
                       f"baseline (worst: {worst})", "value": change, "holds": change[0] <= 0.0})
    for name in EVALUATION_SETS:
        change = entry[name]["change_final_theta_error"]
        checks.append({"target": f"{name} day-N θ error below the baseline's",
                       "value": change, "holds": change[0] < 0.0 and change[2] < 0.0})
        checks.append({"target": f"{name}: every run stable (bounds and drift)",
                       "value": [entry[name]["failed"], entry[name]["runs"]],
                       "holds": entry[name]["failed"] == 0})
    return checks


def markdown_targets(model: str, checks: list[dict]) -> str:
    """The target check as markdown."""
    lines = ["", f"### targets for the best online model ({model}, chosen on validation)", "",
             "| target | measured | holds |", "|---|---:|---|"]
    for check in checks:
        value = check["value"]
        shown = (f"{value[0]}/{value[1]} failed" if "stable" in check["target"] else
                 f"{100 * value[0]:+.1f} % [{100 * value[1]:+.1f}, {100 * value[2]:+.1f}]")
        lines.append(f"| {check['target']} | {shown} | {'yes' if check['holds'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def train_command(config: ExperimentConfig, truth_dir: Path, out: Path, coupling: str,
                  mode: str, seed: int, progress: bool = True, log=print) -> dict:
    """Train one model on ``truth_dir``'s training truth, selected on its validation truth
    (both made there when missing), into the artifact directory ``out``; returns and logs
    its validation scores beside the baseline's (``scm train``)."""
    check_choice("coupling", coupling, COUPLINGS)
    check_choice("mode", mode, MODES)
    truth_dir.mkdir(parents=True, exist_ok=True)
    with compile_time_first(config.compile_time_first):
        prepared = {}
        for split in ("train", "validation"):
            dataset = truth_for(split, config, truth_dir, progress)
            prepared[split] = (dataset, coarse_cases(dataset, config))
        setup = Setup(prepared["train"], prepared["validation"], config)
        start = None
        if mode == "finetuned":
            start = train_model(setup, coupling, "offline", seed,
                                out.parent / f"{out.name}_pretrained", progress)
        model = train_model(setup, coupling, mode, seed, out, progress, start)
        validator = setup.validator
        scores = {"baseline": validator.reference, "model": validator.scores(model),
                  "model+fallback": validator.scores(with_fallback(
                      model, setup.baseline, setup.inputs.detector))}
    summary = validation_summary(scores)
    write_atomic(out / "validation.json",
                 lambda path: path.write_text(json.dumps(summary, indent=2)))
    for name, groups in summary.items():
        for group, e in groups.items():
            log(f"validation {name} ({group}, {e['runs']} runs): θ 24 h "
                f"{e['rmse_theta_24h']:.4f} K ({100 * e['change_rmse_theta_24h'][0]:+.1f} %), "
                f"wind 24 h {e['rmse_wind_24h']:.4f} m/s "
                f"({100 * e['change_rmse_wind_24h'][0]:+.1f} %), failed {e['failed']}")
    return summary


def validation_summary(scores: dict[str, dict]) -> dict:
    """Per model, ``skill_summary`` of the validation scenarios: all, those inside the
    training ranges, and the margin scenarios (one parameter just outside)."""
    families = np.asarray(scores["baseline"]["families"])
    margin = np.char.startswith(families.astype(str), "margin_")
    groups = {"all": np.ones(families.size, bool), "inside": ~margin, "margin": margin}
    return {name: {group: skill_summary([s], [scores["baseline"]], select)
                   for group, select in groups.items() if select.any()}
            for name, s in scores.items()}


__all__ = [
    "COUPLINGS",
    "ExperimentConfig",
    "Inputs",
    "Setup",
    "evaluate",
    "hybrid_model",
    "install_artifact_case",
    "load_artifact_case",
    "run_experiment",
    "train_command",
    "target_checks",
    "train_model",
    "validation_summary",
    "write_summary",
]
