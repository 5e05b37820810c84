"""``NeuralParameterization``: features → network → head, behind ``AbstractParameterization``.

Written for one column (batch with ``jax.vmap``). It fills the turbulence slot in place of a
closure and holds the same surface layer, so the physical surface fluxes still enter the
column (``surface_exchange=True``) and the diagnostics ``ustar``, ``surface_heat_flux`` and
``obukhov_length`` are reported as the closures report them. With ``surface_exchange=False``
the surface layer only provides the surface-scaled features: that is the form to use as the
correction in ``nn.wrappers.Residual`` (the physics already carries the surface exchange).

What is trained (``trainable_filter``): every floating-point array of the trained slot's
scheme, except the frozen parts: physics schemes and surface layers (classes of the
``physics`` package), feature normalizations, head scales, out-of-distribution detectors,
and the fields a module names in its class attribute ``frozen_fields``. So the network of a
``NeuralParameterization``, the correction of a ``Residual`` and the weights a researcher's
own ``AbstractParameterization`` holds are trained; physical constants stay as they are.
"""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from nn import networks
from nn.features import FeatureSet, Normalization
from nn.heads import AbstractHead
from nn.ood import InputDistance
from physics.surface import AbstractSurfaceLayer
from physics.turbulence import surface_diagnostics
from scm.forcing import Forcing
from scm.grid import ColumnGrid
from scm.parameterization import AbstractParameterization, Tendency
from scm.state import State


def _default_features() -> FeatureSet:
    return FeatureSet.from_names()


class NeuralParameterization(AbstractParameterization):
    """Tendency = head(network(normalization(features(state, forcing, surface fluxes)))).

    ``surface`` may be ``None`` (then the surface features are those of a calm, neutral
    surface and there is no surface exchange). ``network`` maps ``(profiles (P, z), scalars
    (S,))`` to ``(head.out_channels, head.out_length(z))``; an ``eqx.nn.MLP`` (one flat
    vector in and out) is wrapped in ``nn.networks.FlatNetwork`` for that.
    """

    surface: AbstractSurfaceLayer | None
    normalization: Normalization
    network: eqx.Module
    head: AbstractHead
    surface_exchange: bool = eqx.field(static=True)
    features: FeatureSet

    def __init__(self, surface, normalization, network, head, surface_exchange: bool = True,
                 features: FeatureSet | None = None):
        if isinstance(network, eqx.nn.MLP):
            network = networks.FlatNetwork(network, head.out_channels)
        self.surface, self.normalization, self.network, self.head = (surface, normalization,
                                                                     network, head)
        self.surface_exchange = surface_exchange
        self.features = _default_features() if features is None else features

    def raw_features(self, state: State, forcing: Forcing, grid: ColumnGrid):
        """(unnormalized profiles, scalars, surface fluxes or ``None``) of one column."""
        fluxes = None if self.surface is None else self.surface.fluxes(state, forcing, grid)
        return (*self.features(state, forcing, grid, fluxes), fluxes)

    def __call__(self, state: State, forcing: Forcing, grid: ColumnGrid) -> Tendency:
        profiles, scalars, fluxes = self.raw_features(state, forcing, grid)
        outputs = self.network(*self.normalization(profiles, scalars))
        exchange = fluxes if self.surface_exchange else None
        tendency = self.head(outputs, state, grid, exchange)
        diagnostics = {} if exchange is None else surface_diagnostics(exchange)
        return Tendency(tendency.tendency, tendency.flux, tendency.diffusivity, diagnostics)


def network_shape(head: AbstractHead, n_levels: int,
                  features: FeatureSet | None = None) -> networks.NetworkShape:
    """The ``NetworkShape`` a network between ``features`` and ``head`` must have."""
    features = _default_features() if features is None else features
    return networks.NetworkShape(len(features.profiles), len(features.scalars), n_levels,
                                 head.out_channels, head.out_length(n_levels),
                                 head.on_interfaces)


def make_network(kind: str, head: AbstractHead, n_levels: int, *, key: PRNGKeyArray,
                 features: FeatureSet | None = None, **options) -> eqx.Module:
    """The network ``kind`` (``nn.networks.make_network``) sized for ``features`` and
    ``head`` on ``n_levels`` levels."""
    return networks.make_network(kind, network_shape(head, n_levels, features), key=key,
                                 **options)


def is_frozen(x) -> bool:
    """True for the modules whose arrays are never trained (see the module docstring; the
    column grid of a model too)."""
    if isinstance(x, Normalization | AbstractHead | AbstractSurfaceLayer | InputDistance
                  | ColumnGrid):
        return True
    return isinstance(x, AbstractParameterization) and type(x).__module__.startswith(
        "physics.")


def trainable_filter(tree, slot: str | None = None):
    """Filter spec (a prefix of ``tree``'s structure, for ``eqx.partition`` and the
    optimizer): True on the trainable floating arrays (module docstring), False elsewhere.
    With ``slot``, only that slot of a ``scm.model.Model`` is trained."""
    if slot is not None:
        false = jax.tree.map(lambda _: False, tree)
        return eqx.tree_at(lambda m: getattr(m, slot), false,
                           trainable_filter(getattr(tree, slot)))

    def spec(x):
        if is_frozen(x):
            return False
        if isinstance(x, eqx.Module):
            names = getattr(type(x), "frozen_fields", ())
            marked = jax.tree.map(spec, x, is_leaf=lambda y: y is not x and _boundary(y))
            for name in names:
                marked = eqx.tree_at(lambda m, n=name: getattr(m, n), marked,
                                     jax.tree.map(lambda _: False, getattr(x, name)))
            return marked
        return eqx.is_inexact_array(x)

    return jax.tree.map(spec, tree, is_leaf=_boundary)


def _boundary(x) -> bool:
    """Where ``trainable_filter`` stops to decide: every module (frozen or not)."""
    return isinstance(x, eqx.Module)


__all__ = ["NeuralParameterization", "is_frozen", "make_network", "network_shape",
           "trainable_filter"]
