"""Figures of a run or truth dataset (as written by ``scm.io``), drawn with the Agg backend.

``plot_trajectory`` writes up to four PNGs: time–height sections of column 0 (wind speed, θl,
heat flux, TKE, and for moist runs cloud liquid, cloud fraction and rain) with the
boundary-layer height drawn over them, final profiles of u, v and θl (every column; column 0
in bold), time series of the surface and cloud diagnostics present, and mean profiles over a
window (the case's averaging window unless another is asked for; else the last hour) beside
the initial ones. A case's published ranges (``experiments.cases``) are marked: as a shaded
band over the window on the time series they are taken from, and the heights among them
(cloud base and top, inversion) as bands on the profiles. Every figure draws only the
variables the file has (``scm run --variables``). ``compare_datasets`` and
``plot_comparison`` set two runs side by side (``scm compare``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from experiments import cases
from scm.errors import ConfigurationError
from scm.figures import new_figure, save_figure

#: Short axis labels; the units always come from the dataset's attributes.
SHORT_LABELS: dict[str, str] = {
    "wind_speed": "wind speed",
    "u": "u",
    "v": "v",
    "theta": "θl",
    "qt": "qt",
    "heat_flux": "w'θl'",
    "tke": "TKE",
    "ql": "cloud liquid ql",
    "cloud_fraction": "cloud fraction",
    "qr": "rain qr",
    "updraft_mass_flux": "updraft mass flux",
    "ustar": "u*",
    "surface_heat_flux": "surface w'θl'",
    "boundary_layer_height": "boundary-layer height",
    "liquid_water_path": "liquid water path",
    "rain_water_path": "rain water path",
    "cloud_cover": "cloud cover",
    "cloud_base_height": "cloud base",
    "cloud_top_height": "cloud top",
    "inversion_height": "inversion",
    "surface_precipitation": "surface precipitation",
    "cloud_base_mass_flux": "cloud-base mass flux",
}

#: Time series drawn when present, in this order.
SERIES = ("ustar", "surface_heat_flux", "boundary_layer_height", "inversion_height",
          "liquid_water_path", "rain_water_path", "cloud_cover", "cloud_base_height",
          "cloud_top_height", "cloud_base_mass_flux", "surface_precipitation")

#: Profiles drawn over a case's averaging window, when present.
WINDOW_PROFILES = ("theta", "qt", "ql", "cloud_fraction", "updraft_mass_flux", "qr", "tke")


def label(dataset: xr.Dataset, name: str, units: str | None = None) -> str:
    """Axis label: short name and units, e.g. ``θl (K)``."""
    units = dataset[name].attrs.get("units", "1") if units is None else units
    return f"{SHORT_LABELS.get(name, name)} ({units})"


def _hours(dataset: xr.Dataset) -> np.ndarray:
    return np.asarray(dataset["time"].values, dtype=float) / 3600.0


def _definition(dataset: xr.Dataset):
    """The case definition of a run's dataset, or None (a truth file, an unknown case)."""
    name = dataset.attrs.get("case")
    return cases.definition(name) if name in cases.CASE_NAMES else None


def plot_sections(dataset: xr.Dataset, path: Path, column: int = 0) -> Path | None:
    """Time–height sections of one column: wind speed, θl, heat flux, TKE, cloud liquid,
    cloud fraction and rain (those present), the boundary-layer height drawn over each."""
    ds = dataset.isel(column=column)
    panels = []
    if "u" in ds and "v" in ds:
        speed = np.hypot(ds["u"].values.astype(float), ds["v"].values.astype(float))
        panels.append(("wind_speed", speed, "z", "viridis"))
    for name, cmap in (("theta", "magma"), ("heat_flux", "RdBu_r"), ("tke", "cividis"),
                       ("ql", "Blues"), ("cloud_fraction", "Greys"), ("qr", "PuBu")):
        if name in ds:
            panels.append((name, ds[name].values, ds[name].dims[-1], cmap))
    if not panels:
        return None
    figure, axes = new_figure(len(panels), columns=4)
    hours = _hours(dataset)
    for ax, (name, values, height, cmap) in zip(axes, panels, strict=True):
        values = np.asarray(values, dtype=float).T
        limits = {}
        if cmap == "RdBu_r":
            extent = float(np.nanmax(np.abs(values))) or 1.0
            limits = {"vmin": -extent, "vmax": extent}
        mesh = ax.pcolormesh(hours, dataset[height].values, values, shading="nearest",
                             cmap=cmap, **limits)
        units = "m s-1" if name == "wind_speed" else dataset[name].attrs.get("units", "1")
        figure.colorbar(mesh, ax=ax, label=f"{SHORT_LABELS.get(name, name)} ({units})")
        if "boundary_layer_height" in ds:
            ax.plot(hours, ds["boundary_layer_height"].values, color="white", lw=1.2,
                    label="boundary-layer height")
        ax.set_xlabel("time (h)")
        ax.set_ylabel("height (m)")
        ax.set_title(SHORT_LABELS.get(name, name))
    if "boundary_layer_height" in ds:
        axes[0].legend(loc="upper left", fontsize="x-small")
    figure.suptitle(f"{dataset.attrs.get('case', 'run')}: column {column}")
    return save_figure(figure, path)


