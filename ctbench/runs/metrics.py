"""Continual-learning metrics computed from a finished accuracy matrix.

Everything here is a pure function of its arguments: no I/O, no state. The harness fills an
accuracy matrix ``R`` during a run and hands it here once the run is over.

Conventions (team-agreed; stage and task numbering used throughout):

* Stages ``k = 0..S``; row ``R[0]`` is the base model before any training, row ``R[k]`` the model
  after stage ``k``. Tasks ``j = 0..n-1``; ``R[k][j]`` is the eval score of task ``j`` after
  stage ``k``.
* ``schedule[k - 1]`` is the set of task indices whose data is in stage ``k``'s mixture
  (``k = 1..S``), so a plain sequential run is ``[{0}, {1}, ..., {n-1}]`` and joint multi-task
  training is a single stage ``[{0, ..., n-1}]``.
* ``s_j`` / ``t_j`` are the first / last stage (1-based) whose mixture contains task ``j``;
  both are ``None`` for a task that is never trained.

The definitions follow GEM (Lopez-Paz & Ranzato, 2017) for ACC / BWT / FWT, Chaudhry et al.
(2018, "Riemannian Walk") for max-based forgetting, and the Avalanche library's diagonal form of
forgetting, generalised to schedules in which a task can appear in several stages (or none).

A metric that is undefined for the given schedule is reported as ``MetricValue(None, reason)``
rather than as 0.0, so that "no forgetting" and "forgetting cannot be measured here" are never
confused in a leaderboard.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = [
    "MetricValue",
    "accuracy",
    "all_metrics",
    "backward_transfer",
    "first_last_stage",
    "forgetting_diagonal",
    "forgetting_matrix",
    "forgetting_max",
    "forward_transfer",
    "learning_accuracy",
    "mean_and_stderr",
    "merge_loss",
    "metrics_to_json",
]

Matrix = Sequence[Sequence[float]]
Schedule = Sequence[Collection[int]]


@dataclass(frozen=True)
class MetricValue:
    """One metric: a value, or ``None`` with a human-readable reason why it is undefined.

    ``reason`` is set exactly when ``value`` is ``None``. ``per_task`` (when given) holds one
    entry per task, ``None`` for tasks the metric does not cover, so a reader can see which
    tasks drove the mean.
    """

    value: float | None
    reason: str | None = None
    per_task: tuple[float | None, ...] | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.reason is None):
            raise ValueError("MetricValue: reason must be set exactly when value is None")


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_row(row: Sequence[float], what: str) -> tuple[float, ...]:
    """Return ``row`` as a tuple of floats, raising ValueError on non-numeric or non-finite."""
    out: list[float] = []
    for j, v in enumerate(row):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"{what}[{j}] must be a number, got {v!r}")
        fv = float(v)
        if not math.isfinite(fv):
            raise ValueError(f"{what}[{j}] must be finite, got {v!r}")
        out.append(fv)
    return tuple(out)


def _check_matrix(R: Matrix) -> tuple[tuple[float, ...], ...]:
    """Validate that ``R`` is a non-empty rectangular matrix of finite numbers."""
    if isinstance(R, str | bytes) or len(R) == 0:
        raise ValueError("accuracy matrix R must have at least one row (the base model, row 0)")
    rows = tuple(_check_row(row, f"R[{k}]") for k, row in enumerate(R))
    n = len(rows[0])
    if n < 1:
        raise ValueError("accuracy matrix R must have at least one task (column)")
    for k, row in enumerate(rows):
        if len(row) != n:
            raise ValueError(
                f"accuracy matrix R is ragged: row 0 has {n} tasks but row {k} has {len(row)}"
            )
    return rows


def _check_schedule(schedule: Schedule, n_tasks: int) -> tuple[frozenset[int], ...]:
    """Validate that every task index in ``schedule`` lies in ``0..n_tasks-1``."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be at least 1, got {n_tasks}")
    stages: list[frozenset[int]] = []
    for i, stage in enumerate(schedule):
        if isinstance(stage, str | bytes):
            raise ValueError(f"schedule[{i}] must be a collection of task indices, got {stage!r}")
        for j in stage:
            if isinstance(j, bool) or not isinstance(j, numbers.Integral):
                raise ValueError(f"schedule[{i}] (stage {i + 1}) holds a non-integer task {j!r}")
            if not 0 <= j < n_tasks:
                raise ValueError(
                    f"schedule[{i}] (stage {i + 1}) names task {j}, "
                    f"but there are only {n_tasks} tasks (valid indices 0..{n_tasks - 1})"
                )
        stages.append(frozenset(int(j) for j in stage))
    return tuple(stages)


