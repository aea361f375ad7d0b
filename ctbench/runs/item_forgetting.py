"""Sample-level forgetting: which *items* a model forgot or learned between evaluations.

Average accuracy hides churn: a stage can lose ten items and win ten others and leave ACC
where it was. Following arXiv 2510.17776, each eval item is marked solved or not after every
main-line evaluation, and transitions are counted per task and stage:

- ``forgotten``: solved at the previous main-line evaluation, unsolved now (1 → 0);
- ``learned``: unsolved before, solved now (0 → 1);
- ``forgotten_since_best``: solved at *any* earlier main-line evaluation, unsolved now
  (what a max-based forgetting measure sees, item by item).

Rates divide by the items that could make the transition (solved before for ``forgotten``,
unsolved before for ``learned``, solved at any earlier evaluation, the base's included,
for ``forgotten_since_best``); with none, the rate is ``None``.

**Solved** means an item's score is at least ``SOLVED_THRESHOLD`` = 0.5. For the binary
rewards of greedy tasks (exact, numeric, choice, code) that is exactly "correct"; for a
sampled task an item's score is the mean over its samples, and 0.5 calls it solved when at
least half of its score mass is earned. The threshold is fixed here, before any run is
read, and is the same for every strategy, so transitions compare across strategies.

**Chance adjustment** (multiple-choice tasks, chance c = 1/k): a model that does not know an
item and picks among k options flips between right and wrong by luck. Under the standard
correction for guessing, the items it does not know number U = n (1 − a) / (1 − c) at an
accuracy a, and with stable knowledge each of them makes a 1 → 0 transition with
probability c (1 − c) between two evaluations, and a 0 → 1 transition with the same
probability. ``forgotten_adjusted`` and ``learned_adjusted`` subtract U c (1 − c) (with U
from the earlier evaluation), floored at 0: the churn beyond what blind guessing alone would
produce. This assumes guessing is uniform over the options, which greedy decoding need not
be; the unadjusted counts are always reported beside it.

Everything here is a pure function of per-item scores (lists of floats, one per eval item,
in a fixed item order), tested on hand-made cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SOLVED_THRESHOLD = 0.5


def solved(scores: Sequence[float], threshold: float = SOLVED_THRESHOLD) -> list[bool]:
    return [score >= threshold for score in scores]


def _rate(count: int, denominator: int) -> float | None:
    return count / denominator if denominator else None


def guessing_churn(n_items: int, accuracy: float, chance: float) -> float:
    """Expected 1 → 0 (equally, 0 → 1) transitions from blind guessing alone between two
    evaluations: U c (1 − c), with U = n (1 − a) / (1 − c) unknown items, clipped to [0, n]."""
    if not 0.0 < chance < 1.0:
        return 0.0
    unknown = min(max(n_items * (1.0 - accuracy) / (1.0 - chance), 0.0), float(n_items))
    return unknown * chance * (1.0 - chance)


def task_transitions(
    rows: Sequence[Sequence[float]],
    *,
    chance: float = 0.0,
    threshold: float = SOLVED_THRESHOLD,
) -> list[dict[str, Any]]:
    """One dict per evaluation after the first (rows[1:]), for one task.

    ``rows[k]`` holds the per-item scores after main-line row k (row 0: the base model);
    every row must score the same items in the same order."""
    if not rows:
        return []
    n = len(rows[0])
    if any(len(row) != n for row in rows):
        raise ValueError("every evaluation must score the same items")
    states = [solved(row, threshold) for row in rows]
    ever = list(states[0])
    out = []
    for k in range(1, len(states)):
        before, now = states[k - 1], states[k]
        forgotten = sum(1 for b, a in zip(before, now, strict=True) if b and not a)
        learned = sum(1 for b, a in zip(before, now, strict=True) if not b and a)
        since_best = sum(1 for e, a in zip(ever, now, strict=True) if e and not a)
        solved_before = sum(before)
        entry: dict[str, Any] = {
            "solved": sum(now),
            "forgotten": forgotten,
            "learned": learned,
            "forgotten_rate": _rate(forgotten, solved_before),
            "learned_rate": _rate(learned, n - solved_before),
            "forgotten_since_best": since_best,
            "forgotten_since_best_rate": _rate(since_best, sum(ever)),
        }
        if chance > 0.0:
            luck = guessing_churn(n, solved_before / n if n else 0.0, chance)
            entry["forgotten_adjusted"] = max(forgotten - luck, 0.0)
            entry["learned_adjusted"] = max(learned - luck, 0.0)
        out.append(entry)
        ever = [e or a for e, a in zip(ever, now, strict=True)]
    return out


def item_forgetting(
    rows_by_task: Mapping[str, Sequence[Sequence[float]]],
    chances: Mapping[str, float],
    *,
    threshold: float = SOLVED_THRESHOLD,
) -> dict[str, Any]:
    """The result.json block: per task, one entry per main-line evaluation after the base,
    and a summary: ``final_forgotten_since_best_rate``, the mean over tasks of the share of
    ever-solved items that the final model does not solve (None where no task had one)."""
    per_task = {
        task: task_transitions(rows, chance=chances.get(task, 0.0), threshold=threshold)
        for task, rows in rows_by_task.items()
    }
    finals = [
        entries[-1]["forgotten_since_best_rate"]
        for entries in per_task.values()
        if entries and entries[-1]["forgotten_since_best_rate"] is not None
    ]
    return {
        "threshold": threshold,
        "tasks": per_task,
        "final_forgotten_since_best_rate": sum(finals) / len(finals) if finals else None,
        "total_forgotten": sum(e["forgotten"] for es in per_task.values() for e in es),
        "total_learned": sum(e["learned"] for es in per_task.values() for e in es),
    }
