"""The tiny track's base model is weak but not hopeless on every task (the band's base half).

The RL half (a single-task stage gains >= 0.10) takes minutes, so it is measured by
``benchmarks/band.py`` and reported in the README rather than re-run here.
"""

from __future__ import annotations

import hashlib

import pytest

from ctbench.runs.calibration import BAND_HIGH, BAND_LOW
from ctbench.runs.evaluate import Evaluator
from ctbench.scoring.rewards import build_reward, chance_level
from ctbench.training.compute import ComputeMeter
from ctbench.training.rollout import HFRollout
from ctbench.training.tiny_base import load_base, normalised, shipped_checkpoint_dir


def test_shipped_base_matches_the_track_recipe(tiny_track):
    assert shipped_checkpoint_dir(tiny_track) is not None, (
        "the shipped tiny base was built by another recipe or task set; rebuild it with "
        "`ctbench base --rebuild` and copy it to tasks/tracks/tiny-base"
    )


# SHA-256 of the shipped weights (tasks/tracks/tiny-base/model.safetensors). Every published
# number was measured from these bytes: a rebuilt or edited checkpoint must change this line
# in the same commit, with the README's band table and results re-measured.
SHIPPED_WEIGHTS_SHA256 = "95752382c0ab3ff13249cbf3fab5e74e729c540e0661ca32e2053ef8d52253c2"


def test_shipped_base_weights_are_the_published_ones(tiny_track):
    folder = shipped_checkpoint_dir(tiny_track)
    assert folder is not None
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert digest == SHIPPED_WEIGHTS_SHA256, (
        "tasks/tracks/tiny-base/model.safetensors is not the checkpoint the published numbers "
        "were measured with"
    )


def test_every_tiny_task_starts_inside_the_band(tiny_track):
    model, tokenizer, _ = load_base(tiny_track)
    rewards = {n: build_reward(t) for n, t in tiny_track.tasks.items()}
    evaluator = Evaluator(tiny_track.tasks, rewards, HFRollout(tokenizer), ComputeMeter())
    for name, task in tiny_track.tasks.items():
        score = evaluator.evaluate_task(model, task, seed=0).score
        assert BAND_LOW <= normalised(score, chance_level(task)) <= BAND_HIGH, name


def test_base_builder_runs_and_caches(tmp_path, monkeypatch):
    """The reproducible build path, on a short recipe: same seed → identical weights."""
    import shutil

    from ctbench.tracks.resources import data_root
    from ctbench.tracks.track import load_track
    from ctbench.training.tiny_base import ensure_base_checkpoint

    shutil.copytree(data_root() / "tasks", tmp_path / "tasks")
    track_file = tmp_path / "tasks" / "tracks" / "tiny.yaml"
    text = (
        track_file.read_text()
        .replace("max_steps: 3000", "max_steps: 6")
        .replace("check_every: 50", "check_every: 3")
    )
    track_file.write_text(text.replace("dev_items: 128", "dev_items: 8"))
    monkeypatch.setenv("CTBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("CTBENCH_CACHE", str(tmp_path / "cache"))
    track = load_track("tiny")
    assert shipped_checkpoint_dir(track) is None  # the recipe changed: the shipped base is not used
    seen = []
    first = ensure_base_checkpoint(track, lambda step, total, dev: seen.append(step))
    assert seen == [3, 6] and (first / "model.safetensors").exists()
    assert ensure_base_checkpoint(track, lambda *a: pytest.fail("rebuilt a cached base")) == first
    from safetensors.torch import load_file

    weights = load_file(first / "model.safetensors")
    rebuilt = ensure_base_checkpoint(track, None, rebuild=True)
    again = load_file(rebuilt / "model.safetensors")
    assert all((weights[k] == again[k]).all() for k in weights)
