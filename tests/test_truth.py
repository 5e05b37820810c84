"""Truth data: scenario sampling, stacking, the vectorised ensemble runner, conservative
coarse-graining, truth generation and its files, and ``scm truth``.

Truth runs here are tiny (2 scenarios, 8 coarse levels × 2, 3 h with 1 h spin-up, fine step
150 s) and share one compilation: the module fixture, the failure test and the command line
run the same configuration. GABLS1 truth (1 h, no spin-up) has one fixture and one
compilation of its own, shared with its command-line run.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from experiments import truth
from experiments.cases import build_case, case_parameters
from experiments.cli import main
from experiments.run import run_ensemble, state_only
from experiments.scenarios import (
    CASES,
    EXTRAPOLATION_FAMILIES,
    FAMILIES,
    MARGIN_RANGES,
    SPLITS,
    TRAINING_RANGES,
    sample_scenarios,
    scenario_labels,
    split_ranges,
    stack_cases,
    stack_pytrees,
)
from experiments.truth import (
    DEFAULT_LENGTHS,
    REQUIRED_VARIABLES,
    coarse_grain,
    coarse_layer_mass,
    generate_truth,
    load_truth,
    truth_length,
)
from scm.errors import ConfigurationError
from scm.grid import ColumnGrid
from scm.io import read_netcdf, write_netcdf
from scm.state import State

#: The one tiny truth configuration of this file (3 h, the first hour discarded).
QUICK = {"coarse_levels": 8, "refinement": 2, "fine_dt": 150.0, "coarse_dt": 300.0,
         "days": 3 / 24, "spinup_days": 1 / 24}

UNITS = {"u": "m s-1", "v": "m s-1", "theta": "K", "uw": "m2 s-2", "vw": "m2 s-2",
         "heat_flux": "K m s-1", "ustar": "m s-1", "surface_heat_flux": "K m s-1",
         "obukhov_length": "m", "boundary_layer_height": "m", "failed_at": "s",
         "time": "seconds since 2000-01-01 00:00:00",
         "z": "m", "z_interface": "m", "parameter_latitude": "degrees_north",
         "parameter_lapse_rate": "K km-1"}


#: The tiny GABLS1 truth: 1 h from the case's initial state (no spin-up: the case default).
QUICK_GABLS1 = {"coarse_levels": 8, "refinement": 2, "fine_dt": 150.0, "coarse_dt": 300.0,
                "days": 1 / 24}

def quick_truth(**kwargs) -> xr.Dataset:
    return generate_truth(sample_scenarios("train", 2, 0), **QUICK, progress=False,
                          split="train", seed=0, **kwargs)


@pytest.fixture(scope="module")
def dataset() -> xr.Dataset:
    return quick_truth()


@pytest.fixture(scope="module")
def gabls1_dataset() -> xr.Dataset:
    """Two extrapolation GABLS1 scenarios, 1 h (the spin-up left at the case default)."""
    return generate_truth(sample_scenarios("extrapolation", 2, 0, case="gabls1"),
                          case="gabls1", **QUICK_GABLS1, progress=False,
                          split="extrapolation", seed=0,
                          labels=scenario_labels("extrapolation", 2, case="gabls1"))


@pytest.fixture(scope="module")
def coarse_grid() -> ColumnGrid:
    """The coarse model's grid of the first quick scenario (heights are the same for all)."""
    return build_case("diurnal", levels=8, **sample_scenarios("train", 2, 0)[0]).model.grid


# ---------------------------------------------------------------- scenarios


def in_bands(values, bands) -> np.ndarray:
    values = np.asarray(values)
    return np.any([(values >= low) & (values <= high) for low, high in bands], axis=0)


def _outside(bands, low, high) -> bool:
    return all(b_high <= low or b_low >= high for b_low, b_high in bands)


