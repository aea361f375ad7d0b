"""Where the shipped data (task YAML, track specs, baseline recipes) lives.

In a source checkout (the editable install the README uses) the data sits at the repository
top level; a wheel carries copies under ``ctbench/_data``. ``CTBENCH_HOME`` overrides both,
for users who keep their own task files.
"""

from __future__ import annotations

import os
from pathlib import Path

# This module sits in ctbench/tracks/; the package root is one level up.
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """The folder holding ``tasks/`` and ``baselines/``."""
    override = os.environ.get("CTBENCH_HOME")
    if override:
        return Path(override)
    bundled = _PACKAGE_DIR / "_data"
    if (bundled / "tasks").is_dir():
        return bundled
    return _PACKAGE_DIR.parent


def tasks_dir() -> Path:
    return data_root() / "tasks"


def tracks_dir() -> Path:
    return tasks_dir() / "tracks"


def cache_dir() -> Path:
    """Where built base checkpoints are cached (``CTBENCH_CACHE`` or ~/.cache/ctbench)."""
    override = os.environ.get("CTBENCH_CACHE")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ctbench"