def _check(
    R: Matrix, schedule: Schedule
) -> tuple[tuple[tuple[float, ...], ...], tuple[frozenset[int], ...]]:
    """Validate ``R`` against ``schedule``: ``S + 1`` rows for ``S`` stages, indices in range."""
    rows = _check_matrix(R)
    stages = _check_schedule(schedule, len(rows[0]))
    if len(rows) != len(stages) + 1:
        raise ValueError(
            f"accuracy matrix R must have len(schedule) + 1 = {len(stages) + 1} rows "
            f"(row 0 = base model, then one row per stage), got {len(rows)}"
        )
    return rows, stages


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _per_task_metric(per_task: list[float | None], undefined_reason: str) -> MetricValue:
    """Average the defined entries of ``per_task``; undefined with a reason if there are none."""
    defined = [v for v in per_task if v is not None]
    if not defined:
        return MetricValue(None, undefined_reason, tuple(per_task))
    return MetricValue(_mean(defined), None, tuple(per_task))


# --------------------------------------------------------------------------------------------
# Schedule structure
# --------------------------------------------------------------------------------------------


def first_last_stage(schedule: Schedule, n_tasks: int) -> tuple[list[int | None], list[int | None]]:
    """Return ``(s, t)``: each task's first and last training stage (1-based), ``None`` if never.

    Stage ``k`` is ``schedule[k - 1]``; row ``k`` of the accuracy matrix is evaluated right after
    it, so ``R[t_j][j]`` is task ``j``'s score just after its last training stage.
    """
    stages = _check_schedule(schedule, n_tasks)
    first: list[int | None] = [None] * n_tasks
    last: list[int | None] = [None] * n_tasks
    for k, stage in enumerate(stages, start=1):
        for j in stage:
            if first[j] is None:
                first[j] = k
            last[j] = k
    return first, last


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def accuracy(R: Matrix) -> MetricValue:
    """Average final accuracy (GEM's ACC): mean of the last row over all tasks.

    All tasks count, including ones never trained, because ACC answers "how good is the final
    model on the whole benchmark". ``per_task`` is the final row.
    """
    rows = _check_matrix(R)
    final = rows[-1]
    return MetricValue(_mean(final), None, final)


def backward_transfer(R: Matrix, schedule: Schedule) -> MetricValue:
    """Backward transfer (GEM's BWT): mean over tasks with ``t_j < S`` of ``R[S][j] - R[t_j][j]``.

    Negative values mean later stages hurt tasks learned earlier. Measured from each task's
    *last* training stage so a task revisited later is judged against its freshest score. Tasks
    still being trained in the final stage have nothing "after" them and are excluded.
    """
    rows, stages = _check(R, schedule)
    S, n = len(stages), len(rows[0])
    _, last = first_last_stage(stages, n)
    per_task: list[float | None] = [
        rows[S][j] - rows[t][j] if t is not None and t < S else None for j, t in enumerate(last)
    ]
    return _per_task_metric(
        per_task,
        "Backward transfer is undefined: no task's last training stage comes before the final "
        "stage (e.g. joint training in one stage), so there is no later training to measure.",
    )


def forward_transfer(R: Matrix, schedule: Schedule) -> MetricValue:
    """Forward transfer (GEM's FWT): mean over tasks with ``s_j > 1`` of ``R[s_j-1][j] - R[0][j]``.

    It measures how much the stages *before* a task's first stage moved that task away from
    the base model (GEM's ``b_i`` is the base model's score here). Tasks first trained in
    stage 1, and tasks never trained, have no such prior stages and are excluded.
    """
    rows, stages = _check(R, schedule)
    n = len(rows[0])
    first, _ = first_last_stage(stages, n)
    per_task: list[float | None] = [
        rows[s - 1][j] - rows[0][j] if s is not None and s > 1 else None
        for j, s in enumerate(first)
    ]
    return _per_task_metric(
        per_task,
        "Forward transfer is undefined: every trained task is already in the first stage, so "
        "no task is evaluated after earlier stages and before its own training.",
    )


def forgetting_max(R: Matrix, schedule: Schedule) -> MetricValue:
    """Max-based forgetting (Chaudhry et al., 2018; as in GEM follow-ups and Avalanche docs).

    ``F_j = max_{s_j <= k < S} R[k][j] - R[S][j]`` for tasks first trained before the final
    stage (``s_j < S``). Taking the max over all stages from the first training stage onwards
    catches a task that kept improving after its own stage (positive transfer) and then
    dropped: the diagonal form would under-report that loss.
    """
    after_each_stage = forgetting_matrix(R, schedule)  # validates R and schedule
    # No stage at all: nothing trained, so nothing to forget.
    final = after_each_stage[-1] if after_each_stage else [None] * len(R[0])
    return _per_task_metric(
        final,
        "Forgetting is undefined: no task is trained before the final stage (e.g. joint "
        "training in one stage), so there is no later stage in which it could be forgotten.",
    )