@pytest.mark.parametrize("case", CASES)
def test_every_set_lies_inside_the_case_ranges_and_beyond_training(case):
    specs = case_parameters(case)
    family = FAMILIES[case]
    for name, (low, high) in family.training.items():
        assert specs[name][1] <= low < high <= specs[name][2], name
    assert family.extrapolation
    for label, varied in family.extrapolation.items():
        assert set(varied) <= set(family.training), label
        for name, bands in varied.items():
            for low, high in bands:
                assert specs[name][1] <= low < high <= specs[name][2], (label, name)
            assert _outside(bands, *family.training[name]), (label, name)
            # extrapolation lies beyond the validation margins: tuning on validation is
            # never tuning on the extrapolation scenarios
            for margin in family.margin.get(name, ()):
                assert _outside(bands, *margin), (label, name)
    for name, bands in family.margin.items():
        assert _outside(bands, *family.training[name]), name
    assert FAMILIES["diurnal"].training is TRAINING_RANGES
    assert FAMILIES["diurnal"].extrapolation is EXTRAPOLATION_FAMILIES
    assert FAMILIES["diurnal"].margin is MARGIN_RANGES


def test_the_diurnal_training_set_varies_every_case_parameter():
    assert set(TRAINING_RANGES) == set(case_parameters("diurnal"))
    varied = {name for varied in EXTRAPOLATION_FAMILIES.values() for name in varied}
    assert varied == set(TRAINING_RANGES)  # every parameter is pushed beyond training
    assert len(EXTRAPOLATION_FAMILIES["joint"]) > 1


@pytest.mark.parametrize("case, n", [("diurnal", 1), ("diurnal", 7), ("diurnal", 8),
                                     ("gabls1", 7), ("dry_cbl", 8)])
def test_scenario_sampling_is_deterministic_disjoint_and_inside_its_bands(case, n):
    specs = case_parameters(case)
    family = FAMILIES[case]
    drawn = {split: sample_scenarios(split, n, 5, case=case) for split in SPLITS}
    labels = {split: scenario_labels(split, n, case=case) for split in SPLITS}
    for split in SPLITS:
        assert drawn[split] == sample_scenarios(split, n, 5, case=case)
        assert len(drawn[split]) == len(labels[split])
        assert all(set(scenario) == set(specs) for scenario in drawn[split])
        build_case(case, levels=8, **drawn[split][-1])  # accepted as it is
        # every parameter inside the bands of its scenario's family
        for scenario, label in zip(drawn[split], labels[split], strict=True):
            for name, bands in split_ranges(split, case, label).items():
                assert in_bands([scenario[name]], bands).all(), (split, label, name)
        # another seed redraws the set
        assert drawn[split] != sample_scenarios(split, n, 6, case=case)
    assert len(drawn["extrapolation"]) == n * len(family.extrapolation)
    assert labels["extrapolation"][::n] == list(family.extrapolation)
    for split in ("train", "test"):
        for name, (low, high) in family.training.items():
            values = np.asarray([s[name] for s in drawn[split]])
            if name in family.log_scale:
                values, low, high = np.log(values), np.log(low), np.log(high)
            # Latin hypercube: one scenario in each of the n strata
            strata = np.floor((values - low) / (high - low) * n)
            assert sorted(strata) == list(range(n)), (split, name)
    for name in set(specs) - set(family.training):
        assert {s[name] for split in SPLITS for s in drawn[split]} == {specs[name][0]}
    sets = [{tuple(s.values()) for s in drawn[split]} for split in SPLITS]
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            assert a.isdisjoint(b)
    if case == "diurnal" and n >= 2:
        margins = [label for label in labels["validation"] if label.startswith("margin_")]
        assert len(margins) == n // 2 and labels["validation"].count("validation") == n - n // 2


def test_adding_a_family_or_scenarios_of_another_kind_moves_no_other_draw():
    both = sample_scenarios("extrapolation", 2, 3, families=["strong_wind", "joint"])
    assert sample_scenarios("extrapolation", 2, 3, families=["joint"]) == both[2:]
    every = sample_scenarios("extrapolation", 2, 3)
    assert every[:2] == both[:2] and every[-2:] == both[2:]
    validation = sample_scenarios("validation", 4, 3)
    assert sample_scenarios("validation", 6, 3)[3:5] == validation[2:]  # the margins


