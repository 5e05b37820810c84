"""A column model: a grid and parameterizations in named slots whose tendencies add."""

from __future__ import annotations

import dataclasses

import equinox as eqx

from scm.errors import check_choice
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State

SLOTS = ("surface", "turbulence", "microphysics", "radiation", "convection", "large_scale")


class Model(eqx.Module):
    """Grid plus one parameterization (or ``None``) per slot.

    Swapping a scheme for a network is replacing one slot (``model.with_slot``); a hybrid
    model is just a different set of slots. Tendencies, fluxes and diffusivities add.
    """

    grid: ColumnGrid
    surface: AbstractParameterization | None = None
    turbulence: AbstractParameterization | None = None
    microphysics: AbstractParameterization | None = None
    radiation: AbstractParameterization | None = None
    convection: AbstractParameterization | None = None
    large_scale: AbstractParameterization | None = None

    def slots(self) -> dict[str, AbstractParameterization]:
        """The occupied slots, in order."""
        return {s: getattr(self, s) for s in SLOTS if getattr(self, s) is not None}

    def with_slot(self, slot: str, parameterization: AbstractParameterization | None) -> Model:
        check_choice("slot", slot, SLOTS)
        return dataclasses.replace(self, **{slot: parameterization})

    def tendency(self, state: State, forcing: Forcing) -> Tendency:
        total = Tendency.zeros(state)
        for parameterization in self.slots().values():
            total = total + parameterization(state, forcing, self.grid)
        return total

    def required_tracers(self) -> tuple[str, ...]:
        return tuple(n for p in self.slots().values() for n in p.required_tracers())

    def initial_tracers(self) -> dict:
        out = {}
        for p in self.slots().values():
            out.update(p.initial_tracers(self.grid))
        return out
