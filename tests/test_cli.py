"""The ``scm`` command line end to end, and the segmented batched runner behind it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import types

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
    assert plan_run(0.5, 60.0, 3600).save_every == 30  # interval longer than the run
    odd = plan_run(21 * 60.0 / 3600, 60.0, 1)
    assert (odd.n_saves, odd.saves_per_segment, odd.n_segments) == (21, 2, 11)
    assert plan_run(100 / 3600, 60.0, 1).n_steps == 2  # rounded to whole steps


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
    "time": "s", "z": "m", "z_interface": "m",
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


def _out_of_range_assignment() -> tuple[str, str]:
    name, (default, low, high, _, _) = next(iter(cases.case_parameters("gabls1").items()))
    too_high = high + abs(high) + 1 if isinstance(high, int | float) else "x"
    return f"{name}={too_high}", name


@pytest.mark.parametrize(
    "argv, field",
    [
        (["run", "no_such_case"], "no_such_case"),
        (["run", "gabls1", "--turbulence", "magic"], "magic"),
        (["run", "gabls1", "--dt", "0"], "dt"),
        (["run", "gabls1", "--dt", "-5"], "dt"),
        (["run", "gabls1", "--hours", "0"], "hours"),
        (["run", "gabls1", "--hours", "-1"], "hours"),
        (["run", "gabls1", "--levels", "2"], "levels"),
        (["run", "gabls1", "--columns", "0"], "columns"),
        (["run", "gabls1", "--set", "no_such_parameter=1"], "no_such_parameter"),
        (["run", "gabls1", "--set", "justtext"], "NAME=VALUE"),
        (["run", "gabls1", "--out", "/no/such/directory/x.nc"], "/no/such/directory"),
        (["run", "gabls1", "--levels", "many"], "--levels"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(argv, field, capsys):
    code, stdout, stderr = run_cli(capsys, *argv)
    assert code == 2
    assert field in stderr and "error" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stdout == ""


def test_experiment_workers_out_of_range_exits_2_before_any_work(capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "experiment", "turbulence", "--quick", "--workers", "0",
                              "--no-cache", "--out", str(tmp_path / "out"))
    assert code == 2 and "workers" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_out_of_range_parameter_exits_2_naming_it(capsys):
    assignment, name = _out_of_range_assignment()
    code, _, stderr = run_cli(capsys, "run", "gabls1", "--set", assignment)
    assert code == 2 and name in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("scm") is None, reason="console script not installed")
def test_console_script_reports_errors_with_exit_status_2():
    result = subprocess.run(["scm", "run", "gabls1", "--hours", "-1"], capture_output=True,
                            text=True, timeout=120, check=False,
                            env={**os.environ, "SCM_CACHE_DIR": ""})
    assert result.returncode == 2 and "hours" in result.stderr



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
    monkeypatch.setattr(cli, "jax", types.SimpleNamespace(config=stub))
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
    monkeypatch.setattr(cli, "jax", types.SimpleNamespace(config=stub))
    assert cli.enable_compilation_cache() == tmp_path and stub.updates == {}
