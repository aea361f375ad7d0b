"""merge: one RL branch per task from the base model, B/n steps each, merged with mergekit.

Model merging is the second baseline Omni-Thinker reports beating (+12.4%). Each branch is
a single-task expert; the result keeps every branch's row (its scores on all tasks), so
the merge loss (merged score minus the expert's own score) is measured, not assumed.
"""

from collections.abc import Iterator

from ctbench.strategy import (
    Merge,
    ScheduleItem,
    Stage,
    Strategy,
    StrategyContext,
    check_merge_settings,
    require_budget,
    split_evenly,
)


class MergeExperts(Strategy):
    """Single-task RL experts trained from the base, merged (default TIES) into one model."""

    name = "merge"
    version = "1"
    defaults = {"method": "ties", "density": 0.5, "weights": []}

    def check_params(self) -> None:
        # The merge comes after every branch has trained: a bad method must fail before that.
        weights = self.params["weights"] or None
        check_merge_settings(self.params["method"], weights, self.params["density"], "params")

    def schedule(self, ctx: StrategyContext) -> Iterator[ScheduleItem]:
        tasks = list(ctx.task_names)
        require_budget(ctx, len(tasks), f"one branch for each of {len(tasks)} tasks")
        for task, steps in zip(tasks, split_evenly(ctx.budget, len(tasks)), strict=True):
            yield Stage(mixture={task: 1.0}, steps=steps, start="base", branch=True, name=task)
        weights = self.params["weights"]
        yield Merge(
            sources=tuple(tasks),
            method=self.params["method"],
            weights=tuple(float(w) for w in weights) if weights else None,
            density=self.params["density"],
        )
