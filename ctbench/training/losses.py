"""Training objectives as pure functions of tensors (CleanRL habit: the loss as the paper
writes it, each term named). The engine composes them; CHORD's blend is
``(1 - mu) * grpo_loss + mu * sft_loss(weights=chord_phi(...))``, not a separate trainer.
"""

from __future__ import annotations

import math

import torch

from ctbench.tracks.engine_settings import Aggregation


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    how: Aggregation,
    totals: tuple[float, int] | None = None,
) -> torch.Tensor:
    """``token-mean``: every token of the batch weighs the same (DAPO/verl default);
    ``seq-mean-token-mean``: the original GRPO paper's mean over tokens, then sequences.

    ``totals`` = (real tokens, rows) of the whole batch when ``per_token`` is one
    micro-batch of it: the result is then this part's share of the whole batch's mean, so
    the shares of all micro-batches sum to it (gradient accumulation)."""
    if how == "token-mean":
        tokens = mask.sum().clamp(min=1.0) if totals is None else max(totals[0], 1.0)
        return (per_token * mask).sum() / tokens
    if how == "seq-mean-token-mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean() if totals is None else per_seq.sum() / totals[1]
    raise ValueError(f"unknown loss aggregation {how!r}")


def group_advantages(
    rewards: torch.Tensor, *, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO advantage: reward minus its group mean, over the group std when ``scale``.

    ``rewards`` is [B, G] (G samples of each of B prompts). ``scale=False`` is Dr. GRPO's
    unbiased variant (no division by the std, which up-weights near-solved prompts).
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=True) + eps)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref): exp(r) - r - 1 with r = ref - logp; >= 0."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    aggregation: Aggregation = "token-mean",
    totals: tuple[float, int] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-surrogate GRPO loss (DeepSeekMath eq. 3, with DAPO's clip-higher option).

    Shapes: ``logp``/``old_logp``/``mask`` [N, T]; ``advantages`` [N] (one per sequence,
    shared by its tokens). ``eps_high > eps_low`` is clip-higher. ``beta > 0`` adds the k3
    KL penalty to ``ref_logp`` (default 0, as in TRL and DAPO). ``totals``: see
    :func:`aggregate` (a micro-batch's share of the batch loss; the stats stay its own).
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)
    stats: dict[str, float] = {}
    if beta > 0.0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = float(aggregate(kl.detach(), mask, "token-mean"))
    with torch.no_grad():
        clipped_fraction = ((clipped > unclipped).float() * mask).sum() / mask.sum().clamp(min=1.0)
        stats["clip_fraction"] = float(clipped_fraction)
    return aggregate(per_token, mask, aggregation, totals), stats


def sft_loss(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    aggregation: Aggregation = "token-mean",
    totals: tuple[float, int] | None = None,
) -> torch.Tensor:
    """Token-level NLL on expert tokens (prompt tokens masked out), optionally weighted."""
    per_token = -logp if weights is None else -logp * weights
    return aggregate(per_token, mask, aggregation, totals)


def chord_phi(logp: torch.Tensor) -> torch.Tensor:
    """CHORD's token weight phi = p (1 - p), p = pi(expert token | prefix), detached.

    It vanishes for tokens the policy already predicts (p -> 1) and for ones far from it
    (p -> 0), so SFT nudges without overwriting the policy (CHORD, arXiv 2508.11408, sec. 4).
    """
    p = logp.detach().exp()
    return p * (1.0 - p)


def mu_schedule(
    step: int, total: int, *, peak: float, valley: float, warmup_steps: int, decay_steps: int
) -> float:
    """CHORD's SFT weight mu at ``step`` (0-based) of ``total``.

    Linear warm-up 0 → ``peak`` over ``warmup_steps`` (mu = peak * step / warmup_steps),
    cosine decay ``peak`` → ``valley`` over the next ``decay_steps``, then ``valley``. With
    no warm-up and no decay it is ``valley`` throughout (CHORD-phi's fixed mu).
    """
    if not 0 <= step < max(total, 1):
        raise ValueError(f"step {step} is outside a stage of {total} steps")
    if step < warmup_steps:
        return peak * step / warmup_steps
    if step < warmup_steps + decay_steps:
        progress = (step - warmup_steps) / decay_steps
        return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return valley


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token and the entropy of each predictive distribution."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    chosen = log_p.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return chosen, entropy