def forgetting_matrix(R: Matrix, schedule: Schedule) -> list[list[float | None]]:
    """Forgetting after every stage: ``f[k-1][j] = max_{s_j <= m < k} R[m][j] - R[k][j]``.

    Rows are stages ``k = 1..S``; a cell is ``None`` until task ``j`` has been trained in an
    earlier stage (``s_j < k``), because there is nothing to forget yet. The last row is the
    per-task max-based forgetting that :func:`forgetting_max` averages; the rows before it
    show *when* the loss happened, which the final number alone hides.
    """
    rows, stages = _check(R, schedule)
    S, n = len(stages), len(rows[0])
    first, _ = first_last_stage(stages, n)
    return [
        [
            max(rows[m][j] for m in range(s, k)) - rows[k][j]
            if (s := first[j]) is not None and s < k
            else None
            for j in range(n)
        ]
        for k in range(1, S + 1)
    ]


def forgetting_diagonal(R: Matrix, schedule: Schedule) -> MetricValue:
    """Diagonal forgetting (Avalanche's form): ``R[t_j][j] - R[S][j]`` for tasks with ``t_j < S``.

    Compares each task's final score with its score right after its last training stage (the
    diagonal of a sequential matrix). It equals ``-BWT`` per task; reported alongside the
    max-based form because papers use both.
    """
    rows, stages = _check(R, schedule)
    S, n = len(stages), len(rows[0])
    _, last = first_last_stage(stages, n)
    per_task: list[float | None] = [
        rows[t][j] - rows[S][j] if t is not None and t < S else None for j, t in enumerate(last)
    ]
    return _per_task_metric(
        per_task,
        "Diagonal forgetting is undefined: no task's last training stage comes before the final "
        "stage (e.g. joint training in one stage), so there is no later stage to forget in.",
    )


def learning_accuracy(R: Matrix, schedule: Schedule) -> MetricValue:
    """Learning accuracy (Riemer et al., 2019): mean over trained tasks of ``R[t_j][j]``.

    The score of each task right after its last training stage, i.e. how well it was learned
    before any later interference; separates "never learned" from "learned then forgotten".
    """
    rows, stages = _check(R, schedule)
    n = len(rows[0])
    _, last = first_last_stage(stages, n)
    per_task: list[float | None] = [
        rows[t][j] if t is not None else None for j, t in enumerate(last)
    ]
    return _per_task_metric(
        per_task,
        "Learning accuracy is undefined: the schedule never trains any task.",
    )


def merge_loss(final_row: Sequence[float], branch_scores: Sequence[Sequence[float]]) -> MetricValue:
    """Merge loss: mean over tasks of ``final_row[j] - branch_scores[j][j]``.

    For a merge strategy, ``branch_scores[j]`` is the row of the model trained on task ``j``
    alone, evaluated on every task; its own-task score ``B[j][j]`` is what merging could at
    best keep. Negative values mean the merged model lost ground against the branch experts.
    """
    final = _check_row(final_row, "final_row")
    n = len(final)
    if n < 1:
        raise ValueError("final_row must have at least one task")
    if isinstance(branch_scores, str | bytes) or len(branch_scores) != n:
        raise ValueError(
            f"branch_scores must have one row per task ({n}), got {len(branch_scores)}"
        )
    branches = [_check_row(row, f"branch_scores[{j}]") for j, row in enumerate(branch_scores)]
    for j, row in enumerate(branches):
        if len(row) != n:
            raise ValueError(f"branch_scores[{j}] must score all {n} tasks, got {len(row)} scores")
    per_task = tuple(final[j] - branches[j][j] for j in range(n))
    return MetricValue(_mean(per_task), None, per_task)


def all_metrics(R: Matrix, schedule: Schedule) -> dict[str, MetricValue]:
    """Every schedule-based metric, keyed ``acc, bwt, fwt, forgetting, forgetting_diagonal,
    learning_accuracy`` (``forgetting`` is the max-based Chaudhry form)."""
    _check(R, schedule)
    return {
        "acc": accuracy(R),
        "bwt": backward_transfer(R, schedule),
        "fwt": forward_transfer(R, schedule),
        "forgetting": forgetting_max(R, schedule),
        "forgetting_diagonal": forgetting_diagonal(R, schedule),
        "learning_accuracy": learning_accuracy(R, schedule),
    }


def metrics_to_json(metrics: dict[str, MetricValue]) -> dict[str, object]:
    """Flatten metrics into a JSON-ready dict.

    Each metric ``name`` gives ``name`` (float or None), ``name_reason`` when the value is None,
    and ``name_per_task`` (a list) when per-task values exist.
    """
    out: dict[str, object] = {}
    for name, m in metrics.items():
        out[name] = m.value
        if m.reason is not None:
            out[f"{name}_reason"] = m.reason
        if m.per_task is not None:
            out[f"{name}_per_task"] = list(m.per_task)
    return out


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std with ``n - 1``, over ``sqrt(n)``).

    Used to aggregate a metric over seeds; with fewer than two values the spread is unknown and
    reported as 0.0.
    """
    vals = _check_row(values, "values")
    n = len(vals)
    if n == 0:
        raise ValueError("mean_and_stderr needs at least one value")
    mean = _mean(vals)
    if n < 2:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var) / math.sqrt(n)
