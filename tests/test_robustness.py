"""Bad input to the Python API: every call is refused with one clear line naming the argument,
its value and what is allowed, before anything compiles, and nothing on disk changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments.cases import build_case
from nn.artifact import load_artifact
from scm.errors import ConfigurationError
from scm.integration import rollout
from scm.io import read_netcdf

ARTIFACT = (Path(__file__).parent.parent / "benchmarks" / "results" / "turbulence" / "artifacts"
            / "replace_online_seed0")


def refused(call, message: str) -> str:
    """The one-line message of the ``ConfigurationError`` that ``call()`` raises."""
    with pytest.raises(ConfigurationError) as raised:
        call()
    text = str(raised.value)
    assert "\n" not in text and message in text, text
    return text


@pytest.fixture(scope="module")
def column(kit):
    g = kit.grid(1000.0, 8)
    return kit.model(g, momentum=1.0, scalar=1.0), kit.state(g), kit.forcing(g)


@pytest.mark.parametrize("change, message", [
    ({"n_steps": -4}, "n_steps must be an integer >= 0 (got -4)"),
    ({"n_steps": 2.5}, "n_steps must be an integer >= 0 (got 2.5)"),
    ({"n_steps": True}, "n_steps must be an integer >= 0 (got True)"),
    ({"save_every": 0}, "save_every must be an integer >= 1 (got 0)"),
    ({"n_steps": 5, "save_every": 2}, "n_steps (5) must be a multiple of save_every (2)"),
    ({"dt": float("nan")}, "dt must be a finite number > 0 s (got nan)"),
    ({"dt": -60.0}, "dt must be a finite number > 0 s (got -60)"),
    ({"dt": float("inf")}, "dt must be a finite number > 0 s (got inf)"),
    ({"t0": float("nan")}, "t0 must be a finite number of s (got nan)"),
])
def test_rollout_refuses_bad_arguments(column, change, message):
    model, state, forcing = column
    arguments = {"t0": 0.0, "dt": 60.0, "n_steps": 4, "save_every": 1} | change
    refused(lambda: rollout(model, state, forcing, **arguments), message)


def test_rollout_refuses_a_state_on_another_grid(column, kit):
    model, _, forcing = column
    state = kit.state(kit.grid(1000.0, 9))
    refused(lambda: rollout(model, state, forcing, 0.0, 60.0, 4),
            "state0.u has shape (9,) but the grid has 8 levels")


@pytest.mark.parametrize("options, message", [
    ({"geostrophic_wind": "8"}, "geostrophic_wind must be a number in m s-1 (got '8' of type "
                                "str)"),
    ({"geostrophic_wind": "abc"}, "geostrophic_wind must be a number"),
    ({"geostrophic_wind": None}, "geostrophic_wind must be a number"),
    ({"geostrophic_wind": float("nan")}, "geostrophic_wind must be finite"),
    ({"levels": 32.5}, "levels must be an integer (got 32.5)"),
    ({"levels": "32"}, "levels must be an integer (got '32')"),
    ({"dt": float("nan")}, "dt must be > 0 (got nan s)"),
    ({"dt": "30"}, "dt must be a number in s (got '30'"),
    ({"hours": float("inf")}, "hours must be > 0"),
    ({"hours": 0.001}, "hours = 0.001 h (3.6 s) must be a whole, nonzero number of time steps"),
    ({"dt": 1e-6}, "number of steps (hours / dt = 9 h / 1e-06 s) = 3.24e+10 is outside"),
    ({"turbulence": "magic"}, "unknown turbulence 'magic'"),
    ({"no_such": 1.0}, "unknown parameter(s) ['no_such'] for case 'gabls1'"),
])
def test_build_case_refuses_bad_options(options, message):
    refused(lambda: build_case("gabls1", **options), message)


def test_read_netcdf_refuses_what_is_not_a_netcdf_file(tmp_path):
    refused(lambda: read_netcdf(tmp_path / "none.nc"), f"{tmp_path}/none.nc does not exist")
    refused(lambda: read_netcdf(tmp_path), f"{tmp_path} is not a file")
    (tmp_path / "text.nc").write_text("hello")
    refused(lambda: read_netcdf(tmp_path / "text.nc"), "text.nc cannot be read as netCDF")


def _edit(config: dict, entry: str, value) -> dict:
    """``config`` with the dotted ``entry`` set to ``value`` (removed for ``...``)."""
    *path, last = entry.split(".")
    inner = config
    for key in path:
        inner = inner[key]
    if value is ...:
        del inner[last]
    else:
        inner[last] = value
    return config


@pytest.mark.parametrize("entry, value, message", [
    ("head.options", ..., "lacks the entry head.options"),
    ("network.levels", "16", "network.levels = '16' is not an integer >= 3"),
    ("network.levels", 1, "network.levels = 1 is not an integer >= 3"),
    ("network.kind", "transformer", "network.kind = 'transformer' is not one of mlp, conv"),
    ("network.options.width", -3, "network.options.width = -3 is not a positive integer"),
    ("head.kind", "magic", "head.kind = 'magic' is not one of diffusivity, flux, tendency"),
    ("head.options.scale", "big", "head.options.scale = 'big' is not a positive number"),
    ("slot", "dynamics", "slot = 'dynamics' is not one of"),
    ("coupling", "blend", "coupling = 'blend' is not one of replace, residual"),
    ("format", "other", "format = 'other' is not 'hybrid-scm-artifact'"),
    ("network", ..., "lacks the entry network"),
])
def test_load_artifact_refuses_a_bad_config(tmp_path, entry, value, message):
    from scm.constants import MIN_LEVELS

    directory = shutil.copytree(ARTIFACT, tmp_path / "artifact")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(_edit(config, entry, value)))
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    refused(lambda: load_artifact(directory), message.replace(">= 3", f">= {MIN_LEVELS}"))
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").write_text("{not json"), "is not valid JSON"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), "must hold a JSON object"),
    (lambda d: (d / "weights.eqx").unlink(), "weights.eqx is missing"),
    (lambda d: (d / "weights.eqx").write_bytes(b"\0" * 10), "weights.eqx is corrupt"),
])
def test_load_artifact_refuses_damaged_files(tmp_path, damage, message):
    directory = shutil.copytree(ARTIFACT, tmp_path / "artifact")
    damage(directory)
    refused(lambda: load_artifact(directory), message)