@pytest.mark.parametrize("split, n, words", [
    ("heldout", 4, "split"), ("train", 0, "number of scenarios"),
    ("train", 2.5, "integer"), ("extrapolation", -3, "number of scenarios"),
])
def test_bad_sampling_request_is_a_clear_error(split, n, words):
    with pytest.raises(ConfigurationError, match=words):
        sample_scenarios(split, n, 0)
    with pytest.raises(ConfigurationError, match="extrapolation family"):
        sample_scenarios("extrapolation", 1, 0, families=["hurricane"])


def test_unknown_case_is_a_clear_error_naming_the_families(tmp_path):
    allowed = "choose one of: diurnal, gabls1, dry_cbl"
    with pytest.raises(ConfigurationError, match=rf"unknown case 'bomex'; {allowed}"):
        sample_scenarios("train", 2, 0, case="bomex")
    with pytest.raises(ConfigurationError, match=allowed):
        split_ranges("train", "ekman")
    with pytest.raises(ConfigurationError, match=allowed):
        generate_truth(sample_scenarios("train", 2, 0), case="bomex", **QUICK, progress=False)
    with pytest.raises(ConfigurationError, match=allowed):
        load_truth(tmp_path / "missing.nc", case="bomex")
    # scenarios of another case are named, before anything compiles
    with pytest.raises(ConfigurationError, match="unknown parameter.*'gabls1'"):
        generate_truth(sample_scenarios("train", 2, 0), case="gabls1", **QUICK_GABLS1,
                       progress=False)


def test_truth_lengths_default_to_the_cases_own():
    assert truth_length() == truth_length("diurnal") == (15.0, 5.0)
    for case in ("gabls1", "dry_cbl"):
        days, spinup_days = truth_length(case)
        assert days * 24.0 == pytest.approx(build_case(case, levels=8).hours, rel=1e-12)
        assert spinup_days == 0.0 == DEFAULT_LENGTHS[case][1]
    assert truth_length("dry_cbl", days=0.125) == (0.125, 0.0)
    assert truth_length("diurnal", spinup_days=2.0) == (15.0, 2.0)


def test_stacking_needs_equal_structure_and_static_fields():
    cases = [build_case("diurnal", levels=8, **p) for p in sample_scenarios("train", 3, 0)]
    models, forcings, states = stack_cases(cases)
    assert models.grid.rho.shape == (3, 8) and forcings.times.shape[0] == 3
    assert states.u.shape == (3, 8)
    np.testing.assert_array_equal(models.grid.rho[2], cases[2].model.grid.rho)
    assert models.turbulence.time_step == cases[0].model.turbulence.time_step
    with pytest.raises(ConfigurationError, match="static"):  # the closure's time step
        stack_pytrees([cases[0].model, build_case("diurnal", levels=8, dt=30.0).model])
    with pytest.raises(ConfigurationError, match="shape"):
        stack_pytrees([cases[0].state0, build_case("diurnal", levels=16).state0])
    with pytest.raises(ConfigurationError, match="empty"):
        stack_pytrees([])


# ---------------------------------------------------------------- the ensemble runner


