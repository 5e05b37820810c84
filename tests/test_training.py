"""Training (offline and online), artifacts and the canonical experiment in its quick mode.

One quick experiment runs through the command line for the whole module (``experiment``
fixture); its truth files feed the training tests, which use the same batch size and rollout
length, so they reuse its compiled training step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.cases import build_case
from experiments.cli import main
from experiments.truth import load_truth
from experiments.turbulence import (
    ExperimentConfig,
    Inputs,
    cases_of,
    coarse_cases,
    evaluate,
    hybrid_model,
    install_artifact_case,
    load_artifact_case,
    split_scenarios,
    stand_in_training_data,
    training_data,
)
from nn.artifact import load_artifact, save_artifact
from nn.features import FeatureSet
from nn.networks import zero_last_layer
from nn.parameterization import NeuralParameterization, trainable_filter
from nn.training import (
    TrainingConfig,
    TrainingData,
    TrainingDiverged,
    draw,
    feature_samples,
    online_loss,
    train,
    write_learning_curve,
)
from physics.turbulence import LocalClosure
from scm.errors import ConfigurationError
from scm.io import read_netcdf
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State

QUICK = ExperimentConfig.quick()
#: Rollout length and batch of the unit tests: those of the quick experiment's first stage.
STEPS, BATCH = QUICK.curriculum[0][0], QUICK.batch_size


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    assert main(["experiment", "turbulence", "--quick", "--out", str(out), "--no-progress",
                 "--no-cache"]) == 0
    return out


@pytest.fixture(scope="module")
def setup(experiment):
    dataset = load_truth(experiment / "truth_train.nc")
    cases = coarse_cases(dataset, QUICK)
    data = training_data(dataset, cases, QUICK)
    normalization = Inputs(data, cases[0].model, QUICK).normalization
    return data, cases, normalization


def test_stand_in_training_data_has_the_truths_shapes_and_structure(setup):
    """The experiment compiles its training steps on stand-in data before the truth exists:
    they are the programs its training uses only if every shape, dtype and static field is
    the same (the baseline model's too)."""
    data, cases, _ = setup
    stand_in_cases = cases_of(split_scenarios("train", QUICK), QUICK)
    stand_in = stand_in_training_data(stand_in_cases, QUICK)

    def signature(tree):
        return jax.tree.structure(tree), [(a.shape, a.dtype) for a in jax.tree.leaves(tree)]

    assert signature(stand_in) == signature(data)
    assert signature(stand_in_cases[0].model) == signature(cases[0].model)
    np.testing.assert_array_equal(stand_in.times, data.times)


def config(**changes) -> TrainingConfig:
    base = TrainingConfig(mode="online", curriculum=((STEPS, 6),), batch_size=BATCH,
                          learning_rate=QUICK.learning_rate, seed=3, checkpoint_every=2)
    return dataclasses.replace(base, **changes)


# ------------------------------------------------------------------ the experiment itself


def test_quick_experiment_writes_summary_table_plots_and_artifacts(experiment):
    record = json.loads((experiment / "summary.json").read_text())
    summary = record["models"]
    # the best online model is chosen by its validation score, and the targets are checked
    assert record["best_online_model"].endswith(("_online", "_finetuned"))
    assert len(record["targets"]) == 10 and all(isinstance(t["holds"], bool)
                                                 for t in record["targets"])
    trained = [f"{c}_{m}" for c in QUICK.couplings for m in ("offline", "online")]
    trained += [f"{c}_finetuned" for c in QUICK.finetune]
    expected = {"baseline", "physics_tke", *trained,
                *(f"{name}+fallback" for name in trained if "offline" not in name)}
    assert set(summary) == expected
    for model, by_set in summary.items():
        assert set(by_set) == {"test", "extrapolation"}
        for name, entry in by_set.items():
            for key in ("rmse_theta_24h", "rmse_wind_24h", "final_theta_error"):
                assert np.isfinite(entry[key]) and entry[key] >= 0, (model, key)
                change, low, high = entry[f"change_{key}"]
                assert low <= change <= high, (model, name, key)
            assert entry["runs"] == 2 * len(QUICK.seeds) if model != "baseline" else 2
            assert set(entry["families"]) == (set(QUICK.extrapolation_families)
                                              if name == "extrapolation" else {"test"})
        if model == "baseline":
            assert by_set["test"]["change_rmse_theta_24h"] == [0.0, 0.0, 0.0]
    for name in trained:
        artifact = load_artifact(experiment / "artifacts" / f"{name}_seed0")
        assert artifact.config["coupling"] == name.split("_")[0]
        assert artifact.detector is not None and artifact.name == name
    for name in ("summary.md", "rmse_24h.png", *(f"truth_{s}.nc" for s in
                                                ("train", "validation", "test",
                                                 "extrapolation"))):
        assert (experiment / name).stat().st_size > 0
    curve = experiment / "artifacts" / "replace_online_seed0" / "learning_curve.csv"
    rows = curve.read_text().splitlines()
    assert rows[0].startswith("iteration,") and len(rows) == 1 + sum(
        n for _, n in QUICK.curriculum)
    validated = [row.split(",")[5] for row in rows[1:]]
    assert sum(bool(v) for v in validated) == sum(n for _, n in QUICK.curriculum) // 5
    assert "baseline" in (experiment / "summary.md").read_text()


def test_learning_curves_can_be_written_from_several_threads_at_once(tmp_path):
    # The experiment writes them from its worker threads; matplotlib's mathtext parser (the
    # log axis's tick labels) is shared by all figures, and two drawn at once used to crash.
    history = [{"iteration": i, "stage": i // 5, "rollout_steps": 1 + i // 5,
                "loss": 10.0 ** (-i / 5), "masked_columns": 0, "seconds": 0.1}
               for i in range(15)]
    with ThreadPoolExecutor(4) as pool:
        written = list(pool.map(lambda k: write_learning_curve(history, tmp_path / str(k)),
                                range(8)))
    for csv, _, png in written:
        assert len(csv.read_text().splitlines()) == 1 + len(history)
        assert png.read_bytes().startswith(b"\x89PNG")


# ------------------------------------------------------------------ training


def test_online_steps_lower_the_loss_and_change_only_the_network(setup):
    data, cases, normalization = setup
    model = hybrid_model("replace", cases[0].model, normalization, QUICK, seed=0)
    params, static = eqx.partition(model, trainable_filter(model))
    scenario, start = draw(jax.random.key(11), data, BATCH, STEPS)
    loss = eqx.filter_jit(functools.partial(online_loss, n_steps=STEPS,
                                            scales=data.state_scales()))
    before = float(loss(params, static, data, scenario, start)[0])
    trained = train(model, data, config(), progress=False).model
    after = float(loss(eqx.partition(trained, trainable_filter(trained))[0], static, data,
                       scenario, start)[0])
    assert np.isfinite(after) and after < before
    spec = trainable_filter(model)
    (network, frozen), (network_after, frozen_after) = (eqx.partition(m, spec)
                                                        for m in (model, trained))
    for x, y in zip(jax.tree.leaves(frozen), jax.tree.leaves(frozen_after), strict=True):
        if eqx.is_array(x):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(
        jax.tree.leaves(network), jax.tree.leaves(network_after), strict=True))
    assert {id(x) for x in jax.tree.leaves(network)} == {
        id(x) for x in jax.tree.leaves(eqx.filter(model.turbulence.network,
                                                  eqx.is_inexact_array))}


