"""Transfer estimators against the full probes: cost, rank agreement of Δ, and the measured
ACC of the order each one picks (issue: beyond the paper, part 2).

    python benchmarks/transfer_estimators.py --reference runs/compare-tiny \
        [--seeds 0,1,2] [--out runs/estimators] [--gradient-batches 2] [--short-share 0.02]

The reference is ``bwt`` as published (``estimator=probes``, ``probe_share`` 0.2: four
20-step probes on the tiny track), one finished run per seed under ``--reference`` (a
compare grid). For every seed the script runs, one after another and resumably:

* ``gradient``: ``bwt --param estimator=gradient`` (one gradient probe at the base,
  ``--gradient-batches`` rollout batches per task, no optimizer step);
* ``short-probes``: ``bwt --param probe_share=<--short-share>`` (2-step probes at 0.02).

and reports, per estimator: its probe-phase cost (optimizer steps, rollout samples,
generated tokens, wall seconds; the probes' evaluations are part of it) as a share of the
full probes'; the Spearman correlation of its off-diagonal Δ with the full probes' Δ of the
same seed (12 cells for four tasks; for ``gradient`` also the SGD-direction and the
symmetric cosine variants); the order it picked; and its final ACC minus the full-probe
run's ACC, paired by seed, with a 95% t interval. The full probes' own noise is the
ceiling: the Spearman between their Δ at two seeds. Goals (issue): rank correlation ≥ 0.8
at ≤ 10% of the full probes' cost, and an ACC no worse than theirs within the CI; the JSON
says for each goal whether it was met. Prints JSON; ``--json PATH`` also writes it.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from scipy.stats import spearmanr

from ctbench.results.findings import mean_difference_interval
from ctbench.runs.config import RunConfig
from ctbench.runs.provenance import environment
from ctbench.runs.run import Run, SilentObserver

RANK_GOAL = 0.8
COST_GOAL = 0.10


def off_diagonal(matrix: list[list[float]]) -> list[float]:
    return [v for i, row in enumerate(matrix) for j, v in enumerate(row) if i != j]


def rank_agreement(a: list[list[float]], b: list[list[float]]) -> float | None:
    """Spearman between two Δ's off-diagonal cells; None where one side is constant."""
    x, y = off_diagonal(a), off_diagonal(b)
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def find_reference(folder: Path, seed: int) -> dict[str, Any]:
    """The published-recipe bwt result of ``seed`` under ``folder``."""
    found = []
    for path in sorted(folder.rglob("result.json")):
        result = json.loads(path.read_text())
        params = result["strategy"]["params"]
        if (
            result["strategy"]["name"] == "bwt"
            and result["seed"] == seed
            and params.get("estimator", "probes") == "probes"
            and params.get("probe_share") == 0.2
        ):
            found.append(result)
    if len(found) != 1:
        raise click.UsageError(
            f"expected one bwt result of seed {seed} under {folder}, found {len(found)}"
        )
    return found[0]