def test_run_ensemble_vmap_equals_per_column(kit):
    """Per-column models and forcings (vmap axis 0), or a shared model (axis None), give
    what running each column on its own gives."""
    columns = []
    for i in range(3):
        g = kit.grid(1000.0 + 200.0 * i, 8, constant_density=i != 1)
        m = kit.model(g, momentum=1.0 + i, scalar=0.5 + i, no_slip=1.0, exchange=2e-3,
                      depth=300.0)
        f = kit.forcing(g, coriolis_parameter=1e-4 * (1 + i), geostrophic_u=5.0 + i,
                        surface_temperature=302.0 - i)
        columns.append((m, f, kit.state(g, u=4.0 - i, thl=300.0 + i)))
    models, forcings, states = (stack_pytrees(list(x)) for x in zip(*columns, strict=True))
    args = (600.0, 1200.0, 12, 2)  # dt, t0, n_steps, save_every
    together = run_ensemble(models, forcings, states, *args, progress=False)
    assert together.state.thl.shape == (3, 7, 8)
    np.testing.assert_allclose(together.time[0], 1200.0 + 1200.0 * np.arange(7))
    for i, (m, f, s) in enumerate(columns):
        alone = kit.run(m, s, f, 600.0, 12, 2, t0=1200.0)
        column = jax.tree.map(lambda a, i=i: a[i], together)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
                     column, alone)
    shared = run_ensemble(columns[0][0], forcings, states, *args, progress=False)
    for i, (_, f, s) in enumerate(columns):
        alone = kit.run(columns[0][0], s, f, 600.0, 12, 2, t0=1200.0)
        np.testing.assert_allclose(shared.state.thl[i], alone.state.thl, rtol=1e-12)
    states_only = run_ensemble(models, forcings, states, *args, progress=False,
                               output=state_only)
    assert states_only.flux is None and states_only.diagnostics == {}
    jax.tree.map(np.testing.assert_array_equal, states_only.state, together.state)
    with pytest.raises(ConfigurationError, match="models"):
        run_ensemble(stack_pytrees([columns[0][0]] * 2), forcings, states, *args,
                     progress=False)


# ---------------------------------------------------------------- coarse-graining


def test_coarse_graining_conserves_column_integrals_and_flux_divergence(rng):
    fine = ColumnGrid.stretched(3000.0, 24, 1.0e5, lambda z: 290.0 + 5e-3 * z, 1.05)
    refinement = 3
    state = State(*(jnp.asarray(rng.normal(size=24)) for _ in range(4)),
                  {"tke": jnp.asarray(rng.uniform(size=24))})
    flux = State(*(jnp.asarray(rng.normal(size=25)) for _ in range(4)),
                 {"tke": jnp.asarray(rng.normal(size=25))})
    centres, interfaces = coarse_grain(fine, state, flux, refinement)
    mass = coarse_layer_mass(fine, refinement)
    np.testing.assert_allclose(mass.sum(), fine.layer_mass.sum(), rtol=1e-14)
    for name, x in state.fields().items():
        coarse = centres.fields()[name]
        assert coarse.shape == (8,)
        np.testing.assert_allclose(jnp.sum(mass * coarse), fine.column_integral(x),
                                   rtol=1e-13, atol=1e-13)
        # a uniform field stays uniform: weights sum to one
        np.testing.assert_allclose(coarse_grain(fine, jnp.ones(24) * 7.0, {}, 3)[0], 7.0,
                                   rtol=1e-14)
    for name, f in flux.fields().items():
        coarse_flux = interfaces.fields()[name]
        np.testing.assert_array_equal(coarse_flux, f[::refinement])
        mass_flux = fine.rho_interface[::refinement] * coarse_flux
        divergence = -jnp.diff(mass_flux) / mass
        expected, _ = coarse_grain(fine, fine.tendency_from_flux(f), {}, refinement)
        np.testing.assert_allclose(divergence, expected, rtol=1e-12, atol=1e-14)
    # one column at a time, vmapped over columns outside (each with its own grid)
    grids = stack_pytrees([fine, ColumnGrid.stretched(3000.0, 24, 1.0e5,
                                                      lambda z: 280.0 + 0 * z, 1.05)])
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2.0 * a]), state)
    batched, _ = jax.vmap(coarse_grain, (0, 0, None, None))(grids, stacked, {}, refinement)
    np.testing.assert_allclose(batched.thl[0], centres.thl, rtol=1e-14)
    with pytest.raises(ConfigurationError, match="refinement"):
        coarse_grain(fine, state, flux, 5)


