"""Strategies ctbench runs as measuring instruments, installed as ``ctbench.strategies``
entry points (so they also exercise the plugin path a submitted package uses):

* ``transfer-probes``: only the probes, for ``ctbench transfer`` (Δ of a track);
* ``fixed-order``: sequential single-task RL stages in a given order, for
  ``ctbench validate-prediction`` and for hand-written curricula.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from ctbench.errors import UserError
from ctbench.strategies.probing import measure_transfer
from ctbench.strategy import Stage, Strategy, StrategyContext, require_budget, split_evenly


class TransferProbes(Strategy):
    """One single-task probe per task from the base (budget / n steps each); reports Δ."""

    name = "transfer-probes"
    version = "1"

    def schedule(self, ctx: StrategyContext) -> Iterator[Stage]:
        n = len(ctx.task_names)
        require_budget(ctx, n, f"one probe step for each of {n} tasks")
        transfer = yield from measure_transfer(ctx, ctx.budget // n)
        ctx.report.update(transfer=transfer.to_json(), probe_steps_per_task=ctx.budget // n)


class FixedOrder(Strategy):
    """Single-task RL stages in the order given by ``order`` (comma-separated task names)."""

    name = "fixed-order"
    version = "1"
    defaults: ClassVar[dict[str, Any]] = {"order": []}

    def schedule(self, ctx: StrategyContext) -> Iterator[Stage]:
        order = list(self.params["order"])
        if sorted(order) != sorted(ctx.task_names):
            raise UserError(
                f"order must list each of {', '.join(ctx.task_names)} once, got "
                f"{', '.join(order) or '(nothing)'}",
                where="strategy fixed-order: parameter order",
            )
        require_budget(ctx, len(order), f"one stage for each of {len(order)} tasks")
        ctx.report["order"] = order
        for task, steps in zip(order, split_evenly(ctx.budget, len(order)), strict=True):
            yield Stage(mixture={task: 1.0}, steps=steps, objective="rl", name=task)
