"""``ctbench compare``: the (strategy × seed) grid, resumable, aggregated with CIs.

Each cell is an ordinary run folder with a fixed name (``<strategy>-s<seed>``) under
``<out>/compare-<track>/``, so a finished cell is read, an interrupted one resumes, and a
missing one runs. Cells run one after another in this process (the local executor) or as
Ray tasks on a local or existing cluster (``--executor ray``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctbench.common.atomic import write_json_atomic
from ctbench.errors import UserError
from ctbench.results.aggregate import RunItems, bootstrap_acc, bootstrap_paired_difference
from ctbench.results.grid import plan_cells
from ctbench.runs.run import Run, RunObserver
from ctbench.runs.samples import item_score_rows
from ctbench.strategies.plugins import resolve_strategy
from ctbench.training.compute import total_wall_s

REFERENCE_SIX = ("joint", "merge", "random", "bwt", "sft_then_rl", "chord")


def parse_strategies(text: str) -> list[str]:
    if text == "all":
        return list(REFERENCE_SIX)
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UserError("expected 'all' or a comma-separated list", where="--strategies")
    for name in names:
        resolve_strategy(name, where="--strategies")
    return names


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise UserError(
            f"expected comma-separated integers, got {text!r}", where="--seeds"
        ) from exc
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"expected distinct seeds, got {text!r}", where="--seeds")
    return seeds


def final_items(run_dir: Path, result: dict[str, Any]) -> RunItems:
    """Per-item scores of every task after the run's last main-line item."""
    index = result["matrix"]["item_index"][-1]
    rows = item_score_rows(run_dir, result["tasks"], [index])
    return {task: scores for task, (scores,) in rows.items()}


def run_grid(
    strategies: Sequence[str],
    seeds: Sequence[int],
    *,
    track: str,
    out: Path,
    observer: RunObserver,
    budget: int | None = None,
    device: str = "auto",
    executor: str = "local",
    address: str | None = None,
    cpus_per_cell: int | None = None,
) -> dict[tuple[str, int], Path]:
    """Run every missing cell under ``<out>/compare-<track>/`` and return all cell folders.

    ``local`` runs cells one after another in this process; ``ray`` dispatches them as Ray
    tasks (see :mod:`ctbench.results.ray_executor`). Both write the same folders, so a grid started
    on one executor can be finished on the other."""
    folder = out / f"compare-{track}"
    folder.mkdir(parents=True, exist_ok=True)
    cells = plan_cells(strategies, seeds, track=track, budget=budget, device=device)
    if executor == "local":
        for cell in cells:
            observer.note(f"cell {cell.strategy} seed {cell.seed}")
            Run.create(cell.config, folder, observer, run_id=cell.run_id).execute()
    elif executor == "ray":
        from ctbench.results.ray_executor import run_cells_on_ray

        run_cells_on_ray(
            cells, folder, observer=observer, address=address, cpus_per_cell=cpus_per_cell
        )
    else:
        raise UserError(f"expected 'local' or 'ray', got {executor!r}", where="--executor")
    return {(cell.strategy, cell.seed): folder / cell.run_id for cell in cells}


def summarise(
    cells: dict[tuple[str, int], Path], reference: str = "joint", samples: int = 2000
) -> dict[str, Any]:
    results = {key: json.loads((path / "result.json").read_text()) for key, path in cells.items()}
    items = {key: final_items(cells[key], result) for key, result in results.items()}
    strategies = list(dict.fromkeys(name for name, _ in cells))
    rows = []
    for name in strategies:
        seeds = sorted(seed for n, seed in cells if n == name)
        chosen = [results[(name, s)] for s in seeds]
        row: dict[str, Any] = {
            "strategy": name,
            "seeds": seeds,
            "acc": bootstrap_acc([items[(name, s)] for s in seeds], samples=samples).to_json(),
        }
        row["defined_seeds"] = {}
        for metric in ("bwt", "forgetting", "merge_loss"):
            values = [r["metrics"].get(metric) for r in chosen]
            defined = [v for v in values if v is not None]
            row[metric] = sum(defined) / len(defined) if defined else None
            # A mean over fewer seeds than the row has must say so (a schedule may leave
            # BWT undefined at one seed: joint-like in one stage).
            row["defined_seeds"][metric] = len(defined)
        row["optimizer_steps"] = sum(
            sum(p["optimizer_steps"] for p in r["compute"].values()) for r in chosen
        ) / len(chosen)
        row["wall_s"] = sum(total_wall_s(r["compute"]) for r in chosen) / len(chosen)
        if name != reference and any(n == reference for n, _ in cells):
            ours = {s: items[(name, s)] for s in seeds}
            theirs = {s: items[(n, s)] for n, s in cells if n == reference}
            row[f"minus_{reference}"] = bootstrap_paired_difference(
                ours, theirs, samples=samples
            ).to_json()
        rows.append(row)
    return {"reference": reference, "bootstrap_samples": samples, "rows": rows}


def write_summary(summary: dict[str, Any], out: Path, track: str) -> Path:
    path = out / f"compare-{track}" / "compare.json"
    write_json_atomic(path, summary)
    return path
