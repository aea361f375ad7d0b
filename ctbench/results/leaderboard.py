"""Leaderboards: validated results aggregated over seeds into ``leaderboards/<track>.json``.

A leaderboard entry is worth its reproducibility, so every result is checked before it
counts: its schema, its content hash (an edited number no longer matches), the track it ran
on (the hash of the track spec and every task file), and its compute (exactly the
leaderboard's budget of optimizer steps, every step accounted for by phase). Duplicates of
one (strategy, params, seed) are refused rather than silently averaged twice.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ctbench import __version__
from ctbench.common.atomic import write_json_atomic
from ctbench.errors import UserError
from ctbench.results.aggregate import bootstrap_acc
from ctbench.results.compare import final_items
from ctbench.results.plots import plot_data
from ctbench.runs.result import result_content_hash
from ctbench.tracks.track import Track
from ctbench.training.compute import total_wall_s

LEADERBOARD_SCHEMA = 1
RESULT_SCHEMA = 1

# key → type every valid result.json has (nested keys as "a.b").
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "run_id": str,
    "result_hash": str,
    "track.name": str,
    "track.hash": str,
    "strategy.name": str,
    "strategy.version": str,
    "strategy.params": dict,
    "strategy.source_hash": str,
    "seed": int,
    "budget.steps": int,
    "budget.spent_steps": int,
    "tasks": list,
    "matrix.R": list,
    "matrix.item_index": list,
    "metrics.acc": (int, float),
    "compute": dict,
}


def _lookup(result: dict[str, Any], dotted: str) -> Any:
    value: Any = result
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def validate_result(result: dict[str, Any], track: Track, budget: int, where: str) -> None:
    """Refuse a result that is malformed, edited, from another track, or off-budget."""
    for key, kind in _REQUIRED.items():
        try:
            value = _lookup(result, key)
        except KeyError:
            raise UserError(f"schema violation: {key} is missing", where=where) from None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UserError(f"schema violation: {key} has type {type(value).__name__}", where=where)
    if result["schema_version"] != RESULT_SCHEMA:
        raise UserError(
            f"schema_version {result['schema_version']} is not {RESULT_SCHEMA}", where=where
        )
    if result_content_hash(result) != result["result_hash"]:
        raise UserError(
            "content hash mismatch: the result was edited after the run wrote it", where=where
        )
    if (
        result["track"]["name"] != track.spec.name
        or result["track"]["hash"] != track.content_hash()
    ):
        raise UserError(
            f"track hash {result['track']['hash']} is not track {track.spec.name!r}'s "
            f"{track.content_hash()} (another track, or its tasks changed)",
            where=where,
        )
    spent = sum(int(phase.get("optimizer_steps", 0)) for phase in result["compute"].values())
    if spent != result["budget"]["spent_steps"]:
        raise UserError(
            f"compute does not add up: {spent} optimizer steps booked, "
            f"{result['budget']['spent_steps']} reported",
            where=where,
        )
    if result["budget"]["steps"] != budget or spent > budget:
        raise UserError(
            f"over budget or off budget: the run had {result['budget']['steps']} steps "
            f"(spent {spent}); this leaderboard compares at exactly {budget}",
            where=where,
        )


def find_results(paths: Iterable[Path]) -> list[Path]:
    """Run folders from arguments that are run folders or folders of run folders."""
    found: list[Path] = []
    for path in paths:
        if (path / "result.json").exists():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.glob("*/result.json")))
        else:
            raise UserError("not a run folder or a folder of run folders", where=str(path))
    if not found:
        raise UserError("no finished runs (result.json) found", where="RUNS")
    return found


def _entry_key(result: dict[str, Any]) -> str:
    strategy = result["strategy"]
    params = json.dumps(strategy["params"], sort_keys=True)
    return f"{strategy['name']}|{strategy['version']}|{strategy['source_hash']}|{params}"


def build_leaderboard(
    track: Track, run_dirs: Sequence[Path], *, budget: int | None = None, samples: int = 2000
) -> dict[str, Any]:
    budget = budget if budget is not None else track.spec.budget_steps
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    seen: dict[tuple[str, int], Path] = {}
    for run_dir in run_dirs:
        where = str(run_dir / "result.json")
        try:
            result = json.loads((run_dir / "result.json").read_text())
        except ValueError as exc:
            raise UserError(f"not valid JSON: {exc}", where=where) from exc
        validate_result(result, track, budget, where)
        key = _entry_key(result)
        if (key, result["seed"]) in seen:
            raise UserError(
                f"duplicate entry: {result['strategy']['name']} seed {result['seed']} "
                f"is also in {seen[(key, result['seed'])]}",
                where=where,
            )
        seen[(key, result["seed"])] = run_dir
        groups.setdefault(key, []).append((run_dir, result))
    entries = [_entry(runs, samples) for runs in groups.values()]
    entries.sort(key=lambda e: -e["metrics"]["acc"]["mean"])
    for rank, entry in enumerate(entries, start=1):
        entry["rank"] = rank
    return {
        "schema_version": LEADERBOARD_SCHEMA,
        "track": {
            "name": track.spec.name,
            "version": track.spec.version,
            "hash": track.content_hash(),
            "tasks": list(track.tasks),
            "budget_steps": budget,
        },
        "ranked_by": "acc (mean over seeds; 95% bootstrap CI over seeds and eval items)",
        "ctbench_version": __version__,
        "built": dt.datetime.now(dt.UTC).isoformat(),
        "machines": sorted({machine_of(r) for runs in groups.values() for _, r in runs}),
        "wall_s_total": sum(
            total_wall_s(r["compute"]) for runs in groups.values() for _, r in runs
        ),
        "entries": entries,
    }


def machine_of(result: dict[str, Any]) -> str:
    """One line naming the hardware a result ran on, from its recorded environment."""
    env = result.get("env", {})
    device = env.get("cuda") or env.get("device", "?")
    return (
        f"{env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs, "
        f"{env.get('torch_threads', '?')} torch threads, device {device}"
    )


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _entry(runs: list[tuple[Path, dict[str, Any]]], samples: int) -> dict[str, Any]:
    runs = sorted(runs, key=lambda pair: pair[1]["seed"])
    results = [r for _, r in runs]
    first = results[0]["strategy"]
    acc = bootstrap_acc([final_items(d, r) for d, r in runs], samples=samples)
    tasks = results[0]["tasks"]
    return {
        "strategy": first["name"],
        "version": first["version"],
        "params": first["params"],
        "source_hash": first["source_hash"],
        "n_seeds": len(results),
        "seeds": [r["seed"] for r in results],
        "metrics": {
            "acc": acc.to_json(),
            "bwt": _mean([r["metrics"].get("bwt") for r in results]),
            "forgetting": _mean([r["metrics"].get("forgetting") for r in results]),
            "merge_loss": _mean([r["metrics"].get("merge_loss") for r in results]),
            "final_per_task": {
                t: _mean([r["matrix"]["R"][-1][j] for r in results]) for j, t in enumerate(tasks)
            },
        },
        "compute": {
            phase: {
                key: _mean([r["compute"].get(phase, {}).get(key) for r in results])
                for key in ("optimizer_steps", "samples", "generated_tokens", "wall_s")
            }
            for phase in ("probe", "train", "eval", "merge")
        },
        "results": [
            {"run_id": r["run_id"], "seed": r["seed"], "result_hash": r["result_hash"]}
            for r in results
        ],
        # One seed's trajectory for the page (orders may differ between seeds, so rows of
        # R are not averaged): what its figures need (R, forgetting, entropy over stages and
        # steps, Δ and predictions where the strategy measured them).
        "example": {"seed": results[0]["seed"], **plot_data(results[0])},
        "ctbench_versions": sorted({r.get("env", {}).get("ctbench", __version__) for r in results}),
    }


def write_leaderboard(board: dict[str, Any], folder: Path) -> Path:
    path = folder / f"{board['track']['name']}.json"
    write_json_atomic(path, board)
    return path
