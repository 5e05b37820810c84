"""Quick-look figures of a run dataset (as written by ``scm.io``), drawn with the Agg backend.

``plot_trajectory`` writes up to four PNGs: time–height sections of column 0 (wind speed, θl,
heat flux, TKE, and for moist runs cloud liquid, cloud fraction and rain), final profiles of
u, v and θl (every column; column 0 in bold), time series of the surface and cloud
diagnostics present, and for a case with an averaging window its mean profiles over the
window beside the initial ones. A case's published ranges (``experiments.cases``) are marked:
as a shaded band over the window on the time series they are taken from, and the heights
among them (cloud base and top, inversion) as bands on the profiles.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from experiments import cases
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


def plot_sections(dataset: xr.Dataset, path: Path, column: int = 0) -> Path:
    """Time–height sections of one column: wind speed, θl, heat flux, TKE, cloud liquid,
    cloud fraction and rain (those present)."""
    ds = dataset.isel(column=column)
    speed = np.hypot(ds["u"].values.astype(float), ds["v"].values.astype(float))
    panels = [("wind_speed", speed, "z", "viridis"), ("theta", ds["theta"].values, "z", "magma")]
    panels.append(("heat_flux", ds["heat_flux"].values, "z_interface", "RdBu_r"))
    for name, cmap in (("tke", "cividis"), ("ql", "Blues"), ("cloud_fraction", "Greys"),
                       ("qr", "PuBu")):
        if name in ds:
            panels.append((name, ds[name].values, "z", cmap))
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
        ax.set_xlabel("time (h)")
        ax.set_ylabel("height (m)")
        ax.set_title(SHORT_LABELS.get(name, name))
    figure.suptitle(f"{dataset.attrs.get('case', 'run')}: column {column}")
    return save_figure(figure, path)


def plot_final_profiles(dataset: xr.Dataset, path: Path) -> Path:
    """Profiles of u, v and θl at the last saved time, every column (column 0 in bold)."""
    final = dataset.isel(time=-1)
    names = ["u", "v", "theta"]
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


def plot_window_profiles(dataset: xr.Dataset, path: Path) -> Path | None:
    """Column 0's mean profiles over the case's averaging window, the initial ones dashed,
    with the published ranges of heights (cloud base, cloud top, inversion) as bands (None
    for a dataset without a case window)."""
    definition = _definition(dataset)
    if definition is None or definition.window is None:
        return None
    start, end = definition.window
    hours = _hours(dataset)
    inside = np.flatnonzero((hours >= start - 1e-9) & (hours <= end + 1e-9))
    if inside.size == 0:
        return None
    names = [n for n in WINDOW_PROFILES if n in dataset]
    heights = [r for r in definition.ranges if r.units == "m"]
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
    figure.suptitle(f"{dataset.attrs.get('case', 'run')}: mean profiles over hours "
                    f"{start:g}-{end:g} (published ranges of heights shaded)")
    return save_figure(figure, path)


def plot_trajectory(dataset: xr.Dataset, outdir: str | os.PathLike) -> list[Path]:
    """Write the quick-look PNGs of a run into ``outdir`` (created if missing).

    Files are named ``<case>_sections.png``, ``<case>_profiles.png``,
    ``<case>_timeseries.png`` and ``<case>_window.png``; returns the paths written.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    prefix = str(dataset.attrs.get("case", "run"))
    written = [
        plot_sections(dataset, outdir / f"{prefix}_sections.png"),
        plot_final_profiles(dataset, outdir / f"{prefix}_profiles.png"),
        plot_time_series(dataset, outdir / f"{prefix}_timeseries.png"),
        plot_window_profiles(dataset, outdir / f"{prefix}_window.png"),
    ]
    return [p for p in written if p is not None]
