"""netCDF I/O: round trip of values, dims and units; atomic writes; failure records."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from physics.large_scale import LargeScaleForcing
from scm import io
from scm.forcing import Forcing, ForcingSeries
from scm.grid import ColumnGrid
from scm.integration import rollout
from scm.model import Model
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State

LEVELS = 10
DT = 60.0


class ConstantMixing(AbstractParameterization):
    """Constant eddy diffusivity and surface heat flux, reporting the usual diagnostics."""

    diffusivity: jax.Array
    heat_flux: jax.Array

    def __call__(self, state, forcing, grid):
        zero = Tendency.zeros(state)
        k = jnp.full_like(grid.z_interface, self.diffusivity)
        ustar = jnp.sqrt(self.diffusivity * jnp.hypot(state.u[0], state.v[0]) / grid.z[0])
        flux = dataclasses.replace(zero.flux, thl=zero.flux.thl.at[0].set(self.heat_flux))
        diagnostics = {
            "ustar": ustar,
            "surface_heat_flux": self.heat_flux,
            "obukhov_length": -(ustar**3) / (0.4 * 9.81 / 300.0 * self.heat_flux),
            "mixing_profile": jnp.full_like(grid.z, self.diffusivity),
            "made_up_number": 2.0 * ustar,
        }
        return Tendency(zero.tendency, flux, State.from_fields({n: k for n in state.fields()}),
                        diagnostics)

    def required_tracers(self):
        return ("tke",)


def small_model(heating: float = 0.0) -> tuple[Model, ForcingSeries, State]:
    """A 1 km column with Coriolis, constant mixing, a TKE tracer and optional heating (K/s)."""
    grid = ColumnGrid.uniform(1000.0, LEVELS, 1.0e5, lambda z: 300.0 + 0.003 * z)
    forcing = ForcingSeries.constant(Forcing.create(
        LEVELS, coriolis_parameter=1.0e-4, geostrophic_u=10.0, thl_tendency=heating))
    model = Model(grid, turbulence=ConstantMixing(jnp.asarray(5.0), jnp.asarray(0.05)),
                  large_scale=LargeScaleForcing())
    z = grid.z
    state = State(jnp.full_like(z, 10.0), jnp.zeros_like(z), 300.0 + 0.003 * z,
                  jnp.zeros_like(z), {"tke": jnp.full_like(z, 0.1)})
    return model, forcing, state


@eqx.filter_jit
def two_columns(model: Model, forcing: ForcingSeries, states: State):
    """4 steps of 60 s saved every 2, vmapped; one compilation shared by every fixture."""
    return jax.vmap(lambda s: rollout(model, s, forcing, 0.0, DT, 4, 2))(states)


@pytest.fixture(scope="module")
def run():
    """Two columns; column 1 starts 1 K warmer."""
    model, forcing, state = small_model()
    states = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    states = dataclasses.replace(states, thl=states.thl.at[1].add(1.0))
    return model.grid, two_columns(model, forcing, states)


@pytest.fixture(scope="module")
def failing_run():
    """Column 1 starts at 499 K above level 5 and is heated at 0.5 K/s: fails at the first step."""
    model, forcing, state = small_model(heating=0.5)
    states = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    states = dataclasses.replace(states, thl=states.thl.at[1, 5:].set(499.0))
    return model.grid, two_columns(model, forcing, states)


def cast(tree, dtype):
    """Every floating leaf as a NumPy array of ``dtype`` (independent of JAX's x64 flag)."""

    def one(a):
        a = np.asarray(a)
        return a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a

    return jax.tree.map(one, tree)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_keeps_values_dims_and_units(run, tmp_path, dtype):
    grid, trajectory = cast(run, dtype)
    dataset = io.trajectory_to_dataset(trajectory, grid, {"case": "test", "answer": 42})
    path = io.write_netcdf(dataset, tmp_path / "run.nc")
    loaded = io.read_netcdf(path)

    xr.testing.assert_identical(loaded, dataset)
    assert dict(loaded.sizes) == {"time": 3, "column": 2, "z": LEVELS, "z_interface": LEVELS + 1,
                                  "bounds": 2}
    assert loaded["theta"].dtype == dtype
    assert loaded["theta"].dims == ("time", "column", "z")
    assert loaded["heat_flux"].dims == ("time", "column", "z_interface")
    assert loaded["ustar"].dims == ("time", "column")
    assert loaded["mixing_profile"].dims == ("time", "column", "z")
    assert loaded["failed_at"].dims == ("column",)
    np.testing.assert_array_equal(loaded["time"].values, [0.0, 2 * DT, 4 * DT])
    np.testing.assert_array_equal(loaded["theta"].values[:, 1],
                                  np.asarray(trajectory.state.thl)[1])
    np.testing.assert_array_equal(loaded["uw"].values[-1, 0], np.asarray(trajectory.flux.u)[0, -1])
    np.testing.assert_array_equal(loaded["rho"].values, np.asarray(grid.rho))
    assert loaded.attrs["case"] == "test" and loaded.attrs["answer"] == 42
    assert loaded.attrs["source"] == f"hybrid-scm {io.package_version()}"
    np.testing.assert_array_equal(loaded["z_bounds"].values[:, 0], grid.z_interface[:-1])
    np.testing.assert_array_equal(loaded["z_bounds"].values[:, 1], grid.z_interface[1:])


def test_every_variable_has_cf_units_and_names(run):
    dataset = io.trajectory_to_dataset(run[1], run[0])
    expected_units = {
        "u": "m s-1", "v": "m s-1", "theta": "K", "qt": "kg kg-1", "tke": "m2 s-2",
        "heat_flux": "K m s-1", "uw": "m2 s-2", "vw": "m2 s-2", "qt_flux": "kg kg-1 m s-1",
        "tke_flux": "m3 s-3", "ustar": "m s-1", "surface_heat_flux": "K m s-1",
        "obukhov_length": "m", "boundary_layer_height": "m", "made_up_number": "1",
        "failed_at": "s", "failed_height": "m", "time": "seconds since 2000-01-01 00:00:00",
        "z": "m", "z_interface": "m", "rho": "kg m-3", "pressure": "Pa",
    }
    for name, units in expected_units.items():
        assert dataset[name].attrs["units"] == units, name
    for name, variable in dataset.variables.items():
        if name == "z_bounds":
            continue  # CF bounds inherit the attributes of z
        assert "units" in variable.attrs and "long_name" in variable.attrs, name
    # θl is no CF standard name (air_potential_temperature would be wrong in cloud)
    assert "standard_name" not in dataset["theta"].attrs
    assert dataset["u"].attrs["standard_name"] == "eastward_wind"
    assert dataset["z"].attrs["positive"] == "up"
    assert dataset.attrs["Conventions"] == "CF-1.8"
    assert dataset["time"].attrs["units"].startswith("seconds since ")
    assert dataset["time"].attrs["calendar"] == "proleptic_gregorian"
    assert dataset["z"].attrs["bounds"] == "z_bounds"


def test_files_decode_as_cf_with_dates_and_record_the_command(run, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "command_line", lambda: "scm run gabls1 --hours 1")
    path = io.write_netcdf(io.trajectory_to_dataset(run[1], run[0]), tmp_path / "run.nc")
    decoded = xr.open_dataset(path, engine="h5netcdf", decode_times=True)
    assert np.issubdtype(decoded["time"].dtype, np.datetime64)
    assert (decoded["time"].values[1] - decoded["time"].values[0]) == np.timedelta64(120, "s")
    assert decoded.attrs["history"].endswith(": scm run gabls1 --hours 1")
    decoded.close()
    with xr.open_dataset(path, engine="h5netcdf", decode_cf=False) as raw:
        for name in ("time", "z", "z_interface", "column", "rho", "z_bounds"):
            assert "_FillValue" not in raw[name].attrs, name
        assert "_FillValue" in raw["theta"].attrs


def test_failed_at_is_nan_for_healthy_columns_and_locates_failures(failing_run):
    grid, trajectory = failing_run
    assert np.isinf(trajectory.failed_at[0]) and np.isfinite(trajectory.failed_at[1])
    dataset = io.trajectory_to_dataset(trajectory, grid)

    assert np.isnan(dataset["failed_at"].values[0])
    assert np.isnan(dataset["failed_height"].values[0])
    assert dataset["failed_level"].values[0] == -1
    assert dataset["failed_at"].values[1] == pytest.approx(DT)
    assert dataset["failed_level"].values[1] == 5
    assert dataset["failed_height"].values[1] == pytest.approx(float(grid.z[5]))
    assert "NaN where the column never failed" in dataset["failed_at"].attrs["comment"]
    # after failing, the column is held at its last valid state (the initial one here)
    np.testing.assert_array_equal(dataset["theta"].values[2, 1], dataset["theta"].values[0, 1])


def test_dataset_to_trajectory_and_grid_invert_the_conversion(failing_run, tmp_path):
    grid, trajectory = failing_run
    path = io.write_netcdf(io.trajectory_to_dataset(trajectory, grid), tmp_path / "f.nc")
    loaded = io.read_netcdf(path)
    back = io.dataset_to_trajectory(loaded)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 back, trajectory)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 io.grid_from_dataset(loaded), grid)


