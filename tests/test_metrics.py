"""Tests for ctbench.runs.metrics against hand-computed accuracy matrices.

Every expected number is worked out by hand in the comments next to it; none is produced by
calling the function under test.
"""

from __future__ import annotations

import math

import pytest

from ctbench.runs.metrics import (
    MetricValue,
    accuracy,
    all_metrics,
    backward_transfer,
    first_last_stage,
    forgetting_diagonal,
    forgetting_matrix,
    forgetting_max,
    forward_transfer,
    learning_accuracy,
    mean_and_stderr,
    merge_loss,
    metrics_to_json,
)


def approx_tuple(values):
    """pytest.approx on the floats of a tuple, exact on its Nones."""
    return tuple(None if v is None else pytest.approx(v) for v in values)


# --------------------------------------------------------------------------------------------
# 4-task sequential schedule: stage k trains task k-1.  S = 4, s_j = t_j = j + 1.
# --------------------------------------------------------------------------------------------

SEQ_SCHEDULE = [{0}, {1}, {2}, {3}]
SEQ_R = [
    #  t0    t1    t2    t3
    [0.10, 0.20, 0.30, 0.40],  # stage 0: base model
    [0.80, 0.25, 0.30, 0.40],  # stage 1: trains task 0
    [0.70, 0.90, 0.35, 0.45],  # stage 2: trains task 1
    [0.60, 0.95, 0.85, 0.50],  # stage 3: trains task 2 (task 1 still rises to 0.95)
    [0.50, 0.70, 0.75, 0.90],  # stage 4: trains task 3 (final)
]


def test_sequential_first_last_stage():
    assert first_last_stage(SEQ_SCHEDULE, 4) == ([1, 2, 3, 4], [1, 2, 3, 4])


def test_sequential_acc():
    # (0.50 + 0.70 + 0.75 + 0.90) / 4 = 2.85 / 4 = 0.7125
    m = accuracy(SEQ_R)
    assert m.value == pytest.approx(0.7125)
    assert m.reason is None
    assert m.per_task == approx_tuple((0.50, 0.70, 0.75, 0.90))


def test_sequential_bwt():
    # tasks with t_j < 4: 0, 1, 2
    # task 0: R[4][0] - R[1][0] = 0.50 - 0.80 = -0.30
    # task 1: R[4][1] - R[2][1] = 0.70 - 0.90 = -0.20
    # task 2: R[4][2] - R[3][2] = 0.75 - 0.85 = -0.10
    # mean = -0.60 / 3 = -0.20
    m = backward_transfer(SEQ_R, SEQ_SCHEDULE)
    assert m.value == pytest.approx(-0.20)
    assert m.reason is None
    assert m.per_task == approx_tuple((-0.30, -0.20, -0.10, None))


def test_sequential_fwt():
    # tasks with s_j > 1: 1, 2, 3
    # task 1: R[1][1] - R[0][1] = 0.25 - 0.20 = 0.05
    # task 2: R[2][2] - R[0][2] = 0.35 - 0.30 = 0.05
    # task 3: R[3][3] - R[0][3] = 0.50 - 0.40 = 0.10
    # mean = 0.20 / 3 = 0.0666...
    m = forward_transfer(SEQ_R, SEQ_SCHEDULE)
    assert m.value == pytest.approx(0.20 / 3)
    assert m.per_task == approx_tuple((None, 0.05, 0.05, 0.10))


def test_sequential_forgetting_max():
    # tasks with s_j < 4: 0, 1, 2; max over k = s_j .. 3
    # task 0: max(0.80, 0.70, 0.60) - 0.50 = 0.30
    # task 1: max(0.90, 0.95) - 0.70 = 0.25   (peaks after its own stage)
    # task 2: max(0.85) - 0.75 = 0.10
    # mean = 0.65 / 3 = 0.21666...
    m = forgetting_max(SEQ_R, SEQ_SCHEDULE)
    assert m.value == pytest.approx(0.65 / 3)
    assert m.per_task == approx_tuple((0.30, 0.25, 0.10, None))


