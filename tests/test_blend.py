"""CHORD's blended step against an independent derivation of its loss.

The expected values are written out here from the paper's formula, not taken from the
engine: log-probs as ``z_t - log Σ exp z`` on unpadded rows through the model's own forward,
φ = p(1 − p) on detached p, GRPO's group-normalised advantages in plain Python, and the
gradient from autograd of that formula.
"""

from __future__ import annotations

import math

import pytest
import torch

from ctbench.errors import UserError
from ctbench.scoring.rewards import build_reward
from ctbench.training.compute import ComputeMeter
from ctbench.training.engine import Engine, blend_batch_split
from ctbench.training.losses import chord_phi, sft_loss, token_logprobs
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


def test_phi_weighted_nll_by_hand():
    """Two expert tokens with p = 1/2 and p = 1/4: φ = 1/4 and 3/16."""
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0], [math.log(3.0), 0.0, 0.0]]])
    targets = torch.tensor([[1, 2]])
    logp, _ = token_logprobs(logits, targets)
    assert logp.tolist()[0] == pytest.approx([math.log(0.5), math.log(0.2)])
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0], [math.log(2.0), 0.0, 0.0]]])
    logp, _ = token_logprobs(logits, targets)
    phi = chord_phi(logp)
    assert phi.tolist()[0] == pytest.approx([0.25, 0.1875])
    mask = torch.ones(1, 2)
    expected = -(0.25 * math.log(0.5) + 0.1875 * math.log(0.25)) / 2
    assert float(sft_loss(logp, mask, weights=phi)) == pytest.approx(expected)
    assert float(sft_loss(logp, mask)) == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)


def _row_logprobs(model, ids: list[int], answer_tokens: int) -> torch.Tensor:
    """log p of the last ``answer_tokens`` tokens of one unpadded row, written out."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    z = logits[len(ids) - answer_tokens - 1 : len(ids) - 1]
    targets = torch.tensor(ids[len(ids) - answer_tokens :])
    return z.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)


def _chord_by_hand(engine, tiny_track, rl_items, expert_items, mu, seed, phi_on: bool):
    """(1 − μ)·GRPO + μ·φ-weighted NLL, every piece written out, as one autograd graph."""
    model, tokenizer, rl = engine.model, engine.tokenizer, tiny_track.spec.rl
    group = rl.group_size
    # The same rollouts the engine samples (same generator seed, unchanged weights).
    rollout = engine.rollout.generate(
        model,
        [item.prompt for item in rl_items for _ in range(group)],
        max_new_tokens=max(tiny_track.tasks[i.task].spec.max_new_tokens for i in rl_items),
        temperature=rl.temperature,
        greedy=False,
        generator=torch.Generator().manual_seed(seed),
    )
    advantages = []
    for index, item in enumerate(rl_items):
        completions = rollout.completions[index * group : (index + 1) * group]
        rewards = engine.rewards[item.task].score_groups([item], [completions], training=True)[0]
        mean = sum(rewards) / group
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (group - 1))
        advantages += [(r - mean) / (std + 1e-6) for r in rewards]
    rl_terms, rl_tokens = [], 0
    for row in range(len(advantages)):
        ids = rollout.sequences[row][rollout.attention_mask[row] == 1].tolist()
        n = int(rollout.completion_mask[row].sum())
        logp = _row_logprobs(model, ids, n)
        ratio = torch.exp(logp - logp.detach())  # on-policy: 1 in value, ∇ log p in gradient
        rl_terms.append((-advantages[row] * ratio).sum())
        rl_tokens += n
    rl_loss = torch.stack(rl_terms).sum() / rl_tokens
    sft_terms, sft_tokens = [], 0
    for item in expert_items:
        prompt = [tokenizer.bos_token_id, *tokenizer.encode(item.prompt, add_special_tokens=False)]
        answer = [*tokenizer.encode(item.demonstration, add_special_tokens=False)]
        answer.append(tokenizer.eos_token_id)
        logp = _row_logprobs(model, prompt + answer, len(answer))
        p = logp.detach().exp()
        phi = p * (1 - p) if phi_on else torch.ones_like(p)
        sft_terms.append((-phi * logp).sum())
        sft_tokens += len(answer)
    sft_loss_value = torch.stack(sft_terms).sum() / sft_tokens
    return (1 - mu) * rl_loss + mu * sft_loss_value, advantages, float(rl_loss.detach())


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("phi_on", [True, False], ids=["phi", "plain"])
def test_blend_loss_and_gradient_match_chord_written_out(engine, tiny_track, phi_on):
    rl_items = tiny_track.tasks["math"].train[:2]
    expert_items = tiny_track.tasks["math"].train[2:5]
    mu, seed = 0.3, 5
    model = engine.model
    model.zero_grad(set_to_none=True)
    blended, log = engine.blend_loss(
        rl_items,
        expert_items,
        mu,
        torch.Generator().manual_seed(seed),
        "train",
        phi_weighting=phi_on,
    )
    blended.backward()
    engine_grads = _grads(model)
    by_hand, advantages, rl_value = _chord_by_hand(
        engine, tiny_track, rl_items, expert_items, mu, seed, phi_on
    )
    by_hand.backward()
    hand_grads = _grads(model)
    assert any(abs(a) > 0.1 for a in advantages)  # the RL term carries gradient here
    assert log.extra["mu"] == mu and log.extra["expert_rows"] == 3
    assert log.extra["rl_loss"] == pytest.approx(rl_value, rel=1e-5, abs=1e-7)
    assert float(blended) == pytest.approx(float(by_hand), rel=1e-5)
    assert engine_grads.keys() == hand_grads.keys() and engine_grads
    for name, grad in engine_grads.items():
        torch.testing.assert_close(grad, hand_grads[name], rtol=1e-4, atol=1e-6, msg=name)


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
