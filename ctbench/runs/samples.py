"""Reading a run's per-item scores back from ``samples/stage-KK-<task>.jsonl``.

The samples files are the ground truth of a result: R is their mean, sample-level
forgetting is their item-by-item change, and a leaderboard recomputes both from them. One
reader serves all three, and a missing file or a broken line is a user error naming itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ctbench.errors import UserError


def samples_path(run_dir: Path, index: int, task: str) -> Path:
    return run_dir / "samples" / f"stage-{index:02d}-{task}.jsonl"


def read_item_scores(path: Path) -> list[float]:
    """The per-item scores of one samples file, in item order."""
    if not path.exists():
        raise UserError("per-item samples file is missing", where=str(path))
    scores = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            score = json.loads(line)["score"]
        except (ValueError, KeyError, TypeError) as exc:
            message = f"line {number} is not a sample record: {exc}"
            raise UserError(message, where=str(path)) from None
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise UserError(f"line {number}: score is not a number", where=str(path))
        scores.append(float(score))
    if not scores:
        raise UserError("per-item samples file is empty", where=str(path))
    return scores


def item_score_rows(
    run_dir: Path, tasks: Sequence[str], indices: Sequence[int]
) -> dict[str, list[list[float]]]:
    """Per task, the per-item scores after each of the given rows (row 0: the base)."""
    return {
        task: [read_item_scores(samples_path(run_dir, index, task)) for index in indices]
        for task in tasks
    }