def plot_final_profiles(dataset: xr.Dataset, path: Path) -> Path | None:
    """Profiles of u, v and θl at the last saved time, every column (column 0 in bold)."""
    final = dataset.isel(time=-1)
    names = [name for name in ("u", "v", "theta") if name in dataset]
    if not names:
        return None
    figure, axes = new_figure(len(names), width=3.4, height=4.2)
    z = dataset["z"].values
    for ax, name in zip(axes, names, strict=True):
        for column in range(final.sizes["column"])[::-1]:
            control = column == 0
            ax.plot(final[name].isel(column=column).values, z,
                    color="black" if control else "0.6", lw=2.0 if control else 0.8,
                    label="column 0" if control else None)
        ax.set_xlabel(label(dataset, name))
        ax.set_ylabel("height (m)")
    axes[0].legend(loc="best", fontsize="small")
    hours = float(dataset["time"].values[-1]) / 3600.0
    figure.suptitle(f"{dataset.attrs.get('case', 'run')}: profiles at {hours:g} h")
    return save_figure(figure, path)


def plot_time_series(dataset: xr.Dataset, path: Path) -> Path | None:
    """The surface and cloud diagnostics present against time, each published range of the
    case drawn as a band over its averaging window (None if none is present)."""
    names = [n for n in SERIES if n in dataset]
    if not names:
        return None
    definition = _definition(dataset)
    ranges = {} if definition is None else {
        r.series: r for r in definition.ranges if r.series is not None}
    figure, axes = new_figure(len(names), height=3.0, columns=4)
    hours = _hours(dataset)
    for ax, name in zip(axes, names, strict=True):
        published = ranges.get(name)
        factor = 1.0 if published is None else published.factor
        for column in range(dataset.sizes["column"])[::-1]:
            control = column == 0
            ax.plot(hours, factor * dataset[name].isel(column=column).values,
                    color="black" if control else "0.6", lw=1.6 if control else 0.8)
        if published is not None:
            start, end = definition.window or (hours[0], hours[-1])
            ax.fill_between([start, end], published.low, published.high, color="tab:orange",
                            alpha=0.3, lw=0, label="published range")
            ax.legend(loc="best", fontsize="small")
        ax.set_xlabel("time (h)")
        ax.set_ylabel(label(dataset, name, None if published is None else published.units))
    figure.suptitle(f"{dataset.attrs.get('case', 'run')}: time series")
    return save_figure(figure, path)


def plot_window_profiles(dataset: xr.Dataset, path: Path,
                         window: tuple[float, float] | None = None) -> Path | None:
    """Column 0's mean profiles over ``window`` (hours; default the case's averaging window,
    else the last hour), the initial ones dashed, with the published ranges of heights (cloud
    base, cloud top, inversion) as bands (None when no save lies in the window)."""
    definition = _definition(dataset)
    hours = _hours(dataset)
    if window is None:
        window = (definition.window if definition is not None and definition.window
                  else (max(hours[0], hours[-1] - 1.0), hours[-1]))
    start, end = window
    inside = np.flatnonzero((hours >= start - 1e-9) & (hours <= end + 1e-9))
    names = [n for n in WINDOW_PROFILES if n in dataset]
    if inside.size == 0 or not names:
        return None
    heights = [] if definition is None else [r for r in definition.ranges if r.units == "m"]
    figure, axes = new_figure(len(names), width=3.2, height=4.2, columns=4)
    column = dataset.isel(column=0)
    for ax, name in zip(axes, names, strict=True):
        values = column[name]
        z = dataset[values.dims[-1]].values
        ax.plot(values.isel(time=inside).mean("time", skipna=True), z, color="black", lw=1.8,
                label=f"hours {start:g}-{end:g}")
        ax.plot(values.isel(time=0), z, color="0.5", lw=1.0, ls="--", label="initial")
        for published in heights:
            ax.axhspan(published.low, published.high, color="tab:orange", alpha=0.15, lw=0)
            ax.text(0.98, published.high, SHORT_LABELS.get(published.name, published.name),
                    transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                    fontsize="x-small", color="tab:orange")
        ax.set_xlabel(label(dataset, name))
        ax.set_ylabel("height (m)")
    axes[0].legend(loc="best", fontsize="small")
    shaded = " (published ranges of heights shaded)" if heights else ""
    figure.suptitle(f"{dataset.attrs.get('case', 'run')}: mean profiles over hours "
                    f"{start:g}-{end:g}{shaded}")
    return save_figure(figure, path)


