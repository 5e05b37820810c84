"""Provenance of the files this package writes: the installed version and the command line
that writes them (importing nothing heavy: the command line uses it before it loads JAX)."""

from __future__ import annotations

import importlib.metadata
import shlex
import sys
from pathlib import Path

PACKAGE = "hybrid-scm"


def package_version() -> str:
    """Installed version of ``hybrid-scm`` ("unknown" when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


#: The command line of this process as ``record_command_line`` recorded it.
_command_line: str | None = None


def record_command_line(argv: list[str]) -> None:
    """Record the command line of this process (the ``scm`` command line, say): every file
    written from now on names it in its ``history`` attribute."""
    global _command_line
    _command_line = shlex.join(argv)


def command_line() -> str:
    """The recorded command line, else the Python command line that started the process."""
    return _command_line or shlex.join([Path(sys.executable).name, *sys.argv])
