"""Real mergekit merges of real tiny checkpoints (trained a step apart), on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ctbench.errors import UserError
from ctbench.scoring.rewards import build_reward
from ctbench.training.compute import ComputeMeter
from ctbench.training.engine import Engine
from ctbench.training.merging import merge_checkpoints
from ctbench.training.rollout import HFRollout
from ctbench.training.tiny_base import ensure_base_checkpoint, load_base


@pytest.fixture(scope="module")
def checkpoints(tiny_track, tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two genuinely different fine-tunes of the base: an SFT step on math, one on qa."""
    folder = tmp_path_factory.mktemp("merge")
    rewards = {n: build_reward(t) for n, t in tiny_track.tasks.items()}
    paths = []
    for task, seed in (("math", 1), ("qa", 2)):
        model, tokenizer, _ = load_base(tiny_track)
        engine = Engine(
            model,
            tokenizer,
            tiny_track.tasks,
            rewards,
            HFRollout(tokenizer),
            rl=tiny_track.spec.rl,
            sft=tiny_track.spec.sft,
            meter=ComputeMeter(),
        )
        engine.train_stage({task: 1.0}, "sft", 2, seed)
        model.save_pretrained(folder / task)
        paths.append(folder / task)
    return paths[0], paths[1], ensure_base_checkpoint(tiny_track)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


def test_linear_merge_of_two_checkpoints_is_their_average(checkpoints, tmp_path):
    a, b, base = checkpoints
    merge_checkpoints([a, b], base, tmp_path / "linear", method="linear")
    merged, sa, sb = _state(tmp_path / "linear"), _state(a), _state(b)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)  # the inputs really differ
    for key in sa:
        torch.testing.assert_close(merged[key], (sa[key] + sb[key]) / 2, rtol=0, atol=1e-7)


def test_task_vector_methods_run_and_dare_is_seeded(checkpoints, tmp_path):
    a, b, base = checkpoints
    for method in ("task_arithmetic", "ties", "dare_ties"):
        merge_checkpoints([a, b], base, tmp_path / method, method=method, density=0.5, seed=4)
    merge_checkpoints([a, b], base, tmp_path / "again", method="dare_ties", density=0.5, seed=4)
    first, again = _state(tmp_path / "dare_ties"), _state(tmp_path / "again")
    assert all(torch.equal(first[k], again[k]) for k in first)
    ties, linear_sum = _state(tmp_path / "ties"), _state(a)
    assert any(not torch.equal(ties[k], linear_sum[k]) for k in ties)


def test_bad_merge_settings_name_the_field(checkpoints, tmp_path):
    a, b, base = checkpoints
    with pytest.raises(UserError, match=r"merge.method: unknown merge method 'avg'"):
        merge_checkpoints([a, b], base, tmp_path / "x", method="avg")
    with pytest.raises(UserError, match=r"merge.weights: expected one weight per source"):
        merge_checkpoints([a, b], base, tmp_path / "x", method="linear", weights=[1.0])
    with pytest.raises(UserError, match=r"merge.density"):
        merge_checkpoints([a, b], base, tmp_path / "x", method="ties", density=0.0)
