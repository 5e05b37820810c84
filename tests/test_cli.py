"""The ``scm`` command line end to end, and the segmented batched runner behind it."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys
import types
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cases, cli
from experiments.cli import main, report_failures
from experiments.run import (
    Perturbation,
    case_dataset,
    initial_states,
    plan_run,
    run_case,
)
from scm.errors import ConfigurationError
from scm.integration import rollout
from scm.io import read_netcdf

# ---------------------------------------------------------------- the segmented runner


@dataclasses.dataclass(frozen=True)
class KitCase:
    """The fields of ``experiments.cases.Case`` that the runner reads."""

    name: str
    description: str
    model: object
    state0: object
    forcing: object
    dt: float
    hours: float
    save_every: int
    parameters: dict


def kit_case(kit, hours: float, dt: float, save_every: int, *, offset: float = 0.0,
             heating: float = 2.0e-3):
    """A case-like column from the test kit, heated at the lowest level at ``heating`` K/s."""
    g = kit.grid(1000.0, 8)
    model = kit.model(g, momentum=2.0, scalar=2.0, no_slip=1.0).with_slot(
        "radiation", kit.PlantedHeating(jnp.asarray(heating), jnp.asarray(jnp.inf), 0))
    forcing = kit.forcing(g, coriolis_parameter=1.0e-4, geostrophic_u=5.0)
    state0 = kit.state(g, u=5.0, thl=300.0 + offset)
    return KitCase("kit", "test column", model, state0, forcing, dt, hours, save_every, {})


@eqx.filter_jit
def whole_run(model, forcing, states, dt, n_steps: int, save_every: int):
    return jax.vmap(lambda s: rollout(model, s, forcing, 0.0, dt, n_steps, save_every))(states)


def assert_same_trajectory(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12), a, b)


def test_plan_cuts_the_run_into_equal_segments():
    plan = plan_run(hours=1.0, dt=60.0, save_every=1)
    assert plan.n_steps == 60 and plan.n_saves == 60
    assert plan.saves_per_segment * plan.n_segments == 60
    odd = plan_run(21 * 60.0 / 3600, 60.0, 1)
    assert (odd.n_saves, odd.saves_per_segment, odd.n_segments) == (21, 2, 11)
    with pytest.raises(ConfigurationError, match="whole, nonzero number of time steps"):
        plan_run(100 / 3600, 60.0, 1)  # 1.67 steps: never rounded
    with pytest.raises(ConfigurationError, match="save_every"):
        plan_run(0.5, 60.0, 3600)  # an output interval longer than the run


#: Perturbations large enough to spread the failure times of the kit columns.
SPREAD = Perturbation(theta_amplitude=10.0, wind_amplitude=0.5, depth=500.0)


def test_segments_chain_like_one_rollout_through_failures(kit):
    """Columns that fail (leave 500 K) in early segments stay held, as in a single rollout."""
    case = kit_case(kit, hours=24 * 600.0 / 3600, dt=600.0, save_every=1, offset=190.0,
                    heating=1.5e-3)
    result = run_case(case, n_columns=4, seed=3, progress=False, perturbation=SPREAD)
    reference = whole_run(case.model, case.forcing, result.state0, case.dt, 24, 1)

    failed = np.isfinite(np.asarray(result.trajectory.failed_at))
    assert failed.any() and not failed.all()
    assert np.asarray(result.trajectory.failed_at).max(initial=0, where=failed) > 600.0 * 2
    assert_same_trajectory(result.trajectory, reference)


def test_failure_after_the_end_in_a_padded_segment_is_not_reported(kit, capsys):
    """21 saves run as 11 segments of 2: a failure at step 22 lies beyond the end."""
    identical = {"n_columns": 4, "progress": False, "perturbation": None}  # shares a compile
    probe = kit_case(kit, hours=22 * 600.0 / 3600, dt=600.0, save_every=1)
    free = run_case(probe, **identical).trajectory.state.thl[0]
    crossing = float(free[21].max() + free[22].max()) / 2  # 500 K is crossed in step 22
    case = kit_case(kit, hours=21 * 600.0 / 3600, dt=600.0, save_every=1,
                    offset=500.0 - crossing)
    result = run_case(case, **identical)
    assert result.trajectory.time.shape == (4, 22)
    assert np.isinf(result.trajectory.failed_at).all()
    assert (result.trajectory.failed_level == -1).all()
    longer_case = dataclasses.replace(case, hours=22 * 600.0 / 3600)
    longer = run_case(longer_case, **identical)
    np.testing.assert_allclose(longer.trajectory.failed_at, 22 * 600.0)

    report_failures(case_dataset(longer_case, longer))
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 4
    assert "column 0 failed" in warnings[0] and "t = 13200 s" in warnings[0]
    assert f"height {float(case.model.grid.z[0]):.4g} m" in warnings[0]


def test_column_zero_is_the_unperturbed_control(kit):
    case = kit_case(kit, hours=1.0, dt=600.0, save_every=1)
    z = case.model.grid.z
    states = initial_states(case.state0, z, 4, 0, SPREAD)
    np.testing.assert_array_equal(states.thl[0], case.state0.thl)
    assert not np.array_equal(states.thl[1], states.thl[2])
    deviation = np.abs(np.asarray(states.thl[1:] - case.state0.thl))
    assert deviation.max() <= SPREAD.theta_amplitude
    assert deviation[:, 0].min() > 0 and deviation[:, z > SPREAD.depth].max() == 0
    again = initial_states(case.state0, z, 4, 0, SPREAD)
    np.testing.assert_array_equal(states.u, again.u)  # seeded
    same = initial_states(case.state0, z, 4, 0, None)
    np.testing.assert_array_equal(same.thl[2], case.state0.thl)


# ---------------------------------------------------------------- the command line

REQUIRED_UNITS = {
    "u": "m s-1", "v": "m s-1", "theta": "K", "qt": "kg kg-1", "heat_flux": "K m s-1",
    "uw": "m2 s-2", "vw": "m2 s-2", "ustar": "m s-1", "surface_heat_flux": "K m s-1",
    "obukhov_length": "m", "boundary_layer_height": "m", "failed_at": "s", "failed_height": "m",
    "time": "seconds since 2000-01-01 00:00:00", "z": "m", "z_interface": "m",
}

#: Short runs; dt = 150 s makes the output interval 4 steps (2 x 2, which ``rollout``'s
#: checkpointed loop traces once: the cheapest compilation).
SHORT = ["--hours", "0.5", "--dt", "150", "--levels", "16", "--no-progress"]


def run_cli(capsys, *argv):
    """``scm ARGV`` in this process (never switching on the compilation cache for the session)."""
    argv = [*argv, "--no-cache"] if argv[0] == "run" and "--no-cache" not in argv else list(argv)
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


#: Extra options per case, so that every option is exercised without extra compilations.
EXTRA = {
    "ekman": [],
    "neutral_ekman": [],
    "gabls1": ["--columns", "3", "--seed", "1", "--plot", "{tmp}/plots"],
    "dry_cbl": ["--turbulence", "local", "--set", "surface_heat_flux=0.1"],
    "diurnal": [],
    "bomex": ["--plot", "{tmp}/plots"],
    "dycoms_rf01": [],
    "rico": [],
}


@pytest.mark.parametrize("case", cases.CASE_NAMES)
def test_run_writes_netcdf_with_required_variables_and_units(case, tmp_path, capsys):
    out = tmp_path / f"{case}.nc"
    extra = [a.format(tmp=tmp_path) for a in EXTRA[case]]
    code, stdout, stderr = run_cli(capsys, "run", case, *SHORT, "--out", str(out), *extra)
    assert code == 0, stderr
    dataset = read_netcdf(out)
    for name, units in REQUIRED_UNITS.items():
        assert dataset[name].attrs["units"] == units, (case, name)
    assert dataset.sizes["z"] == 16 and dataset.attrs["case"] == case
    assert float(dataset["time"][-1]) == pytest.approx(1800.0)
    assert np.isnan(dataset["failed_at"].values).all(), stderr
    assert np.isfinite(dataset["theta"].values).all()
    assert "final u*" in stdout and str(out) in stdout and "wall time" in stdout
    if dataset.attrs["parameter_turbulence"] == "tke":
        assert dataset["tke"].attrs["units"] == "m2 s-2"
        assert dataset["tke_flux"].dims == ("time", "column", "z_interface")
    if case == "dry_cbl":
        assert dataset.attrs["parameter_turbulence"] == "local"
        assert dataset.attrs["parameter_surface_heat_flux"] == 0.1
    if case == "gabls1":
        assert dataset.sizes["column"] == 3 and dataset.attrs["seed"] == 1
        assert dataset.attrs["perturbation_theta_amplitude"] == 0.1
        theta = dataset["theta"].values
        assert not np.array_equal(theta[:, 0], theta[:, 1])
        assert not np.array_equal(theta[:, 1], theta[:, 2])
        plots = tmp_path / "plots"
        pngs = sorted(p.name for p in plots.iterdir())
        assert pngs == ["gabls1_profiles.png", "gabls1_sections.png", "gabls1_timeseries.png"]
        assert all((plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    else:
        assert dataset.sizes["column"] == 1
    for name, units in MOIST_UNITS.get(case, {}).items():
        assert dataset[name].attrs["units"] == units, (case, name)
    if case == "bomex":
        # half an hour: the mean profiles of the case's window (hours 3-6) are not drawn
        plots = tmp_path / "plots"
        assert sorted(p.name for p in plots.iterdir()) == [
            f"bomex_{kind}.png" for kind in ("profiles", "sections", "timeseries")]


#: Output variables of the moist cases and their units.
CLOUD_UNITS = {"ql": "kg kg-1", "cloud_fraction": "1", "liquid_water_path": "kg m-2",
               "cloud_cover": "1", "cloud_base_height": "m", "cloud_top_height": "m"}
MOIST_UNITS = {
    "bomex": {**CLOUD_UNITS, "updraft_mass_flux": "m s-1", "updraft_area": "1",
              "cloud_base_mass_flux": "m s-1"},
    "dycoms_rf01": {**CLOUD_UNITS, "inversion_height": "m"},
    "rico": {**CLOUD_UNITS, "qr": "kg kg-1", "rain_water_path": "kg m-2",
             "surface_precipitation": "kg m-2 s-1", "updraft_mass_flux": "m s-1"},
}


def test_cases_lists_every_case_with_parameters(capsys):
    code, stdout, _ = run_cli(capsys, "cases")
    assert code == 0
    for name in cases.CASE_NAMES:
        assert f"{name}:" in stdout
    for name in cases.case_parameters("gabls1"):
        assert name in stdout
    code, stdout, _ = run_cli(capsys, "cases", "dry_cbl")
    assert code == 0 and "dry_cbl:" in stdout and "gabls1:" not in stdout
    code, stdout, _ = run_cli(capsys, "cases", "bomex")
    assert code == 0 and "Siebesma et al. (2003)" in stdout and "published ranges" in stdout
    for published in cases.definition("bomex").ranges:
        assert published.name in stdout


#: Bad command lines and the message each must print (a part of the one line on stderr).
#: ``{tmp}`` is the test's directory; each run names ``{tmp}/out.nc``, which holds a previous
#: output that must stay untouched.
BAD_COMMAND_LINES = [
    (["run", "no_such_case"], "unknown case 'no_such_case'; choose one of: bomex"),
    (["run", "--set", "geostrophic_wind=8", "no_such_case"], "unknown case 'no_such_case'"),
    (["run", "gabls1", "--turbulence", "magic"], "unknown turbulence 'magic'"),
    (["run", "gabls1", "--dt", "0"], "argument --dt: must be a finite number > 0 (got '0')"),
    (["run", "gabls1", "--dt", "-5"], "argument --dt: must be a finite number > 0"),
    (["run", "gabls1", "--dt", "nan"], "argument --dt: must be a finite number > 0 (got 'nan')"),
    (["run", "gabls1", "--dt", "inf"], "argument --dt: must be a finite number > 0 (got 'inf')"),
    (["run", "gabls1", "--dt", "7200"], "dt = 7200 s is outside the allowed range [0.0, 3600.0]"),
    (["run", "gabls1", "--dt", "1e-6"], "number of steps (hours / dt = 9 h / 1e-06 s) = "
                                        "3.24e+10 is outside the allowed range"),
    (["run", "gabls1", "--hours", "0"], "argument --hours: must be a finite number > 0"),
    (["run", "gabls1", "--hours", "-1"], "argument --hours: must be a finite number > 0"),
    (["run", "gabls1", "--hours", "1e9"], "number of steps (hours / dt = 1e+09 h / 30 s)"),
    (["run", "gabls1", "--hours", "0.001"], "hours = 0.001 h (3.6 s) must be a whole, "
                                            "nonzero number of time steps dt (30 s)"),
    (["run", "gabls1", "--dt", "7", "--hours", "0.25"], "hours = 0.25 h (900 s) must be a "
                                                        "whole, nonzero number of time steps"),
    (["run", "gabls1", "--levels", "2"], "levels = 2 is outside the allowed range"),
    (["run", "gabls1", "--levels", "many"], "argument --levels: must be a whole number >= 1"),
    (["run", "gabls1", "--columns", "0"], "argument --columns: must be a whole number >= 1"),
    (["run", "gabls1", "--columns", "2.5"], "argument --columns: must be a whole number >= 1"),
    (["run", "gabls1", "--columns", "50000"], "the output would take"),
    (["run", "gabls1", "--seed", "-1"], "argument --seed: must be a whole number in"),
    (["run", "gabls1", "--set", "no_such_parameter=1"], "unknown parameter 'no_such_parameter'"),
    (["run", "gabls1", "--set", "justtext"], "argument --set: expects NAME=VALUE"),
    (["run", "gabls1", "--set", "geostrophic_wind=abc"], "with a finite number as VALUE"),
    (["run", "gabls1", "--set", "geostrophic_wind=1e9"], "geostrophic_wind = 1e+09 m s-1 is "
                                                         "outside the allowed range"),
    (["run", "gabls1", "--out", "/no/such/directory/x.nc"],
     "--out /no/such/directory/x.nc: directory /no/such/directory does not exist"),
    (["run", "gabls1", "--out", "{tmp}"], "is a directory; give a file name"),
    (["run", "gabls1", "--plot", "{tmp}/out.nc/plots"], "exists and is not a directory"),
    (["run", "gabls1", "--artifact", "{tmp}/none"], "artifact directory {tmp}/none does not "
                                                    "exist"),
    (["run", "gabls1", "--save-every", "45"], "--save-every (45 s) must be a whole, nonzero "
                                              "number of time steps dt (30 s)"),
    (["run", "gabls1", "--save-every", "7200"], "--save-every 7200 s does not divide the run"),
    (["run", "gabls1", "--variables", "theta,nosuch"], "unknown output variable(s) nosuch"),
    (["run", "gabls1", "--variables", "theta,,u"], "must be names separated by commas"),
    (["run", "gabls1", "--average", "0.7"], "--average 0.7 h (2520 s) must be a whole, "
                                            "nonzero number of output intervals (600 s)"),
    (["run", "gabls1", "--average", "2"], "the run of 9 h (32400 s) must be a whole, nonzero "
                                          "number of averaging intervals"),
    (["run", "--config", "{tmp}/none.nc"], "{tmp}/none.nc does not exist"),
    (["run", "--config", "{tmp}/garbage.nc"], "{tmp}/garbage.nc cannot be read as netCDF"),
    (["run", "--config", "{tmp}/a.nc", "--restart", "{tmp}/a.nc"], "give --config or "
                                                                   "--restart, not both"),
    (["run"], "give a CASE (see 'scm cases') or --config / --restart FILE.nc"),
    (["run", "--restart", "{tmp}/out.nc"], "{tmp}/out.nc cannot be read as netCDF"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["truth", "bomex", "--out", "{tmp}/out.nc"], "unknown case (scenario family) 'bomex'"),
    (["truth", "--hours", "nan", "--out", "{tmp}/out.nc"], "argument --hours: must be a finite"),
    (["truth", "--hours", "10", "--spinup-hours", "20", "--out", "{tmp}/out.nc"],
     "--spinup-hours 20 must be shorter than --hours 10"),
    (["bench", "stability", "--split", "train", "--out-dir", "{tmp}/b"], "unknown split "
                                                                         "'train'"),
    (["bench", "stability", "--scenarios", "0", "--out-dir", "{tmp}/b"],
     "argument --scenarios: must be a whole number >= 1 (got '0')"),
    (["bench", "stability", "--artifact", "{tmp}/none", "--out-dir", "{tmp}/b"],
     "artifact directory {tmp}/none does not exist"),
    (["bench", "stability", "--bound", "thl=400:300", "--out-dir", "{tmp}/b"],
     "--bound thl: LOW (400) must be below HIGH (300)"),
    (["plot", "{tmp}/none.nc"], "{tmp}/none.nc does not exist"),
    (["compare", "{tmp}/out.nc", "{tmp}/none.nc"], "cannot be read as netCDF"),
    (["inspect", "{tmp}/none"], "artifact directory {tmp}/none does not exist"),
    (["experiment", "turbulence", "--workers", "0", "--out-dir", "{tmp}/e"],
     "argument --workers: must be a whole number >= 1"),
]


@pytest.mark.parametrize("argv, message", BAD_COMMAND_LINES,
                         ids=[" ".join(argv) for argv, _ in BAD_COMMAND_LINES])
def test_bad_input_exits_2_with_one_line_and_leaves_the_output_alone(argv, message, tmp_path,
                                                                      capsys):
    out = tmp_path / "out.nc"
    out.write_bytes(b"a previous output")
    (tmp_path / "garbage.nc").write_bytes(b"not a netCDF file")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(out)]
    code, stdout, stderr = run_cli(capsys, *argv)
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert message.format(tmp=tmp_path) in stderr and "error" in stderr, stderr
    assert stdout == ""
    assert out.read_bytes() == b"a previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.nc", "out.nc"]


def test_argument_errors_come_before_jax_is_imported():
    """A typo, or an option outside its case's range, is answered before JAX (seconds to
    import) is loaded."""
    script = ("import sys; from experiments.cli import main; "
              "codes = [main(['run', 'gablz1']), main(['run', 'gabls1', '--dt', 'nan']), "
              "main(['truth', '--scenarios', '0', '--out', 'x.nc']), "
              "main(['run', 'gabls1', '--levels', '2']), "
              "main(['run', 'rico', '--set', 'droplet_number=1e6']), "
              "main(['run', 'bomex', '--turbulence', 'k-epsilon']), "
              "main(['run', 'gabls1', '--dt', '7', '--hours', '0.25'])]; "
              "assert codes == [2] * 7, codes; assert 'jax' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.stdout.strip() == "ok", result.stderr


def test_version(capsys):
    code, stdout, _ = run_cli(capsys, "--version")
    assert code == 0 and stdout.startswith("scm (hybrid-scm) ")


def test_deprecated_spelling_works_with_a_note(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "run", "gabls1", "--parameterization", str(tmp_path / "x"))
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 2
    assert "--parameterization is deprecated" in lines[0] and "use --artifact" in lines[0]
    assert "artifact directory" in lines[1]


def test_exact_lengths_choose_an_output_interval_that_divides_the_run():
    case = cases.build_case("gabls1", dt=45.0, hours=1.0)  # was run as 0.975 h
    assert case.n_steps * case.dt == 3600.0 and case.n_steps % case.save_every == 0
    assert case.dt * case.save_every == 450.0
    short = cases.build_case("gabls1", dt=60.0, hours=0.25)  # was run as 0.333 h
    assert short.n_steps * short.dt == 900.0 and short.dt * short.save_every == 300.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """GABLS1 for 1 h and its first half (3 columns), continued from its last save by
    ``scm run --restart``: compiled as the per-case test above."""
    directory = tmp_path_factory.mktemp("runs")
    common = [*SHORT, "--columns", "3", "--seed", "1", "--no-cache"]
    assert main(["run", "gabls1", *common, "--hours", "1", "--out", str(directory / "full.nc")
                 ]) == 0
    assert main(["run", "gabls1", *common, "--out", str(directory / "half.nc")]) == 0
    assert main(["run", "--restart", str(directory / "half.nc"), "--no-progress", "--no-cache",
                 "--out", str(directory / "rest.nc")]) == 0
    return directory


def test_restart_continues_bit_for_bit(runs):
    full, rest = read_netcdf(runs / "full.nc"), read_netcdf(runs / "rest.nc")
    np.testing.assert_array_equal(rest["time"].values, [1800.0, 2400.0, 3000.0, 3600.0])
    continuous = full.sel(time=rest["time"].values)
    for name, variable in rest.data_vars.items():
        if "time" in variable.dims:
            np.testing.assert_array_equal(variable.values, continuous[name].values, err_msg=name)
    assert rest.attrs["restarted_from"].endswith("half.nc at t = 1800 s")
    assert rest.attrs["parameter_hours"] == 1.0 and rest.sizes["column"] == 3


def test_config_repeats_a_run_from_its_own_file(runs, capsys):
    again = runs / "again.nc"
    code, _, stderr = run_cli(capsys, "run", "--config", str(runs / "half.nc"), "--no-progress",
                              "--out", str(again))
    assert code == 0, stderr
    first, second = read_netcdf(runs / "half.nc"), read_netcdf(again)
    for name in first.data_vars:
        np.testing.assert_array_equal(first[name].values, second[name].values, err_msg=name)
    for name, value in first.attrs.items():
        if name not in ("history", "date_created"):
            np.testing.assert_array_equal(second.attrs[name], value, err_msg=name)
    assert "scm run --config" in second.attrs["history"]


def test_ensemble_statistics_of_several_columns(runs):
    dataset = read_netcdf(runs / "half.nc")
    theta = dataset["theta"].values
    np.testing.assert_allclose(dataset["theta_ensemble_mean"].values, theta.mean(axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose(dataset["ustar_ensemble_spread"].values,
                               dataset["ustar"].values.std(axis=1), rtol=1e-5, atol=1e-7)


def test_compare_plot_and_run_files_pass_cfchecks(runs, tmp_path, capsys, cf_check):
    code, stdout, stderr = run_cli(capsys, "compare", str(runs / "full.nc"),
                                   str(runs / "rest.nc"), "--out-dir", str(tmp_path))
    assert code == 0, stderr
    theta = next(line for line in stdout.splitlines() if line.startswith("theta "))
    assert theta.split()[1:] == ["K", "0", "0"]  # the restart is the continuous run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare_profiles.png",
                                                          "compare_timeseries.png"]
    code, stdout, stderr = run_cli(capsys, "plot", str(runs / "full.nc"), "--window", "0.5:1",
                                   "--out-dir", str(tmp_path / "plots"))
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        f"gabls1_{kind}.png" for kind in ("profiles", "sections", "timeseries", "window")]
    for name in ("full.nc", "rest.nc", "half.nc"):
        cf_check(runs / name)


def test_average_and_variables_write_cf_time_means(runs, tmp_path, capsys, cf_check):
    out = tmp_path / "means.nc"
    code, stdout, stderr = run_cli(capsys, "run", "--config", str(runs / "full.nc"),
                                   "--average", "0.5", "--variables", "theta,ustar",
                                   "--no-progress", "--out", str(out))
    assert code == 0, stderr and "means over 0.5 h" in stdout
    means, full = read_netcdf(out), read_netcdf(runs / "full.nc")
    np.testing.assert_array_equal(means["time"].values, [900.0, 2700.0])
    np.testing.assert_array_equal(means["time_bounds"].values, [[0, 1800], [1800, 3600]])
    np.testing.assert_allclose(means["theta"].values[1],
                               full["theta"].values[4:7].mean(axis=0), rtol=1e-6)
    assert {"theta", "ustar", "theta_ensemble_mean"} <= set(means.data_vars)
    assert "u" not in means
    cf_check(out)
    code, _, stderr = run_cli(capsys, "run", "--restart", str(out), "--out",
                              str(tmp_path / "x.nc"))
    assert code == 2 and "holds time means" in stderr


def test_inspect_describes_an_artifact(capsys):
    artifact = ARTIFACTS / "residual_online_seed0"
    code, stdout, stderr = run_cli(capsys, "inspect", str(artifact))
    assert code == 0, stderr
    lines = dict(line.split(None, 1) for line in stdout.splitlines())
    assert lines["slot"] == "turbulence" and lines["levels"] == "32"
    assert lines["coupling"].startswith("residual (corrects the local closure)")
    assert "provenance.training.mode" in lines and "metrics.final_loss" in lines


#: The committed artifacts of the canonical experiment.
ARTIFACTS = Path(__file__).parent.parent / "benchmarks" / "results" / "turbulence" / "artifacts"


def test_full_disk_and_interruption_are_one_line_and_keep_the_old_file(tmp_path, capsys,
                                                                        monkeypatch):
    out = tmp_path / "ekman.nc"
    out.write_bytes(b"a previous output")

    def disk_full(self, data):
        with open(self, "wb") as handle:
            handle.write(bytes(data)[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    code, _, stderr = run_cli(capsys, "run", "ekman", *SHORT, "--out", str(out))
    assert code == 1 and stderr.strip() == (
        f"scm run: error: cannot write {out}: No space left on device ({out} is unchanged)")
    assert out.read_bytes() == b"a previous output" and len(list(tmp_path.iterdir())) == 1

    def interrupted(self, data):
        with open(self, "wb") as handle:
            handle.write(bytes(data)[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", interrupted)
    code, _, stderr = run_cli(capsys, "run", "ekman", *SHORT, "--out", str(out))
    assert code == 130 and len(stderr.strip().splitlines()) == 1 and "interrupted" in stderr
    assert out.read_bytes() == b"a previous output" and len(list(tmp_path.iterdir())) == 1


SIGINT_WHILE_WRITING = """
import signal, sys, time
from pathlib import Path
from experiments.cli import main