def test_planted_blow_up_column_is_masked_and_counted(setup):
    data, cases, normalization = setup
    model = hybrid_model("replace", cases[0].model, normalization, QUICK, seed=0)
    params, static = eqx.partition(model, trainable_filter(model))
    scenario, start = draw(jax.random.key(5), data, BATCH, STEPS)
    # the first column of the batch starts from a wind far outside the physical bounds
    planted = eqx.tree_at(lambda d: d.states.u, data, data.states.u.at[
        scenario[0], start[0], 3].set(1.0e3))
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(functools.partial(
        online_loss, n_steps=STEPS, scales=data.state_scales()), has_aux=True))
    (loss, masked), grads = value_and_grad(params, static, planted, scenario, start)
    planted_columns = (np.asarray(scenario) == int(scenario[0])) & (
        np.asarray(start) == int(start[0]))
    assert int(masked) == int(planted_columns.sum()) >= 1
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    (clean, none_masked), _ = value_and_grad(params, static, data, scenario, start)
    assert int(none_masked) == 0 and np.isfinite(float(clean))


def test_resume_reproduces_the_uninterrupted_losses(setup, tmp_path):
    data, cases, normalization = setup
    model = hybrid_model("residual", cases[0].model, normalization, QUICK, seed=1)
    whole = train(model, data, config(), progress=False).history
    interrupted = train(model, data, config(), checkpoint_dir=tmp_path, progress=False,
                        stop_after=4).history
    assert len(interrupted) == 4
    resumed = train(model, data, config(), checkpoint_dir=tmp_path, progress=False).history
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    with pytest.raises(ConfigurationError, match="another configuration"):
        train(model, data, config(learning_rate=5.0e-3), checkpoint_dir=tmp_path,
              progress=False)


