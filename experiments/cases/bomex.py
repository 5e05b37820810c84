"""BOMEX: non-precipitating trade-wind shallow cumulus under steady large-scale forcing
(Siebesma et al. 2003, JAS 60; initial profiles after Holland & Rasmusson 1973)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from experiments.cases.base import (
    DAY,
    Definition,
    PublishedRange,
    piecewise,
    window_max,
    window_mean,
)

if TYPE_CHECKING:
    import xarray as xr

WINDOW = (3.0, 6.0)
#: The cloud layer in which the mean profiles must stay near their initial values.
CLOUD_LAYER = (500.0, 1500.0)

THL = piecewise([0.0, 520.0, 1480.0, 2000.0, 3000.0], [298.7, 298.7, 302.4, 308.2, 311.85])
QT = piecewise([0.0, 520.0, 1480.0, 2000.0, 3000.0],
               [17.0e-3, 16.3e-3, 10.7e-3, 4.2e-3, 3.0e-3])
U = piecewise([0.0, 700.0, 3000.0], [-8.75, -8.75, -4.61])


def build(p, levels, top, dt, hours, turbulence):
    """BOMEX (Siebesma et al. 2003, section 2 and appendix B): profiles piecewise linear
    through the nodes above; ug = −10 + 1.8 × 10⁻³ z m/s, f = 0.376 × 10⁻⁴ s⁻¹; subsidence
    0 → −0.65 cm/s at 1500 m → 0 at 2100 m on every prognostic field; radiative cooling of θl
    −2 K/day below 1500 m, decreasing linearly to 0 at 3000 m; large-scale drying
    −1.2 × 10⁻⁸ s⁻¹ below 300 m, to 0 at 500 m; prescribed surface fluxes w'θl', w'qt' and u*
    (stress along the lowest wind); ps = 1015 hPa; initial TKE 1 − z/3000 m² s⁻²."""
    import scm.model
    from experiments.cases.building import initial_state, moist_grid, turbulence_scheme
    from physics.large_scale import LargeScaleForcing
    from physics.radiation import PrescribedRadiation
    from physics.surface import PrescribedFluxSurface
    from scm.forcing import Forcing, ForcingSeries
    from scm.state import as_float

    grid = moist_grid(np.linspace(0.0, top, levels + 1), 1.015e5, THL, QT)
    z = np.asarray(grid.z)
    cooling = piecewise([0.0, 1500.0, 3000.0], [-2.0, -2.0, 0.0], extend=False)(z) / DAY
    subsidence = piecewise([0.0, 1500.0, 2100.0], [0.0, -0.0065, 0.0], extend=False)(z)
    drying = piecewise([0.0, 300.0, 500.0], [-1.2e-8, -1.2e-8, 0.0], extend=False)(z)
    model = scm.model.Model(
        grid, turbulence=turbulence_scheme(turbulence, PrescribedFluxSurface(), dt),
        radiation=PrescribedRadiation(as_float(cooling)),
        large_scale=LargeScaleForcing(subside_momentum=True))
    forcing = ForcingSeries.constant(Forcing.create(
        grid.n_levels, coriolis_parameter=0.376e-4, geostrophic_u=-10.0 + 1.8e-3 * z,
        subsidence=subsidence, qt_tendency=drying,
        surface_heat_flux=p["surface_heat_flux"],
        surface_moisture_flux=p["surface_moisture_flux"],
        surface_friction_velocity=p["friction_velocity"], surface_temperature=299.1))
    state0 = initial_state(model, U(z), 0.0, THL(z), QT(z), tke=1.0 - z / 3000.0)
    return model, state0, forcing, {"surface_pressure": 1.015e5}


def measure(dataset: xr.Dataset) -> dict[str, float]:
    """Hour 3–6: mean cloud base, highest cloud top, mean cloud cover and liquid water path,
    the mean mass flux of the updraft at its condensation level, and the largest departure of
    the mean θl and qt profiles in the cloud layer from the initial ones."""
    base = float(window_mean(dataset, "cloud_base_height", WINDOW))
    top = window_max(dataset, "cloud_top_height", WINDOW)
    z = dataset["z"].values
    layer = (z >= CLOUD_LAYER[0]) & (z <= CLOUD_LAYER[1])
    initial = dataset.isel(column=0, time=0)
    thl = window_mean(dataset, "theta", WINDOW).values - initial["theta"].values
    qt = window_mean(dataset, "qt", WINDOW).values - initial["qt"].values
    return {
        "cloud_base_height": base,
        "cloud_top_height": top,
        "cloud_cover": float(window_mean(dataset, "cloud_cover", WINDOW)),
        "liquid_water_path": 1.0e3 * float(window_mean(dataset, "liquid_water_path", WINDOW)),
        "cloud_base_mass_flux": float(window_mean(dataset, "cloud_base_mass_flux", WINDOW)),
        "thl_change": float(np.abs(thl[layer]).max()),
        "qt_change": 1.0e3 * float(np.abs(qt[layer]).max()),
    }


DEFINITION = Definition(
    name="bomex",
    description="BOMEX trade-wind shallow cumulus under steady large-scale forcing "
                "(Siebesma et al. 2003)",
    levels=75, top=3000.0, dt=60.0, hours=6.0, turbulence="tke",
    parameters={
        "surface_heat_flux": (8.0e-3, 0.0, 0.05, "K m s-1", "surface kinematic flux of thl"),
        "surface_moisture_flux": (5.2e-5, 0.0, 3.0e-4, "kg kg-1 m s-1",
                                  "surface kinematic flux of qt"),
        "friction_velocity": (0.28, 0.05, 1.0, "m s-1", "surface friction velocity u*"),
    },
    build=build,
    references=("Siebesma et al. (2003), Journal of the Atmospheric Sciences 60, 1201-1219",
                "Holland & Rasmusson (1973), Monthly Weather Review 101, 44-55"),
    window=WINDOW,
    ranges=(
        PublishedRange("cloud_base_height", 500.0, 700.0, "m", "mean cloud base, hours 3-6",
                       series="cloud_base_height"),
        PublishedRange("cloud_top_height", 1500.0, 1900.0, "m",
                       "highest cloud top, hours 3-6", series="cloud_top_height"),
        PublishedRange("cloud_cover", 0.1, 0.2, "1", "mean cloud cover, hours 3-6",
                       series="cloud_cover"),
        PublishedRange("liquid_water_path", 2.0, 10.0, "g m-2",
                       "mean liquid water path, hours 3-6",
                       series="liquid_water_path", factor=1.0e3),
        PublishedRange("cloud_base_mass_flux", 0.015, 0.035, "m s-1",
                       "mass flux (a w) of the updraft at its condensation level, "
                       "hours 3-6",
                       series="cloud_base_mass_flux"),
        PublishedRange("thl_change", 0.0, 0.5, "K",
                       "largest change of the mean thl profile at 500-1500 m, hours 3-6 "
                       "against the initial (quasi-steady by design)"),
        PublishedRange("qt_change", 0.0, 1.0, "g kg-1",
                       "largest change of the mean qt profile at 500-1500 m, hours 3-6 "
                       "against the initial (quasi-steady by design)"),
    ),
    measure=measure,
)
