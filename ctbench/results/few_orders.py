"""Choosing an order from a few measured orders: is fitting the additive form worth it?

The predictor check (:mod:`ctbench.results.predictor_check`) found that the additive form
a*_j + Σ_{later i} D[i][j] predicts well when its 16 parameters are fit to the final scores
of 23 other orders, and poorly from 20-step probes. Running 23 orders to choose the 24th is
no strategy. This asks the practical question: a user who can afford k full sequential runs
(k random orders at one seed), fits the form to them (least squares, minimum-norm where k
runs do not determine all 16 parameters) and trains on the order it predicts best: how
good is that order, against

* **best of k**, the null that needs no model: train the k orders, keep the best measured;
* **probes**, the order Omni-Thinker's predictor picks from the short probes' Δ;
* **a random order** (the mean over all orders) and the **best order** (an oracle).

A pick is scored on the seeds it was *not* chosen on (the mean measured ACC of that order
over the other seeds), so the noise of the seed it was chosen on cannot flatter it: best of
k, in particular, picks the k-th order whose seed-s score was luckiest. The spread reported
for each k is over random subsets of k orders (what a user drawing k orders could get); it
is conditional on the runs at hand and is no CI over seeds. Pure functions of
validate-prediction cells; ``benchmarks/predictor_at_scale.py`` prints them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from ctbench.results.predictor_check import Cell, additive_features, least_squares_theta


def order_accs(cells: Sequence[Cell]) -> dict[int, dict[tuple[str, ...], float]]:
    """Measured ACC (mean over tasks) of each (seed, order) run."""
    runs: dict[int, dict[tuple[str, ...], list[float]]] = {}
    for c in cells:
        runs.setdefault(c.seed, {}).setdefault(c.order, []).append(c.measured)
    return {s: {o: float(np.mean(v)) for o, v in by.items()} for s, by in runs.items()}


def complete_seeds(
    accs: Mapping[int, Mapping[tuple[str, ...], float]],
) -> tuple[list[int], list[tuple[str, ...]]]:
    """The seeds that measured every order of the most complete seed, and those orders.

    Analyses that compare seeds order by order need a crossed grid; a seed with only some
    orders (``validate-prediction --orders 8``) is left out rather than imputed."""
    full = max(len(by) for by in accs.values())
    used = sorted(s for s, by in accs.items() if len(by) == full)
    if len(used) < 2:
        raise ValueError("needs every order at two seeds or more")
    orders = sorted(accs[used[0]])
    if any(sorted(accs[s]) != orders for s in used):
        raise ValueError("the complete seeds measured different orders")
    return used, orders


def predicted_accs(
    theta: np.ndarray, orders: Sequence[tuple[str, ...]], tasks: Sequence[str]
) -> np.ndarray:
    """Each order's ACC under the additive form with parameters ``theta``."""
    return np.array([np.mean([additive_features(o, t, tasks) @ theta for t in o]) for o in orders])


def _held_out_quality(
    accs: dict[int, dict[tuple[str, ...], float]], order: tuple[str, ...], seed: int
) -> float:
    """An order's mean measured ACC over the seeds other than ``seed``."""
    return float(np.mean([by[order] for s, by in accs.items() if s != seed]))


def few_order_study(
    cells: Sequence[Cell],
    tasks: Sequence[str],
    sizes: Sequence[int] = (2, 3, 4, 6, 8, 12),
    draws: int = 500,
    seed: int = 0,
    stage_steps: int | None = None,
) -> dict[str, Any]:
    """Fit-and-pick against best-of-k, probes, random and best, for each k in ``sizes``.

    Needs every order measured at two seeds or more (a pick is scored on the others);
    seeds with fewer orders than the most complete one are left out and named."""
    accs_all = order_accs(cells)
    used, orders = complete_seeds(accs_all)
    accs = {s: accs_all[s] for s in used}
    kept = [c for c in cells if c.seed in used]
    rng = np.random.default_rng(seed)

    # References, each scored on the other seeds as the picks are.
    probe_pred = {
        s: {
            o: float(np.mean([c.probe_predicted for c in kept if c.seed == s and c.order == o]))
            for o in orders
        }
        for s in used
    }
    probes_pick = [
        _held_out_quality(accs, max(orders, key=lambda o: (probe_pred[s][o], o)), s) for s in used
    ]
    random_mean = [float(np.mean([_held_out_quality(accs, o, s) for o in orders])) for s in used]
    oracle = [max(_held_out_quality(accs, o, s) for o in orders) for s in used]

    by_seed_cells = {s: [c for c in kept if c.seed == s] for s in used}
    rows = []
    for k in sizes:
        if not 1 <= k <= len(orders):
            raise ValueError(f"k = {k} is outside 1..{len(orders)}")
        fit_q, best_q, rho = [], [], []
        for _ in range(draws):
            s = used[int(rng.integers(len(used)))]
            chosen = [orders[i] for i in rng.choice(len(orders), size=k, replace=False)]
            chosen_set = set(chosen)
            theta = least_squares_theta(
                [c for c in by_seed_cells[s] if c.order in chosen_set], tasks
            )
            predicted = predicted_accs(theta, orders, tasks)
            # Ties (an under-determined fit can tie) go to the first order by name.
            pick = orders[int(np.argmax(predicted))]
            fit_q.append(_held_out_quality(accs, pick, s))
            best = max(chosen, key=lambda o: (accs[s][o], o))
            best_q.append(_held_out_quality(accs, best, s))
            unseen = [i for i, o in enumerate(orders) if o not in chosen_set]
            if len(unseen) >= 3:
                measured = [accs[s][orders[i]] for i in unseen]
                value = spearmanr(predicted[unseen], measured).statistic
                if np.isfinite(value):
                    rho.append(float(value))
        fit_arr, best_arr = np.array(fit_q), np.array(best_q)
        rows.append(
            {
                "k": k,
                "cost_steps": None if stage_steps is None else k * len(tasks) * stage_steps,
                "fit_pick": _summary(fit_arr),
                "best_of_k": _summary(best_arr),
                "fit_minus_best_of_k": _summary(fit_arr - best_arr),
                "fit_beats_best_of_k_share": float(np.mean(fit_arr > best_arr)),
                "fit_ties_best_of_k_share": float(np.mean(fit_arr == best_arr)),
                "held_out_spearman_mean": float(np.mean(rho)) if rho else None,
                "held_out_spearman_draws": len(rho),
            }
        )
    return {
        "seeds": used,
        "left_out_seeds": sorted(set(accs_all) - set(used)),
        "orders": len(orders),
        "draws_per_k": draws,
        "draw_seed": seed,
        "scored_on": "the mean measured ACC of the picked order over the other seeds",
        "references": {
            "probes_pick": float(np.mean(probes_pick)),
            "probes_pick_per_seed": dict(zip(used, probes_pick, strict=True)),
            "random_order": float(np.mean(random_mean)),
            "best_order": float(np.mean(oracle)),
        },
        "by_k": rows,
    }


def _summary(values: np.ndarray) -> dict[str, float]:
    """Mean and the 5th/95th percentiles over draws (the spread a user could meet)."""
    return {
        "mean": float(values.mean()),
        "p05": float(np.percentile(values, 5)),
        "p95": float(np.percentile(values, 95)),
    }
