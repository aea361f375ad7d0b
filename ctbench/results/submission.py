"""Submission bundles: a submitted strategy, run on a track's seeds, packed for review.

A bundle is a folder a leaderboard maintainer can check without trusting the submitter:

    manifest.json   strategy (reference, source files, source hash), track hash, budget,
                    seeds, and per seed the run id and result hash; the leaderboard entry
    strategy/       copies of the strategy's source files (class file, recipe if any)
    runs/<id>/      the finished run folders (result.json, samples/, config.json)

``validate_bundle`` re-derives everything it can: the source hash from the copied files,
each result's content hash, the track hash, the budget, and that every promised seed is
present, so an edited metric, another track, or a missing seed is refused with the reason.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctbench.common.atomic import write_json_atomic
from ctbench.errors import UserError
from ctbench.results.compare import run_grid
from ctbench.results.leaderboard import (
    build_leaderboard,
    check_scores,
    find_results,
    validate_result,
)
from ctbench.runs.run import RunObserver
from ctbench.strategies.plugins import files_hash, resolve_strategy
from ctbench.tracks.track import Track, load_track

BUNDLE_SCHEMA = 1


def create_bundle(
    ref: str,
    *,
    track_name: str,
    seeds: Sequence[int],
    out: Path,
    observer: RunObserver,
    budget: int | None = None,
    device: str = "auto",
) -> Path:
    resolved = resolve_strategy(ref)
    resolved.instantiate()
    track = load_track(track_name)
    budget = budget if budget is not None else track.spec.budget_steps
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in resolved.name)
    bundle = out / f"submission-{safe}-{track.spec.name}"
    cells = run_grid(
        [ref],
        seeds,
        track=track_name,
        out=bundle / "work",
        observer=observer,
        budget=budget,
        device=device,
    )
    runs_dir = bundle / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    run_dirs = []
    # The final model stays home: the leaderboard re-checks results, not weights (a full
    # fine-tune of the smol model is 540 MB per seed).
    for (_, seed), cell in sorted(cells.items(), key=lambda kv: kv[0][1]):
        target = runs_dir / f"{safe}-s{seed}"
        if not target.exists():
            shutil.copytree(
                cell,
                target,
                ignore=shutil.ignore_patterns("checkpoints", "state.json", "final-model"),
            )
        run_dirs.append(target)
    strategy_dir = bundle / "strategy"
    strategy_dir.mkdir(exist_ok=True)
    for path in resolved.files:
        shutil.copy2(path, strategy_dir / path.name)
    board = build_leaderboard(track, run_dirs, budget=budget)
    results = [json.loads((d / "result.json").read_text()) for d in run_dirs]
    manifest = {
        "schema_version": BUNDLE_SCHEMA,
        "strategy": {
            "name": resolved.name,
            "reference": ref,
            "class": resolved.cls.__name__,
            "files": [path.name for path in resolved.files],
            "source_hash": resolved.source_hash(),
        },
        "track": {"name": track.spec.name, "hash": track.content_hash()},
        "budget_steps": budget,
        "seeds": list(seeds),
        "runs": [
            {"seed": r["seed"], "run_id": d.name, "result_hash": r["result_hash"]}
            for d, r in zip(run_dirs, results, strict=True)
        ],
        "entry": board["entries"][0],
    }
    write_json_atomic(bundle / "manifest.json", manifest)
    shutil.rmtree(bundle / "work", ignore_errors=True)
    return bundle


def is_bundle(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def leaderboard_run_dirs(paths: Sequence[Path], track: Track, budget: int) -> list[Path]:
    """Every run folder a ``leaderboard build`` gets: plain run folders (and folders of
    them) as they are, submission bundles only after :func:`validate_bundle` accepts them.
    A bundle is never silently skipped: it is counted or refused with the reason."""
    found: list[Path] = []
    plain = []
    for path in paths:
        bundles = [path] if is_bundle(path) else []
        if not bundles and path.is_dir():  # a folder of bundles, e.g. submissions/
            bundles = sorted(child for child in path.iterdir() if is_bundle(child))
        for bundle in bundles:
            found.extend(validate_bundle(bundle, track, budget))
        if not bundles:
            plain.append(path)
    if plain:
        found.extend(find_results(plain))
    if not found:
        raise UserError("no finished runs (result.json) found", where="RUNS")
    return found


def validate_bundle(bundle: Path, track: Track, budget: int) -> list[Path]:
    """The bundle's run folders, after every check; a :class:`UserError` says what failed."""
    where = str(bundle / "manifest.json")
    try:
        manifest: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
        strategy, runs, seeds = manifest["strategy"], manifest["runs"], manifest["seeds"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"not a readable submission manifest: {exc}", where=where) from exc
    if manifest.get("schema_version") != BUNDLE_SCHEMA:
        raise UserError("unknown bundle schema_version", where=where)
    if manifest["track"]["hash"] != track.content_hash():
        raise UserError(
            f"bundle was made for track hash {manifest['track']['hash']}, not "
            f"{track.spec.name!r}'s {track.content_hash()}",
            where=where,
        )
    files = [bundle / "strategy" / name for name in strategy["files"]]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise UserError(f"strategy source missing: {', '.join(missing)}", where=where)
    if files_hash(files) != strategy["source_hash"]:
        raise UserError("strategy source does not match its source_hash", where=where)
    present = {run["seed"] for run in runs}
    if sorted(present) != sorted(seeds) or len(runs) != len(seeds):
        lost = sorted(set(seeds) - present)
        raise UserError(f"missing seeds: {lost or 'runs do not match the seeds'}", where=where)
    run_dirs = []
    for run in runs:
        run_dir = bundle / "runs" / run["run_id"]
        result_file = run_dir / "result.json"
        if not result_file.exists():
            raise UserError(f"seed {run['seed']}: result.json is missing", where=where)
        result = json.loads(result_file.read_text())
        validate_result(result, track, budget, str(result_file))
        check_scores(run_dir, result, str(result_file))
        if result["result_hash"] != run["result_hash"] or result["seed"] != run["seed"]:
            raise UserError(
                f"seed {run['seed']}: result does not match the manifest", where=str(result_file)
            )
        if result["strategy"]["source_hash"] != strategy["source_hash"]:
            raise UserError(
                f"seed {run['seed']}: run by another version of the strategy source",
                where=str(result_file),
            )
        run_dirs.append(run_dir)
    return run_dirs
