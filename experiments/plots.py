"""Quick-look figures of a run dataset (as written by ``scm.io``), drawn with the Agg backend.

``plot_trajectory`` writes three PNGs: time–height sections of column 0 (wind speed, θ,
heat flux and TKE when present), final profiles of u, v and θ (every column; column 0 in
bold), and time series of u*, the surface heat flux and the boundary-layer height.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from scm.figures import new_figure, save_figure

#: Short axis labels; the units always come from the dataset's attributes.
SHORT_LABELS: dict[str, str] = {
    "wind_speed": "wind speed",
    "u": "u",
    "v": "v",
    "theta": "θ",
    "heat_flux": "w'θ'",
    "tke": "TKE",
    "ustar": "u*",
    "surface_heat_flux": "surface w'θ'",
    "boundary_layer_height": "boundary-layer height",
}


def label(dataset: xr.Dataset, name: str) -> str:
    """Axis label: short name and units, e.g. ``θ (K)``."""
    units = dataset[name].attrs.get("units", "1")
    return f"{SHORT_LABELS.get(name, name)} ({units})"


def _hours(dataset: xr.Dataset) -> np.ndarray:
    return np.asarray(dataset["time"].values, dtype=float) / 3600.0


def plot_sections(dataset: xr.Dataset, path: Path, column: int = 0) -> Path:
    """Time–height sections of one column: wind speed, θ, heat flux and TKE (if present)."""
    ds = dataset.isel(column=column)
    speed = np.hypot(ds["u"].values.astype(float), ds["v"].values.astype(float))
    panels = [("wind_speed", speed, "z", "viridis"), ("theta", ds["theta"].values, "z", "magma")]
    panels.append(("heat_flux", ds["heat_flux"].values, "z_interface", "RdBu_r"))
    if "tke" in ds:
        panels.append(("tke", ds["tke"].values, "z", "cividis"))
    figure, axes = new_figure(len(panels))
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
    """Profiles of u, v and θ at the last saved time, every column (column 0 in bold)."""
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
    """u*, surface heat flux and boundary-layer height against time (None if none present)."""
    names = [n for n in ("ustar", "surface_heat_flux", "boundary_layer_height") if n in dataset]
    if not names:
        return None
    figure, axes = new_figure(len(names), height=3.0)
    hours = _hours(dataset)
    for ax, name in zip(axes, names, strict=True):
        for column in range(dataset.sizes["column"])[::-1]:
            control = column == 0
            ax.plot(hours, dataset[name].isel(column=column).values,
                    color="black" if control else "0.6", lw=1.6 if control else 0.8)
        ax.set_xlabel("time (h)")
        ax.set_ylabel(label(dataset, name))
    figure.suptitle(f"{dataset.attrs.get('case', 'run')}: time series")
    return save_figure(figure, path)


def plot_trajectory(dataset: xr.Dataset, outdir: str | os.PathLike) -> list[Path]:
    """Write the quick-look PNGs of a run into ``outdir`` (created if missing).

    Files are named ``<case>_sections.png``, ``<case>_profiles.png`` and
    ``<case>_timeseries.png``; returns the paths written.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    prefix = str(dataset.attrs.get("case", "run"))
    written = [
        plot_sections(dataset, outdir / f"{prefix}_sections.png"),
        plot_final_profiles(dataset, outdir / f"{prefix}_profiles.png"),
        plot_time_series(dataset, outdir / f"{prefix}_timeseries.png"),
    ]
    return [p for p in written if p is not None]
