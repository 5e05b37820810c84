"""netCDF input and output: a ``Trajectory`` as a CF-annotated ``xarray.Dataset``.

This is the only module of the core that touches xarray. Layout of a dataset (CF-1.8, the
newest version ``cfchecks`` knows; every file this package writes passes it with no error or
warning, checked by the tests' ``cf_check`` fixture):

- coordinates ``time`` (``seconds since`` the case's start, ``TIME_ORIGIN``, with a
  calendar), ``column`` (index), ``z`` (layer centres, m, with ``z_bounds``) and
  ``z_interface`` (m), plus the reference state of the grid (``rho``, ``pressure``, ``exner``
  at centres and their ``*_interface`` twins), fixed in time;
- prognostic fields ``(time, column, z)``: ``u``, ``v``, ``theta`` (the model's ``thl``),
  ``qt`` and every tracer by its own name (``tke``);
- total upward fluxes ``(time, column, z_interface)``: ``uw``, ``vw``, ``heat_flux``,
  ``qt_flux`` and ``<tracer>_flux``;
- diagnostics ``(time, column)`` (or with a ``z`` / ``z_interface`` axis for profiles):
  ``ustar``, ``surface_heat_flux``, ``obukhov_length``, ``boundary_layer_height``, ...;
- failure record ``(column,)``: ``failed_at`` (s, NaN where the column never failed),
  ``failed_height`` (m, NaN likewise) and ``failed_level`` (−1 likewise).

Every variable has CF ``units`` and ``long_name`` (``standard_name`` only where CF has the
right one: none rather than a wrong one) and an ``scm_role`` / ``scm_field`` pair naming the
``Trajectory`` entry it came from, so that ``dataset_to_trajectory`` inverts
``trajectory_to_dataset`` exactly. Files are read with ``read_netcdf`` (times as seconds);
any CF reader decodes ``time`` as dates.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from scm.errors import ConfigurationError, OutputError, whole_count
from scm.grid import ColumnGrid
from scm.integration import Trajectory
from scm.provenance import PACKAGE, command_line, package_version
from scm.state import State, as_float, field_metadata

#: The newest CF version that ``cfchecks`` (the CF conventions checker) knows.
CONVENTIONS = "CF-1.8"

#: Where ``time`` counts from: the idealized cases have no calendar date, so every case
#: starts at this nominal instant (midnight, so that the diurnal case's time of day is the
#: time of day of the dates).
TIME_ORIGIN = "2000-01-01 00:00:00"
CALENDAR = "proleptic_gregorian"

#: Output names of prognostic fields that are renamed; the others keep their own name.
STATE_NAMES: dict[str, str] = {"thl": "theta"}

#: Output names of the interface fluxes of the prognostic fields; tracers get ``<name>_flux``.
FLUX_NAMES: dict[str, str] = {"u": "uw", "v": "vw", "thl": "heat_flux", "qt": "qt_flux"}

#: CF metadata of the flux of each prognostic field (upward, kinematic).
FLUX_METADATA: dict[str, dict[str, str]] = {
    "u": {"units": "m2 s-2", "long_name": "upward kinematic flux of eastward momentum u'w'"},
    "v": {"units": "m2 s-2", "long_name": "upward kinematic flux of northward momentum v'w'"},
    "thl": {"units": "K m s-1", "long_name": "upward kinematic heat flux w'theta'"},
    "qt": {"units": "kg kg-1 m s-1", "long_name": "upward kinematic flux of total water w'qt'"},
    "tke": {"units": "m3 s-3", "long_name": "upward flux of turbulence kinetic energy"},
}

#: CF metadata of the diagnostics that schemes report; unknown names get units "1".
DIAGNOSTIC_METADATA: dict[str, dict[str, str]] = {
    "ustar": {"units": "m s-1", "long_name": "friction velocity",
              "standard_name": "magnitude_of_surface_friction_velocity_in_air"},
    "surface_heat_flux": {"units": "K m s-1", "long_name": "surface upward kinematic heat flux"},
    "surface_moisture_flux": {
        "units": "kg kg-1 m s-1",
        "long_name": "surface upward kinematic moisture flux",
    },
    "obukhov_length": {"units": "m", "long_name": "Obukhov length",
                       "standard_name": "atmosphere_obukhov_length"},
    "boundary_layer_height": {
        "units": "m",
        "long_name": "boundary-layer height (surface stress falls to 5 %, divided by 0.95)",
        "standard_name": "atmosphere_boundary_layer_thickness",
    },
    "convective_velocity": {"units": "m s-1", "long_name": "convective velocity scale w*"},
    "updraft_top_height": {"units": "m", "long_name": "height of the top of the updraft"},
    "surface_temperature": {
        "units": "K",
        "long_name": "surface temperature",
        "standard_name": "surface_temperature",
    },
    "mixing_length": {"units": "m", "long_name": "turbulent mixing length"},
    "ql": {"units": "kg kg-1", "long_name": "cloud liquid water (grid mean)",
           "standard_name": "mass_fraction_of_cloud_liquid_water_in_air"},
    "cloud_fraction": {"units": "1", "long_name": "cloud fraction of the layer",
                       "standard_name": "cloud_area_fraction_in_atmosphere_layer"},
    "liquid_water_path": {"units": "kg m-2", "long_name": "liquid water path",
                          "standard_name": "atmosphere_mass_content_of_cloud_liquid_water"},
    "rain_water_path": {"units": "kg m-2", "long_name": "rain water path"},
    "cloud_cover": {"units": "1", "long_name": "cloud cover (maximum overlap)",
                    "standard_name": "cloud_area_fraction"},
    "cloud_base_height": {"units": "m", "long_name": "height of the cloud base above the "
                          "surface (NaN without cloud)"},
    "cloud_top_height": {"units": "m", "long_name": "height of the cloud top above the "
                         "surface (NaN without cloud)"},
    "inversion_height": {"units": "m", "long_name": "inversion height"},
    "surface_precipitation": {"units": "kg m-2 s-1", "long_name": "surface precipitation rate",
                              "standard_name": "precipitation_flux"},
    "updraft_area": {"units": "1", "long_name": "area fraction of the updraft"},
    "updraft_mass_flux": {"units": "m s-1",
                          "long_name": "updraft mass flux over density (area times velocity)"},
    "cloud_base_mass_flux": {"units": "m s-1", "long_name": "updraft mass flux over density at "
                             "the updraft's condensation level (0 without cloud)"},
    "momentum_diffusivity": {"units": "m2 s-1", "long_name": "eddy diffusivity of momentum"},
    "heat_diffusivity": {"units": "m2 s-1", "long_name": "eddy diffusivity of heat"},
}

#: CF metadata of the grid's reference state (fixed in time).
REFERENCE_METADATA: dict[str, dict[str, str]] = {
    "rho": {"units": "kg m-3", "long_name": "reference air density", "standard_name":
            "air_density"},
    "pressure": {"units": "Pa", "long_name": "reference air pressure", "standard_name":
                 "air_pressure"},
    "exner": {"units": "1", "long_name": "reference Exner function (p/p0)^(R/cp)"},
}

NEVER_FAILED = "NaN where the column never failed"

#: CF metadata of the time and height coordinates.
COORDINATE_METADATA: dict[str, dict[str, str]] = {
    "time": {"units": f"seconds since {TIME_ORIGIN}", "calendar": CALENDAR,
             "long_name": "time since the start of the case", "standard_name": "time",
             "axis": "T", "comment": f"the initial state is at {TIME_ORIGIN} (the cases have no "
             "calendar date of their own)"},
    "z": {"units": "m", "long_name": "height of layer centres above the surface",
          "standard_name": "height", "positive": "up", "axis": "Z", "bounds": "z_bounds"},
    "z_interface": {"units": "m", "long_name": "height of layer interfaces above the surface "
                    "(the bounds of the layers, z_bounds)", "standard_name": "height",
                    "positive": "up", "axis": "Z"},
}

#: CF metadata of the failure record (per column).
FAILURE_METADATA: dict[str, dict[str, str]] = {
    "failed_at": {"units": "s", "long_name": "time at which the column first failed "
                  "(non-finite or out of physical bounds); afterwards it is held at its last "
                  "valid state", "comment": NEVER_FAILED},
    "failed_height": {"units": "m", "long_name": "height of the lowest offending level at "
                      "failure", "comment": NEVER_FAILED},
    "failed_level": {"units": "1", "long_name": "index of the lowest offending level at "
                     "failure (0 at the surface)", "comment": "-1 where the column never failed"},
}


def diagnostic_metadata(name: str) -> dict[str, str]:
    """CF metadata of a diagnostic; names without an entry get units "1"."""
    return DIAGNOSTIC_METADATA.get(name, {"units": "1", "long_name": name.replace("_", " ")})


def flux_name(field: str) -> str:
    """Output name of the interface flux of a prognostic field."""
    return FLUX_NAMES.get(field, f"{field}_flux")


def flux_metadata(field: str) -> dict[str, str]:
    """CF metadata of the upward flux of a field: its units times m s-1."""
    if field in FLUX_METADATA:
        return FLUX_METADATA[field]
    units = field_metadata(field)["units"]
    return {
        "units": "m s-1" if units == "1" else f"{units} m s-1",
        "long_name": f"upward kinematic flux of {field_metadata(field)['long_name']}",
    }


def trajectory_to_dataset(
    trajectory: Trajectory, grid: ColumnGrid, attrs: Mapping | None = None
) -> xr.Dataset:
    """The trajectory as a CF-annotated dataset with dims ``(time, column, ...)``.

    ``trajectory`` normally has a leading column axis (from ``jax.vmap``); one without it is
    treated as a single column. ``attrs`` become global attributes (nested mappings are
    flattened to ``outer_inner``; booleans and ``None`` become strings), next to the package
    version, the CF conventions and a creation timestamp.
    """
    if np.ndim(trajectory.failed_at) == 0:
        trajectory = jax.tree.map(lambda a: jnp.asarray(a)[None], trajectory)
    n_levels = grid.n_levels

    def profile_dims(shape: tuple[int, ...], name: str) -> tuple[str, ...]:
        """Dims of the trailing axes of a (column, time, ...) array."""
        dims = []
        for i, size in enumerate(shape[2:]):
            if size == n_levels:
                dims.append("z")
            elif size == n_levels + 1:
                dims.append("z_interface")
            else:
                dims.append(f"{name}_dim{i}")
        return ("time", "column", *dims)

    def time_first(array) -> np.ndarray:
        return np.swapaxes(np.asarray(array), 0, 1)

    variables: dict[str, xr.Variable] = {}

    def add(name: str, dims, data, metadata: Mapping, role: str, field: str) -> None:
        if name in variables:
            raise ValueError(f"two trajectory entries both map to the output variable {name!r}")
        attrs = {**metadata, "scm_role": role, "scm_field": field}
        variables[name] = xr.Variable(dims, data, attrs)

    for field, values in trajectory.state.fields().items():
        add(STATE_NAMES.get(field, field), ("time", "column", "z"), time_first(values),
            field_metadata(field), "state", field)
    for field, values in trajectory.flux.fields().items():
        add(flux_name(field), ("time", "column", "z_interface"), time_first(values),
            flux_metadata(field), "flux", field)
    for name, values in trajectory.diagnostics.items():
        values = np.asarray(values)
        add(name, profile_dims(values.shape, name), time_first(values),
            diagnostic_metadata(name), "diagnostic", name)

    variables["z_bounds"] = layer_bounds(grid.z_interface)
    failed_at = np.asarray(trajectory.failed_at)
    failed_level = np.asarray(trajectory.failed_level).astype(np.int32)
    failed = np.isfinite(failed_at) & (failed_level >= 0)
    z = np.asarray(grid.z)
    failed_height = np.where(failed, z[np.clip(failed_level, 0, n_levels - 1)], np.nan)
    add("failed_at", ("column",), np.where(failed, failed_at, np.nan).astype(failed_at.dtype),
        FAILURE_METADATA["failed_at"], "failure", "failed_at")
    add("failed_height", ("column",), failed_height.astype(z.dtype),
        FAILURE_METADATA["failed_height"], "failure", "failed_level")
    add("failed_level", ("column",), np.where(failed, failed_level, -1).astype(np.int32),
        FAILURE_METADATA["failed_level"], "failure", "failed_level")

    time = np.asarray(trajectory.time)[0]
    coords = {
        "time": xr.Variable("time", time, COORDINATE_METADATA["time"]),
        "column": xr.Variable("column", np.arange(failed_at.shape[0], dtype=np.int32), {
            "units": "1", "long_name": "column index (column 0 is the unperturbed control "
            "when perturbed columns are run)"}),
        **height_coordinates(grid),
    }
    for name, metadata in REFERENCE_METADATA.items():
        coords[name] = xr.Variable("z", np.asarray(getattr(grid, name)), metadata)
        coords[f"{name}_interface"] = xr.Variable(
            "z_interface", np.asarray(getattr(grid, f"{name}_interface")),
            {**metadata, "long_name": f"{metadata['long_name']} at interfaces"})

    return xr.Dataset(variables, coords=coords, attrs=global_attributes(attrs))


def height_coordinates(grid: ColumnGrid) -> dict[str, xr.Variable]:
    """The coordinates ``z`` (layer centres) and ``z_interface`` of ``grid`` (m, index 0 at
    the surface); ``z_bounds`` (``layer_bounds``) is the data variable that ``z`` names as
    its bounds."""
    return {
        "z": xr.Variable("z", np.asarray(grid.z), COORDINATE_METADATA["z"]),
        "z_interface": xr.Variable("z_interface", np.asarray(grid.z_interface),
                                   COORDINATE_METADATA["z_interface"]),
    }


def layer_bounds(z_interface) -> xr.Variable:
    """``z_bounds`` ``(z, bounds)``: the CF bounds of the layers, their lower and upper
    interfaces (no attributes of its own: CF bounds inherit those of ``z``)."""
    interfaces = np.asarray(z_interface)
    return xr.Variable(("z", "bounds"), np.stack([interfaces[:-1], interfaces[1:]], axis=-1))


def global_attributes(attrs: Mapping | None = None) -> dict:
    """Global attributes of a file this package writes: CF conventions, the package and the
    command line that wrote it (``history``) and when, then ``attrs`` flattened by
    ``flatten_attributes`` (a ``references`` entry names the papers a case follows)."""
    version = package_version()
    created = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    return {
        "Conventions": CONVENTIONS,
        "source": f"{PACKAGE} {version}",
        "history": f"{created}: {command_line()}",
        "date_created": created,
        **flatten_attributes(attrs or {}),
    }


def dataset_to_trajectory(dataset: xr.Dataset) -> Trajectory:
    """Inverse of ``trajectory_to_dataset``: a ``Trajectory`` with a leading column axis.

    Arrays keep the dataset's dtype (but follow JAX's float precision setting); failure
    records return to the ``Trajectory`` convention (``inf`` and −1 where never failed).
    """

    def column_first(name: str) -> jax.Array:
        return jnp.asarray(np.swapaxes(dataset[name].values, 0, 1))

    def fields(role: str) -> dict[str, jax.Array]:
        return {var.attrs["scm_field"]: column_first(name)
                for name, var in dataset.data_vars.items() if var.attrs.get("scm_role") == role}

    time = np.broadcast_to(dataset["time"].values, (dataset.sizes["column"], dataset.sizes["time"]))
    failed_at = dataset["failed_at"].values
    return Trajectory(
        time=jnp.asarray(time),
        state=State.from_fields(fields("state")),
        flux=State.from_fields(fields("flux")),
        diagnostics=fields("diagnostic"),
        failed_at=jnp.asarray(np.where(np.isnan(failed_at), np.inf, failed_at)),
        failed_level=jnp.asarray(dataset["failed_level"].values.astype(np.int32)),
    )


def grid_from_dataset(dataset: xr.Dataset) -> ColumnGrid:
    """The ``ColumnGrid`` (heights and reference state) a dataset was written on."""
    def array(name: str) -> jax.Array:
        return as_float(dataset[name].values)

    return ColumnGrid(
        z_interface=array("z_interface"),
        **{name: array(name) for name in REFERENCE_METADATA},
        **{f"{name}_interface": array(f"{name}_interface") for name in REFERENCE_METADATA},
    )


#: Variables every run file keeps, whatever ``select_variables`` is asked for.
FAILURE_RECORD = tuple(FAILURE_METADATA)


def select_variables(dataset: xr.Dataset, names) -> xr.Dataset:
    """Only the data variables ``names`` (output names: ``theta``, ``ustar``, ...) and the
    failure record; ``ConfigurationError`` naming any unknown name and those available."""
    available = [n for n in dataset.data_vars if n not in FAILURE_RECORD and n != "z_bounds"]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigurationError(f"unknown output variable(s) {', '.join(unknown)}; this run "
                                 f"writes: {', '.join(sorted(available))}")
    kept = dataset.drop_vars([n for n in available if n not in names])
    # the reference state on interfaces goes with the last interface variable (CF: an
    # auxiliary coordinate belongs to a data variable)
    used = {dim for variable in kept.data_vars.values() for dim in variable.dims}
    return kept.drop_vars([name for name, coordinate in kept.coords.items()
                           if name not in kept.dims and not set(coordinate.dims) <= used])


def time_average(dataset: xr.Dataset, seconds: float) -> xr.Dataset:
    """Means over consecutive intervals of ``seconds``: every variable with a ``time`` axis
    becomes the mean of its saves in (start, end] of each interval (the initial state, at
    the start of the first, is left out), ``time`` the interval's middle with CF bounds
    ``time_bounds`` and ``cell_methods = "time: mean"``. The interval must be a whole number
    of output intervals and divide the run; ``ConfigurationError`` otherwise."""
    times = np.asarray(dataset["time"].values, dtype=float)
    if times.size < 2:
        raise ConfigurationError("time means need a run with at least one output interval")
    interval = times[1] - times[0]
    per_mean = whole_count(f"--average {seconds / 3600.0:g} h", seconds, "output intervals",
                           interval)
    n_means = whole_count(f"the run of {(times[-1] - times[0]) / 3600.0:g} h",
                          times[-1] - times[0], f"averaging intervals of {seconds / 3600.0:g} h",
                          seconds)
    saves = dataset.isel(time=slice(1, None))
    means = saves.coarsen(time=per_mean).mean(keep_attrs=True)
    starts = times[0] + seconds * np.arange(n_means)
    bounds = np.stack([starts, starts + seconds], axis=-1).astype(times.dtype)
    time = xr.Variable("time", bounds.mean(axis=-1), {**dataset["time"].attrs,
                                                       "bounds": "time_bounds"})
    means = means.assign_coords(time=time)
    for variable in means.data_vars.values():
        if "time" in variable.dims:
            variable.attrs["cell_methods"] = "time: mean"
    means["time_bounds"] = xr.Variable(("time", "bounds"), bounds)
    means.attrs = {**dataset.attrs, "time_average_s": float(seconds)}
    return means


def ensemble_statistics(dataset: xr.Dataset) -> xr.Dataset:
    """``dataset`` with the mean and the spread (standard deviation) over its columns of every
    variable that has a ``column`` and a ``time`` axis: ``<name>_ensemble_mean`` and
    ``<name>_ensemble_spread``. Failed columns are held at their last valid state, so they
    count with those values."""
    out = dataset.copy()
    for name, variable in dataset.data_vars.items():
        if "column" not in variable.dims or "time" not in variable.dims:
            continue
        units = {"units": variable.attrs.get("units", "1")}
        long_name = variable.attrs.get("long_name", name)
        # keep_attrs=False: the statistics are no Trajectory entry (no scm_role)
        out[f"{name}_ensemble_mean"] = variable.mean("column", keep_attrs=False).assign_attrs(
            units, long_name=f"mean over the columns of: {long_name}")
        out[f"{name}_ensemble_spread"] = variable.std("column", keep_attrs=False).assign_attrs(
            units, long_name=f"standard deviation over the columns of: {long_name}")
    return out


def flatten_attributes(attrs: Mapping, prefix: str = "") -> dict:
    """Global attributes that netCDF can store: nested mappings flattened to ``outer_inner``,
    booleans and ``None`` as strings, sequences of numbers as arrays, other objects as text."""
    out = {}
    for key, value in attrs.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_attributes(value, f"{name}_"))
        elif isinstance(value, bool | np.bool_):
            out[name] = "true" if value else "false"
        elif value is None:
            out[name] = "none"
        elif isinstance(value, str | int | float | np.integer | np.floating):
            out[name] = value
        elif isinstance(value, list | tuple | np.ndarray) and all(
            isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
            for v in np.asarray(value, dtype=object).ravel()
        ):
            out[name] = np.asarray(value)
        elif isinstance(value, list | tuple):
            out[name] = ", ".join(str(v) for v in value)
        else:
            out[name] = str(value)
    return out


def write_netcdf(dataset: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` to ``path`` (netCDF4 via h5netcdf) atomically.

    The file is made in memory first and written with plain file I/O to a temporary file in
    the same directory, which then replaces ``path`` in one ``os.replace``: an existing file
    is never left half-written, a failed write (a full disk, say) raises ``OutputError``
    naming the file and leaves neither a partial file nor the temporary one behind.
    Coordinates and bounds are written without a fill value (CF: they have no missing values),
    and text as character arrays (CF 1.8 knows no variable-length strings).
    """
    encoding = {name: {"_FillValue": None} for name in dataset.coords}
    encoding |= {name: {"_FillValue": None} for name, variable in dataset.data_vars.items()
                 if "bounds" in variable.dims}
    encoding |= {name: {"dtype": "S1"} for name, variable in dataset.variables.items()
                 if variable.dtype.kind in "US"}
    data = dataset.to_netcdf(engine="h5netcdf", encoding=encoding)
    return write_atomic(path, lambda temporary: temporary.write_bytes(data))


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary)`` on a temporary path in the directory of ``path``, then move
    the result over ``path`` in one ``os.replace``: an existing file is never left
    half-written, and a failed or interrupted write leaves neither a partial file nor the
    temporary one. An ``OSError`` (a full disk, a directory that is not writable) becomes an
    ``OutputError`` naming ``path``."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        state = "is unchanged" if path.exists() else "was not written"
        raise OutputError(f"cannot write {path}: {error.strerror or error} ({path} {state})"
                          ) from error
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_netcdf(path: str | os.PathLike) -> xr.Dataset:
    """Read a dataset fully into memory (the file is closed on return), times as seconds
    since the start of the case (not decoded to dates). A missing or unreadable file is a
    ``ConfigurationError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"{path} does not exist" if not path.exists()
                                 else f"{path} is not a file")
    try:
        return xr.load_dataset(path, engine="h5netcdf", decode_times=False)
    except Exception as error:  # h5py and xarray raise OSError, ValueError or their own
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigurationError(f"{path} cannot be read as netCDF ({reason})") from None
