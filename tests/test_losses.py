"""Loss functions against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ctbench.training.losses import (
    aggregate,
    chord_phi,
    group_advantages,
    grpo_loss,
    k3_kl,
    sft_loss,
)


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    # group 1: mean 0.5, unbiased std sqrt(1/3) = 0.57735 -> ±0.866025
    adv = group_advantages(rewards, eps=0.0 + 1e-12)
    assert adv[0].tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # no signal when all samples tie
    assert group_advantages(rewards, scale=False)[0].tolist() == [0.5, -0.5, -0.5, 0.5]


def test_aggregations_differ_by_hand():
    per_token = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert float(aggregate(per_token, mask, "token-mean")) == pytest.approx(7.0 / 4.0)
    assert float(aggregate(per_token, mask, "seq-mean-token-mean")) == pytest.approx(
        (1.0 + 4.0) / 2.0
    )


def test_grpo_loss_clipping_by_hand():
    # one token per sequence; ratios e^{0.5}=1.6487 (A=+1) and e^{-0.5}=0.6065 (A=-1)
    logp = torch.tensor([[0.0], [-1.0]])
    old = torch.tensor([[-0.5], [-0.5]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 1)
    loss, stats = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.2)
    # seq 1: max(-1.6487, -1.2) = -1.2 ; seq 2: max(0.6065, 0.8) = 0.8 -> mean -0.2
    assert float(loss) == pytest.approx(-0.2, abs=1e-4)
    assert stats["clip_fraction"] == pytest.approx(1.0)
    loss_high, _ = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    # clip-higher: seq 1 becomes max(-1.6487, -1.28) = -1.28 -> mean -0.24
    assert float(loss_high) == pytest.approx(-0.24, abs=1e-4)


def test_grpo_gradient_pushes_up_positive_advantage():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2))
    loss.backward()
    # d/dlogp of -A * exp(logp - old) at ratio 1 is -A, token-mean over 2 tokens -> -1 each
    assert logp.grad.tolist() == [[-1.0, -1.0]]


def test_k3_kl_is_zero_at_equality_and_matches_formula():
    a = torch.tensor([-1.0, -0.3])
    assert k3_kl(a, a).tolist() == [0.0, 0.0]
    r = -0.3 - (-1.0)
    assert float(k3_kl(torch.tensor(-1.0), torch.tensor(-0.3))) == pytest.approx(
        math.exp(r) - r - 1
    )
    logp = torch.zeros(1, 1)
    loss, stats = grpo_loss(
        logp, logp, torch.zeros(1), torch.ones(1, 1), ref_logp=torch.tensor([[-0.7]]), beta=0.5
    )
    assert float(loss) == pytest.approx(0.5 * (math.exp(-0.7) + 0.7 - 1))
    assert stats["kl"] == pytest.approx(math.exp(-0.7) + 0.7 - 1)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, torch.zeros(1), torch.ones(1, 1), beta=0.1)


def test_sft_loss_and_chord_phi_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.9, 0.2]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert float(sft_loss(logp, mask)) == pytest.approx(-(math.log(0.5) + math.log(0.9)) / 2)
    phi = chord_phi(logp)
    assert phi.tolist()[0] == pytest.approx([0.25, 0.09, 0.16])
    assert not phi.requires_grad
    weighted = sft_loss(logp, mask, weights=phi)
    assert float(weighted) == pytest.approx(-(0.25 * math.log(0.5) + 0.09 * math.log(0.9)) / 2)


def test_mu_schedule_by_hand():
    """CHORD-mu: warm-up 0 -> 0.9 over 2 steps, cosine to 0.05 over 4, then flat."""
    from ctbench.training.losses import mu_schedule

    values = [
        mu_schedule(step, 8, peak=0.9, valley=0.05, warmup_steps=2, decay_steps=4)
        for step in range(8)
    ]
    half = 0.5 * (1 + math.cos(math.pi / 4))  # cosine factor a quarter of the way through
    expected = [0.0, 0.45, 0.9, 0.05 + 0.85 * half, 0.475, 0.05 + 0.85 * (1 - half), 0.05, 0.05]
    assert values == pytest.approx(expected)
    # CHORD-phi: no warm-up, no decay -> the fixed valley value at every step.
    fixed = [
        mu_schedule(s, 5, peak=0.1, valley=0.1, warmup_steps=0, decay_steps=0) for s in range(5)
    ]
    assert fixed == [0.1] * 5
    with pytest.raises(ValueError):
        mu_schedule(5, 5, peak=0.1, valley=0.1, warmup_steps=0, decay_steps=0)


def test_chord_phi_peaks_at_one_half_and_is_detached():
    p = torch.tensor([0.0001, 0.25, 0.5, 0.75, 0.9999], requires_grad=True)
    phi = chord_phi(torch.log(p))
    expected = [0.0001 * 0.9999, 0.1875, 0.25, 0.1875, 0.9999 * 0.0001]
    assert phi.tolist() == pytest.approx(expected, rel=1e-3)
    assert not phi.requires_grad