def test_offline_training_lowers_the_flux_error(setup):
    data, cases, normalization = setup
    model = hybrid_model("residual", cases[0].model, normalization, QUICK, seed=0)
    history = train(model, data, config(mode="offline", curriculum=((1, 40),)),
                    progress=False).history
    first, last = np.mean([r["loss"] for r in history[:5]]), np.mean(
        [r["loss"] for r in history[-5:]])
    assert last < first


def test_truth_on_another_grid_is_a_clear_error(experiment):
    dataset = load_truth(experiment / "truth_train.nc")
    with pytest.raises(ConfigurationError, match="on a grid of 16 levels"):
        coarse_cases(dataset, dataclasses.replace(QUICK, coarse_levels=12))


def test_training_data_with_nan_is_a_clear_error(setup):
    data = setup[0]
    states = eqx.tree_at(lambda s: s.thl, data.states, data.states.thl.at[1, 2, 0].set(jnp.nan))
    with pytest.raises(ConfigurationError, match=r"state thl is not finite at scenario 1"):
        TrainingData(data.grid, data.forcing, states, data.fluxes, data.times, data.dt)


def test_training_a_model_without_the_slot_or_a_network_is_a_clear_error(setup):
    data, cases, _ = setup
    with pytest.raises(ConfigurationError, match="no parameterization in slot 'radiation'"):
        train(cases[0].model, data, config(slot="radiation"), progress=False)
    with pytest.raises(ConfigurationError, match="nothing to train"):
        train(cases[0].model, data, config(), progress=False)


# ------------------------------------------------------------------ artifacts


def test_artifact_runs_another_case_from_the_command_line(experiment, tmp_path, capsys):
    artifact = experiment / "artifacts" / "replace_online_seed0"
    out = tmp_path / "gabls1.nc"
    assert main(["run", "gabls1", "--hours", "1", "--parameterization", str(artifact),
                 "--out", str(out), "--no-progress", "--no-cache"]) == 0
    dataset = read_netcdf(out)
    assert dataset.sizes["z"] == QUICK.coarse_levels
    assert np.all(np.isfinite(dataset["theta"].values))
    assert "NeuralParameterization" in dataset.attrs["slots"]
    residual = load_artifact_case("diurnal", experiment / "artifacts" / "residual_online_seed0",
                                  hours=2.0, latitude=20.0)
    assert type(residual.model.turbulence).__name__ == "Residual"
    assert "tke" not in residual.state0.tracers


