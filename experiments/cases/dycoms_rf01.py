"""DYCOMS-II RF01: a nocturnal marine stratocumulus under a sharp inversion, driven by
longwave cooling at cloud top (Stevens et al. 2005, MWR 133)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from experiments.cases.base import Definition, PublishedRange, in_window, window_mean
from scm.constants import DRY_AIR_HEAT_CAPACITY, KAPPA, LATENT_HEAT_VAPORIZATION

if TYPE_CHECKING:
    import xarray as xr

WINDOW = (2.0, 4.0)
INVERSION = 840.0
DIVERGENCE = 3.75e-6
SURFACE_PRESSURE = 1.0178e5


def thl_profile(z):
    z = np.asarray(z, float)
    return np.where(z <= INVERSION, 289.0, 297.5 + np.cbrt(np.maximum(z - INVERSION, 0.0)))


def qt_profile(z):
    return np.where(np.asarray(z, float) <= INVERSION, 9.0e-3, 1.5e-3)


def build(p, levels, top, dt, hours, turbulence):
    """DYCOMS-II RF01 (Stevens et al. 2005, section 2): θl = 289 K and qt = 9 g/kg below
    840 m; θl = 297.5 + (z − 840)^(1/3) K and qt = 1.5 g/kg above; u = ug = 7, v = vg = −5.5
    m/s; f = 7.62 × 10⁻⁵ s⁻¹; subsidence −D z on every prognostic field; prescribed sensible
    and latent heat fluxes, bulk drag Cd = 0.0011; the parameterized longwave; no drizzle;
    ps = 1017.8 hPa; initial TKE 0.5 m² s⁻² in the mixed layer.

    The TKE closure runs without its updraft: a stratocumulus layer is driven from its top
    by the radiative cooling, and a surface-driven plume that reaches the inversion with
    1–2 m/s entrains its warm, dry air far too fast (with the updraft on: 1.6 cm/s, the
    cloud thinned to a fraction of 0.46 and 19 g m⁻²)."""
    import scm.model
    from experiments.cases.building import (
        cloud_source,
        initial_state,
        moist_grid,
        turbulence_scheme,
    )
    from physics.large_scale import LargeScaleForcing
    from physics.radiation import StratocumulusLongwave
    from physics.surface import PrescribedFluxSurface
    from scm.forcing import Forcing, ForcingSeries

    grid = moist_grid(np.linspace(0.0, top, levels + 1), SURFACE_PRESSURE, thl_profile,
                      qt_profile)
    z = np.asarray(grid.z)
    closure = turbulence_scheme(turbulence, PrescribedFluxSurface(drag_coefficient=0.0011), dt,
                                updraft=False)
    model = scm.model.Model(
        grid, turbulence=closure,
        radiation=StratocumulusLongwave(cloud_source(closure), divergence=DIVERGENCE),
        large_scale=LargeScaleForcing(subside_momentum=True))
    rho = float(grid.rho_interface[0])
    exner = (SURFACE_PRESSURE / 1.0e5) ** KAPPA
    forcing = ForcingSeries.constant(Forcing.create(
        grid.n_levels, coriolis_parameter=7.62e-5, geostrophic_u=7.0, geostrophic_v=-5.5,
        subsidence=-DIVERGENCE * z,
        surface_heat_flux=p["sensible_heat_flux"] / (rho * DRY_AIR_HEAT_CAPACITY * exner),
        surface_moisture_flux=p["latent_heat_flux"] / (rho * LATENT_HEAT_VAPORIZATION),
        surface_temperature=292.5 / exner))
    state0 = initial_state(model, 7.0, -5.5, thl_profile(z), qt_profile(z),
                           tke=0.5 * (z <= INVERSION))
    return model, state0, forcing, {"surface_pressure": SURFACE_PRESSURE}


def measure(dataset: xr.Dataset) -> dict[str, float]:
    """Hours 2–4: the smallest cloud fraction at the middle of the cloud layer (between the
    mean cloud base and the mean inversion), the mean liquid water path, the inversion height
    at hour 4, and the entrainment rate w_e = dzi/dt + D zi (dzi/dt fitted over the window)."""
    inside = in_window(dataset, WINDOW)
    zi = dataset["inversion_height"].isel(column=0).values
    base = float(window_mean(dataset, "cloud_base_height", WINDOW))
    middle = 0.5 * (base + float(zi[inside].mean()))
    fraction = dataset["cloud_fraction"].isel(column=0).values[inside]
    z = dataset["z"].values
    persistence = min(float(np.interp(middle, z, profile)) for profile in fraction)
    rate = np.polyfit(dataset["time"].values[inside], zi[inside], 1)[0]
    return {
        "cloud_fraction_middle": persistence,
        "liquid_water_path": 1.0e3 * float(window_mean(dataset, "liquid_water_path", WINDOW)),
        "inversion_height": float(zi[np.flatnonzero(inside)[-1]]),
        "entrainment_rate": 100.0 * float(rate + DIVERGENCE * zi[inside].mean()),
    }


DEFINITION = Definition(
    name="dycoms_rf01",
    description="DYCOMS-II RF01 nocturnal marine stratocumulus, cloud-top longwave cooling "
                "(Stevens et al. 2005)",
    levels=120, top=1200.0, dt=30.0, hours=4.0, turbulence="tke",
    parameters={
        "sensible_heat_flux": (15.0, 0.0, 100.0, "W m-2", "surface sensible heat flux"),
        "latent_heat_flux": (115.0, 0.0, 300.0, "W m-2", "surface latent heat flux"),
    },
    build=build,
    references=("Stevens et al. (2005), Monthly Weather Review 133, 1443-1462",
                "Zhu et al. (2005), Monthly Weather Review 133, 2741-2758 (SCM intercomparison)"),
    window=WINDOW,
    ranges=(
        PublishedRange("cloud_fraction_middle", 0.9, 1.0, "1",
                       "smallest cloud fraction at the middle of the cloud layer, hours 2-4 "
                       "(the cloud persists)"),
        PublishedRange("liquid_water_path", 20.0, 80.0, "g m-2",
                       "mean liquid water path, hours 2-4",
                       series="liquid_water_path", factor=1.0e3),
        PublishedRange("inversion_height", 830.0, 900.0, "m",
                       "height of the qt = 8 g/kg isoline at hour 4", series="inversion_height"),
        PublishedRange("entrainment_rate", 0.2, 0.7, "cm s-1",
                       "entrainment rate dzi/dt + D zi, hours 2-4 (observed about 0.4)"),
    ),
    measure=measure,
)