# Ctrl-C as in a terminal: a process started with SIGINT ignored (as by a test runner's
# worker) inherits that and Python then installs no KeyboardInterrupt handler
signal.signal(signal.SIGINT, signal.default_int_handler)

def write_then_interrupt(self, data):
    with open(self, "wb") as handle:
        handle.write(bytes(data)[:100])
    signal.raise_signal(signal.SIGINT)
    time.sleep(10)  # Ctrl-C arrives here, half-way through the file
    raise AssertionError("the interrupt did not arrive")

Path.write_bytes = write_then_interrupt
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_writing_exits_130_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "ekman.nc"
    out.write_bytes(b"a previous output")
    result = subprocess.run(
        [sys.executable, "-c", SIGINT_WHILE_WRITING, "run", "ekman", *SHORT, "--no-cache",
         "--out", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == ("scm run: interrupted; every file is complete or as it "
                                     "was before")
    assert out.read_bytes() == b"a previous output"
    assert [p.name for p in tmp_path.iterdir()] == ["ekman.nc"]


def test_experiment_workers_out_of_range_exits_2_before_any_work(capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "experiment", "turbulence", "--quick", "--workers", "0",
                              "--no-cache", "--out", str(tmp_path / "out"))
    assert code == 2 and "workers" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


class _ConfigStub:
    """Stands in for ``jax.config``: records updates instead of changing the session."""

    def __init__(self, configured=None):
        self.jax_compilation_cache_dir = configured
        self.updates = {}

    def update(self, name, value):
        self.updates[name] = value


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"SCM_CACHE_DIR": "{tmp}/mine"}, "{tmp}/mine"),
        ({"XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/xdg/hybrid-scm/jax"),
        ({"SCM_CACHE_DIR": ""}, None),
    ],
)
def test_compilation_cache_location(env, expected, tmp_path, monkeypatch):
    stub = _ConfigStub()
    monkeypatch.setattr(cli, "_jax", lambda: types.SimpleNamespace(config=stub))
    monkeypatch.delenv("SCM_CACHE_DIR", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    path = cli.enable_compilation_cache()
    if expected is None:
        assert path is None and stub.updates == {}
    else:
        expected = expected.format(tmp=tmp_path)
        assert str(path) == expected and path.is_dir()
        assert stub.updates == {"jax_compilation_cache_dir": expected}


def test_compilation_cache_keeps_a_directory_already_configured(monkeypatch, tmp_path):
    stub = _ConfigStub(configured=str(tmp_path))
    monkeypatch.setattr(cli, "_jax", lambda: types.SimpleNamespace(config=stub))
    assert cli.enable_compilation_cache() == tmp_path and stub.updates == {}