def test_sequential_forgetting_matrix():
    # row k (stage k), task j: max over m = s_j .. k-1 of R[m][j] - R[k][j], when s_j < k
    # k=1: nothing trained before stage 1 -> all None
    # k=2: task 0: 0.80 - 0.70 = 0.10
    # k=3: task 0: max(0.80, 0.70) - 0.60 = 0.20; task 1: 0.90 - 0.95 = -0.05
    # k=4: task 0: 0.80 - 0.50 = 0.30; task 1: max(0.90, 0.95) - 0.70 = 0.25;
    #      task 2: 0.85 - 0.75 = 0.10   (the last row is forgetting_max's per-task values)
    F = forgetting_matrix(SEQ_R, SEQ_SCHEDULE)
    assert [approx_tuple(row) for row in F] == [
        (None, None, None, None),
        approx_tuple((0.10, None, None, None)),
        approx_tuple((0.20, -0.05, None, None)),
        approx_tuple((0.30, 0.25, 0.10, None)),
    ]


def test_joint_forgetting_matrix_is_all_undefined():
    assert forgetting_matrix([[0.1, 0.2], [0.5, 0.6]], [{0, 1}]) == [[None, None]]


def test_sequential_forgetting_diagonal():
    # tasks with t_j < 4: 0, 1, 2
    # task 0: R[1][0] - R[4][0] = 0.80 - 0.50 = 0.30
    # task 1: R[2][1] - R[4][1] = 0.90 - 0.70 = 0.20   (differs from max-based 0.25)
    # task 2: R[3][2] - R[4][2] = 0.85 - 0.75 = 0.10
    # mean = 0.60 / 3 = 0.20
    m = forgetting_diagonal(SEQ_R, SEQ_SCHEDULE)
    assert m.value == pytest.approx(0.20)
    assert m.per_task == approx_tuple((0.30, 0.20, 0.10, None))


def test_sequential_learning_accuracy():
    # R[t_j][j]: R[1][0]=0.80, R[2][1]=0.90, R[3][2]=0.85, R[4][3]=0.90
    # mean = 3.45 / 4 = 0.8625
    m = learning_accuracy(SEQ_R, SEQ_SCHEDULE)
    assert m.value == pytest.approx(0.8625)
    assert m.per_task == approx_tuple((0.80, 0.90, 0.85, 0.90))


def test_sequential_all_metrics_and_json():
    ms = all_metrics(SEQ_R, SEQ_SCHEDULE)
    assert set(ms) == {
        "acc",
        "bwt",
        "fwt",
        "forgetting",
        "forgetting_diagonal",
        "learning_accuracy",
    }
    # Same hand-computed numbers as above.
    assert ms["acc"].value == pytest.approx(0.7125)
    assert ms["bwt"].value == pytest.approx(-0.20)
    assert ms["fwt"].value == pytest.approx(0.20 / 3)
    assert ms["forgetting"].value == pytest.approx(0.65 / 3)
    assert ms["forgetting_diagonal"].value == pytest.approx(0.20)
    assert ms["learning_accuracy"].value == pytest.approx(0.8625)

    js = metrics_to_json(ms)
    assert js["bwt"] == pytest.approx(-0.20)
    assert "bwt_reason" not in js
    assert js["forgetting_per_task"] == [
        pytest.approx(0.30),
        pytest.approx(0.25),
        pytest.approx(0.10),
        None,
    ]


# --------------------------------------------------------------------------------------------
# Joint training: one stage with all tasks.  S = 1, s_j = t_j = 1 for all j.
# --------------------------------------------------------------------------------------------

JOINT_SCHEDULE = [{0, 1, 2}]
JOINT_R = [
    [0.10, 0.20, 0.30],  # base
    [0.60, 0.50, 0.90],  # after the single joint stage
]


def test_joint_acc_and_la_defined():
    # ACC = (0.60 + 0.50 + 0.90) / 3 = 2.00 / 3
    assert accuracy(JOINT_R).value == pytest.approx(2.0 / 3)
    # LA: t_j = 1 for all, so R[1][j] again: 2.00 / 3
    assert learning_accuracy(JOINT_R, JOINT_SCHEDULE).value == pytest.approx(2.0 / 3)


@pytest.mark.parametrize(
    "fn", [backward_transfer, forward_transfer, forgetting_max, forgetting_diagonal]
)
def test_joint_undefined_with_reason(fn):
    m = fn(JOINT_R, JOINT_SCHEDULE)
    assert m.value is None
    assert isinstance(m.reason, str) and len(m.reason) > 20
    assert m.per_task == (None, None, None)


