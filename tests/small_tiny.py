"""The tiny track with its evaluation cut, for tests that run many whole runs.

Evaluating four eval sets of up to 200 items and a 48-prompt entropy probe after every
stage is ~80% of a budget-8 tiny run; the runs these tests make check behaviour (stages,
budgets, resume, files), not scores. This is the shipped track with two lines added to its
``eval:`` section, ``max_items: 50`` (each task scored on its first 50 eval items) and
``entropy_prompts: 12``; tasks, recipe and model are unchanged, so the shipped base
checkpoint (linked beside the copy) is the one it uses. Written once per test process into
a temporary folder (``--track PATH`` resolves the tasks beside the track file)."""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from functools import cache
from pathlib import Path

from ctbench.tracks.resources import tasks_dir

TASKS = ("math", "code", "qa", "creative")


def _cut(text: str, pattern: str, value: str) -> str:
    text, count = re.subn(pattern, value, text, flags=re.MULTILINE)
    assert count == 1, f"{pattern!r} should occur once"
    return text


@cache
def small_tiny_track() -> str:
    """The path of the cut track's YAML (as ``RunConfig.track`` or ``--track`` takes it)."""
    root = Path(tempfile.mkdtemp(prefix="ctbench-small-tiny-")) / "tasks"
    atexit.register(shutil.rmtree, root.parent, True)
    (root / "tracks").mkdir(parents=True)
    for task in TASKS:
        shutil.copy(tasks_dir() / f"{task}.yaml", root / f"{task}.yaml")
    shipped = tasks_dir() / "tracks"
    track = (shipped / "tiny.yaml").read_text()
    base = re.search(r"^  shipped: (\S+)$", track, flags=re.MULTILINE).group(1)
    (root / "tracks" / base).symlink_to(shipped / base, target_is_directory=True)
    track = _cut(track, r"^name: tiny$", "name: tiny-small-eval")
    track = _cut(track, r"^  entropy_prompts: 48$", "  entropy_prompts: 12\n  max_items: 50")
    path = root / "tracks" / "tiny-small-eval.yaml"
    path.write_text(track)
    return str(path)
