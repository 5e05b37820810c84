"""Trained artifacts: one directory that holds everything needed to run a trained network.

Layout of an artifact directory:

- ``config.json``: what the network is and where it goes: ``slot`` (a ``scm.model.SLOTS``
  name), ``coupling`` (``"replace"``: the network is the slot's scheme; ``"residual"``: it
  corrects the physics scheme named in ``physics``), the network (``kind``, levels, options),
  the head (``kind`` and frozen scales), the package version and free-form ``provenance``
  (training configuration, data);
- ``weights.eqx``: the network's arrays (``equinox.tree_serialise_leaves``);
- ``normalization.json``: the frozen feature normalization (means and scales, with names);
- ``metrics.json``: whatever the training reported (losses, evaluation scores).

``save_artifact`` writes each file atomically; ``load_artifact`` checks every file and raises
``ConfigurationError`` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import numpy as np

from nn.features import PROFILE_NAMES, SCALAR_NAMES, Normalization
from nn.heads import AbstractHead, DiffusivityHead, FluxHead, TendencyHead
from nn.parameterization import NeuralParameterization, make_network
from physics.surface import AbstractSurfaceLayer
from scm.constants import MIN_LEVELS
from scm.errors import ConfigurationError
from scm.io import package_version, write_atomic
from scm.model import SLOTS
from scm.state import as_float

FORMAT = "hybrid-scm-artifact"
FORMAT_VERSION = 1
COUPLINGS = ("replace", "residual")
#: Head kind → (class, names of its constructor's scale arguments, in the ``scale`` order).
HEADS: dict[str, tuple[type, tuple[str, ...]]] = {
    "diffusivity": (DiffusivityHead, ("scale",)),
    "flux": (FluxHead, ("thl_scale", "momentum_scale")),
    "tendency": (TendencyHead, ("thl_scale", "momentum_scale")),
}
FILES = ("config.json", "weights.eqx", "normalization.json", "metrics.json")


class Artifact(NamedTuple):
    """A loaded artifact: its configuration, network, head and normalization."""

    config: dict
    network: eqx.Module
    head: AbstractHead
    normalization: Normalization
    metrics: dict

    def parameterization(self, surface: AbstractSurfaceLayer | None) -> NeuralParameterization:
        """The network as a scheme holding ``surface`` (a ``"residual"`` correction does not
        add the surface exchange again; its physics scheme already does)."""
        exchange = self.config["coupling"] == "replace"
        return NeuralParameterization(surface, self.normalization, self.network, self.head,
                                      surface_exchange=exchange)


def head_config(head: AbstractHead) -> dict:
    """The ``config.json`` entry that rebuilds ``head``."""
    for kind, (cls, names) in HEADS.items():
        if isinstance(head, cls):
            scale = np.atleast_1d(np.asarray(head.scale, float))
            # FluxHead and TendencyHead store (θl, u, v) scales; u and v share one.
            return {"kind": kind, "options": dict(zip(names, map(float, scale), strict=False))}
    raise ConfigurationError(f"no artifact format for head {type(head).__name__}")


def network_config(network: eqx.Module, n_levels: int) -> dict:
    """The ``config.json`` entry that rebuilds ``network`` (with ``make_network``)."""
    layers = network.layers
    kind = {"ColumnMLP": "mlp", "LocalConvNet": "conv"}.get(type(network).__name__)
    if kind is None:
        raise ConfigurationError(f"no artifact format for network {type(network).__name__}")
    width = int(layers[0].out_features if kind == "mlp" else layers[0].out_channels)
    options = {"width": width, "depth": len(layers) - 1}
    if kind == "conv":
        options["kernel_size"] = int(network.kernel_size)
    return {"kind": kind, "levels": int(n_levels), "options": options}


def save_artifact(directory: str | os.PathLike, scheme: NeuralParameterization, *,
                  n_levels: int, slot: str = "turbulence", coupling: str = "replace",
                  physics: str | None = None, metrics: dict | None = None,
                  provenance: dict | None = None) -> Path:
    """Write ``scheme`` (its network, head and normalization) as an artifact directory."""
    if slot not in SLOTS:
        raise ConfigurationError(f"slot must be one of {SLOTS} (got {slot!r})")
    if coupling not in COUPLINGS:
        raise ConfigurationError(f"coupling must be one of {COUPLINGS} (got {coupling!r})")
    if coupling == "residual" and not physics:
        raise ConfigurationError("a residual artifact must name its physics scheme")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": package_version(),
        "slot": slot, "coupling": coupling, "physics": physics,
        "network": network_config(scheme.network, n_levels), "head": head_config(scheme.head),
        "provenance": provenance or {},
    }
    n = scheme.normalization
    normalization = {
        "profile_names": list(PROFILE_NAMES), "scalar_names": list(SCALAR_NAMES),
        **{name: np.asarray(getattr(n, name), float).tolist()
           for name in ("profile_mean", "profile_scale", "scalar_mean", "scalar_scale")},
    }

    def text(obj):
        return lambda path: path.write_text(json.dumps(obj, indent=2, default=float))

    write_atomic(directory / "weights.eqx",
                 lambda path: eqx.tree_serialise_leaves(path, scheme.network))
    write_atomic(directory / "normalization.json", text(normalization))
    write_atomic(directory / "metrics.json", text(metrics or {}))
    write_atomic(directory / "config.json", text(config))  # last: marks the artifact complete
    return directory


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise ConfigurationError(f"artifact file {path} is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"artifact file {path} is not valid JSON: {error}") from None


#: Network kind → the options ``make_network`` takes for it (positive integers).
NETWORK_OPTIONS: dict[str, tuple[str, ...]] = {"mlp": ("width", "depth"),
                                               "conv": ("width", "depth", "kernel_size")}


def check_config(config, path: Path) -> None:
    """Raise ``ConfigurationError`` naming the entry of ``config.json`` (at ``path``), its
    value and what is allowed, unless ``config`` describes an artifact this version can
    build. Needs no array library: ``scm inspect`` runs it without loading the weights."""
    def entry(name: str):
        value = config
        for key in name.split("."):
            if not isinstance(value, dict) or key not in value:
                raise ConfigurationError(f"{path} lacks the entry {name}")
            value = value[key]
        return value

    def require(name: str, ok: bool, allowed: str) -> None:
        if not ok:
            raise ConfigurationError(f"{path}: {name} = {entry(name)!r} is not {allowed}")

    def positive_number(value, integer: bool) -> bool:
        kinds = int if integer else int | float
        return (isinstance(value, kinds) and not isinstance(value, bool)
                and math.isfinite(value) and value > 0)

    if not isinstance(config, dict):
        raise ConfigurationError(f"{path} must hold a JSON object (got {type(config).__name__})")
    require("format", entry("format") == FORMAT, f"{FORMAT!r}")
    require("slot", entry("slot") in SLOTS, f"one of {', '.join(SLOTS)}")
    require("coupling", entry("coupling") in COUPLINGS, f"one of {', '.join(COUPLINGS)}")
    if config["coupling"] == "residual":
        require("physics", isinstance(entry("physics"), str) and bool(config["physics"]),
                "the name of the physics scheme it corrects")
    kind = entry("network.kind")
    require("network.kind", kind in NETWORK_OPTIONS, f"one of {', '.join(NETWORK_OPTIONS)}")
    levels = entry("network.levels")
    require("network.levels", positive_number(levels, True) and levels >= MIN_LEVELS,
            f"an integer >= {MIN_LEVELS}")
    require("network.options", isinstance(entry("network.options"), dict), "a JSON object")
    for option in NETWORK_OPTIONS[kind]:
        require(f"network.options.{option}",
                positive_number(entry(f"network.options.{option}"), True), "a positive integer")
    head_kind = entry("head.kind")
    require("head.kind", head_kind in HEADS, f"one of {', '.join(HEADS)}")
    require("head.options", isinstance(entry("head.options"), dict), "a JSON object")
    for option in HEADS[head_kind][1]:
        require(f"head.options.{option}", positive_number(entry(f"head.options.{option}"),
                                                          False), "a positive number")


def read_config(directory: str | os.PathLike) -> dict:
    """The checked ``config.json`` of an artifact directory (``check_config``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigurationError(f"artifact directory {directory} does not exist"
                                 if not directory.exists() else
                                 f"artifact {directory} is not a directory")
    config = _read_json(directory / "config.json")
    check_config(config, directory / "config.json")
    return config


def load_artifact(directory: str | os.PathLike) -> Artifact:
    """Read and check an artifact directory written by ``save_artifact``: every problem is a
    ``ConfigurationError`` naming the file, the entry and what is wrong."""
    directory = Path(directory)
    config = read_config(directory)
    network_spec, head_spec = config["network"], config["head"]
    head_class, _ = HEADS[head_spec["kind"]]
    head = head_class(**{name: head_spec["options"][name]
                         for name in HEADS[head_spec["kind"]][1]})
    options = {name: network_spec["options"][name]
               for name in NETWORK_OPTIONS[network_spec["kind"]]}
    skeleton = make_network(network_spec["kind"], head, network_spec["levels"],
                            key=jax.random.key(0), **options)
    weights = directory / "weights.eqx"
    if not weights.exists():
        raise ConfigurationError(f"artifact file {weights} is missing")
    try:
        network = eqx.tree_deserialise_leaves(weights, skeleton)
    except Exception as error:  # a truncated or foreign file fails in numpy or equinox
        raise ConfigurationError(f"artifact file {weights} is corrupt or does not match "
                                 f"the network in config.json: {error}") from None
    if not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(network)
               if eqx.is_inexact_array(x)):
        raise ConfigurationError(f"artifact file {weights} holds non-finite weights")
    spec = _read_json(directory / "normalization.json")
    try:
        arrays = [np.asarray(spec[name], float) for name in
                  ("profile_mean", "profile_scale", "scalar_mean", "scalar_scale")]
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(
            f"{directory / 'normalization.json'} lacks or misformats {error}") from None
    expected = (len(PROFILE_NAMES), len(PROFILE_NAMES), len(SCALAR_NAMES), len(SCALAR_NAMES))
    if tuple(a.size for a in arrays) != expected or not all(np.isfinite(a).all()
                                                            for a in arrays):
        raise ConfigurationError(f"{directory / 'normalization.json'} must hold finite "
                                 f"means and scales of {PROFILE_NAMES} and {SCALAR_NAMES}")
    normalization = Normalization(*(as_float(a) for a in arrays))
    metrics_path = directory / "metrics.json"
    metrics = _read_json(metrics_path) if metrics_path.exists() else {}
    return Artifact(config, network, head, normalization, metrics)


__all__ = ["Artifact", "COUPLINGS", "FILES", "HEADS", "check_config", "load_artifact",
           "read_config", "save_artifact"]
