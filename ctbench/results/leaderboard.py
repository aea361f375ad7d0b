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
from ctbench.runs.general_eval import OUTPUT as GENERAL_EVAL
from ctbench.runs.item_forgetting import item_forgetting
from ctbench.runs.metrics import all_metrics, mean_and_stderr, metrics_to_json
from ctbench.runs.result import main_line_schedule, result_content_hash
from ctbench.runs.samples import item_score_rows, read_item_scores, samples_path
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


def lookup_dotted(result: dict[str, Any], dotted: str) -> Any:
    """``result['a']['b']`` for ``'a.b'``; KeyError naming the whole path when absent."""
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
            value = lookup_dotted(result, key)
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
    weights = result.get("base", {}).get("weights_sha256")
    if track.spec.model.source is not None and not isinstance(weights, str):
        raise UserError(
            "schema violation: base.weights_sha256 is missing (a model-source track's result "
            "must say which weights it started from)",
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


def check_scores(run_dir: Path, result: dict[str, Any], where: str) -> None:
    """Recompute R from the per-item scores in ``samples/`` and the metrics from R; refuse
    any mismatch. The content hash only proves the result is as *some* run wrote it: an
    edited number with a recomputed hash, or edited samples, must not count."""
    tasks, matrix = result["tasks"], result["matrix"]
    for row, index in enumerate(matrix["item_index"]):
        for column, task in enumerate(tasks):
            path = samples_path(run_dir, index, task)
            recomputed, _ = mean_and_stderr(read_item_scores(path))
            recorded = matrix["R"][row][column]
            if not isinstance(recorded, int | float) or abs(recomputed - recorded) > 1e-9:
                raise UserError(
                    f"R[{row}][{task}] is {recorded!r} but its samples ({path.name}) average "
                    f"{recomputed!r}",
                    where=where,
                )
    recorded = result.get("item_forgetting")
    if recorded is not None and recompute_item_forgetting(run_dir, result) != recorded:
        raise UserError(
            "item_forgetting does not follow from the per-item scores in samples/", where=where
        )
    schedule = main_line_schedule(result)
    if not schedule:
        return
    recomputed_metrics = metrics_to_json(all_metrics(matrix["R"], schedule))
    for key, value in recomputed_metrics.items():
        recorded = result["metrics"].get(key)
        same = (
            recorded == value
            if not isinstance(value, float) or not isinstance(recorded, int | float)
            else abs(recorded - value) <= 1e-9
        )
        if not same:
            raise UserError(f"metrics.{key} is {recorded!r} but R gives {value!r}", where=where)


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
    # The base weights every result started from, where results record them (model-source
    # tracks): one leaderboard compares strategies from the same weights, so the first
    # result's hash is the one every other must match.
    base_weights: tuple[str, str] | None = None
    for run_dir in run_dirs:
        where = str(run_dir / "result.json")
        try:
            result = json.loads((run_dir / "result.json").read_text())
        except ValueError as exc:
            raise UserError(f"not valid JSON: {exc}", where=where) from exc
        validate_result(result, track, budget, where)
        check_scores(run_dir, result, where)
        weights = result.get("base", {}).get("weights_sha256")
        if weights is not None:
            if base_weights is None:
                base_weights = (weights, where)
            elif weights != base_weights[0]:
                raise UserError(
                    f"base weights_sha256 {weights[:16]}… differs from {base_weights[0][:16]}… "
                    f"of {base_weights[1]} (another model file or conversion)",
                    where=where,
                )
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
            **({"weights_sha256": base_weights[0]} if base_weights else {}),
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
    cpu = f" ({env['cpu_model']})" if env.get("cpu_model") else ""
    return (
        f"{env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs{cpu}, "
        f"{env.get('torch_threads', '?')} torch threads, device {device}"
    )


def run_item_forgetting(run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """A result's sample-level forgetting: as recorded, or recomputed from its samples."""
    if "item_forgetting" in result:
        return result["item_forgetting"]
    return recompute_item_forgetting(run_dir, result)


def recompute_item_forgetting(run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Sample-level forgetting from the per-item scores in ``samples/``."""
    tasks = result["tasks"]
    rows = item_score_rows(run_dir, tasks, result["matrix"]["item_index"])
    chances = {t: result["task_info"][t]["chance"] for t in tasks}
    return item_forgetting(rows, chances)


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
            # How many seeds each of those means is over (a schedule may leave one undefined
            # at some seed): a mean over fewer seeds than n_seeds says so.
            "defined_seeds": {
                m: sum(r["metrics"].get(m) is not None for r in results)
                for m in ("bwt", "forgetting", "merge_loss")
            },
            # Share of ever-solved items the final model does not solve (sample-level
            # forgetting; from samples/ for results written before it was recorded).
            "items_forgotten": _mean(
                [run_item_forgetting(d, r)["final_forgotten_since_best_rate"] for d, r in runs]
            ),
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
        # The code sandbox's fence, where the runs recorded one (see scoring/sandbox.py).
        "sandbox": sorted(
            {
                info["sandbox"]
                for r in results
                for info in r["task_info"].values()
                if "sandbox" in info
            }
        ),
        "results": [
            {"run_id": r["run_id"], "seed": r["seed"], "result_hash": r["result_hash"]}
            for r in results
        ],
        # One seed's trajectory for the page (orders may differ between seeds, so rows of
        # R are not averaged): what its figures need (R, forgetting, entropy over stages and
        # steps, Δ and predictions where the strategy measured them).
        "example": {"seed": results[0]["seed"], **plot_data(results[0])},
        # General ability (lm-eval, final − base) where `ctbench eval-general` scored runs.
        "general": general_ability(runs),
        "ctbench_versions": sorted({r.get("env", {}).get("ctbench", __version__) for r in results}),
    }


def general_protocol(summary: dict[str, Any]) -> dict[str, Any]:
    """How an eval-general summary prompted the models; files written before the protocol
    was recorded used lm-eval's defaults (each task's few-shot count, no chat template)."""
    return summary.get("protocol") or {"num_fewshot": None, "chat_template": False}


def general_ability(runs: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any] | None:
    """lm-eval's final − base per task and metric, averaged over the seeds whose run folder
    holds a ``general_eval.json`` (``ctbench eval-general``) of that very result; None when
    none does. A file naming another result (run id or result hash) is refused: it would
    credit one run's general ability to another; so are seeds scored under different
    protocols (few-shot count, chat template), whose deltas measure different things."""
    found: list[tuple[int, dict[str, Any]]] = []
    protocols: dict[str, Path] = {}
    for run_dir, result in runs:
        path = run_dir / GENERAL_EVAL
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise UserError(f"not valid JSON: {exc}", where=str(path)) from exc
        if not isinstance(data, dict) or not isinstance(data.get("delta"), dict):
            raise UserError("expected an eval-general summary with a delta", where=str(path))
        if (data.get("run_id"), data.get("result_hash")) != (
            result["run_id"],
            result["result_hash"],
        ):
            raise UserError(
                f"it scores run {data.get('run_id')!r} (result hash "
                f"{str(data.get('result_hash'))[:12]}…), not this folder's result; rerun "
                f"`ctbench eval-general {run_dir}`",
                where=str(path),
            )
        protocol = json.dumps(general_protocol(data), sort_keys=True)
        if protocols and protocol not in protocols:
            (other_protocol, other_path), *_ = protocols.items()
            raise UserError(
                f"scored under protocol {protocol} but {other_path} under {other_protocol}; "
                "score every seed alike (`ctbench eval-general` with the same --num-fewshot "
                "and --chat-template)",
                where=str(path),
            )
        protocols.setdefault(protocol, path)
        found.append((result["seed"], data))
    if not found:
        return None
    values: dict[str, dict[str, list[float]]] = {}
    for _, data in found:
        for task, metrics in data["delta"].items():
            for metric, value in (metrics or {}).items():
                if isinstance(value, int | float):
                    values.setdefault(task, {}).setdefault(metric, []).append(float(value))
    return {
        "seeds": sorted(seed for seed, _ in found),
        "lm_eval_versions": sorted({str(d.get("lm_eval_version")) for _, d in found}),
        "limits": sorted({d.get("limit") for _, d in found}, key=lambda v: (v is None, v)),
        "protocol": general_protocol(found[0][1]),
        "delta": {
            task: {m: {"mean": sum(v) / len(v), "n": len(v)} for m, v in sorted(ms.items())}
            for task, ms in sorted(values.items())
        },
    }


def write_leaderboard(board: dict[str, Any], folder: Path) -> Path:
    path = folder / f"{board['track']['name']}.json"
    write_json_atomic(path, board)
    return path
