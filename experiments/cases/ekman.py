"""Ekman layer with a constant eddy viscosity, impulsive start over a no-slip ground: an
analytic solution (Ekman 1905; the transient e.g. Greenspan 1968, section 2.2)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from experiments.cases.base import Definition, PublishedRange
from scm.errors import check_positive

if TYPE_CHECKING:
    import xarray as xr

def build(p, levels, top, dt, hours, turbulence):
    """Constant-K Ekman layer; the analytic solutions are ``steady_solution`` and
    ``impulsive_solution``."""
    import scm.model
    from experiments.cases.building import constant_forcing, initial_state, turbulence_scheme
    from physics.large_scale import LargeScaleForcing
    from physics.surface import MoninObukhovSurface
    from scm.grid import ColumnGrid

    theta = 300.0
    grid = ColumnGrid.uniform(top, levels, 1.0e5, lambda z: np.full_like(z, theta))
    surface = None if turbulence == "constant" else MoninObukhovSurface(
        0.1, heat_boundary="flux")
    model = scm.model.Model(grid, turbulence=turbulence_scheme(turbulence, surface, dt,
                                                               p["eddy_viscosity"], moist=False),
                            large_scale=LargeScaleForcing())
    forcing = constant_forcing(grid, coriolis_parameter=p["coriolis_parameter"],
                               geostrophic_u=p["geostrophic_u"],
                               geostrophic_v=p["geostrophic_v"], surface_temperature=theta)
    state0 = initial_state(model, p["geostrophic_u"], p["geostrophic_v"], theta)
    return model, state0, forcing, {"surface_pressure": 1.0e5}


def steady_solution(z, geostrophic_u=10.0, geostrophic_v=0.0, eddy_viscosity=5.0,
                    coriolis_parameter=1.0e-4):
    """Steady Ekman spiral over a no-slip ground (Ekman 1905; e.g. Holton 2004, chapter 5):
    u = ug [1 − e^(−z/δ) cos(z/δ)] − vg e^(−z/δ) sin(z/δ),
    v = vg [1 − e^(−z/δ) cos(z/δ)] + ug e^(−z/δ) sin(z/δ), δ = √(2K/f). Returns (u, v)."""
    z = np.asarray(z, float)
    depth = math.sqrt(2.0 * eddy_viscosity / coriolis_parameter)
    decay = np.exp(-z / depth)
    c, s = decay * np.cos(z / depth), decay * np.sin(z / depth)
    u = geostrophic_u * (1.0 - c) - geostrophic_v * s
    v = geostrophic_v * (1.0 - c) + geostrophic_u * s
    return u, v


def impulsive_solution(z, t, geostrophic_u=10.0, geostrophic_v=0.0, eddy_viscosity=5.0,
                       coriolis_parameter=1.0e-4):
    """Ekman layer spun up from u = ug, v = vg at t = 0 with no slip at z = 0: with
    W = (u − ug) + i (v − vg), W0 = −(ug + i vg), λ = (1 + i)/δ and √(ift) = (1 + i)√(ft/2),
    W = W0 ½ [e^(−λz) erfc(z/(2√(Kt)) − √(ift)) + e^(λz) erfc(z/(2√(Kt)) + √(ift))]
    (semi-infinite domain; e.g. Greenspan 1968, section 2.2). Returns (u, v) at time t > 0."""
    from scipy.special import erfc

    check_positive("t", t, "s")
    z = np.asarray(z, float)
    k, f = eddy_viscosity, coriolis_parameter
    depth = math.sqrt(2.0 * k / f)
    lam = (1.0 + 1.0j) / depth
    root = (1.0 + 1.0j) * math.sqrt(f * t / 2.0)
    x = z / (2.0 * math.sqrt(k * t))
    w0 = -(geostrophic_u + 1.0j * geostrophic_v)
    w = w0 * 0.5 * (np.exp(-lam * z) * erfc(x - root) + np.exp(lam * z) * erfc(x + root))
    return geostrophic_u + w.real, geostrophic_v + w.imag


def measure(dataset: xr.Dataset) -> dict[str, float]:
    """Largest deviation of column 0's wind from the impulsive-start solution at the end."""
    p = {name: float(dataset.attrs[f"parameter_{name}"]) for name in
         ("geostrophic_u", "geostrophic_v", "eddy_viscosity", "coriolis_parameter")}
    t = float(dataset["time"].values[-1])
    u, v = impulsive_solution(dataset["z"].values, t, **p)
    final = dataset.isel(column=0, time=-1)
    error = np.hypot(final["u"].values - u, final["v"].values - v).max()
    return {"wind_error": float(error)}


DEFINITION = Definition(
    name="ekman",
    description="Ekman layer with constant eddy viscosity, impulsive start, no-slip ground "
                "(analytic solution)",
    levels=64, top=2000.0, dt=60.0, hours=24.0, turbulence="constant",
    parameters={
        "coriolis_parameter": (1.0e-4, 2.0e-5, 1.5e-4, "s-1", "Coriolis parameter f"),
        "geostrophic_u": (10.0, -30.0, 30.0, "m s-1", "eastward geostrophic wind"),
        "geostrophic_v": (0.0, -30.0, 30.0, "m s-1", "northward geostrophic wind"),
        "eddy_viscosity": (5.0, 0.1, 50.0, "m2 s-1", "constant eddy viscosity K"),
    },
    build=build,
    references=("Ekman (1905), Arkiv för Matematik, Astronomi och Fysik 2",
                "Greenspan (1968), The Theory of Rotating Fluids, section 2.2"),
    ranges=(PublishedRange("wind_error", 0.0, 0.2, "m s-1",
                           "largest deviation of the wind vector from the analytic "
                           "impulsive-start solution at 24 h (2 % of |Ug|; first order in "
                           "dt)"),),
    measure=measure,
)
