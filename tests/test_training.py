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

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.cases import build_case
from experiments.cli import main
from experiments.truth import load_truth
from experiments.turbulence import (
    MODELS,
    ExperimentConfig,
    cases_of,
    coarse_cases,
    hybrid_model,
    install_artifact,
    load_artifact_case,
    split_scenarios,
    stand_in_training_data,
    training_data,
)
from nn.artifact import load_artifact, save_artifact
from nn.features import Normalization
from nn.parameterization import trainable_filter
from nn.training import (
    TrainingConfig,
    TrainingData,
    draw,
    online_loss,
    train,
    write_learning_curve,
)
from scm.errors import ConfigurationError
from scm.io import read_netcdf

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
    normalization = Normalization.fit(data.states, cases[0].model.grid)
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
    summary = json.loads((experiment / "summary.json").read_text())
    for model in MODELS:
        entry = summary[model]
        for key in ("rmse_theta_24h", "rmse_wind_24h", "rmse_theta_24h_ood",
                    "rmse_wind_24h_ood", "stable_30d_fraction", "day30_theta_error"):
            assert np.isfinite(entry[key]) and entry[key] >= 0, (model, key)
        assert entry["seeds"] == (1 if model == "baseline" else len(QUICK.seeds))
        if model != "baseline":
            assert load_artifact(entry["artifact"]).config["coupling"] == model.split("_")[0]
    for name in ("summary.md", "rmse_24h.png", "truth_train.nc", "truth_heldout.nc",
                 "truth_ood.nc"):
        assert (experiment / name).stat().st_size > 0
    curve = experiment / "artifacts" / "replace_online_seed0" / "learning_curve.csv"
    rows = curve.read_text().splitlines()
    assert rows[0].startswith("iteration,") and len(rows) == 1 + sum(
        n for _, n in QUICK.curriculum)
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
    changed_network = False
    flags = jax.tree.leaves(trainable_filter(model))
    for flag, x, y in zip(flags, jax.tree.leaves(model), jax.tree.leaves(trained), strict=True):
        if not eqx.is_array(x):
            continue
        if flag:
            changed_network |= not np.array_equal(np.asarray(x), np.asarray(y))
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert changed_network


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
    with pytest.raises(ConfigurationError, match="no network to train"):
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
    other = install_artifact(build_case("diurnal", levels=QUICK.coarse_levels, hours=1.0,
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
        install_artifact(build_case("gabls1", levels=24, hours=1.0, turbulence="local"),
                         load_artifact(source))


def test_stability_benchmark_runs_on_quick_artifacts(experiment, tmp_path, capsys):
    models = [experiment / "artifacts" / "replace_online_seed0"]
    out = tmp_path / "stability"
    # the experiment's evaluation length (2 days): its compiled runs are reused
    argv = ["bench", "stability", "--days", "2", "--scenarios", "heldout", "--truth",
            str(experiment), "--out", str(out), "--no-progress", "--no-cache"]
    for model in models:
        argv += ["--model", str(model)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"physics_local", *(m.name for m in models)}
    for by_split in summary["models"].values():
        assert set(by_split) == {"heldout"}
        for entry in by_split.values():
            assert entry["runs"] == 2 and 0.0 <= entry["fraction_alive_at_end"] <= 1.0
            assert np.isfinite(entry["rmse_theta_24h"]) and entry["largest_jacobian_modulus"] > 0
            assert entry["budget_residual_max_K_per_day"] < 1.0e-6  # float64, flux form
    metrics = read_netcdf(out / "metrics.nc")
    assert metrics["survival_physics_local_heldout"].attrs["units"] == "1"
    for name in ("report.md", "survival.png", "rmse_lead_time.png", "bias_profiles.png",
                 "jacobian_spectra.png"):
        assert (out / name).stat().st_size > 0
    assert "Verdicts" in (out / "report.md").read_text()
    assert main(["bench", "stability", "--model", str(tmp_path / "none"), "--out",
                 str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "stability", "--bound", "thl=400:300", "--out", str(out)]) == 2
    assert "LOW (400) must be below HIGH" in capsys.readouterr().err
