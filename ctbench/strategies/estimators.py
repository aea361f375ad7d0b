"""Transfer estimators behind one interface: how a strategy gets Δ before it orders tasks.

``bwt --param estimator=…`` picks one:

* ``probes`` (default, Omni-Thinker's way): one short single-task RL probe per task from
  the base; Δ[i][j] = score on j after the probe on i − base score on j. Costs n probes of
  ``probe_steps`` optimizer steps out of the budget, plus an evaluation after each.
  Shorter probes are the same estimator with a smaller ``probe_share``.
* ``gradient`` (probe-free): one :class:`~ctbench.strategy.GradientProbe` at the base;
  Δ̂[i][j] = u_i · g_j, AdamW's first update direction for task i dotted with task j's
  reward gradient (:mod:`ctbench.training.gradients`). Costs ``gradient_batches`` rollout
  batches and two backward passes per task, no optimizer step and no evaluation; its
  rollouts are booked to the probe phase. Δ̂ is in other units than Δ (one shared
  positive scale, per step of unit learning rate), so it orders tasks but predicts no
  scores: a run using it reports no ``predicted_final``.

Each returns the matrix and a record of what it cost, which ``bwt`` puts in its report.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ctbench.strategies.probing import measure_transfer
from ctbench.strategies.transfer import TransferMatrix
from ctbench.strategy import GradientProbe, Stage, StrategyContext

ESTIMATORS = ("probes", "gradient")


def estimate_transfer(
    ctx: StrategyContext, estimator: str, *, probe_steps: int, gradient_batches: int
) -> Generator[Stage | GradientProbe, None, tuple[TransferMatrix, dict[str, Any]]]:
    """``transfer, record = yield from estimate_transfer(ctx, ...)``."""
    tasks = tuple(ctx.task_names)
    if estimator == "probes":
        transfer = yield from measure_transfer(ctx, probe_steps)
        return transfer, {
            "estimator": "probes",
            "probe_steps_per_task": probe_steps,
            "optimizer_steps": probe_steps * len(tasks),
        }
    if estimator == "gradient":
        yield GradientProbe(tasks=tasks, batches=gradient_batches)
        measured = ctx.measurements[-1]
        delta = tuple(tuple(float(v) for v in row) for row in measured["transfer_adam"])
        transfer = TransferMatrix(tasks, delta, tuple(ctx.base_scores[t] for t in tasks))
        return transfer, {
            "estimator": "gradient",
            "update": "adam",
            "units": "reward change per step of unit learning rate (first order)",
            "batches_per_task": gradient_batches,
            "optimizer_steps": 0,
            "samples": measured["samples"],
            "generated_tokens": measured["generated_tokens"],
            "wall_s": measured["wall_s"],
            "transfer_sgd": measured["transfer_sgd"],
            "cosine": measured["cosine"],
            "mean_reward": measured["mean_reward"],
        }
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
