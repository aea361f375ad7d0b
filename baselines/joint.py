"""joint: one RL stage on the uniform mixture of all tasks, for the whole budget.

The multi-task baseline Omni-Thinker's curriculum is compared against (+6.2% claimed).
"""

from collections.abc import Iterator

from ctbench.strategy import Stage, Strategy, StrategyContext


class JointTraining(Strategy):
    """All tasks mixed uniformly in one RL stage of the whole budget."""

    name = "joint"
    version = "1"

    def schedule(self, ctx: StrategyContext) -> Iterator[Stage]:
        mixture = {task: 1.0 for task in ctx.task_names}
        yield Stage(mixture=mixture, steps=ctx.budget, objective="rl", name="joint")