def test_single_column_trajectory_gets_a_column_axis(run):
    grid, trajectory = run
    single = jax.tree.map(lambda a: a[1], trajectory)
    dataset = io.trajectory_to_dataset(single, grid)
    assert dataset.sizes["column"] == 1
    assert dataset["theta"].dims == ("time", "column", "z")
    np.testing.assert_array_equal(dataset["theta"].values[:, 0], trajectory.state.thl[1])


def test_failed_write_leaves_existing_file_intact(run, tmp_path, monkeypatch):
    dataset = io.trajectory_to_dataset(run[1], run[0], {"version": "first"})
    path = io.write_netcdf(dataset, tmp_path / "run.nc")
    before = path.read_bytes()

    def disk_full_midway(self, data):
        with open(self, "wb") as handle:
            handle.write(bytes(data)[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", disk_full_midway)
    with pytest.raises(io.OutputError) as raised:
        io.write_netcdf(dataset.assign_attrs(version="second"), path)
    assert str(raised.value) == (f"cannot write {path}: No space left on device ({path} is "
                                 "unchanged)")

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.nc"]
    monkeypatch.undo()
    assert io.read_netcdf(path).attrs["version"] == "first"


def test_write_replaces_an_existing_file(run, tmp_path):
    path = tmp_path / "run.nc"
    io.write_netcdf(io.trajectory_to_dataset(run[1], run[0], {"version": "first"}), path)
    io.write_netcdf(io.trajectory_to_dataset(run[1], run[0], {"version": "second"}), path)
    assert io.read_netcdf(path).attrs["version"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.nc"]


def test_attributes_are_flattened_to_netcdf_types():
    attrs = io.flatten_attributes({
        "parameter": {"ug": 8.0, "levels": 64, "moist": False, "name": "x"},
        "ratios": (1.0, 2.0), "names": ["a", "b"], "nothing": None,
    })
    assert attrs["parameter_ug"] == 8.0 and attrs["parameter_levels"] == 64
    assert attrs["parameter_moist"] == "false" and attrs["parameter_name"] == "x"
    np.testing.assert_array_equal(attrs["ratios"], [1.0, 2.0])
    assert attrs["names"] == "a, b" and attrs["nothing"] == "none"


def test_read_netcdf_names_a_missing_or_truncated_file(run, tmp_path):
    with pytest.raises(io.ConfigurationError, match=f"^{tmp_path}/none.nc does not exist$"):
        io.read_netcdf(tmp_path / "none.nc")
    path = io.write_netcdf(io.trajectory_to_dataset(run[1], run[0]), tmp_path / "run.nc")
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(io.ConfigurationError, match="truncated.nc cannot be read as netCDF"):
        io.read_netcdf(truncated)


def test_select_variables_keeps_the_failure_record_and_names_unknown_ones(run):
    dataset = io.trajectory_to_dataset(run[1], run[0])
    kept = io.select_variables(dataset, ["theta", "ustar"])
    assert set(kept.data_vars) == {"theta", "ustar", "failed_at", "failed_height",
                                   "failed_level", "z_bounds"}
    assert "rho_interface" not in kept.coords  # nothing on interfaces is left
    with pytest.raises(io.ConfigurationError, match="unknown output variable.*thetta"):
        io.select_variables(dataset, ["thetta"])


def test_time_average_means_over_whole_intervals_with_bounds(run):
    dataset = io.trajectory_to_dataset(run[1], run[0])  # saves at 0, 120, 240 s
    means = io.time_average(dataset, 240.0)
    np.testing.assert_array_equal(means["time"].values, [120.0])
    np.testing.assert_array_equal(means["time_bounds"].values, [[0.0, 240.0]])
    np.testing.assert_allclose(means["theta"].values[0], dataset["theta"].values[1:].mean(0))
    assert means["theta"].attrs["cell_methods"] == "time: mean"
    assert means["time"].attrs["bounds"] == "time_bounds"
    with pytest.raises(io.ConfigurationError, match="whole, nonzero number of output intervals"):
        io.time_average(dataset, 180.0)


def test_ensemble_statistics_over_columns(run):
    dataset = io.ensemble_statistics(io.trajectory_to_dataset(run[1], run[0]))
    theta = dataset["theta"].values
    np.testing.assert_allclose(dataset["theta_ensemble_mean"].values, theta.mean(axis=1))
    np.testing.assert_allclose(dataset["theta_ensemble_spread"].values, theta.std(axis=1))
    assert dataset["theta_ensemble_spread"].attrs["units"] == "K"
    assert "scm_role" not in dataset["theta_ensemble_mean"].attrs
