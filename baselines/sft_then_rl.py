"""sft_then_rl: SFT on expert demonstrations of all tasks, then RL on the mixture.

The classic two-stage recipe CHORD argues against: SFT is a frozen first stage rather than
a weighted term inside RL. ``sft_share`` of the budget goes to SFT, the rest to RL.
"""

from collections.abc import Iterator

from ctbench.errors import UserError
from ctbench.strategy import Stage, Strategy, StrategyContext, require_budget


class SFTThenRL(Strategy):
    """SFT on all tasks' expert demonstrations for a share of the budget, then mixed RL."""

    name = "sft_then_rl"
    version = "1"
    defaults = {"sft_share": 0.25}

    def check_params(self) -> None:
        if not 0.0 < self.params["sft_share"] < 1.0:
            raise UserError("sft_share must be in (0, 1)", where="strategy sft_then_rl")

    def schedule(self, ctx: StrategyContext) -> Iterator[Stage]:
        require_budget(ctx, 2, "an SFT stage and an RL stage")
        sft_steps = min(max(1, round(self.params["sft_share"] * ctx.budget)), ctx.budget - 1)
        mixture = {task: 1.0 for task in ctx.task_names}
        yield Stage(mixture=mixture, steps=sft_steps, objective="sft", name="sft")
        yield Stage(mixture=mixture, steps=ctx.budget - sft_steps, objective="rl", name="rl")