def test_joint_json_has_null_and_reason():
    js = metrics_to_json(all_metrics(JOINT_R, JOINT_SCHEDULE))
    assert js["acc"] == pytest.approx(2.0 / 3)
    assert "acc_reason" not in js
    for key in ("bwt", "fwt", "forgetting", "forgetting_diagonal"):
        assert js[key] is None
        assert isinstance(js[f"{key}_reason"], str)
    assert js["learning_accuracy"] == pytest.approx(2.0 / 3)


# --------------------------------------------------------------------------------------------
# A task that is never trained: 3 tasks, S = 2, schedule {0}, {1}; task 2 untouched.
# --------------------------------------------------------------------------------------------

UNTRAINED_SCHEDULE = [{0}, {1}]
UNTRAINED_R = [
    [0.20, 0.30, 0.40],  # base
    [0.70, 0.35, 0.45],  # stage 1: trains task 0
    [0.60, 0.80, 0.30],  # stage 2: trains task 1 (final)
]


def test_untrained_task():
    assert first_last_stage(UNTRAINED_SCHEDULE, 3) == ([1, 2, None], [1, 2, None])
    # ACC counts every task: (0.60 + 0.80 + 0.30) / 3 = 1.70 / 3
    assert accuracy(UNTRAINED_R).value == pytest.approx(1.70 / 3)
    # BWT: only task 0 (t=1 < 2): 0.60 - 0.70 = -0.10
    bwt = backward_transfer(UNTRAINED_R, UNTRAINED_SCHEDULE)
    assert bwt.value == pytest.approx(-0.10)
    assert bwt.per_task == approx_tuple((-0.10, None, None))
    # FWT: only task 1 (s=2 > 1): R[1][1] - R[0][1] = 0.35 - 0.30 = 0.05
    fwt = forward_transfer(UNTRAINED_R, UNTRAINED_SCHEDULE)
    assert fwt.value == pytest.approx(0.05)
    assert fwt.per_task == approx_tuple((None, 0.05, None))
    # Forgetting (max): task 0: max(R[1][0]) - R[2][0] = 0.70 - 0.60 = 0.10; diagonal same.
    assert forgetting_max(UNTRAINED_R, UNTRAINED_SCHEDULE).value == pytest.approx(0.10)
    assert forgetting_diagonal(UNTRAINED_R, UNTRAINED_SCHEDULE).value == pytest.approx(0.10)
    # LA over trained tasks: (R[1][0] + R[2][1]) / 2 = (0.70 + 0.80) / 2 = 0.75
    la = learning_accuracy(UNTRAINED_R, UNTRAINED_SCHEDULE)
    assert la.value == pytest.approx(0.75)
    assert la.per_task == approx_tuple((0.70, 0.80, None))


def test_nothing_trained_la_undefined():
    # One stage with an empty mixture: no task is trained.
    m = learning_accuracy([[0.1, 0.2], [0.1, 0.2]], [set()])
    assert m.value is None
    assert m.reason
    # ACC is still defined: (0.1 + 0.2) / 2 = 0.15
    assert accuracy([[0.1, 0.2], [0.1, 0.2]]).value == pytest.approx(0.15)


# --------------------------------------------------------------------------------------------
# A task trained in two stages: schedule {0}, {1}, {0, 2}.  S = 3.
# s = [1, 2, 3], t = [3, 2, 3].
# --------------------------------------------------------------------------------------------

REPLAY_SCHEDULE = [{0}, {1}, {0, 2}]
REPLAY_R = [
    [0.10, 0.20, 0.30],  # base
    [0.60, 0.25, 0.30],  # stage 1: task 0
    [0.40, 0.70, 0.35],  # stage 2: task 1
    [0.65, 0.50, 0.80],  # stage 3: tasks 0 and 2 (final)
]


def test_replay_first_last_stage():
    assert first_last_stage(REPLAY_SCHEDULE, 3) == ([1, 2, 3], [3, 2, 3])


def test_replay_bwt_and_diagonal():
    # Only task 1 has t_j < 3: R[3][1] - R[2][1] = 0.50 - 0.70 = -0.20
    bwt = backward_transfer(REPLAY_R, REPLAY_SCHEDULE)
    assert bwt.value == pytest.approx(-0.20)
    assert bwt.per_task == approx_tuple((None, -0.20, None))
    # Diagonal forgetting: task 1 only: 0.70 - 0.50 = 0.20
    fd = forgetting_diagonal(REPLAY_R, REPLAY_SCHEDULE)
    assert fd.value == pytest.approx(0.20)
    assert fd.per_task == approx_tuple((None, 0.20, None))


