"""CHORD's blended step is a composition of the engine's own RL and SFT terms."""

from __future__ import annotations

import pytest
import torch

from ctbench.errors import UserError
from ctbench.scoring.rewards import build_reward
from ctbench.training.compute import ComputeMeter
from ctbench.training.engine import Engine, blend_batch_split
from ctbench.training.rollout import HFRollout
from ctbench.training.tiny_base import load_base


@pytest.fixture()
def engine(tiny_track) -> Engine:
    model, tokenizer, _ = load_base(tiny_track)
    rewards = {n: build_reward(t) for n, t in tiny_track.tasks.items()}
    return Engine(
        model,
        tokenizer,
        tiny_track.tasks,
        rewards,
        HFRollout(tokenizer),
        rl=tiny_track.spec.rl,
        sft=tiny_track.spec.sft,
        meter=ComputeMeter(),
    )


def test_blend_batch_keeps_the_sequence_count_of_an_rl_step():
    assert blend_batch_split(16, 8, 0.2) == (13, 24)  # 104 rollouts + 24 expert rows = 128
    assert blend_batch_split(16, 8, 0.0) == (16, 0)
    assert blend_batch_split(16, 8, 0.99) == (1, 120)


def test_blend_loss_is_the_weighted_sum_of_rl_and_sft(engine, tiny_track):
    rl_items = tiny_track.tasks["math"].train[:2]
    expert_items = tiny_track.tasks["math"].train[2:5]
    mu = 0.3

    def terms():
        torch.manual_seed(0)
        rl, _ = engine.rl_loss(rl_items, torch.Generator().manual_seed(5), "train")
        sft, _ = engine.sft_loss(expert_items, "train", phi_weighting=True)
        return rl, sft

    rl, sft = terms()
    torch.manual_seed(0)
    blended, log = engine.blend_loss(
        rl_items, expert_items, mu, torch.Generator().manual_seed(5), "train", phi_weighting=True
    )
    assert float(blended) == pytest.approx(float((1 - mu) * rl + mu * sft), rel=1e-6)
    assert log.extra["mu"] == mu and log.extra["expert_rows"] == 3
    plain, _ = engine.sft_loss(expert_items, "train", phi_weighting=False)
    assert float(plain) > float(sft)  # phi ≤ 1/4 shrinks every token's NLL


def test_stage_hparams_follow_the_objective(engine):
    assert engine.stage_config("sft", {"lr": 0.01}).sft.lr == 0.01
    blend = engine.stage_config("blend", {"mu_peak": 0.9, "lr": 1e-4, "phi": False})
    assert (blend.blend.mu_peak, blend.rl.lr, blend.blend.phi) == (0.9, 1e-4, False)
    with pytest.raises(UserError, match="unknown stage hyper-parameter 'mu_peak'"):
        engine.stage_config("rl", {"mu_peak": 0.9})
    with pytest.raises(UserError, match="phi: expected bool, got 1"):
        engine.stage_config("blend", {"phi": 1})
    with pytest.raises(UserError, match=r"expert_share: expected a value in \[0, 1\]"):
        engine.stage_config("blend", {"expert_share": 1.5})
