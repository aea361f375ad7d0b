"""random: one single-task RL stage per task, in a seeded random order, B/n steps each.

The control for ``bwt``: if a measured order does not beat random orders, ordering by
transfer is not what helps.
"""

from collections.abc import Iterator

from ctbench.strategy import Stage, Strategy, StrategyContext, require_budget, split_evenly


class RandomOrder(Strategy):
    """Sequential single-task RL stages in an order drawn from the run's seed."""

    name = "random"
    version = "1"

    def schedule(self, ctx: StrategyContext) -> Iterator[Stage]:
        order = list(ctx.task_names)
        ctx.rng.shuffle(order)
        require_budget(ctx, len(order), f"one stage for each of {len(order)} tasks")
        ctx.report["order"] = order
        for task, steps in zip(order, split_evenly(ctx.budget, len(order)), strict=True):
            yield Stage(mixture={task: 1.0}, steps=steps, objective="rl", name=task)
