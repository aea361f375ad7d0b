"""The order-effect test on the full order × seed grid, on hand-made grids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctbench.results.order_effect import order_effect


def grid(rows: list[list[float]], seeds: list[int] | None = None) -> dict:
    seeds = seeds or list(range(len(rows[0])))
    orders = [(f"o{i}",) for i in range(len(rows))]
    return {s: {o: rows[i][j] for i, o in enumerate(orders)} for j, s in enumerate(seeds)}


def test_hand_computed_anova() -> None:
    # Orders (1, 2), (3, 5), (5, 5): SS order 13, SS seed 1.5, SS residual 1, df (2, 2);
    # F = 6.5 / 0.5 = 13, and F(2, 2) has survival 1 / (1 + F).
    out = order_effect(grid([[1, 2], [3, 5], [5, 5]]))
    assert out["df"] == [2, 2]
    assert out["f"] == pytest.approx(13.0)
    assert out["p"] == pytest.approx(1 / 14)
    assert out["residual_sd"] == pytest.approx(math.sqrt(0.5))
    assert out["seed_means"] == {0: pytest.approx(3.0), 1: pytest.approx(4.0)}


def test_a_seed_shift_is_not_an_order_effect() -> None:
    rng = np.random.default_rng(3)
    noise = rng.normal(0.5, 0.02, size=(24, 2))
    shifted = noise + np.array([0.0, 0.1])  # seed 1 scores 0.1 higher on every order
    plain, moved = order_effect(grid(noise.tolist())), order_effect(grid(shifted.tolist()))
    assert moved["f"] == pytest.approx(plain["f"])
    assert moved["p"] == pytest.approx(plain["p"])
    no_noise = order_effect(grid([[0.5, 0.6]] * 4))
    assert math.isnan(no_noise["f"])


def test_without_an_order_effect_the_test_rejects_about_five_percent() -> None:
    rng = np.random.default_rng(0)
    rejections = sum(
        order_effect(grid(rng.normal(0.5, 0.03, size=(24, 2)).tolist()))["p"] < 0.05
        for _ in range(400)
    )
    assert 8 <= rejections <= 32  # 5% of 400 is 20; about ±3 binomial s.e.


def test_a_real_order_effect_is_found_and_seeds_agree() -> None:
    rng = np.random.default_rng(1)
    effect = np.linspace(-0.1, 0.1, 24)[:, None]
    out = order_effect(grid((0.5 + effect + rng.normal(0, 0.02, size=(24, 3))).tolist()))
    assert out["p"] < 1e-6
    assert len(out["seed_pairs"]) == 3
    assert all(pair["spearman"] > 0.8 for pair in out["seed_pairs"])


def test_incomplete_seeds_are_left_out_and_named() -> None:
    accs = grid([[0.4, 0.5], [0.6, 0.6], [0.5, 0.7]])
    accs[2] = {("o0",): 0.5}
    out = order_effect(accs)
    assert out["seeds"] == [0, 1]
    assert out["left_out_seeds"] == [2]
    with pytest.raises(ValueError, match="two seeds"):
        order_effect({0: accs[0], 2: accs[2]})
