"""Column networks: ``(profiles (c_in, z), scalars (s,)) -> outputs (c_out, length)``.

``length`` is ``z`` (centres) or ``z + 1`` (interfaces), set by the head. Both networks start
with their LAST layer at exactly zero (weights and bias), so an untrained network outputs
zeros and a hybrid model starts as its physics baseline.

- ``ColumnMLP``: the whole column flattened into one vector, a dense MLP, reshaped to the
  output column (non-local: every output sees every level; Rasp, Pritchard & Gentine 2018,
  PNAS 115, 9684; Brenowitz & Bretherton 2018, GRL 45, 6289).
- ``LocalConvNet``: 1-D convolutions over levels (edge-replicated padding), so each level sees
  only its neighbours within the receptive field; the surface scalars enter as extra
  channels at every level. The same weights serve any number of levels (``kernel_size=1``:
  the same small MLP at every level, a purely local closure).
- ``FlatNetwork``: any module of one flat vector (``eqx.nn.MLP``, or a researcher's own),
  fed the flattened column and reshaped to the output column.

``make_network(kind, shape, key=..., **options)`` builds one by name (``NETWORK_KINDS``:
``"mlp"``, ``"conv"``, ``"eqx_mlp"``) or from a researcher's factory given as
``"package.module:callable"``, called as ``factory(shape, key=key, **options)`` with the
``NetworkShape``; a factory should return its module with the last layer at zero
(``zero_last_layer``) so that a hybrid starts as its physics. The kind and options are the
network's recipe, which an artifact stores to rebuild it (``nn.artifact``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from scm.errors import ConfigurationError

#: Activation functions a recipe may name (``eqx_mlp``'s ``activation``).
ACTIVATIONS: dict[str, Callable] = {
    "tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
}


class NetworkShape(NamedTuple):
    """What a column network maps: ``in_channels`` profiles of ``n_levels`` and ``n_scalars``
    scalars to ``out_channels`` columns of ``out_length`` (``n_levels + 1`` on interfaces)."""

    in_channels: int
    n_scalars: int
    n_levels: int
    out_channels: int
    out_length: int
    on_interfaces: bool


def zero_last_layer(layer):
    """The same layer (``eqx.nn.Linear`` or ``eqx.nn.Conv1d``) with zero weight and bias."""
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer,
                       (jnp.zeros_like(layer.weight), jnp.zeros_like(layer.bias)))


class ColumnMLP(eqx.Module):
    """Flattened column → tanh MLP (``depth`` hidden layers of ``width``) → output column."""

    layers: tuple[eqx.nn.Linear, ...]
    out_channels: int = eqx.field(static=True)
    out_length: int = eqx.field(static=True)

    def __init__(self, in_channels: int, n_scalars: int, n_levels: int, out_channels: int,
                 out_length: int, *, width: int = 64, depth: int = 2, key: PRNGKeyArray):
        sizes = [in_channels * n_levels + n_scalars] + [width] * depth
        keys = jax.random.split(key, depth + 1)
        layers = [eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys[:-1],
                                                                strict=True)]
        layers.append(zero_last_layer(eqx.nn.Linear(sizes[-1], out_channels * out_length,
                                                    key=keys[-1])))
        self.layers = tuple(layers)
        self.out_channels, self.out_length = out_channels, out_length

    def __call__(self, profiles: Float[Array, "c z"], scalars: Float[Array, " s"]):
        x = jnp.concatenate([profiles.reshape(-1), scalars])
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x))
        return self.layers[-1](x).reshape(self.out_channels, self.out_length)


class LocalConvNet(eqx.Module):
    """1-D convolutions over levels: ``depth`` tanh layers of kernel ``kernel_size`` (odd),
    then a last layer to centres (kernel 1) or interfaces (kernel 2 over the centres either
    side, the end centres repeated beyond the column)."""

    layers: tuple[eqx.nn.Conv1d, ...]
    kernel_size: int = eqx.field(static=True)
    on_interfaces: bool = eqx.field(static=True)

    def __init__(self, in_channels: int, n_scalars: int, out_channels: int, *,
                 on_interfaces: bool, width: int = 32, depth: int = 2, kernel_size: int = 3,
                 key: PRNGKeyArray):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (got {kernel_size})")
        channels = [in_channels + n_scalars] + [width] * depth
        keys = jax.random.split(key, depth + 1)
        layers = [eqx.nn.Conv1d(a, b, kernel_size, key=k)
                  for a, b, k in zip(channels[:-1], channels[1:], keys[:-1], strict=True)]
        last = eqx.nn.Conv1d(channels[-1], out_channels, 2 if on_interfaces else 1,
                             key=keys[-1])
        layers.append(zero_last_layer(last))
        self.layers = tuple(layers)
        self.kernel_size, self.on_interfaces = kernel_size, on_interfaces

    def __call__(self, profiles: Float[Array, "c z"], scalars: Float[Array, " s"]):
        n = profiles.shape[-1]
        x = jnp.concatenate([profiles, jnp.broadcast_to(scalars[:, None], (scalars.size, n))])
        half = self.kernel_size // 2
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(jnp.pad(x, ((0, 0), (half, half)), mode="edge")))
        if self.on_interfaces:
            x = jnp.pad(x, ((0, 0), (1, 1)), mode="edge")
        return self.layers[-1](x)


class FlatNetwork(eqx.Module):
    """``module(concatenate(profiles.ravel(), scalars))`` reshaped to ``(out_channels, -1)``:
    any network of one flat vector (``eqx.nn.MLP``, say) as a column network. Non-array
    leaves of ``module`` (activation functions) are fine everywhere: batched runs and
    training map over array leaves only (``eqx.filter_vmap``)."""

    module: eqx.Module
    out_channels: int = eqx.field(static=True)

    def __call__(self, profiles: Float[Array, "c z"], scalars: Float[Array, " s"]):
        x = jnp.concatenate([profiles.reshape(-1), scalars])
        return self.module(x).reshape(self.out_channels, -1)


def _column_mlp(shape: NetworkShape, *, key, width: int = 64, depth: int = 2):
    return ColumnMLP(shape.in_channels, shape.n_scalars, shape.n_levels, shape.out_channels,
                     shape.out_length, width=width, depth=depth, key=key)


def _conv(shape: NetworkShape, *, key, width: int = 32, depth: int = 2, kernel_size: int = 3):
    return LocalConvNet(shape.in_channels, shape.n_scalars, shape.out_channels,
                        on_interfaces=shape.on_interfaces, width=width, depth=depth,
                        kernel_size=kernel_size, key=key)


def _eqx_mlp(shape: NetworkShape, *, key, width: int = 64, depth: int = 2,
             activation: str = "tanh"):
    if activation not in ACTIVATIONS:
        raise ConfigurationError(f"network activation must be one of {', '.join(ACTIVATIONS)} "
                                 f"(got {activation!r})")
    mlp = eqx.nn.MLP(shape.in_channels * shape.n_levels + shape.n_scalars,
                     shape.out_channels * shape.out_length, width, depth,
                     activation=ACTIVATIONS[activation], key=key)
    mlp = eqx.tree_at(lambda m: m.layers[-1], mlp, zero_last_layer(mlp.layers[-1]))
    return FlatNetwork(mlp, shape.out_channels)


#: Network kinds by name: builders ``(shape, *, key, **options) -> module``.
NETWORK_KINDS: dict[str, Callable] = {"mlp": _column_mlp, "conv": _conv, "eqx_mlp": _eqx_mlp}


def network_factory(kind: str) -> Callable:
    """The builder of ``kind``: a ``NETWORK_KINDS`` name or ``"package.module:callable"``."""
    if kind in NETWORK_KINDS:
        return NETWORK_KINDS[kind]
    module_name, _, name = kind.partition(":")
    if not module_name or not name:
        raise ConfigurationError(f"network kind must be one of {', '.join(NETWORK_KINDS)} or "
                                 f"'package.module:callable' (got {kind!r})")
    try:
        factory = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ConfigurationError(f"network kind {kind!r} cannot be imported: {error}") from None
    if not callable(factory):
        raise ConfigurationError(f"network kind {kind!r} is not callable")
    return factory


def make_network(kind: str, shape: NetworkShape, *, key: PRNGKeyArray, **options) -> eqx.Module:
    """The network ``kind`` (see ``network_factory``) for ``shape``, with ``options``
    (``width``, ``depth``, ``kernel_size``, ``activation``, or a factory's own)."""
    factory = network_factory(kind)
    try:
        # Built by one compiled call (the same weights): run eagerly, each layer's random
        # initialization compiles a program of its own, ≈ 0.4 s apiece.
        return eqx.filter_jit(lambda k: factory(shape, key=k, **options))(key)
    except TypeError as error:
        raise ConfigurationError(f"network {kind!r}: bad options {sorted(options)}: "
                                 f"{error}") from None


def network_recipe(network: eqx.Module) -> tuple[str, dict]:
    """``(kind, options)`` that rebuild ``network`` with ``make_network`` (the built-in
    kinds); ``ConfigurationError`` for any other module, whose recipe its owner must give."""
    if isinstance(network, ColumnMLP):
        return "mlp", {"width": int(network.layers[0].out_features),
                       "depth": len(network.layers) - 1}
    if isinstance(network, LocalConvNet):
        return "conv", {"width": int(network.layers[0].out_channels),
                        "depth": len(network.layers) - 1, "kernel_size": network.kernel_size}
    if isinstance(network, FlatNetwork) and isinstance(network.module, eqx.nn.MLP):
        mlp = network.module
        names = [name for name, f in ACTIVATIONS.items() if f is mlp.activation]
        if names and mlp.use_bias and mlp.use_final_bias and mlp.final_activation(
                jnp.asarray(-1.0)) == -1.0:
            return "eqx_mlp", {"width": int(mlp.width_size), "depth": int(mlp.depth),
                               "activation": names[0]}
    raise ConfigurationError(
        f"no built-in recipe for network {type(network).__name__}: give its "
        "('package.module:callable', options) recipe (see nn.networks.make_network)")