# ---------------------------------------------------------------- generation and files


def test_quick_truth_has_layout_units_and_provenance(dataset, coarse_grid):
    assert dict(dataset.sizes) == {"column": 2, "time": 25, "z": 8, "z_interface": 9,
                                   "bounds": 2}
    np.testing.assert_allclose(dataset["time"], 3600.0 + 300.0 * np.arange(25))
    np.testing.assert_allclose(dataset["z_interface"], coarse_grid.z_interface)
    np.testing.assert_allclose(dataset["z"], coarse_grid.z)
    for name in ("u", "v", "theta"):
        assert dataset[name].dims == ("time", "column", "z")
    for name in ("uw", "vw", "heat_flux"):
        assert dataset[name].dims == ("time", "column", "z_interface")
    for name in REQUIRED_VARIABLES:
        assert name in dataset
        if name != "failed_at":
            assert np.isfinite(dataset[name].values).all(), name
    for name, units in UNITS.items():
        assert dataset[name].attrs["units"] == units, name
    for name, variable in dataset.variables.items():
        if name == "z_bounds":
            continue  # CF bounds inherit the attributes of z
        assert variable.attrs.get("long_name") and "units" in variable.attrs, name
    assert np.isnan(dataset["failed_at"].values).all()
    # flux boundary conditions: surface fluxes at the bottom, nothing through the top
    np.testing.assert_array_equal(dataset["heat_flux"][..., 0], dataset["surface_heat_flux"])
    stress = np.hypot(dataset["uw"][..., 0], dataset["vw"][..., 0])
    np.testing.assert_allclose(stress, dataset["ustar"] ** 2, rtol=1e-10)
    for name in ("uw", "vw", "heat_flux"):
        assert (dataset[name][..., -1] == 0).all()
    scenarios = sample_scenarios("train", 2, 0)
    for name in TRAINING_RANGES:
        np.testing.assert_array_equal(dataset[f"parameter_{name}"],
                                      [s[name] for s in scenarios])
    # every scenario has its own reference state; the weights are its layer masses
    mass = dataset["layer_mass"].values
    assert not np.allclose(mass[0], mass[1])
    np.testing.assert_allclose(mass[0], coarse_grid.layer_mass, rtol=1e-4)
    attrs = dataset.attrs
    assert attrs["split"] == "train" and attrs["seed"] == 0
    assert (attrs["coarse_levels"], attrs["refinement"], attrs["fine_levels"]) == (8, 2, 16)
    assert (attrs["fine_dt_s"], attrs["coarse_dt_s"]) == (150.0, 300.0)
    assert attrs["days"] == pytest.approx(0.125) and attrs["spinup_days"] > 0
    np.testing.assert_array_equal(attrs["training_range_latitude"], [30.0, 60.0])
    assert attrs["source"].startswith("hybrid-scm ") and attrs["date_created"]
    assert "total upward turbulent flux" in attrs["offline_target"]


def test_truth_round_trips_through_netcdf(dataset, coarse_grid, tmp_path):
    path = write_netcdf(dataset, tmp_path / "truth.nc")
    loaded = load_truth(path, grid=coarse_grid)
    xr.testing.assert_allclose(loaded, dataset, rtol=0, atol=0)
    for name in dataset.variables:
        assert loaded[name].attrs == dataset[name].attrs, name
    assert loaded.attrs["split"] == "train"


