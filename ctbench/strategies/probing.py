"""Probes: short single-task RL stages from the base whose rows give the transfer matrix.

Written against the public Strategy API (a probe is a :class:`Stage` with ``probe=True``),
so the ``bwt`` baseline, ``ctbench transfer`` and any submitted strategy measure transfer
the same way, and the probe steps are counted against the budget like any other stage.
"""

from __future__ import annotations

from collections.abc import Generator

from ctbench.strategies.transfer import TransferMatrix, transfer_matrix
from ctbench.strategy import BASE, Objective, Stage, StrategyContext


def probe_name(task: str) -> str:
    return f"probe-{task}"


def measure_transfer(
    ctx: StrategyContext, steps_per_probe: int, objective: Objective = "rl"
) -> Generator[Stage, None, TransferMatrix]:
    """Yield one probe per task and return Δ: ``transfer = yield from measure_transfer(...)``."""
    rows = {}
    for task in ctx.task_names:
        yield Stage(
            mixture={task: 1.0},
            steps=steps_per_probe,
            objective=objective,
            start=BASE,
            probe=True,
            name=probe_name(task),
        )
        rows[task] = ctx.evaluations[-1]
    return transfer_matrix(ctx.task_names, ctx.base_scores, rows)
