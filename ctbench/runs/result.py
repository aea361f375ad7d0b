"""``result.json``: a finished run's state turned into the schema-versioned record.

The matrix R holds the *main line* only (row 0 = base, then one row per main-line stage or
merge), because the continual-learning metrics of DESIGN §5 are defined on it. Branches
and probes keep their rows under ``branches``; a merge's branch rows give the merge loss.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ctbench.runs.item_forgetting import item_forgetting
from ctbench.runs.metrics import all_metrics, merge_loss, metrics_to_json
from ctbench.runs.provenance import config_hash, environment
from ctbench.runs.samples import item_score_rows
from ctbench.scoring.rewards import chance_level, reward_info

if TYPE_CHECKING:
    from pathlib import Path

    from ctbench.runs.config import RunConfig
    from ctbench.strategies.plugins import ResolvedStrategy
    from ctbench.strategy import Strategy
    from ctbench.tracks.track import Track
    from ctbench.training.compute import ComputeMeter

SCHEMA_VERSION = 1


def result_content_hash(result: dict[str, Any]) -> str:
    """SHA-256 of the result's canonical JSON without its own ``result_hash`` field: a
    leaderboard recomputes it, so a number edited after the run no longer matches."""
    body = {k: v for k, v in result.items() if k != "result_hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_main_line(item: dict[str, Any]) -> bool:
    return item["kind"] == "merge" or not (item["branch"] or item["probe"])


def trained_tasks(item: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> set[str]:
    """Tasks whose training an item's model carries: a merge carries its sources' tasks."""
    if item["kind"] == "stage":
        tasks = set(item["tasks"])
        if item["start"] in by_name:
            tasks |= trained_tasks(by_name[item["start"]], by_name)
        return tasks
    return set().union(*(trained_tasks(by_name[s], by_name) for s in item["sources"]))


def schedule_of(items: list[dict[str, Any]], names: list[str]) -> list[set[int]]:
    """Task indices each main-line row of R carries the training of (DESIGN §5's schedule)."""
    by_name = {item["name"]: item for item in items if item["name"]}
    return [
        {names.index(t) for t in trained_tasks(item, by_name)}
        for item in items
        if is_main_line(item)
    ]


def main_line_schedule(result: dict[str, Any]) -> list[set[int]]:
    """:func:`schedule_of`, rebuilt from a finished result's stages."""
    return schedule_of(result["stages"], result["tasks"])


def _cells(row: dict[str, dict[str, float]], names: list[str], key: str) -> list[float]:
    return [row[n][key] for n in names]


def build_result(
    *,
    run_id: str,
    config: RunConfig,
    budget: int,
    track: Track,
    resolved: ResolvedStrategy,
    strategy: Strategy,
    report: dict[str, Any],
    state: dict[str, Any],
    meter: ComputeMeter,
    base_report: dict[str, Any],
    device: str,
    engine_config: dict[str, Any],
    samples_dir: Path | None = None,
    final_model: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The result.json of a finished run; ``samples_dir`` (the run folder holding
    ``samples/``) adds sample-level forgetting, computed from the per-item scores.
    ``final_model`` is where the run kept its main line's final model (``{"path",
    "kind": "adapters" | "full"}``), None when that model is the base."""
    names = list(track.tasks)
    rows = state["rows"]
    items = [entry["item"] for entry in state["items"]]
    by_name = {item["name"]: item for item in items if item["name"]}
    main_rows = [0] + [i + 1 for i, item in enumerate(items) if is_main_line(item)]
    main_items = [items[i - 1] for i in main_rows[1:]]
    matrix = [_cells(rows[i], names, "score") for i in main_rows]
    chances = {n: chance_level(t) for n, t in track.tasks.items()}
    schedule = schedule_of(items, names)
    metrics = metrics_to_json(all_metrics(matrix, schedule)) if schedule else {}
    branches = [
        {
            "index": i + 1,
            "name": item["name"],
            "probe": item["probe"],
            "tasks": item["tasks"],
            "steps": item["steps"],
            "R": _cells(rows[i + 1], names, "score"),
            "stderr": _cells(rows[i + 1], names, "stderr"),
            "n": _cells(rows[i + 1], names, "n"),
            "token_entropy": _cells(rows[i + 1], names, "token_entropy"),
            **_format_failures(rows, [i + 1], names, one_row=True),
        }
        for i, item in enumerate(items)
        if not is_main_line(item)
    ]
    if main_items and main_items[-1]["kind"] == "merge":
        metrics.update(_merge_metrics(main_items[-1], by_name, branches, matrix[-1], names))
    stages = [
        {"index": i + 1, **entry["item"], "trace": entry["trace"]}
        for i, entry in enumerate(state["items"])
    ]
    resolved_config = {
        "config": asdict(config),
        "budget": budget,
        "track_hash": track.content_hash(),
        "strategy_params": strategy.params,
        "strategy_source_hash": resolved.source_hash(),
    }
    stage_steps = [item["steps"] for item in items if item["kind"] == "stage"]
    probe_steps = sum(item["steps"] for item in items if item["kind"] == "stage" and item["probe"])
    item_block = {}
    if samples_dir is not None:
        item_rows = item_score_rows(samples_dir, names, main_rows)
        item_block["item_forgetting"] = item_forgetting(item_rows, chances)
    result = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "config_hash": config_hash(resolved_config),
        "track": {
            "name": track.spec.name,
            "version": track.spec.version,
            "hash": track.content_hash(),
        },
        "strategy": {
            "name": resolved.name,
            "class": strategy.name,
            "version": type(strategy).version,
            "params": strategy.params,
            "source_hash": resolved.source_hash(),
            # Set when a resume ran changed strategy code (run.Run._check_inputs_unchanged).
            "earlier_source_hashes": state.get("inputs", {}).get(
                "earlier_strategy_source_hashes", []
            ),
            "origin": resolved.origin,
            "report": report,
        },
        "seed": config.seed,
        "budget": {"steps": budget, "spent_steps": sum(stage_steps), "probe_steps": probe_steps},
        "tasks": names,
        "task_info": {
            n: {
                "domain": t.spec.domain,
                "chance": chances[n],
                "eval_size": len(t.eval[: track.spec.eval.max_items]),
                "reward_kind": t.spec.reward.kind,
                **reward_info(t),
                # Dataset rows a transform rejected (e.g. MBPP asserts that are not
                # `call == literal`); absent when none were, so older hashes hold.
                **({"dropped_rows": t.dropped} if t.dropped else {}),
                "version": t.spec.version,
                "hash": t.content_hash(),
            }
            for n, t in track.tasks.items()
        },
        "engine": engine_config,
        "stages": stages,
        "matrix": {
            "rows": ["base"]
            + [
                f"{k}: {item['name'] or ','.join(item.get('tasks', []))}"
                for k, item in enumerate(main_items, start=1)
            ],
            "item_index": main_rows,
            "R": matrix,
            "stderr": [_cells(rows[i], names, "stderr") for i in main_rows],
            "n": [_cells(rows[i], names, "n") for i in main_rows],
            "normalised": [
                [(rows[i][n]["score"] - chances[n]) / (1 - chances[n]) for n in names]
                for i in main_rows
            ],
            **_format_failures(rows, main_rows, names),
        },
        "branches": branches,
        "metrics": metrics,
        "entropy": {
            "token": [_cells(rows[i], names, "token_entropy") for i in main_rows],
            "sequence": [_cells(rows[i], names, "sequence_entropy") for i in main_rows],
            "distinct_ratio": [_cells(rows[i], names, "distinct_ratio") for i in main_rows],
        },
        **item_block,
        # LLM judges only (calls, cache hits, tokens, unparseable and inconsistent verdicts):
        # results scored by rules carry no such key, so their hashes are unchanged.
        **({"judges": state["judges"]} if state.get("judges") else {}),
        "compute": meter.to_json(),
        "base": {
            k: base_report.get(k)
            for k in ("steps", "final_dev", "source", "weights_sha256")
            if k in base_report
        },
        "final_model": final_model,
        "env": environment(device),
        "timestamps": {
            "started": state["started"],
            "finished": dt.datetime.now(dt.UTC).isoformat(),
        },
    }
    result["result_hash"] = result_content_hash(result)
    return result


def _format_failures(
    rows: list[dict[str, dict[str, Any]]],
    indices: list[int],
    names: list[str],
    *,
    one_row: bool = False,
) -> dict[str, Any]:
    """``format_failures``: per row and task, how many evaluated completions had no answer
    the task's extraction rule could find (null for tasks that declare no rule). Present only
    when some task declares one, so results of tracks without extraction keep their exact
    shape."""
    if not any("format_failures" in rows[i][n] for i in indices for n in names):
        return {}
    table = [[rows[i][n].get("format_failures") for n in names] for i in indices]
    return {"format_failures": table[0] if one_row else table}


def _merge_metrics(
    merge: dict[str, Any],
    by_name: dict[str, dict[str, Any]],
    branches: list[dict[str, Any]],
    final_row: list[float],
    names: list[str],
) -> dict[str, Any]:
    """Merge loss when every task has exactly one single-task branch among the sources."""
    rows_by_name = {b["name"]: b["R"] for b in branches}
    expert_for: dict[str, str] = {}
    for source in merge["sources"]:
        tasks = by_name[source]["tasks"] if by_name[source]["kind"] == "stage" else []
        if len(tasks) == 1:
            expert_for.setdefault(tasks[0], source)
    if set(expert_for) != set(names):
        return {
            "merge_loss": None,
            "merge_loss_reason": "the merge's sources are not one single-task branch per task",
        }
    value = merge_loss(final_row, [rows_by_name[expert_for[n]] for n in names])
    return metrics_to_json({"merge_loss": value})