def test_load_truth_rejects_a_wrong_grid_nans_and_missing_variables(dataset, tmp_path):
    path = write_netcdf(dataset, tmp_path / "truth.nc")
    finer = build_case("diurnal", levels=16).model.grid
    with pytest.raises(ConfigurationError, match=r"grid of 8 levels .* but the model has 16"):
        load_truth(path, grid=finer)
    taller = ColumnGrid.uniform(4000.0, 8, 1.0e5, lambda z: 290.0 + 0 * z)
    with pytest.raises(ConfigurationError, match="different interface heights"):
        load_truth(path, grid=taller)

    broken = dataset.copy(deep=True)
    broken["theta"][5, 1, 3] = np.nan
    bad = write_netcdf(broken, tmp_path / "nan.nc")
    time = float(dataset["time"][5])
    with pytest.raises(ConfigurationError, match=rf"theta is not finite.*scenario 1, time "
                                                 rf"{time:g} s"):
        load_truth(bad)
    with pytest.raises(ConfigurationError, match="uw"):
        load_truth(write_netcdf(dataset.drop_vars("uw"), tmp_path / "no_uw.nc"))
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_truth(tmp_path / "missing.nc")


def test_gabls1_truth_is_finite_on_the_cases_grid_and_names_its_case(gabls1_dataset,
                                                                     tmp_path):
    dataset = gabls1_dataset
    grid = build_case("gabls1", levels=8).model.grid  # heights do not depend on the scenario
    assert dict(dataset.sizes) == {"column": 2, "time": 13, "z": 8, "z_interface": 9,
                                   "bounds": 2}
    np.testing.assert_allclose(dataset["time"], 300.0 * np.arange(13))  # nothing discarded
    np.testing.assert_allclose(dataset["z_interface"], grid.z_interface)
    assert float(dataset["z_interface"][-1]) == 400.0
    for name in REQUIRED_VARIABLES[:-1]:
        assert np.isfinite(dataset[name].values).all(), name
    assert np.isnan(dataset["failed_at"].values).all()
    # a cooling surface: downward heat flux from the first output on; nothing through the top
    assert (dataset["surface_heat_flux"][1:] < 0).all()
    np.testing.assert_array_equal(dataset["heat_flux"][..., 0], dataset["surface_heat_flux"])
    assert (dataset["heat_flux"][..., -1] == 0).all()
    scenarios = sample_scenarios("extrapolation", 2, 0, case="gabls1")
    assert list(dataset["family"].values) == ["cold_windy"] * 2
    for name in case_parameters("gabls1"):
        np.testing.assert_array_equal(dataset[f"parameter_{name}"],
                                      [s[name] for s in scenarios])
    attrs = dataset.attrs
    assert attrs["case"] == "gabls1" and "gabls1" in attrs["title"]
    assert attrs["days"] == pytest.approx(1 / 24) and attrs["spinup_days"] == 0.0
    assert (attrs["split"], attrs["coarse_levels"], attrs["fine_levels"]) == (
        "extrapolation", 8, 16)
    np.testing.assert_array_equal(attrs["training_range_surface_cooling_rate"], [0.1, 0.5])
    np.testing.assert_array_equal(attrs["extrapolation_range_cold_windy_geostrophic_wind"],
                                  [11.0, 14.0])
    assert "training_range_latitude" not in attrs

    path = write_netcdf(dataset, tmp_path / "gabls1.nc")
    loaded = load_truth(path, grid=grid, case="gabls1")
    assert loaded.attrs["case"] == "gabls1"
    with pytest.raises(ConfigurationError, match="case 'gabls1', expected 'diurnal'"):
        load_truth(path, case="diurnal")


def test_failed_scenario_is_flagged_and_warned_about(monkeypatch, tmp_path):
    """A scenario that fails in the fine run: flagged in failed_at, warned about, no NaN."""

    def failing(*args, **kwargs):
        trajectory = run_ensemble(*args, **kwargs)
        return eqx.tree_at(lambda t: (t.failed_at, t.failed_level), trajectory,
                           (trajectory.failed_at.at[1].set(4500.0),
                            trajectory.failed_level.at[1].set(3)))

    monkeypatch.setattr(truth, "run_ensemble", failing)
    with pytest.warns(RuntimeWarning, match="truth scenario 1 failed .* t = 4500 s"):
        failed = quick_truth()
    assert np.isnan(failed["failed_at"][0]) and failed["failed_at"][1] == 4500.0
    assert np.isfinite(failed["theta"]).all()
    path = write_netcdf(failed, tmp_path / "failed.nc")
    with pytest.warns(RuntimeWarning, match=r"scenario\(s\) \[1\] failed"):
        load_truth(path)


