"""Aggregating runs over seeds: means with bootstrap 95% CIs, and paired differences.

A leaderboard row is worth its uncertainty. The score of one run is itself a mean over
eval items, so the bootstrap resamples at both levels: seeds with replacement, then, for
each drawn seed, that run's eval items with replacement (task by task; ACC is the mean of
the task means). With one seed only the item level remains, which is said in the output.
Paired differences against a reference strategy pair runs by seed (same seed, same base,
same data order where the strategies share it) *and* by eval item: every strategy of a
track is scored on the same eval items (the split comes from the task's data seed, not the
run's), so one draw of item indices serves both sides. Drawing them apart would count each
item's difficulty twice and widen the interval of a difference for nothing.

Also the correlation of predicted with measured scores (``validate-prediction`` and its
figure), with its undefined cases named.

Pure functions of per-item score arrays; the caller reads them from run folders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# One run's final per-item scores: task → scores of its eval items (in eval order).
RunItems = Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n_seeds: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "mean": self.mean,
            "ci_low": self.low,
            "ci_high": self.high,
            "n_seeds": self.n_seeds,
        }


def run_acc(items: RunItems) -> float:
    """ACC of one run: the mean over tasks of the task's mean item score."""
    return float(np.mean([np.mean(scores) for scores in items.values()]))


def _resampled_acc(items: RunItems, rng: np.random.Generator) -> float:
    means = []
    for scores in items.values():
        values = np.asarray(scores, dtype=np.float64)
        means.append(values[rng.integers(0, len(values), len(values))].mean())
    return float(np.mean(means))


def _item_differences(runs: RunItems, reference: RunItems, seed: int) -> dict[str, np.ndarray]:
    """Per task, the item-by-item score difference of two runs on the same eval items."""
    if set(runs) != set(reference):
        raise ValueError(
            f"seed {seed}: the runs score different tasks ({sorted(runs)} vs {sorted(reference)})"
        )
    differences = {}
    for task, scores in runs.items():
        if len(scores) != len(reference[task]):
            raise ValueError(
                f"seed {seed}, task {task!r}: {len(scores)} eval items against "
                f"{len(reference[task])}; a paired difference needs the same eval items"
            )
        differences[task] = np.asarray(scores, dtype=np.float64) - np.asarray(
            reference[task], dtype=np.float64
        )
    return differences


def bootstrap_acc(
    runs: Sequence[RunItems], *, samples: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Mean ACC over runs (seeds) with a two-level percentile bootstrap CI."""
    if not runs:
        raise ValueError("no runs to aggregate")
    rng = np.random.default_rng(seed)
    draws = np.empty(samples)
    for b in range(samples):
        chosen = rng.integers(0, len(runs), len(runs))
        draws[b] = np.mean([_resampled_acc(runs[i], rng) for i in chosen])
    alpha = (1.0 - level) / 2.0
    return Interval(
        mean=float(np.mean([run_acc(r) for r in runs])),
        low=float(np.quantile(draws, alpha)),
        high=float(np.quantile(draws, 1.0 - alpha)),
        n_seeds=len(runs),
    )


def bootstrap_paired_difference(
    runs: Mapping[int, RunItems],
    reference: Mapping[int, RunItems],
    *,
    samples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """ACC(runs) − ACC(reference) over the seeds both have, paired by seed and by item.

    ACC is a mean of task means, so the difference of ACCs is the mean over tasks of the
    mean item-by-item difference: resampling those differences resamples both sides with
    the same items."""
    shared = sorted(set(runs) & set(reference))
    if not shared:
        raise ValueError("the two strategies share no seed")
    differences = {s: _item_differences(runs[s], reference[s], s) for s in shared}
    rng = np.random.default_rng(seed)
    draws = np.empty(samples)
    for b in range(samples):
        chosen = [shared[i] for i in rng.integers(0, len(shared), len(shared))]
        draws[b] = np.mean([_resampled_acc(differences[s], rng) for s in chosen])
    alpha = (1.0 - level) / 2.0
    return Interval(
        mean=float(np.mean([run_acc(runs[s]) - run_acc(reference[s]) for s in shared])),
        low=float(np.quantile(draws, alpha)),
        high=float(np.quantile(draws, 1.0 - alpha)),
        n_seeds=len(shared),
    )


def correlation(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Pearson and Spearman with p-values (scipy); null with a reason where undefined."""
    from scipy import stats

    n = len(predicted)
    out: dict[str, Any] = {"n": n}
    if n < 3 or len(set(predicted)) < 2 or len(set(measured)) < 2:
        reason = "fewer than 3 points" if n < 3 else "one side is constant"
        for key in ("pearson", "pearson_p", "spearman", "spearman_p"):
            out[key] = None
        out["reason"] = reason
        return out
    pearson = stats.pearsonr(predicted, measured)
    spearman = stats.spearmanr(predicted, measured)
    out.update(
        pearson=float(pearson.statistic),
        pearson_p=float(pearson.pvalue),
        spearman=float(spearman.statistic),
        spearman_p=float(spearman.pvalue),
    )
    return out
