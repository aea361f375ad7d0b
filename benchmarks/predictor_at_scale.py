"""The additive predictor over every order and several seeds, beside a stage-scale fit
(issue: beyond the paper, part 3).

    for s in 0 1; do ctbench validate-prediction --orders 24 --seed $s \\
        --transfer <the bwt run of seed s>/result.json --out runs/predictor; done
    python benchmarks/predictor_at_scale.py runs/predictor/validate-tiny-s*-st100 \\
        [--draws 2000] [--json benchmarks/predictor-at-scale.json]

Reads each folder's ``validation.json`` (one per seed) and prints, for the probes'
predictor and the leave-one-order-out stage-scale fit (:mod:`ctbench.results.predictor_check`),
the pooled, task-centred and per-run ACC correlations with pigeonhole-bootstrap 95% CIs
(orders and seeds resampled independently), their difference, the stage fit's parameters,
the measured ACC of every order, and the few-order study (:mod:`ctbench.results.few_orders`:
fit the form to k orders' runs and pick, against best-of-k, the probes' pick and random), and
the order effect on the complete order × seed grid (:mod:`ctbench.results.order_effect`).
Prints JSON; ``--json PATH`` also writes it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ctbench.results.few_orders import few_order_study, order_accs
from ctbench.results.order_effect import order_effect
from ctbench.results.predictor_check import cells_from_reports, check_predictors
from ctbench.runs.provenance import environment


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--draws", default=2000, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
def main(folders: tuple[Path, ...], draws: int, json_path: Path | None) -> None:
    reports = []
    for folder in folders:
        file = folder / "validation.json" if folder.is_dir() else folder
        reports.append(json.loads(file.read_text()))
    stage_steps = {r["stage_steps"] for r in reports}
    if len(stage_steps) != 1:
        raise click.UsageError(f"the reports differ in stage steps: {sorted(stage_steps)}")
    stage_steps_value = next(iter(stage_steps))
    report = {
        "command": "python benchmarks/predictor_at_scale.py " + " ".join(sys.argv[1:]),
        "track": reports[0]["track"],
        "stage_steps": stage_steps_value,
        "transfer_sources": {r["seed"]: r["transfer_source"] for r in reports},
        **check_predictors(reports, draws=draws),
        "order_effect": order_effect(order_accs(cells_from_reports(reports))),
        "few_orders": few_order_study(
            cells_from_reports(reports),
            list(reports[0]["transfer"]["tasks"]),
            stage_steps=stage_steps_value,
        ),
        "env": environment("cpu"),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if json_path is not None:
        json_path.write_text(text + "\n")


if __name__ == "__main__":
    main()
