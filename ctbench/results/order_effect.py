"""Does the order change final ACC? A second test, on the full order × seed grid.

The findings' C1 (:mod:`ctbench.results.findings`) compares the range of order means with a
permutation null, over orders that have at least three runs; on the tiny track that leaves
9 of 24 orders. When every order was run at the same seeds (``validate-prediction --orders
24`` at two seeds or more) the grid is crossed and the classical test applies: a two-way
analysis of variance without replication, order × seed, whose F for the order factor
compares the spread of order means with the order × seed interaction (the run noise), after
removing each seed's shift. It uses every run and needs no resampling; it assumes the
residuals are roughly normal with one variance, which is why it is reported beside C1 and
not instead of it. The seed-to-seed correlation of the orders' ACC says the same thing in
the reader's terms: if the order did not matter, seed 0's ranking of the orders would not
predict seed 1's.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

from ctbench.results.few_orders import complete_seeds


def order_effect(accs: Mapping[int, Mapping[tuple[str, ...], float]]) -> dict[str, Any]:
    """Two-way ANOVA (order × seed, one run per cell) and seed-pair correlations.

    ``accs`` maps seed → order → final ACC (as :func:`ctbench.results.few_orders.order_accs`
    gives). Only seeds that measured every order of the most complete seed are used; the
    others are named in ``left_out_seeds``."""
    used, orders = complete_seeds(accs)
    if len(orders) < 3:
        raise ValueError("needs three orders or more")
    grid = np.array([[accs[s][o] for s in used] for o in orders])  # orders × seeds
    n_orders, n_seeds = grid.shape
    grand = grid.mean()
    ss_order = n_seeds * float(((grid.mean(axis=1) - grand) ** 2).sum())
    ss_seed = n_orders * float(((grid.mean(axis=0) - grand) ** 2).sum())
    ss_total = float(((grid - grand) ** 2).sum())
    ss_residual = ss_total - ss_order - ss_seed
    df_order, df_residual = n_orders - 1, (n_orders - 1) * (n_seeds - 1)
    ms_order, ms_residual = ss_order / df_order, ss_residual / df_residual
    if ms_residual > 0:
        f_value = ms_order / ms_residual
    else:  # every run is its order's mean plus its seed's shift: no noise to compare with
        f_value = float("inf") if ms_order > 0 else float("nan")
    pairs = []
    for a, b in combinations(range(n_seeds), 2):
        pearson = stats.pearsonr(grid[:, a], grid[:, b])
        spearman = stats.spearmanr(grid[:, a], grid[:, b])
        pairs.append(
            {
                "seeds": [used[a], used[b]],
                "pearson": float(pearson.statistic),
                "pearson_p": float(pearson.pvalue),
                "spearman": float(spearman.statistic),
                "spearman_p": float(spearman.pvalue),
            }
        )
    return {
        "test": "two-way ANOVA without replication (order × seed); F = MS(order) / MS(residual)",
        "seeds": used,
        "left_out_seeds": sorted(set(accs) - set(used)),
        "orders": n_orders,
        "f": f_value,
        "df": [df_order, df_residual],
        "p": float(stats.f.sf(f_value, df_order, df_residual)),
        "order_means_sd": float(grid.mean(axis=1).std(ddof=1)),
        "residual_sd": float(np.sqrt(ms_residual)),
        "seed_means": dict(zip(used, (float(v) for v in grid.mean(axis=0)), strict=True)),
        "seed_pairs": pairs,
    }