def test_replay_forgetting_max():
    # s_j < 3: tasks 0 (s=1) and 1 (s=2)
    # task 0: max(R[1][0], R[2][0]) - R[3][0] = max(0.60, 0.40) - 0.65 = -0.05
    # task 1: max(R[2][1]) - R[3][1] = 0.70 - 0.50 = 0.20
    # mean = 0.15 / 2 = 0.075
    m = forgetting_max(REPLAY_R, REPLAY_SCHEDULE)
    assert m.value == pytest.approx(0.075)
    assert m.per_task == approx_tuple((-0.05, 0.20, None))


def test_replay_fwt_and_la():
    # FWT over s_j > 1: task 1: R[1][1] - R[0][1] = 0.25 - 0.20 = 0.05
    #                   task 2: R[2][2] - R[0][2] = 0.35 - 0.30 = 0.05   -> mean 0.05
    fwt = forward_transfer(REPLAY_R, REPLAY_SCHEDULE)
    assert fwt.value == pytest.approx(0.05)
    assert fwt.per_task == approx_tuple((None, 0.05, 0.05))
    # LA: R[3][0] = 0.65, R[2][1] = 0.70, R[3][2] = 0.80 -> 2.15 / 3
    la = learning_accuracy(REPLAY_R, REPLAY_SCHEDULE)
    assert la.value == pytest.approx(2.15 / 3)
    assert la.per_task == approx_tuple((0.65, 0.70, 0.80))


# --------------------------------------------------------------------------------------------
# Merge loss
# --------------------------------------------------------------------------------------------


def test_merge_loss():
    final = [0.50, 0.60, 0.70]
    branches = [
        [0.80, 0.10, 0.20],  # trained on task 0 alone; own score 0.80
        [0.20, 0.90, 0.10],  # task 1 alone; own score 0.90
        [0.30, 0.20, 0.70],  # task 2 alone; own score 0.70
    ]
    # diffs: 0.50-0.80 = -0.30, 0.60-0.90 = -0.30, 0.70-0.70 = 0.00 -> mean -0.20
    m = merge_loss(final, branches)
    assert m.value == pytest.approx(-0.20)
    assert m.per_task == approx_tuple((-0.30, -0.30, 0.0))


def test_merge_loss_validation():
    with pytest.raises(ValueError, match="one row per task"):
        merge_loss([0.5, 0.6], [[0.5, 0.6]])
    with pytest.raises(ValueError, match="score all"):
        merge_loss([0.5, 0.6], [[0.5, 0.6], [0.5]])
    with pytest.raises(ValueError, match="finite"):
        merge_loss([0.5, math.nan], [[0.5, 0.6], [0.5, 0.6]])


# --------------------------------------------------------------------------------------------
# mean_and_stderr
# --------------------------------------------------------------------------------------------


def test_mean_and_stderr():
    # values 1, 2, 3: mean 2; sample var = (1 + 0 + 1) / 2 = 1; stderr = 1 / sqrt(3)
    mean, se = mean_and_stderr([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert se == pytest.approx(1 / math.sqrt(3))
    assert mean_and_stderr([0.4]) == (pytest.approx(0.4), 0.0)
    with pytest.raises(ValueError):
        mean_and_stderr([])


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def test_ragged_rows():
    with pytest.raises(ValueError, match="ragged"):
        all_metrics([[0.1, 0.2], [0.3]], [{0}])


def test_wrong_row_count():
    with pytest.raises(ValueError, match="rows"):
        all_metrics([[0.1, 0.2], [0.3, 0.4]], [{0}, {1}])


def test_index_out_of_range():
    with pytest.raises(ValueError, match="task 2"):
        backward_transfer([[0.1, 0.2], [0.3, 0.4]], [{2}])
    with pytest.raises(ValueError, match="task -1"):
        first_last_stage([{-1}], 2)


def test_nan_and_inf():
    with pytest.raises(ValueError, match="finite"):
        accuracy([[0.1, math.nan]])
    with pytest.raises(ValueError, match="finite"):
        forgetting_max([[0.1, 0.2], [0.3, math.inf]], [{0}])


def test_empty_matrix_and_no_tasks():
    with pytest.raises(ValueError):
        accuracy([])
    with pytest.raises(ValueError, match="at least one task"):
        accuracy([[]])


def test_metric_value_reason_invariant():
    with pytest.raises(ValueError):
        MetricValue(None)
    with pytest.raises(ValueError):
        MetricValue(0.5, "should not have a reason")