# ---------------------------------------------------------------- command line

QUICK_ARGV = ["--scenarios", "2", "--levels", "8", "--refinement", "2", "--fine-dt", "150",
              "--coarse-dt", "300", "--hours", "3", "--spinup-hours", "1", "--no-progress",
              "--no-cache"]


def test_truth_command_makes_gabls1_truth(gabls1_dataset, tmp_path, capsys):
    out = tmp_path / "gabls1.nc"
    argv = ["--case", "gabls1", "--split", "extrapolation", "--scenarios", "2", "--levels", "8",
            "--refinement", "2", "--fine-dt", "150", "--coarse-dt", "300", "--days",
            repr(1 / 24), "--no-progress", "--no-cache", "--out", str(out)]
    code = main(["truth", *argv])  # the previous release's spellings, with notes
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "--case is deprecated" in stderr and "--days is deprecated" in stderr
    assert "truth (gabls1, extrapolation, seed 0): 2 scenario(s)" in stdout
    assert "0 h spin-up" in stdout
    written = load_truth(out, case="gabls1")
    for name in REQUIRED_VARIABLES:
        np.testing.assert_array_equal(written[name], gabls1_dataset[name])


def test_truth_command_writes_the_same_truth(dataset, tmp_path, capsys):
    out = tmp_path / "truth.nc"
    code = main(["truth", *QUICK_ARGV, "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0 and stderr == "", stderr
    assert "2 scenario(s)" in stdout and "0 of 2" in stdout and str(out) in stdout
    assert "wall time" in stdout and "time span" in stdout
    written = read_netcdf(out)
    for name in REQUIRED_VARIABLES:
        np.testing.assert_array_equal(written[name], dataset[name])
    assert written.attrs["split"] == "train" and written.attrs["seed"] == 0


@pytest.mark.parametrize("argv, field", [
    (["--split", "heldout"], "split"),
    (["--scenarios", "0"], "scenarios"),
    (["--hours", "-1"], "hours"),
    (["--spinup-hours", "480"], "--spinup-hours 480 must be shorter than --hours 360"),
    (["--refinement", "0"], "refinement"),
    (["--levels", "4"], "levels"),
    (["--fine-dt", "0"], "fine-dt"),
    (["--fine-dt", "70"], "fine_dt"),
    (["--coarse-dt", "45"], "coarse_dt"),
    (["--hours", "2.4024", "--spinup-hours", "0"], "days"),
    (["--seed", "-1"], "seed"),
    (["bomex"], "case"),
    (["gabls1", "--spinup-hours", "24"], "--spinup-hours 24 must be shorter than --hours 9"),
    (["dry_cbl", "--hours", "2.4"], "days"),
    (["--out", "/no/such/directory/truth.nc"], "/no/such/directory"),
])
def test_truth_command_bad_input_exits_2_naming_the_field(argv, field, tmp_path, capsys,
                                                          monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the truth run started although the input is bad")

    monkeypatch.setattr(truth, "generate_truth", never)
    argv = [*argv] if "--out" in argv else [*argv, "--out", str(tmp_path / "t.nc")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing runs: no warnings either
        code = main(["truth", *argv, "--no-cache"])
    stdout, stderr = capsys.readouterr()
    assert code == 2 and field in stderr and "error" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and stdout == ""
    assert not (tmp_path / "t.nc").exists()


def test_truth_command_needs_an_output_file(capsys):
    assert main(["truth", "--no-cache"]) == 2
    assert "--out" in capsys.readouterr().err


def test_truth_file_passes_cfchecks(dataset, tmp_path, cf_check):
    cf_check(write_netcdf(dataset, tmp_path / "truth.nc"))
