"""Shared fixtures. Tests run the real model, tokenizer and sandbox; nothing is mocked."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_track():
    from ctbench.tracks.track import load_track

    return load_track("tiny")


@pytest.fixture()
def task_dir(tmp_path: Path) -> Path:
    """An empty tasks folder for writing YAML files under test."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    return folder
