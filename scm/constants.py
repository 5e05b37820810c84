"""Physical constants (SI units) and the model's fixed limits. The single place where they are
defined (no JAX here: the command line checks its options against them before JAX starts)."""

GRAVITY = 9.80665  # m s-2
DRY_AIR_GAS_CONSTANT = 287.04  # J kg-1 K-1
WATER_VAPOR_GAS_CONSTANT = 461.5  # J kg-1 K-1
DRY_AIR_HEAT_CAPACITY = 1004.0  # J kg-1 K-1, constant pressure
LATENT_HEAT_VAPORIZATION = 2.5e6  # J kg-1
REFERENCE_PRESSURE = 1.0e5  # Pa, for potential temperature
KAPPA = DRY_AIR_GAS_CONSTANT / DRY_AIR_HEAT_CAPACITY  # R/cp
VON_KARMAN = 0.4
EARTH_ROTATION_RATE = 7.2921e-5  # rad s-1
STEFAN_BOLTZMANN = 5.670374e-8  # W m-2 K-4
#: Rd/Rv, the ratio of the molar masses of water and dry air.
EPSILON = DRY_AIR_GAS_CONSTANT / WATER_VAPOR_GAS_CONSTANT
#: Rv/Rd − 1 (≈ 0.608), in θv = θ (1 + 0.608 qv − ql).
VIRTUAL_COEFFICIENT = WATER_VAPOR_GAS_CONSTANT / DRY_AIR_GAS_CONSTANT - 1.0
LIQUID_WATER_DENSITY = 1000.0  # kg m-3
#: The fewest levels a column may have.
MIN_LEVELS = 8


def coriolis_parameter(latitude_degrees):
    """f = 2 Ω sin(latitude), s-1."""
    import math

    return 2.0 * EARTH_ROTATION_RATE * math.sin(math.radians(latitude_degrees))
