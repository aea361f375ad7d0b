"""bwt: order the tasks by measured transfer (Omni-Thinker's backward-transfer curriculum).

Short single-task probes from the base give the transfer matrix Δ (probe steps come out of
the budget); the order that maximises the additive prediction of the final scores is then
trained as sequential single-task RL stages sharing what is left of the budget. The result
records Δ, the order, the search used and the predicted final scores, so the prediction
can be checked against what the run measured.

``estimator=gradient`` replaces the probes by a probe-free first-order estimate from one
gradient measurement at the base (:mod:`ctbench.strategies.estimators`): all of the budget
goes to the stages, and no scores are predicted (Δ̂ is in other units).
"""

from collections.abc import Iterator

from ctbench.errors import UserError
from ctbench.strategies.estimators import ESTIMATORS, estimate_transfer
from ctbench.strategies.transfer import best_order, predict_final_scores
from ctbench.strategy import (
    GradientProbe,
    Stage,
    Strategy,
    StrategyContext,
    require_budget,
    split_evenly,
)

SEARCHES = ("auto", "exhaustive", "dp", "greedy", "omni")


class BWTOrder(Strategy):
    """Probes → transfer matrix → the order maximising predicted final accuracy → stages."""

    name = "bwt"
    version = "1"
    defaults = {"probe_share": 0.2, "search": "auto", "estimator": "probes", "gradient_batches": 2}

    def check_params(self) -> None:
        if not 0.0 < self.params["probe_share"] < 1.0:
            raise UserError("probe_share must be in (0, 1)", where="strategy bwt")
        if self.params["search"] not in SEARCHES:
            raise UserError(f"search must be one of {', '.join(SEARCHES)}", where="strategy bwt")
        if self.params["estimator"] not in ESTIMATORS:
            raise UserError(
                f"estimator must be one of {', '.join(ESTIMATORS)}", where="strategy bwt"
            )
        if self.params["gradient_batches"] < 1:
            raise UserError("gradient_batches must be at least 1", where="strategy bwt")

    def schedule(self, ctx: StrategyContext) -> Iterator[Stage | GradientProbe]:
        n = len(ctx.task_names)
        probes = self.params["estimator"] == "probes"
        probe_steps = max(1, int(self.params["probe_share"] * ctx.budget) // n) if probes else 0
        what = f"{n} probes of {probe_steps} steps and {n} stages" if probes else f"{n} stages"
        require_budget(ctx, n * probe_steps + n, what)
        transfer, estimate = yield from estimate_transfer(
            ctx,
            self.params["estimator"],
            probe_steps=probe_steps,
            gradient_batches=self.params["gradient_batches"],
        )
        order, search = best_order(transfer, self.params["search"])
        recorded = transfer.to_json()
        if not probes:  # base + Δ̂[j][j] mixes units: Δ̂ is no score change
            del recorded["single_task_levels"]
        ctx.report.update(transfer=recorded, order=order, search=search, estimate=estimate)
        if probes:
            predicted = predict_final_scores(order, transfer)
            ctx.report.update(
                probe_steps_per_task=probe_steps,
                predicted_final=predicted,
                predicted_acc=sum(predicted.values()) / n,
            )
        for task, steps in zip(order, split_evenly(ctx.remaining, n), strict=True):
            yield Stage(mixture={task: 1.0}, steps=steps, objective="rl", name=task)
