"""bwt: order the tasks by measured transfer (Omni-Thinker's backward-transfer curriculum).

Short single-task probes from the base give the transfer matrix Δ (probe steps come out of
the budget); the order that maximises the additive prediction of the final scores is then
trained as sequential single-task RL stages sharing what is left of the budget. The result
records Δ, the order, the search used and the predicted final scores, so the prediction
can be checked against what the run measured.
"""

from collections.abc import Iterator

from ctbench.errors import UserError
from ctbench.strategies.probing import measure_transfer
from ctbench.strategies.transfer import best_order, predict_final_scores
from ctbench.strategy import Stage, Strategy, StrategyContext, require_budget, split_evenly

SEARCHES = ("auto", "exhaustive", "dp", "greedy", "omni")


class BWTOrder(Strategy):
    """Probes → transfer matrix → the order maximising predicted final accuracy → stages."""

    name = "bwt"
    version = "1"
    defaults = {"probe_share": 0.2, "search": "auto"}

    def check_params(self) -> None:
        if not 0.0 < self.params["probe_share"] < 1.0:
            raise UserError("probe_share must be in (0, 1)", where="strategy bwt")
        if self.params["search"] not in SEARCHES:
            raise UserError(f"search must be one of {', '.join(SEARCHES)}", where="strategy bwt")

    def schedule(self, ctx: StrategyContext) -> Iterator[Stage]:
        n = len(ctx.task_names)
        probe_steps = max(1, int(self.params["probe_share"] * ctx.budget) // n)
        require_budget(
            ctx, n * probe_steps + n, f"{n} probes of {probe_steps} steps and {n} stages"
        )
        transfer = yield from measure_transfer(ctx, probe_steps)
        order, search = best_order(transfer, self.params["search"])
        predicted = predict_final_scores(order, transfer)
        ctx.report.update(
            transfer=transfer.to_json(),
            order=order,
            search=search,
            probe_steps_per_task=probe_steps,
            predicted_final=predicted,
            predicted_acc=sum(predicted.values()) / n,
        )
        for task, steps in zip(order, split_evenly(ctx.remaining, n), strict=True):
            yield Stage(mixture={task: 1.0}, steps=steps, objective="rl", name=task)
