"""Shared fixtures. Tests run the real model, tokenizer and sandbox; nothing is mocked."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The fake OpenAI-compatible server's `judge_server` fixture (tests/judge_server.py).
pytest_plugins = ["judge_server"]


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