def run_variant(out: Path, name: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    config = RunConfig(track="tiny", strategy="bwt", params=params, seed=seed)
    print(f"{name} seed {seed}", file=sys.stderr, flush=True)
    return Run.create(config, out, SilentObserver(), run_id=f"{name}-s{seed}").execute()


def probe_cost(result: dict[str, Any]) -> dict[str, float]:
    probe = result["compute"]["probe"]
    return {
        k: float(probe[k]) for k in ("optimizer_steps", "samples", "generated_tokens", "wall_s")
    }


def summarise(values: list[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    if not known:
        return {"mean": None, "per_seed": values}
    return {"mean": float(np.mean(known)), "min": min(known), "max": max(known), "per_seed": values}


@click.command()
@click.option("--reference", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option(
    "--out", default="runs/estimators", show_default=True, type=click.Path(path_type=Path)
)
@click.option("--gradient-batches", default=2, show_default=True)
@click.option("--short-share", default=0.02, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
def main(
    reference: Path,
    seeds: str,
    out: Path,
    gradient_batches: int,
    short_share: float,
    json_path: Path | None,
) -> None:
    seed_list = [int(s) for s in seeds.split(",")]
    references = {s: find_reference(reference, s) for s in seed_list}
    variants = {
        "gradient": {"estimator": "gradient", "gradient_batches": gradient_batches},
        "short-probes": {"probe_share": short_share},
    }
    out.mkdir(parents=True, exist_ok=True)
    runs = {
        name: {s: run_variant(out, name, params, s) for s in seed_list}
        for name, params in variants.items()
    }
    full_delta = {s: references[s]["strategy"]["report"]["transfer"]["delta"] for s in seed_list}
    full_cost = {s: probe_cost(references[s]) for s in seed_list}
    full_acc = [references[s]["metrics"]["acc"] for s in seed_list]
    report: dict[str, Any] = {
        "command": "python benchmarks/transfer_estimators.py " + " ".join(sys.argv[1:]),
        "track": "tiny",
        "seeds": seed_list,
        "reference": {
            "recipe": "bwt, estimator=probes, probe_share=0.2",
            "probe_steps_per_task": references[seed_list[0]]["strategy"]["report"][
                "probe_steps_per_task"
            ],
            "cost": full_cost,
            "order": {s: references[s]["strategy"]["report"]["order"] for s in seed_list},
            "acc": dict(zip(seed_list, full_acc, strict=True)),
            "rank_agreement_between_seeds": {
                f"{a}-{b}": rank_agreement(full_delta[a], full_delta[b])
                for a, b in itertools.combinations(seed_list, 2)
            },
        },
        "goals": {"rank_correlation": RANK_GOAL, "cost_share": COST_GOAL},
        "estimators": {},
        "env": environment("cpu"),
    }
    for name, by_seed in runs.items():
        costs = {s: probe_cost(by_seed[s]) for s in seed_list}
        shares = {
            key: float(np.mean([costs[s][key] / full_cost[s][key] for s in seed_list]))
            for key in ("samples", "generated_tokens", "wall_s")
        }
        shares["optimizer_steps"] = float(
            np.mean(
                [costs[s]["optimizer_steps"] / full_cost[s]["optimizer_steps"] for s in seed_list]
            )
        )
        agreement = {
            "delta": summarise(
                [
                    rank_agreement(
                        by_seed[s]["strategy"]["report"]["transfer"]["delta"], full_delta[s]
                    )
                    for s in seed_list
                ]
            )
        }
        if name == "gradient":
            for variant in ("transfer_sgd", "cosine"):
                agreement[variant] = summarise(
                    [
                        rank_agreement(
                            by_seed[s]["strategy"]["report"]["estimate"][variant], full_delta[s]
                        )
                        for s in seed_list
                    ]
                )
        acc = [by_seed[s]["metrics"]["acc"] for s in seed_list]
        difference = mean_difference_interval(acc, full_acc, paired=True)
        rank = agreement["delta"]["mean"]
        report["estimators"][name] = {
            "params": variants[name],
            "cost": costs,
            "cost_share_of_full_probes": shares,
            "rank_agreement_with_full_probes": agreement,
            "order": {s: by_seed[s]["strategy"]["report"]["order"] for s in seed_list},
            "acc": dict(zip(seed_list, acc, strict=True)),
            "acc_minus_full_probes": difference,
            "goals_met": {
                "rank_correlation": rank is not None and rank >= RANK_GOAL,
                "cost_share_wall": shares["wall_s"] <= COST_GOAL,
                "not_worse_within_ci": difference["high"] >= 0.0,
            },
            "run_ids": [by_seed[s]["run_id"] for s in seed_list],
        }
    text = json.dumps(report, indent=2)
    print(text)
    if json_path is not None:
        json_path.write_text(text + "\n")


if __name__ == "__main__":
    main()
