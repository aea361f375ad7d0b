"""A step computed in micro-batches (gradient accumulation) equals the one-batch step.

Two engines start from the same weights and draw the same batch (same seed, so the same
rollouts); one computes the step whole, the other in micro-batches of a size that leaves a
short last chunk. Their gradients, losses and statistics must agree within float rounding,
for the GRPO term, the SFT term and CHORD's blend of the two.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_engine import tiny_engine

from ctbench.training.engine import Engine
from ctbench.training.tiny_base import load_base


def _engine(tiny_track, model, micro_batch: int) -> Engine:
    return tiny_engine(tiny_track, model, micro_batch)


@pytest.fixture(scope="module")
def base_model(tiny_track):
    return load_base(tiny_track)[0]


def _one_step(engine: Engine, objective: str, mixture: dict[str, float], hparams: dict):
    """One optimizer step at lr 0 (weights stay put), then the step's clipped gradients."""
    logs = engine.train_stage(mixture, objective, 1, seed=5, hparams={**hparams, "lr": 0.0})
    grads = [p.grad.detach().clone() for p in engine.model.parameters()]
    return logs[0], grads


@pytest.mark.parametrize(
    ("objective", "mixture", "hparams", "micro"),
    [
        ("rl", {"math": 1.0, "creative": 1.0}, {}, 24),  # 128 rows: 5 chunks of 24 and one of 8
        ("rl", {"code": 1.0}, {"aggregation": "seq-mean-token-mean"}, 40),
        ("sft", {"qa": 1.0, "math": 1.0}, {}, 7),
        ("blend", {"math": 1.0, "qa": 1.0}, {"mu_valley": 0.5, "mu_peak": 0.5}, 16),
    ],
)
def test_micro_batches_equal_the_whole_batch(
    tiny_track, base_model, objective: str, mixture, hparams, micro: int
) -> None:
    whole = _engine(tiny_track, copy.deepcopy(base_model), 0)
    parts = _engine(tiny_track, copy.deepcopy(base_model), micro)
    log_whole, grads_whole = _one_step(whole, objective, mixture, hparams)
    log_parts, grads_parts = _one_step(parts, objective, mixture, hparams)
    assert log_parts.loss == pytest.approx(log_whole.loss, rel=1e-5, abs=1e-6)
    assert log_parts.entropy == pytest.approx(log_whole.entropy, rel=1e-5)
    assert log_parts.extra["grad_norm"] == pytest.approx(log_whole.extra["grad_norm"], rel=1e-4)
    if objective != "sft":
        assert log_parts.reward == log_whole.reward  # the same rollouts were drawn
        assert log_parts.extra["clip_fraction"] == pytest.approx(
            log_whole.extra["clip_fraction"], abs=1e-6
        )
    assert any(g.abs().sum() > 0 for g in grads_whole)
    for a, b in zip(grads_whole, grads_parts, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_micro_batches_keep_whole_groups_on_the_grouped_path(tiny_track, base_model) -> None:
    """The grouped fast path computes a group's prompt once, so a chunk holds whole groups:
    a micro-batch smaller than a group becomes one group."""
    engine = _engine(tiny_track, copy.deepcopy(base_model), 5)
    assert engine.row_chunks(24, group=8) == [slice(0, 8), slice(8, 16), slice(16, 24)]
    assert engine.row_chunks(10) == [slice(0, 5), slice(5, 10)]
    engine = _engine(tiny_track, copy.deepcopy(base_model), 20)
    assert engine.row_chunks(40, group=8) == [slice(0, 16), slice(16, 32), slice(32, 40)]
