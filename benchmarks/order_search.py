"""Order-search time for n tasks, and the probe share of the ``bwt`` budget.

    python benchmarks/order_search.py [--sizes 4,8,12] [--repeats 5] [--result RUN/result.json]

Goals (issue: strategies): the ``auto`` search takes at most 1 s at n = 12, and bwt's
probes take at most 25% of the budget at n = 4. Timings are the median of ``--repeats``
searches over random Δ matrices (seeded). The probe share comes from driving the real
``bwt`` strategy's schedule with the tiny track's task list and budget (scores are not
needed to count probe steps), or from a finished bwt run's result.json with ``--result``.
Prints JSON.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import click
import numpy as np

from ctbench.strategies.plugins import resolve_strategy
from ctbench.strategies.transfer import TransferMatrix, best_order
from ctbench.strategy import StrategyContext
from ctbench.tracks.track import load_track


def time_search(n: int, search: str, repeats: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(repeats):
        delta = rng.normal(scale=0.05, size=(n, n))
        matrix = TransferMatrix(
            tuple(f"t{i}" for i in range(n)), tuple(map(tuple, delta)), (0.5,) * n
        )
        start = time.perf_counter()
        _, used = best_order(matrix, search)  # type: ignore[arg-type]
        times.append(time.perf_counter() - start)
    return {"search": used, "median_s": statistics.median(times), "max_s": max(times)}


def probe_share_from_schedule(track_name: str) -> dict[str, float]:
    spec = load_track(track_name).spec
    strategy = resolve_strategy("bwt").instantiate()
    ctx = StrategyContext(
        task_names=spec.task_names,
        domains={t: "structured" for t in spec.task_names},
        budget=spec.budget_steps,
        seed=0,
        rng=random.Random(0),
        evaluations=[{t: 0.5 for t in spec.task_names}],
        entropies=[{t: 0.0 for t in spec.task_names}],
    )
    probe = total = 0
    for stage in strategy.schedule(ctx):
        total += stage.steps
        probe += stage.steps if stage.probe else 0
        ctx.spent += stage.steps
        ctx.names.append(stage.name)
        ctx.evaluations.append(dict(ctx.evaluations[0]))
        ctx.entropies.append(dict(ctx.entropies[0]))
    return {
        "n_tasks": len(spec.task_names),
        "budget_steps": spec.budget_steps,
        "probe_steps": probe,
        "scheduled_steps": total,
        "probe_share": probe / spec.budget_steps,
        "params": strategy.params,
    }


@click.command()
@click.option("--sizes", default="4,8,12", show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--track", default="tiny", show_default=True)
@click.option("--result", type=click.Path(exists=True, path_type=Path), default=None)
def main(sizes: str, repeats: int, track: str, result: Path | None) -> None:
    searches = {}
    for n in (int(s) for s in sizes.split(",")):
        row = {"auto": time_search(n, "auto", repeats, seed=n)}
        if n <= 8:  # enumeration as a reference point; auto switches to the DP above 6
            row["exhaustive"] = time_search(n, "exhaustive", repeats, seed=n)
        row["dp"] = time_search(n, "dp", repeats, seed=n)
        row["greedy"] = time_search(n, "greedy", repeats, seed=n)
        searches[str(n)] = row
    report = {
        "benchmark": "bwt_order_search_and_probe_share",
        "order_search": searches,
        "goal_auto_at_12_s": 1.0,
        "probe_share": probe_share_from_schedule(track),
        "goal_probe_share_at_4": 0.25,
    }
    if result is not None:
        data = json.loads(result.read_text())
        report["probe_share_measured_run"] = {
            "run_id": data["run_id"],
            "probe_steps": data["budget"]["probe_steps"],
            "budget_steps": data["budget"]["steps"],
            "probe_share": data["budget"]["probe_steps"] / data["budget"]["steps"],
            "probe_wall_s": data["compute"]["probe"]["wall_s"],
            "total_wall_s": sum(p["wall_s"] for p in data["compute"].values()),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
