"""Transfer matrix, Omni-Thinker's additive predictor, and the order search (pure functions).

DESIGN §5: Δ[i][j] = score on task j after a probe trained on i alone, minus the base
score on j. Under Omni-Thinker's two assumptions (transfer is constant, whatever the start;
one stage saturates a task at its single-task level a*_j) the final score of the task at
position m of an order π is

    pred_final(π(m)) = a*_{π(m)} + Σ_{l > m} Δ[π(l)][π(m)]

and the ``bwt`` order maximises Σ_m pred_final. The a* term does not depend on the order,
so the search maximises the sum of Δ[later][earlier] over ordered pairs: a linear-ordering
problem, solved exactly by enumeration for n ≤ 6 and by a DP over subsets up to 16 tasks
(O(2^n · n)), greedily with local swaps beyond.

Here a*_j is estimated by the probe on j itself (base + Δ[j][j]); probes are shorter than
real stages, which is one reason the predictions are *checked* (``ctbench
validate-prediction``) rather than trusted.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Search = Literal["auto", "exhaustive", "dp", "greedy", "omni"]
EXHAUSTIVE_MAX = 6
DP_MAX = 16


@dataclass(frozen=True)
class TransferMatrix:
    """Δ over ``tasks`` (row: the task probed; column: the task scored) plus the base row."""

    tasks: tuple[str, ...]
    delta: tuple[tuple[float, ...], ...]
    base: tuple[float, ...]

    @property
    def single_task_levels(self) -> tuple[float, ...]:
        """a*_j: the score of task j after its own probe."""
        return tuple(self.base[j] + self.delta[j][j] for j in range(len(self.tasks)))

    def to_json(self) -> dict[str, object]:
        return {
            "tasks": list(self.tasks),
            "delta": [list(row) for row in self.delta],
            "base": list(self.base),
            "single_task_levels": list(self.single_task_levels),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TransferMatrix:
        return cls(
            tasks=tuple(data["tasks"]),  # type: ignore[arg-type]
            delta=tuple(tuple(float(v) for v in row) for row in data["delta"]),  # type: ignore[union-attr]
            base=tuple(float(v) for v in data["base"]),  # type: ignore[union-attr]
        )


def transfer_matrix(
    tasks: Sequence[str],
    base: Mapping[str, float],
    probe_rows: Mapping[str, Mapping[str, float]],
) -> TransferMatrix:
    """Δ from the base row and one probe row per task (probe of task i → scores on all)."""
    missing = [t for t in tasks if t not in probe_rows]
    if missing:
        raise ValueError(f"no probe row for task(s) {', '.join(missing)}")
    delta = tuple(tuple(probe_rows[i][j] - base[j] for j in tasks) for i in tasks)
    return TransferMatrix(tuple(tasks), delta, tuple(base[j] for j in tasks))


def predict_final_scores(order: Sequence[str], transfer: TransferMatrix) -> dict[str, float]:
    """pred_final for every task of ``order`` (DESIGN §5), keyed by task."""
    index = {t: k for k, t in enumerate(transfer.tasks)}
    if sorted(order) != sorted(transfer.tasks):
        raise ValueError(
            f"an order must list each of {', '.join(transfer.tasks)} exactly once, "
            f"got {', '.join(order)}"
        )
    levels = transfer.single_task_levels
    out = {}
    for m, task in enumerate(order):
        j = index[task]
        out[task] = levels[j] + sum(transfer.delta[index[later]][j] for later in order[m + 1 :])
    return out


def order_value(order: Sequence[int], delta: np.ndarray) -> float:
    """Σ over ordered pairs (earlier m, later l) of Δ[l][m]: the order-dependent part."""
    n = len(order)
    return float(sum(delta[order[later], order[m]] for m in range(n) for later in range(m + 1, n)))


def _exhaustive(delta: np.ndarray) -> list[int]:
    n = len(delta)
    best, best_value = list(range(n)), -np.inf
    for perm in itertools.permutations(range(n)):
        value = order_value(perm, delta)
        if value > best_value + 1e-12:
            best, best_value = list(perm), value
    return best


def _subset_dp(delta: np.ndarray) -> list[int]:
    """Exact: value[S ∪ {j}] = value[S] + Σ_{l ∉ S ∪ {j}} Δ[l][j] (j placed after all of S)."""
    n = len(delta)
    off = delta - np.diag(np.diag(delta))
    column_total = off.sum(axis=0)  # Σ_{l ≠ j} Δ[l][j]
    size = 1 << n
    value = np.full(size, -np.inf)
    value[0] = 0.0
    parent = np.full(size, -1, dtype=np.int64)
    # incoming[S][j] = Σ_{l ∈ S} Δ[l][j], built from S without its lowest bit.
    incoming = np.zeros((size, n))
    for mask in range(1, size):
        low = (mask & -mask).bit_length() - 1
        incoming[mask] = incoming[mask & (mask - 1)] + off[low]
    for mask in range(size):
        if value[mask] == -np.inf:
            continue
        # Placing j next, j precedes every task outside mask ∪ {j}: it gains their Δ[l][j].
        gain = column_total - incoming[mask]
        for j in range(n):
            bit = 1 << j
            if mask & bit:
                continue
            candidate = value[mask] + gain[j]
            if candidate > value[mask | bit] + 1e-12:
                value[mask | bit] = candidate
                parent[mask | bit] = j
    order, mask = [], size - 1
    while mask:
        j = int(parent[mask])
        order.append(j)
        mask ^= 1 << j
    return order[::-1]


def _greedy(delta: np.ndarray) -> list[int]:
    """Pick next the task that gains most from all still-unplaced tasks; then adjacent swaps."""
    n = len(delta)
    off = delta - np.diag(np.diag(delta))
    remaining, order = list(range(n)), []
    while remaining:
        best = max(remaining, key=lambda j: (sum(off[k, j] for k in remaining if k != j), -j))
        order.append(best)
        remaining.remove(best)
    improved = True
    while improved:
        improved = False
        for k in range(n - 1):
            a, b = order[k], order[k + 1]
            if off[a, b] > off[b, a] + 1e-12:  # b first gains Δ[a][b] instead of Δ[b][a]
                order[k], order[k + 1] = b, a
                improved = True
    return order


def _omni(transfer: TransferMatrix) -> list[int]:
    """Omni-Thinker's rule as its reviewers paraphrase it: first the task whose training
    leaves the highest average accuracy on the tasks still to come; repeat."""
    n = len(transfer.tasks)
    remaining, order = list(range(n)), []
    while remaining:

        def after(i: int) -> float:
            others = [j for j in remaining if j != i]
            if not others:
                return 0.0
            return sum(transfer.base[j] + transfer.delta[i][j] for j in others) / len(others)

        best = max(remaining, key=lambda i: (after(i), -i))
        order.append(best)
        remaining.remove(best)
    return order


def best_order(transfer: TransferMatrix, search: Search = "auto") -> tuple[list[str], str]:
    """The order maximising Σ pred_final, and the search that found it.

    ``auto``: exhaustive for n ≤ 6, exact subset DP for n ≤ 16, greedy beyond. Ties go to the
    order that comes first in the task list's order, so the result is deterministic."""
    n = len(transfer.tasks)
    delta = np.asarray(transfer.delta, dtype=np.float64)
    if search == "auto":
        search = "exhaustive" if n <= EXHAUSTIVE_MAX else "dp" if n <= DP_MAX else "greedy"
    if search == "exhaustive":
        order = _exhaustive(delta)
    elif search == "dp":
        if n > 24:
            raise ValueError(f"the subset DP needs 2^n states; n = {n} is too many")
        order = _subset_dp(delta)
    elif search == "greedy":
        order = _greedy(delta)
    elif search == "omni":
        order = _omni(transfer)
    else:
        raise ValueError(f"unknown search {search!r}")
    return [transfer.tasks[i] for i in order], search
