"""Choosing an order from a few measured ones (fit the additive form, pick its best), on
hand-made tracks whose answer is known."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

from ctbench.results.few_orders import few_order_study, order_accs
from ctbench.results.predictor_check import Cell

TASKS = ["a", "b", "c", "d"]
LEVELS = {"a": 0.7, "b": 0.5, "c": 0.6, "d": 0.4}
# Distinct transfers (one big interference: training b after a costs a 0.3), so that one
# order is best and best-of-k finds it only when one of its k orders is that one.
D = {
    (i, j): 0.01 * (3 * k - 17)
    for k, (i, j) in enumerate((i, j) for i in TASKS for j in TASKS if i != j)
} | {("b", "a"): -0.3}


def cells(seeds: list[int], noise: float, probe_error: float = 0.0) -> list[Cell]:
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for order in permutations(TASKS):
            for m, task in enumerate(order):
                truth = LEVELS[task] + sum(D[(later, task)] for later in order[m + 1 :])
                # The probes' prediction: every transfer read with the wrong sign.
                probe = 2 * LEVELS[task] - truth
                out.append(
                    Cell(
                        order, seed, task, truth + float(rng.normal(0, noise)), probe + probe_error
                    )
                )
    return out


def best_acc() -> float:
    accs = order_accs(cells([0], 0.0))[0]
    return max(accs.values())


def test_on_an_exactly_additive_track_a_fit_from_few_orders_finds_the_best_order() -> None:
    study = few_order_study(cells([0, 1], 0.0), TASKS, sizes=(6, 12, 24), draws=60)
    refs = study["references"]
    assert refs["best_order"] == pytest.approx(best_acc())
    by_k = {row["k"]: row for row in study["by_k"]}
    # Twelve orders pin the form's identified part here: every pick is the best order.
    assert by_k[12]["fit_pick"]["p05"] == pytest.approx(best_acc())
    assert by_k[24]["held_out_spearman_mean"] is None  # no order left to hold out
    # Best of k is best only when it ran the best order; with all 24 it always did.
    assert by_k[12]["best_of_k"]["mean"] < best_acc()
    assert by_k[24]["best_of_k"]["mean"] == pytest.approx(best_acc())
    # From six orders the fit already ranks the unseen ones well and beats best of six.
    assert by_k[6]["fit_minus_best_of_k"]["mean"] > 0
    assert by_k[6]["held_out_spearman_mean"] > 0.9
    # The probes read every transfer backwards and pick the worst order.
    assert refs["probes_pick"] == pytest.approx(min(order_accs(cells([0], 0.0))[0].values()))
    assert by_k[6]["cost_steps"] is None


def test_picks_are_scored_on_the_other_seeds_so_luck_on_one_seed_cannot_flatter_them() -> None:
    # Pure noise: no order is better than another. Best of k picks the luckiest run of its
    # seed; scored on that same seed it would look better than random, on the others not.
    flat = [
        Cell(
            o,
            s,
            t,
            0.5 + float(np.random.default_rng(hash((o, s, t)) % 2**32).normal(0, 0.05)),
            0.5,
        )
        for s in (0, 1, 2)
        for o in permutations(TASKS)
        for t in TASKS
    ]
    study = few_order_study(flat, TASKS, sizes=(8,), draws=300, stage_steps=100)
    row = study["by_k"][0]
    accs = order_accs(flat)
    random_order = study["references"]["random_order"]
    assert row["best_of_k"]["mean"] == pytest.approx(random_order, abs=0.01)
    assert row["cost_steps"] == 8 * 4 * 100
    # On its own seed the same picks would have scored well above random.
    same_seed = np.mean([max(by.values()) for by in accs.values()])
    assert same_seed > random_order + 0.02


def test_seeds_with_fewer_orders_are_left_out_and_two_complete_seeds_are_needed() -> None:
    partial = [c for c in cells([2], 0.01) if c.order[0] == "a"]  # six orders only
    study = few_order_study(cells([0, 1], 0.01) + partial, TASKS, sizes=(3,), draws=10)
    assert study["seeds"] == [0, 1] and study["left_out_seeds"] == [2]
    with pytest.raises(ValueError, match="two seeds"):
        few_order_study(cells([0], 0.01), TASKS, sizes=(3,), draws=10)
    with pytest.raises(ValueError, match="outside"):
        few_order_study(cells([0, 1], 0.01), TASKS, sizes=(25,), draws=10)
