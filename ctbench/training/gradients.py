"""Per-task policy gradients at one model: the measurement behind the probe-free transfer
estimate (``bwt --param estimator=gradient``).

Training on task i for one step moves the weights by u_i; to first order that changes the
expected reward of task j by u_i · g_j, where g_j = ∇θ E[r_j] is task j's *reward
gradient*. So one rollout batch per task gives an estimate of Δ[i][j] (up to one positive
scale shared by every cell, which neither the order search nor a rank correlation sees):

* ``g_j``: REINFORCE with the group-centred reward, ∇ (1/N) Σ_n (r_n − r̄_group) log π(y_n),
  summed over each completion's tokens: the gradient of the expected reward itself, in
  reward units per unit weight (no division by the group std, which would rescale each
  task's sensitivity by how spread its rewards are).
* ``u_i``: the first update training on i would make. The engine trains with AdamW, whose
  first step is −lr · sign(∇L) elementwise (m/√v = g/|g| at step 1), so ``adam`` uses
  −sign(∇L_i) of the engine's own GRPO loss; ``sgd`` uses −∇L_i/‖∇L_i‖ for comparison.
  The two are recorded side by side; the estimator uses ``adam`` because that is the
  optimizer that trains the stages.

The product is asymmetric (u_i · g_j ≠ u_j · g_i), which the order search needs: a
symmetric Δ (a plain cosine) gives every order the same predicted value.

Written against the engine rather than inside it: it reuses the engine's rollouts, rewards
and log-probabilities (:meth:`Engine.sample_and_score`, :meth:`Engine.completion_logprobs`)
and never steps an optimizer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ctbench.training.adapters import trainable_parameters
from ctbench.training.engine import Engine
from ctbench.training.losses import group_advantages, grpo_loss


@dataclass
class TaskGradient:
    """One task's measured vectors (flattened over the trainable parameters)."""

    update_adam: torch.Tensor  # −sign(∇L_GRPO): AdamW's first step direction
    update_sgd: torch.Tensor  # −∇L_GRPO / ‖∇L_GRPO‖
    reward_gradient: torch.Tensor  # ∇ E[r] (REINFORCE, group-centred rewards)
    mean_reward: float
    samples: int
    generated_tokens: int


def _flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter], retain: bool) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).detach().flatten().float().cpu()
            for g, p in zip(grads, params, strict=True)
        ]
    )


def task_gradient(
    engine: Engine, task: str, batches: int, seed: int, *, phase: str = "probe"
) -> TaskGradient:
    """Sample ``batches`` RL batches of ``task`` (the track's prompts per step and group size)
    at the engine's bound model and return the averaged vectors. Compute (samples, tokens)
    is booked to ``phase``; no optimizer step is taken and the weights do not change."""
    if batches < 1:
        raise ValueError(f"expected at least one batch, got {batches}")
    try:
        return _task_gradient(engine, task, batches, seed, phase)
    finally:
        # Scoring for training fills a stateful judge's memory (the rubric judge's recent
        # outputs). A stage resets it when it ends, and so must a measurement: else the
        # next stage starts with this probe's outputs in memory in an uninterrupted run and
        # without them in a resumed one (which replays the probe from state.json).
        engine.rewards[task].reset()


def _task_gradient(engine: Engine, task: str, batches: int, seed: int, phase: str) -> TaskGradient:
    rng = random.Random(seed)
    generator = torch.Generator(device=engine.device).manual_seed(seed)
    params = trainable_parameters(engine.model)
    pool = engine.tasks[task].train
    group = engine.rl.group_size
    loss_grad = torch.zeros(sum(p.numel() for p in params))
    reward_grad = torch.zeros_like(loss_grad)
    rewards_seen: list[float] = []
    samples = tokens = 0
    engine.model.train()
    for _ in range(batches):
        items = [pool[rng.randrange(len(pool))] for _ in range(engine.rl.prompts_per_step)]
        rollout, rewards, _ = engine.sample_and_score(items, generator)
        mask = rollout.completion_mask.to(engine.device)
        with engine.autocast():
            logp, _ = engine.completion_logprobs(
                engine.model,
                rollout.sequences,
                rollout.attention_mask,
                rollout.prompt_length,
                group,
            )
        logp = logp.float()
        scaled = group_advantages(rewards, scale=engine.rl.scale_advantages).flatten()
        loss, _ = grpo_loss(  # at the sampling policy the ratio is 1: no clipping, no KL
            logp,
            logp.detach(),
            scaled.to(engine.device),
            mask,
            aggregation=engine.rl.aggregation,
        )
        centred = group_advantages(rewards, scale=False).flatten().to(engine.device)
        expected_reward = (centred[:, None] * logp * mask).sum() / mask.shape[0]
        loss_grad += _flat_grad(loss, params, retain=True)
        reward_grad += _flat_grad(expected_reward, params, retain=False)
        rewards_seen.append(float(rewards.mean()))
        samples += len(rollout.completions)
        tokens += rollout.generated_tokens
    engine.meter.book(phase, samples=samples, generated_tokens=tokens, trained_tokens=tokens)
    loss_grad /= batches
    reward_grad /= batches
    norm = float(loss_grad.norm())
    return TaskGradient(
        update_adam=-torch.sign(loss_grad),
        update_sgd=-loss_grad / norm if norm > 0 else torch.zeros_like(loss_grad),
        reward_gradient=reward_grad,
        mean_reward=sum(rewards_seen) / len(rewards_seen),
        samples=samples,
        generated_tokens=tokens,
    )


def first_order_transfer(
    tasks: Sequence[str], gradients: dict[str, TaskGradient], update: str
) -> list[list[float]]:
    """Δ̂[i][j] = u_i · g_j for ``update`` ``adam`` or ``sgd`` (row: task trained; column:
    task scored), in reward units per unit of learning rate for one step."""
    if update not in ("adam", "sgd"):
        raise ValueError(f"unknown update {update!r}; expected adam or sgd")
    attribute = "update_adam" if update == "adam" else "update_sgd"
    return [
        [
            float(torch.dot(getattr(gradients[i], attribute), gradients[j].reward_gradient))
            for j in tasks
        ]
        for i in tasks
    ]


def gradient_cosines(tasks: Sequence[str], gradients: dict[str, TaskGradient]) -> list[list[float]]:
    """cos(g_i, g_j) between reward gradients: symmetric, recorded for reading only."""
    out = []
    for i in tasks:
        row = []
        for j in tasks:
            a, b = gradients[i].reward_gradient, gradients[j].reward_gradient
            denominator = float(a.norm() * b.norm())
            row.append(float(torch.dot(a, b)) / denominator if denominator > 0 else 0.0)
        out.append(row)
    return out
