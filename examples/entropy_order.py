"""An example submission: order tasks by how much RL on them lowers output entropy.

Omni-Thinker observes that structured tasks (math, code) push output entropy down and
open-ended ones (creative writing) push it up, and puts structured tasks first. This
strategy tests a sharper version of that idea: it *measures* each structured task's token
entropy drop with a short probe from the base, trains structured tasks first in order of
that drop (largest first), then the open tasks, splitting what is left of the budget.

Run it (no installation step: it is loaded from this file):

    ctbench run --strategy examples/entropy_order.py:EntropyOrder --param probe_share=0.1

It uses only the public API: ``Strategy``, ``Stage``, ``StrategyContext`` and helpers.
"""

from collections.abc import Iterator

from ctbench.errors import UserError
from ctbench.strategy import Stage, Strategy, StrategyContext, require_budget, split_evenly


class EntropyOrder(Strategy):
    """Structured tasks first, ranked by the entropy drop a short probe measures."""

    name = "entropy-order"
    version = "1"
    defaults = {"probe_share": 0.1}

    def check_params(self) -> None:
        if not 0.0 < self.params["probe_share"] < 0.5:
            raise UserError("probe_share must be in (0, 0.5)", where="strategy entropy-order")

    def schedule(self, ctx: StrategyContext) -> Iterator[Stage]:
        structured = [t for t in ctx.task_names if ctx.domains[t] == "structured"]
        open_ended = [t for t in ctx.task_names if ctx.domains[t] != "structured"]
        probe_steps = max(
            1, int(self.params["probe_share"] * ctx.budget) // max(len(structured), 1)
        )
        require_budget(ctx, probe_steps * len(structured) + len(ctx.task_names), "probes + stages")

        base_entropy = ctx.entropies[0]
        drop = {}
        for task in structured:
            yield Stage(
                mixture={task: 1.0},
                steps=probe_steps,
                start="base",
                probe=True,
                name=f"entropy-probe-{task}",
            )
            drop[task] = base_entropy[task] - ctx.entropies[-1][task]

        order = sorted(structured, key=lambda t: -drop[t]) + open_ended
        ctx.report.update(entropy_drop=drop, order=order, probe_steps_per_task=probe_steps)
        for task, steps in zip(order, split_evenly(ctx.remaining, len(order)), strict=True):
            yield Stage(mixture={task: 1.0}, steps=steps, objective="rl", name=task)
