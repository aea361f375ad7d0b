"""Transfer matrix, additive predictor and order search against hand-worked values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ctbench.errors import UserError
from ctbench.results.validation import correlation, sample_orders
from ctbench.strategies.transfer import (
    TransferMatrix,
    best_order,
    order_value,
    predict_final_scores,
    transfer_matrix,
)

BASE = {"a": 0.5, "b": 0.4, "c": 0.3}
PROBES = {
    "a": {"a": 0.7, "b": 0.3, "c": 0.35},  # a helps itself, hurts b, helps c
    "b": {"a": 0.5, "b": 0.6, "c": 0.30},
    "c": {"a": 0.4, "b": 0.55, "c": 0.50},
}


@pytest.fixture()
def matrix() -> TransferMatrix:
    return transfer_matrix(["a", "b", "c"], BASE, PROBES)


def test_transfer_matrix_by_hand(matrix):
    assert np.allclose(matrix.delta, [[0.2, -0.1, 0.05], [0.0, 0.2, 0.0], [-0.1, 0.15, 0.2]])
    assert matrix.single_task_levels == pytest.approx((0.7, 0.6, 0.5))
    assert TransferMatrix.from_json(matrix.to_json()) == matrix


def test_predict_final_scores_by_hand(matrix):
    # order a, b, c: a gets Δ[b][a] + Δ[c][a] = 0 - 0.1; b gets Δ[c][b] = +0.15; c gets 0.
    assert predict_final_scores(["a", "b", "c"], matrix) == pytest.approx(
        {"a": 0.6, "b": 0.75, "c": 0.5}
    )
    # order c, b, a: c gets Δ[b][c] + Δ[a][c] = 0.05; b gets Δ[a][b] = -0.1; a gets 0.
    assert predict_final_scores(["c", "b", "a"], matrix) == pytest.approx(
        {"c": 0.55, "b": 0.5, "a": 0.7}
    )
    with pytest.raises(ValueError, match="exactly once"):
        predict_final_scores(["a", "a", "b"], matrix)


def test_best_order_by_hand(matrix):
    totals = {
        order: sum(predict_final_scores(list(order), matrix).values())
        for order in itertools.permutations("abc")
    }
    expected = max(totals, key=totals.get)
    assert expected == ("b", "c", "a")  # 0.15 − 0.1 + 0.05: the unique best, worked by hand
    for search in ("exhaustive", "dp", "greedy"):
        order, used = best_order(matrix, search)
        assert tuple(order) == expected and used == search


def test_exact_searches_agree_on_random_matrices():
    rng = np.random.default_rng(7)
    for n in range(2, 8):
        for _ in range(10):
            delta = rng.normal(size=(n, n))
            tasks = tuple(f"t{i}" for i in range(n))
            m = TransferMatrix(tasks, tuple(map(tuple, delta)), (0.0,) * n)
            exhaustive, _ = best_order(m, "exhaustive")
            dp, _ = best_order(m, "dp")
            greedy, _ = best_order(m, "greedy")
            values = [
                order_value([tasks.index(t) for t in order], delta)
                for order in (exhaustive, dp, greedy)
            ]
            assert values[1] == pytest.approx(values[0])
            assert values[2] <= values[0] + 1e-9


def test_auto_search_picks_by_size():
    for n, expected in ((4, "exhaustive"), (12, "dp"), (18, "greedy")):
        m = TransferMatrix(tuple(map(str, range(n))), ((0.0,) * n,) * n, (0.0,) * n)
        assert best_order(m, "auto")[1] == expected


def test_omni_rule_puts_first_the_task_that_leaves_the_rest_best(matrix):
    # After probe a: mean(b, c) = (0.3 + 0.35) / 2 = 0.325; after b: (0.5 + 0.3) / 2 = 0.4;
    # after c: (0.4 + 0.55) / 2 = 0.475 → c first. Then between a and b: after a, b = 0.3;
    # after b, a = 0.5 → b, then a.
    assert best_order(matrix, "omni") == (["c", "b", "a"], "omni")


def test_sample_orders_are_distinct_and_seeded():
    orders = sample_orders(list("abcde"), 6, seed=3)
    assert len({tuple(o) for o in orders}) == 6
    assert orders == sample_orders(list("abcde"), 6, seed=3)
    assert len(sample_orders(list("abc"), 10, seed=0)) == 6  # all 3! orders
    with pytest.raises(UserError):
        sample_orders(list("abc"), 1, seed=0)


def test_correlation_known_values():
    perfect = correlation([1, 2, 3, 4], [2, 4, 6, 8])
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["spearman"] == pytest.approx(1.0)
    inverse = correlation([1, 2, 3], [3, 1, 0])
    assert inverse["spearman"] == pytest.approx(-1.0) and inverse["pearson"] < -0.9
    assert correlation([1, 2], [1, 2])["pearson"] is None
    assert correlation([1, 1, 1], [1, 2, 3])["reason"] == "one side is constant"