def test_artifact_round_trip_keeps_the_network(setup, tmp_path):
    data, cases, normalization = setup
    model = hybrid_model("replace", cases[0].model, normalization, QUICK, seed=2)
    scheme = eqx.tree_at(lambda s: s.network.layers[-1].bias, model.turbulence,
                         model.turbulence.network.layers[-1].bias + 0.5)
    save_artifact(tmp_path / "a", scheme, n_levels=QUICK.coarse_levels)
    loaded = load_artifact(tmp_path / "a").parameterization(scheme.surface)
    for x, y in zip(jax.tree.leaves(scheme), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    other = install_artifact_case(build_case("diurnal", levels=QUICK.coarse_levels, hours=1.0,
                                             turbulence="local"), load_artifact(tmp_path / "a"))
    assert other.model.turbulence.network is not None


def test_bad_artifacts_are_clear_errors(experiment, tmp_path):
    source = experiment / "artifacts" / "replace_offline_seed0"
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_artifact(tmp_path / "nothing")

    def broken(name, edit):
        target = tmp_path / name
        shutil.copytree(source, target)
        edit(target)
        return target

    missing = broken("missing", lambda d: (d / "weights.eqx").unlink())
    with pytest.raises(ConfigurationError, match="weights.eqx is missing"):
        load_artifact(missing)
    corrupt = broken("corrupt", lambda d: (d / "weights.eqx").write_bytes(b"\x00" * 10))
    with pytest.raises(ConfigurationError, match="weights.eqx is corrupt"):
        load_artifact(corrupt)

    def set_slot(d):
        config = json.loads((d / "config.json").read_text())
        config["slot"] = "clouds"
        (d / "config.json").write_text(json.dumps(config))

    with pytest.raises(ConfigurationError, match="slot = 'clouds' is not one of surface"):
        load_artifact(broken("slot", set_slot))
    normalization = broken("normalization",
                           lambda d: (d / "normalization.json").write_text("[]"))
    with pytest.raises(ConfigurationError, match="normalization.json lacks or misformats"):
        load_artifact(normalization)
    garbled = broken("garbled", lambda d: (d / "config.json").write_text("{not json"))
    with pytest.raises(ConfigurationError, match="config.json is not valid JSON"):
        load_artifact(garbled)
    with pytest.raises(ConfigurationError, match="trained on 16 levels"):
        install_artifact_case(build_case("gabls1", levels=24, hours=1.0, turbulence="local"),
                              load_artifact(source))
    residual = load_artifact(experiment / "artifacts" / "residual_online_seed0")
    with pytest.raises(ConfigurationError, match="corrects LocalClosure"):
        install_artifact_case(build_case("diurnal", levels=16, hours=1.0, turbulence="tke"),
                              residual)


def test_stability_benchmark_runs_on_quick_artifacts(experiment, tmp_path, capsys):
    models = [experiment / "artifacts" / "replace_online_seed0",
              experiment / "artifacts" / "residual_offline_seed0"]
    out = tmp_path / "stability"
    # the experiment's evaluation length (2 days) and sets: its compiled runs are reused
    argv = ["bench", "stability", "--days", "2", "--truth", str(experiment), "--out",
            str(out), "--fallback", "both", "--no-progress", "--no-cache"]
    for model in models:
        argv += ["--model", str(model)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    names = {"physics_local", "replace_online", "replace_online+fallback", "residual_offline",
             "residual_offline+fallback"}
    assert set(summary["models"]) == names and summary["baseline"] == "physics_local"
    for model, by_set in summary["models"].items():
        assert set(by_set) == {"test", "extrapolation"}
        for entry in by_set.values():
            assert entry["runs"] == 2 and 0.0 <= entry["fraction_alive_at_end"] <= 1.0
            assert np.isfinite(entry["rmse_theta_24h"]) and entry["largest_jacobian_modulus"] > 0
            assert entry["budget_residual_max_K_per_day"] < 1.0e-6  # float64, flux form
            assert entry["momentum_residual_max_m_s_per_day"] < 1.0e-6
            assert (entry["flagged_fraction"] is None) == (model == "physics_local")
        assert set(by_set["extrapolation"]["families"]) == set(QUICK.extrapolation_families)
    metrics = read_netcdf(out / "metrics.nc")
    assert metrics["rmse_theta_24h_replace_online_fallback_test"].attrs["units"] == "K"
    for name in ("report.md", "survival.png", "rmse_lead_time.png", "bias_profiles.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Verdicts" in report and "Per family (extrapolation)" in report
    # truth-free: from the case's initial state, no truth read
    long = tmp_path / "long"
    assert main(["bench", "stability", "--days", "2", "--no-truth", "--scenarios", "test",
                 "--scenarios-per-set", "2", "--model", str(models[0]), "--out", str(long),
                 "--no-progress", "--no-cache"]) == 0
    record = json.loads((long / "summary.json").read_text())
    entry = record["models"]["replace_online"]["test"]
    for key in ("trend_thl", "trend_u", "trend_heat_content", "trend_kinetic_energy",
                "periodicity_theta", "climate_theta_difference"):
        assert key in entry, key
    assert record["models"]["physics_local"]["test"]["climate_theta_difference"] == 0.0
    assert "truth-free" in (long / "report.md").read_text()
    assert main(["bench", "stability", "--model", str(tmp_path / "none"), "--out",
                 str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "stability", "--bound", "thl=400:300", "--out", str(out)]) == 2
    assert "LOW (400) must be below HIGH" in capsys.readouterr().err
    assert main(["bench", "stability", "--split", "heldout", "--out", str(out)]) == 2
    assert "test, extrapolation" in capsys.readouterr().err


# ------------------------------------------------------------------ configurable training


def test_surface_scalars_are_normalized_by_the_training_datas_statistics(setup):
    data, cases, normalization = setup
    features = FeatureSet.from_names(QUICK.features)
    _, scalars = feature_samples(features, data)
    np.testing.assert_allclose(normalization.scalar_mean, scalars.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(normalization.scalar_scale, scalars.std(axis=0), rtol=1e-10)
    assert float(normalization.scalar_mean[1]) > 0.05  # u*: the data's, not a default


def test_training_settings_come_from_a_file(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("""
seeds = [4, 5]
[model]
features = ["u_defect", "v_defect", "thl_anomaly", "richardson", "ustar", "time_of_day_cos"]
network = "eqx_mlp"
width = 24
[training]
optimizer = "adamw"
weight_decay = 1e-4
schedule = "warmup_cosine"
warmup_iterations = 50
clip_norm = 0.5
curriculum = [[3, 100], [24, 50]]
loss_weights = {thl = 2.0, u = 1.0, v = 0.0}
""")
    config = ExperimentConfig.from_file(path)
    assert config.seeds == (4, 5) and config.network == "eqx_mlp" and config.width == 24
    training = config.training("online", 4)
    assert training.curriculum == ((3, 100), (24, 50)) and training.clip_norm == 0.5
    assert (training.optimizer, training.schedule) == ("adamw", "warmup_cosine")
    assert dict(training.loss_weights) == {"thl": 2.0, "u": 1.0, "v": 0.0}
    quick = ExperimentConfig.from_file(path, ExperimentConfig.quick())
    assert quick.coarse_levels == QUICK.coarse_levels and quick.width == 24
    path.write_text('[training]\nlearning_rat = 0.1\n')
    with pytest.raises(ConfigurationError, match=r"unknown experiment setting\(s\) "
                                                 r"\['learning_rat'\]"):
        ExperimentConfig.from_file(path)
    path.write_text('optimizer = "rmsprop"\n')
    with pytest.raises(ConfigurationError, match="optimizer"):
        ExperimentConfig.from_file(path)
    path.write_text('features = ["u_anomaly", "vorticity"]\n')
    with pytest.raises(ConfigurationError, match="vorticity"):
        ExperimentConfig.from_file(path)


def test_loss_weights_scale_and_drop_fields(setup):
    data = setup[0]
    weighted = config(loss_weights=(("thl", 4.0), ("u", 1.0), ("v", 0.0))).scales(data)
    plain = data.state_scales()
    assert set(weighted) == {"thl", "u"}
    np.testing.assert_allclose(weighted["thl"], plain["thl"] / 2.0)
    with pytest.raises(ConfigurationError, match="loss_weights"):
        config(loss_weights=(("u", 0.0),))


class PoisonedClosure(AbstractParameterization):
    """Heats the column by NaN × its weight: every rollout goes non-finite."""

    weight: jax.Array

    def __call__(self, state, forcing, grid) -> Tendency:
        zeros = Tendency.zeros(state)
        heating = State.from_fields({**zeros.tendency.fields(),
                                     "thl": jnp.full_like(state.thl, jnp.nan) * self.weight})
        return Tendency(heating, zeros.flux, zeros.diffusivity, {})


def test_training_that_skips_updates_in_a_row_stops_with_a_clear_error(setup):
    data, cases, _ = setup
    poisoned = cases[0].model.with_slot("turbulence", PoisonedClosure(jnp.ones(1)))
    with pytest.raises(TrainingDiverged, match=r"iteration 2 .*3 updates in a row"):
        train(poisoned, data, config(max_nonfinite_updates=3), progress=False)


class ScaledLocal(AbstractParameterization):
    """A scheme of one's own holding its own weights: the local closure with its
    diffusivities times exp(w) (one factor for momentum, one for heat)."""

    physics: LocalClosure
    weights: jax.Array

    def __call__(self, state, forcing, grid) -> Tendency:
        out = self.physics(state, forcing, grid)
        k = out.diffusivity
        km = k.u.at[1:].multiply(jnp.exp(self.weights[0]))
        kh = k.thl * jnp.exp(self.weights[1])
        return Tendency(out.tendency, out.flux, State(km, km, kh, k.qt, k.tracers),
                        out.diagnostics)


def test_a_scheme_of_ones_own_with_its_own_weights_trains(setup):
    data, cases, _ = setup
    model = cases[0].model.with_slot("turbulence", ScaledLocal(cases[0].model.turbulence,
                                                               jnp.zeros(2)))
    params, static = eqx.partition(model, trainable_filter(model))
    scenario, start = draw(jax.random.key(11), data, BATCH, STEPS)
    loss = eqx.filter_jit(functools.partial(online_loss, n_steps=STEPS,
                                            scales=data.state_scales()))
    before = float(loss(params, static, data, scenario, start)[0])
    result = train(model, data, config(), progress=False)
    trained = result.model.turbulence
    assert np.any(np.asarray(trained.weights) != 0.0)
    for x, y in zip(jax.tree.leaves(model.turbulence.physics),
                    jax.tree.leaves(trained.physics), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # physics frozen
    after = float(loss(eqx.partition(result.model, trainable_filter(result.model))[0],
                       static, data, scenario, start)[0])
    assert np.isfinite(after) and after < before  # on a batch of its own


def test_an_equinox_mlp_trains_evaluates_and_round_trips(setup, experiment, tmp_path):
    data, cases, normalization = setup
    head_outputs, levels = 2 * (QUICK.coarse_levels + 1), QUICK.coarse_levels
    baseline = cases[0].model
    hybrid = hybrid_model("replace", baseline, normalization, QUICK, 0).turbulence
    features = hybrid.features
    mlp = eqx.nn.MLP(len(features.profiles) * levels + len(features.scalars), head_outputs,
                     8, 1, activation=jax.nn.gelu, key=jax.random.key(0))
    mlp = eqx.tree_at(lambda m: m.layers[-1], mlp, zero_last_layer(mlp.layers[-1]))
    scheme = NeuralParameterization(baseline.turbulence.surface, normalization, mlp,
                                    hybrid.head, features=features)
    model = baseline.with_slot("turbulence", scheme)
    trained = train(model, data, config(), progress=False).model
    dataset = load_truth(experiment / "truth_test.nc")
    scores = evaluate(trained, coarse_cases(dataset, QUICK), dataset, 1.0, progress=False)
    assert np.all(np.isfinite(scores["rmse_theta_24h"]))
    save_artifact(tmp_path / "mlp", trained.turbulence, n_levels=levels)
    artifact = load_artifact(tmp_path / "mlp")
    assert artifact.config["network"]["options"]["activation"] == "gelu"
    for x, y in zip(jax.tree.leaves(trained.turbulence.network),
                    jax.tree.leaves(artifact.network), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_validation_keeps_the_best_weights(setup):
    data, cases, normalization = setup
    model = hybrid_model("replace", cases[0].model, normalization, QUICK, seed=0)
    scores = iter([3.0, 1.0, 2.0])
    result = train(model, data, config(validate_every=2), progress=False,
                   validate=lambda m: next(scores))
    assert [row["validation"] for row in result.history] == [None, 3.0, None, 1.0, None, 2.0]
    at_best = train(model, data, config(validate_every=2), progress=False, stop_after=4).model
    for x, y in zip(jax.tree.leaves(result.model), jax.tree.leaves(at_best), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_command_trains_one_model_selected_on_validation(experiment, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "--quick", "--coupling", "replace", "--mode", "offline", "--truth",
                 str(experiment), "--out", str(out), "--no-progress", "--no-cache"]) == 0
    scores = json.loads((out / "validation.json").read_text())
    assert set(scores) == {"baseline", "model", "model+fallback"}
    assert load_artifact(out).config["coupling"] == "replace"
    assert "validation model" in capsys.readouterr().out
    assert main(["train", "--quick", "--mode", "sideways", "--truth", str(experiment),
                 "--out", str(out)]) == 2
    assert "mode" in capsys.readouterr().err


def test_the_documented_bring_your_own_network_example_runs(experiment, tmp_path,
                                                            monkeypatch):
    """docs/training.md's 20-line example, as written, on the quick experiment's truth."""
    text = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    code = text.split("### Bring your own network")[1].split("```python")[1].split("```")[0]
    assert len(code.strip().splitlines()) <= 22
    (tmp_path / "truth").mkdir()
    for name in ("truth_train.nc", "truth_validation.nc"):
        shutil.copy(experiment / name, tmp_path / "truth" / name)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/training.md", "exec"), {})
    artifact = load_artifact(tmp_path / "my_mlp")
    assert artifact.config["network"]["kind"] == "eqx_mlp" and artifact.detector is not None
