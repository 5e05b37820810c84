"""Trained artifacts: one directory that holds everything needed to run a trained network,
and installing one into any model.

Layout of an artifact directory:

- ``config.json``: what the network is and where it goes: ``slot`` (a ``scm.model.SLOTS``
  name), ``coupling`` (``"replace"``: the network is the slot's scheme; ``"residual"``: it
  corrects the physics scheme the slot holds, named in ``physics`` and ``physics_class``),
  the network's recipe (``kind``, levels, options: ``nn.networks.make_network``), the head
  (``kind`` and frozen scales), the feature names, whether the out-of-distribution fallback
  is on by default (``ood``), the model's ``name``, training ``seed`` and ``time_step``, the
  package version
  and free-form ``provenance`` (training configuration, data);
- ``weights.eqx``: the network's arrays (``equinox.tree_serialise_leaves``; non-array leaves
  such as activation functions come from the recipe);
- ``normalization.json``: the frozen feature normalization (means and scales, with names);
- ``ood.json`` (optional): the input-distance detector (``nn.ood.InputDistance``);
- ``metrics.json``: whatever the training reported (losses, evaluation scores).

``save_artifact`` checks and serializes everything before it touches the disk, then writes
each file atomically (``config.json`` last: it marks the artifact complete), so a network it
cannot describe leaves nothing behind. ``load_artifact`` checks every file and raises
``ConfigurationError`` naming the file and what is wrong. ``install_artifact`` puts the
network into a model's slot, over the surface layer of the scheme already there.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import numpy as np

from nn.features import FeatureSet, Normalization
from nn.heads import AbstractHead, DiffusivityHead, FluxHead, TendencyHead
from nn.networks import network_recipe
from nn.ood import InputDistance, OODFallback
from nn.parameterization import NeuralParameterization, make_network
from nn.wrappers import Residual
from physics.surface import AbstractSurfaceLayer
from scm.constants import MIN_LEVELS
from scm.errors import ConfigurationError, check_choice
from scm.io import package_version, write_atomic
from scm.model import SLOTS, Model
from scm.state import as_float

FORMAT = "hybrid-scm-artifact"
FORMAT_VERSION = 2
COUPLINGS = ("replace", "residual")
#: Head kind → (class, names of its constructor's scale arguments, in the ``scale`` order).
HEADS: dict[str, tuple[type, tuple[str, ...]]] = {
    "diffusivity": (DiffusivityHead, ("scale",)),
    "flux": (FluxHead, ("thl_scale", "momentum_scale")),
    "tendency": (TendencyHead, ("thl_scale", "momentum_scale")),
}
FILES = ("config.json", "weights.eqx", "normalization.json", "metrics.json")
_NORMALIZATION = ("profile_mean", "profile_scale", "scalar_mean", "scalar_scale")
_DETECTOR = ("profile_mean", "profile_scale", "scalar_mean", "scalar_scale", "threshold",
             "width")


class Artifact(NamedTuple):
    """A loaded artifact: its configuration, network, head, normalization, features and
    out-of-distribution detector (``None`` if it has none; its surface layer is set when
    installed)."""

    config: dict
    network: eqx.Module
    head: AbstractHead
    normalization: Normalization
    metrics: dict
    features: FeatureSet
    detector: InputDistance | None = None

    @property
    def name(self) -> str:
        """The model's name (``config["name"]``; else the directory's name without a
        ``_seed<k>`` suffix, recorded at load time)."""
        return self.config["name"]

    def parameterization(self, surface: AbstractSurfaceLayer | None) -> NeuralParameterization:
        """The network as a scheme holding ``surface`` (a ``"residual"`` correction does not
        add the surface exchange again; its physics scheme already does)."""
        exchange = self.config["coupling"] == "replace"
        return NeuralParameterization(surface, self.normalization, self.network, self.head,
                                      surface_exchange=exchange, features=self.features)


def head_config(head: AbstractHead) -> dict:
    """The ``config.json`` entry that rebuilds ``head``."""
    for kind, (cls, names) in HEADS.items():
        if isinstance(head, cls):
            scale = np.atleast_1d(np.asarray(head.scale, float))
            # FluxHead and TendencyHead store (θl, u, v) scales; u and v share one.
            return {"kind": kind, "options": dict(zip(names, map(float, scale), strict=False))}
    raise ConfigurationError(f"no artifact format for head {type(head).__name__}")


def network_config(network: eqx.Module, n_levels: int, recipe=None) -> dict:
    """The ``config.json`` entry that rebuilds ``network``: its recipe ``(kind, options)``
    (the built-in kinds are recognised; any other network needs ``recipe``)."""
    kind, options = network_recipe(network) if recipe is None else recipe
    return {"kind": kind, "levels": int(n_levels), "options": dict(options)}


def _arrays_json(obj, names) -> dict:
    return {name: np.asarray(getattr(obj, name), float).tolist() for name in names}


def save_artifact(directory: str | os.PathLike, scheme: NeuralParameterization, *,
                  n_levels: int, slot: str = "turbulence", coupling: str = "replace",
                  physics: str | None = None, physics_class: str | None = None,
                  metrics: dict | None = None, provenance: dict | None = None,
                  recipe: tuple[str, dict] | None = None,
                  detector: InputDistance | None = None, fallback: bool = False,
                  name: str | None = None, seed: int | None = None,
                  time_step: float | None = None) -> Path:
    """Write ``scheme`` (its network, head, features and normalization; the ``detector`` if
    given, with ``fallback`` its default) as an artifact directory. ``recipe`` is the
    ``(kind, options)`` of a network that is not a built-in kind; ``time_step`` (s), the
    model step it was trained at, is recorded."""
    check_choice("slot", slot, SLOTS)
    check_choice("coupling", coupling, COUPLINGS)
    if coupling == "residual" and not physics:
        raise ConfigurationError("a residual artifact must name its physics scheme")
    if fallback and detector is None:
        raise ConfigurationError("an artifact with the fallback on needs its detector")
    directory = Path(directory)
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": package_version(),
        "name": name or _default_name(directory), "seed": seed, "time_step": time_step,
        "slot": slot, "coupling": coupling, "physics": physics, "physics_class": physics_class,
        "network": network_config(scheme.network, n_levels, recipe),
        "head": head_config(scheme.head), "features": list(scheme.features.names),
        "ood": {"fallback": bool(fallback)}, "provenance": provenance or {},
    }
    features = scheme.features
    normalization = {"profile_names": list(features.profiles),
                     "scalar_names": list(features.scalars),
                     **_arrays_json(scheme.normalization, _NORMALIZATION)}
    weights = io.BytesIO()
    eqx.tree_serialise_leaves(weights, scheme.network)
    files = {"weights.eqx": weights.getvalue(), "normalization.json": _text(normalization),
             "metrics.json": _text(metrics or {})}
    if detector is not None:
        files["ood.json"] = _text({"features": list(detector.features.names),
                                   **_arrays_json(detector, _DETECTOR)})
    files["config.json"] = _text(config)  # last: marks the artifact complete
    directory.mkdir(parents=True, exist_ok=True)
    for filename, content in files.items():
        write = (lambda p, c=content: p.write_bytes(c)) if isinstance(content, bytes) else (
            lambda p, c=content: p.write_text(c))
        write_atomic(directory / filename, write)
    return directory


def _text(obj) -> str:
    return json.dumps(obj, indent=2, default=float)


def _default_name(directory: Path) -> str:
    return re.sub(r"_seed\d+$", "", directory.name)


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise ConfigurationError(f"artifact file {path} is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"artifact file {path} is not valid JSON: {error}") from None


def _arrays(path: Path, spec: dict, names, sizes) -> list:
    try:
        arrays = [np.asarray(spec[name], float) for name in names]
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(f"{path} lacks or misformats {error}") from None
    if [a.size for a in arrays] != list(sizes) or not all(np.isfinite(a).all() for a in arrays):
        raise ConfigurationError(f"{path} must hold finite arrays {list(names)} of sizes "
                                 f"{list(sizes)} for its features")
    return [as_float(a) for a in arrays]


#: Built-in network kind → the options ``make_network`` needs for it (positive integers);
#: other kinds are ``package.module:callable`` recipes with options of their own.
NETWORK_OPTIONS: dict[str, tuple[str, ...]] = {"mlp": ("width", "depth"),
                                               "conv": ("width", "depth", "kernel_size"),
                                               "eqx_mlp": ("width", "depth")}


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
    require("network.kind", isinstance(kind, str) and (kind in NETWORK_OPTIONS or ":" in kind),
            f"one of {', '.join(NETWORK_OPTIONS)} or a 'package.module:callable' recipe")
    levels = entry("network.levels")
    require("network.levels", positive_number(levels, True) and levels >= MIN_LEVELS,
            f"an integer >= {MIN_LEVELS}")
    require("network.options", isinstance(entry("network.options"), dict), "a JSON object")
    for option in NETWORK_OPTIONS.get(kind, ()):
        require(f"network.options.{option}",
                positive_number(entry(f"network.options.{option}"), True), "a positive integer")
    head_kind = entry("head.kind")
    require("head.kind", head_kind in HEADS, f"one of {', '.join(HEADS)}")
    require("head.options", isinstance(entry("head.options"), dict), "a JSON object")
    for option in HEADS[head_kind][1]:
        require(f"head.options.{option}", positive_number(entry(f"head.options.{option}"),
                                                          False), "a positive number")
    if "features" in config:
        require("features", isinstance(config["features"], list | None), "a list of names")


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
    config_path = directory / "config.json"
    config = read_config(directory)
    network_spec, head_spec = config["network"], config["head"]
    head_class, _ = HEADS[head_spec["kind"]]
    config.setdefault("name", _default_name(directory))
    config.setdefault("ood", {"fallback": False})
    try:
        features = FeatureSet.from_names(config.get("features") or FeatureSet.from_names().names)
    except ConfigurationError as error:
        raise ConfigurationError(f"{config_path}: {error}") from None
    head = head_class(**{name: head_spec["options"][name]
                         for name in HEADS[head_spec["kind"]][1]})
    skeleton = make_network(network_spec["kind"], head, network_spec["levels"],
                            key=jax.random.key(0), features=features,
                            **network_spec["options"])
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
    n_profiles, n_scalars = len(features.profiles), len(features.scalars)
    path = directory / "normalization.json"
    normalization = Normalization(*_arrays(path, _read_json(path), _NORMALIZATION,
                                           (n_profiles, n_profiles, n_scalars, n_scalars)))
    detector = None
    path = directory / "ood.json"
    if path.exists():
        levels = network_spec["levels"]
        sizes = (n_profiles * levels, n_profiles * levels, n_scalars, n_scalars, 1, 1)
        arrays = _arrays(path, _read_json(path), _DETECTOR, sizes)
        arrays[0] = arrays[0].reshape(n_profiles, levels)
        arrays[1] = arrays[1].reshape(n_profiles, levels)
        detector = InputDistance(features, None, *arrays[:4], arrays[4].reshape(()),
                                 arrays[5].reshape(()))
    elif config["ood"].get("fallback"):
        raise ConfigurationError(f"artifact file {path} is missing (the fallback is on)")
    metrics_path = directory / "metrics.json"
    metrics = _read_json(metrics_path) if metrics_path.exists() else {}
    return Artifact(config, network, head, normalization, metrics, features, detector)


def install_artifact(model: Model, artifact: Artifact, *,
                     fallback: bool | None = None) -> Model:
    """``model`` with the artifact's network in its slot: replacing the scheme there, or
    correcting it (``"residual"``: the slot must hold the physics the network was trained
    to correct), over that scheme's surface layer. With ``fallback`` (default: the
    artifact's ``ood`` setting) the network hands over to the scheme it replaced, or its
    correction fades out, where its inputs leave the training distribution
    (``nn.ood.OODFallback``)."""
    config = artifact.config
    slot = config["slot"]
    current = getattr(model, slot)
    surface = getattr(current, "surface", None)
    if surface is None:
        raise ConfigurationError(
            f"the model has no surface layer in its {slot!r} slot to give the network")
    levels = config["network"]["levels"]
    if config["network"]["kind"] != "conv" and model.grid.n_levels != levels:
        raise ConfigurationError(
            f"the artifact's column network was trained on {levels} levels; the model has "
            f"{model.grid.n_levels} (use it on {levels} levels)")
    expected = config.get("physics_class")
    if config["coupling"] == "residual" and expected and type(current).__name__ != expected:
        raise ConfigurationError(
            f"the artifact corrects {expected} ({config.get('physics')!r}); the model's "
            f"{slot!r} slot holds {type(current).__name__} (build it with that closure)")
    fallback = config["ood"].get("fallback", False) if fallback is None else fallback
    if fallback and artifact.detector is None:
        raise ConfigurationError("the artifact has no out-of-distribution detector "
                                 "(ood.json) for the fallback")
    scheme = artifact.parameterization(surface)
    detector = None if artifact.detector is None else eqx.tree_at(
        lambda d: d.surface, artifact.detector, surface, is_leaf=lambda x: x is None)
    if config["coupling"] == "residual":
        correction = OODFallback(scheme, detector) if fallback else scheme
        return model.with_slot(slot, Residual(current, correction))
    return model.with_slot(slot, OODFallback(scheme, detector, current) if fallback
                           else scheme)


__all__ = ["Artifact", "COUPLINGS", "FILES", "HEADS", "check_config", "install_artifact",
           "load_artifact", "read_config", "save_artifact"]