def plot_trajectory(dataset: xr.Dataset, outdir: str | os.PathLike,
                    window: tuple[float, float] | None = None) -> list[Path]:
    """Write the figures of a run into ``outdir`` (created if missing).

    Files are named ``<case>_sections.png``, ``<case>_profiles.png``,
    ``<case>_timeseries.png`` and ``<case>_window.png`` (the mean profiles over ``window``,
    hours; see ``plot_window_profiles``); returns the paths written.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    prefix = str(dataset.attrs.get("case", "run"))
    written = [
        plot_sections(dataset, outdir / f"{prefix}_sections.png"),
        plot_final_profiles(dataset, outdir / f"{prefix}_profiles.png"),
        plot_time_series(dataset, outdir / f"{prefix}_timeseries.png"),
        plot_window_profiles(dataset, outdir / f"{prefix}_window.png", window),
    ]
    return [p for p in written if p is not None]


# ---------------------------------------------------------------------------------------------
# two runs side by side


def _common_times(first: xr.Dataset, second: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """Both datasets at the times they share (``ConfigurationError`` when there are none or
    their grids differ)."""
    if first.sizes["z"] != second.sizes["z"] or not np.allclose(
            first["z"].values, second["z"].values, rtol=1e-6):
        raise ConfigurationError(f"the runs are on different grids ({first.sizes['z']} and "
                                 f"{second.sizes['z']} levels): nothing to compare level by "
                                 "level")
    times = np.intersect1d(first["time"].values, second["time"].values)
    if times.size == 0:
        raise ConfigurationError("the runs share no saved time")
    return first.sel(time=times), second.sel(time=times)


def compare_datasets(first: xr.Dataset, second: xr.Dataset) -> list[tuple[str, str, float,
                                                                           float]]:
    """``(name, units, RMS difference, largest difference)`` of every variable with a time
    axis both runs have, second minus first, at their common times and columns."""
    first, second = _common_times(first, second)
    columns = min(first.sizes["column"], second.sizes["column"])
    rows = []
    for name, variable in first.data_vars.items():
        if name not in second or "time" not in variable.dims or "column" not in variable.dims:
            continue
        a = variable.isel(column=slice(columns)).values.astype(float)
        b = second[name].isel(column=slice(columns)).values.astype(float)
        if a.shape != b.shape:
            continue
        difference = (b - a)[np.isfinite(a) & np.isfinite(b)]
        if difference.size:
            largest = difference[np.argmax(np.abs(difference))]
            rows.append((name, variable.attrs.get("units", "1"),
                         float(np.sqrt(np.mean(difference**2))), float(largest)))
    return rows


def plot_comparison(first: xr.Dataset, second: xr.Dataset, labels: tuple[str, str],
                    outdir: str | os.PathLike) -> list[Path]:
    """Column 0 of both runs over each other: final profiles (``compare_profiles.png``) and
    the time series both have (``compare_timeseries.png``)."""
    first, second = _common_times(first, second)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    styles = ({"color": "black", "lw": 1.6}, {"color": "tab:red", "lw": 1.2, "ls": "--"})
    written = []
    for kind, names in (("profiles", [n for n in ("u", "v", "theta", "qt", "tke", "ql")
                                      if n in first and n in second]),
                        ("timeseries", [n for n in SERIES if n in first and n in second])):
        if not names:
            continue
        figure, axes = new_figure(len(names), columns=4)
        for ax, name in zip(axes, names, strict=True):
            for dataset, text, style in zip((first, second), labels, styles, strict=True):
                values = dataset[name].isel(column=0)
                if kind == "profiles":
                    ax.plot(values.isel(time=-1).values, dataset[values.dims[-1]].values,
                            label=text, **style)
                    ax.set_xlabel(label(first, name))
                    ax.set_ylabel("height (m)")
                else:
                    ax.plot(_hours(dataset), values.values, label=text, **style)
                    ax.set_xlabel("time (h)")
                    ax.set_ylabel(label(first, name))
        axes[0].legend(loc="best", fontsize="small")
        figure.suptitle(f"{labels[1]} (dashed) against {labels[0]}, column 0")
        written.append(save_figure(figure, outdir / f"compare_{kind}.png"))
    return written
