"""The additive transfer predictor checked at scale: many orders × several seeds, with CIs
that respect what the points share, and a better-founded predictor beside it.

Inputs are ``validate-prediction`` reports (``validation.json``), one per seed, each with
every order's predicted and measured final scores. Two predictors are compared:

* ``probes`` (Omni-Thinker's, what ``bwt`` uses): final(π(m)) = a*_{π(m)} +
  Σ_{l>m} Δ[π(l)][π(m)], with a* and Δ from short probes (as recorded in the reports).
* ``stage-fit`` (leave one order out): the same additive *form*, with its 4 + 12 parameters
  (a*_j, and D[i][j] for every ordered pair) fit by least squares to the final scores of
  every *other* order (all seeds), then used to predict the held-out order. It asks
  whether the additive structure holds when its parameters are measured at the scale of
  real stages; if it predicts well where the probes do not, the probes are the weak part,
  not the assumption. It needs no training beyond the validation runs themselves.

Correlations, as ``validate-prediction`` reports them: pooled over (order, seed, task)
cells; the same with each task centred (the order effect only); and per (order, seed) ACC.
Points share orders, seeds and tasks, so p-values would overstate the evidence. The CI is
a *pigeonhole* bootstrap (Owen 2007, for crossed random effects): each draw resamples
orders and seeds independently with replacement and keeps every cell of the chosen
(order, seed) pairs, so both kinds of sharing are carried into the interval. For
``stage-fit`` the held-out predictions are fixed and the pairs resampled (the CI is
conditional on the fit). Pure functions; ``benchmarks/predictor_at_scale.py`` runs them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr

from ctbench.results.findings import percentile_interval


@dataclass(frozen=True)
class Cell:
    """One task's final score in one (order, seed) run, and the probes' prediction of it."""

    order: tuple[str, ...]
    seed: int
    task: str
    measured: float
    probe_predicted: float


def cells_from_reports(reports: Sequence[dict[str, Any]]) -> list[Cell]:
    """Every (order, seed, task) cell of the validation reports; a seed may appear once."""
    seeds = [int(r["seed"]) for r in reports]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"two validation reports of one seed: {sorted(seeds)}")
    cells = []
    for report in reports:
        for row in report["orders"]:
            for task in row["order"]:
                cells.append(
                    Cell(
                        order=tuple(row["order"]),
                        seed=int(report["seed"]),
                        task=task,
                        measured=float(row["measured"][task]),
                        probe_predicted=float(row["predicted"][task]),
                    )
                )
    return cells


def additive_features(order: Sequence[str], task: str, tasks: Sequence[str]) -> np.ndarray:
    """[one-hot a*_task] + [1 for D[i][task] for every i trained after task]."""
    n = len(tasks)
    pairs = [(i, j) for i in tasks for j in tasks if i != j]
    row = np.zeros(n + len(pairs))
    row[list(tasks).index(task)] = 1.0
    later = set(order[order.index(task) + 1 :])
    for k, (i, j) in enumerate(pairs):
        if j == task and i in later:
            row[n + k] = 1.0
    return row


def least_squares_theta(cells: Sequence[Cell], tasks: Sequence[str]) -> np.ndarray:
    """θ = [a*_j …, D[i][j] …] of the additive form fit to the cells' measured scores
    (minimum-norm where the cells do not determine them all)."""
    x = np.stack([additive_features(c.order, c.task, tasks) for c in cells])
    y = np.array([c.measured for c in cells])
    return np.linalg.lstsq(x, y, rcond=None)[0]


def fit_additive(cells: Sequence[Cell], tasks: Sequence[str]) -> tuple[dict[str, float], dict]:
    """Least-squares a*_j and D[i][j] of the additive form from measured final scores."""
    theta = least_squares_theta(cells, tasks)
    n = len(tasks)
    levels = {t: float(theta[k]) for k, t in enumerate(tasks)}
    pairs = [(i, j) for i in tasks for j in tasks if i != j]
    delta = {f"{i}>{j}": float(theta[n + k]) for k, (i, j) in enumerate(pairs)}
    return levels, delta


def stage_fit_predictions(cells: Sequence[Cell], tasks: Sequence[str]) -> list[float]:
    """Each cell's prediction by the additive form fit to every *other* order (all seeds)."""
    orders = sorted({c.order for c in cells})
    predictions: dict[tuple[tuple[str, ...], str], float] = {}
    for held_out in orders:
        training = [c for c in cells if c.order != held_out]
        if not training:
            raise ValueError("a leave-one-order-out fit needs at least two orders")
        theta = least_squares_theta(training, tasks)
        for task in held_out:
            predictions[(held_out, task)] = float(additive_features(held_out, task, tasks) @ theta)
    return [predictions[(c.order, c.task)] for c in cells]


def _correlations(predicted: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    if np.ptp(predicted) == 0 or np.ptp(measured) == 0:
        return float("nan"), float("nan")
    return float(pearsonr(predicted, measured).statistic), float(
        spearmanr(predicted, measured).statistic
    )


def _centred(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each value less the mean of its group (here: one task at one seed)."""
    out = values.copy()
    for group in np.unique(groups):
        chosen = groups == group
        out[chosen] -= values[chosen].mean()
    return out


def statistics(
    cells: Sequence[Cell],
    predicted: Sequence[float],
    index: np.ndarray | None = None,
    copies: np.ndarray | None = None,
) -> dict[str, float]:
    """Pooled, task-centred and per-run ACC Pearson/Spearman of ``predicted`` against the
    cells' measured scores, on the cells ``index`` picks (all by default). ``copies`` says
    which bootstrap copy of its (order, seed) each picked cell is: a run drawn twice counts
    as two runs in the per-run ACC correlation."""
    chosen = np.arange(len(cells)) if index is None else index
    copy_of = np.zeros(len(chosen), dtype=np.int64) if copies is None else copies
    pred = np.asarray(predicted, dtype=np.float64)[chosen]
    meas = np.array([cells[k].measured for k in chosen])
    # Centred within each (task, seed): a task's level may differ by seed on both sides
    # (each seed's probes come from its own bwt run), and centring over all seeds together
    # would let that shared seed effect pass for an order effect.
    groups = np.array([f"{cells[k].task}\x00{cells[k].seed}" for k in chosen])
    pooled = _correlations(pred, meas)
    centred = _correlations(_centred(pred, groups), _centred(meas, groups))
    runs: dict[tuple[tuple[str, ...], int, int], list[int]] = {}
    for position, k in enumerate(chosen):
        runs.setdefault((cells[k].order, cells[k].seed, int(copy_of[position])), []).append(
            position
        )
    acc_pred = np.array([pred[p].mean() for p in runs.values()])
    acc_meas = np.array([meas[p].mean() for p in runs.values()])
    per_run = _correlations(acc_pred, acc_meas)
    return {
        "pooled_pearson": pooled[0],
        "pooled_spearman": pooled[1],
        "centred_pearson": centred[0],
        "centred_spearman": centred[1],
        "acc_pearson": per_run[0],
        "acc_spearman": per_run[1],
    }


def pigeonhole_draw(
    cells: Sequence[Cell], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One pigeonhole resample: orders and seeds drawn independently with replacement; every
    cell of each drawn (order, seed) pair kept. Returns the cell indices and, per index,
    which copy of its (order, seed) it is (a pair drawn twice forms two runs)."""
    orders = sorted({c.order for c in cells})
    seeds = sorted({c.seed for c in cells})
    by_pair: dict[tuple[tuple[str, ...], int], list[int]] = {}
    for k, c in enumerate(cells):
        by_pair.setdefault((c.order, c.seed), []).append(k)
    drawn_orders = rng.integers(len(orders), size=len(orders))
    drawn_seeds = rng.integers(len(seeds), size=len(seeds))
    index, copies = [], []
    for copy, (o, s) in enumerate(itertools.product(drawn_orders, drawn_seeds)):
        members = by_pair.get((orders[o], seeds[s]), [])
        index += members
        copies += [copy] * len(members)
    return np.array(index, dtype=np.int64), np.array(copies, dtype=np.int64)


def bootstrap(
    cells: Sequence[Cell],
    predictions: dict[str, Sequence[float]],
    draws: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Percentile CIs of every statistic of every predictor, and of each statistic's
    difference between the predictors (second minus first), from the same draws."""
    rng = np.random.default_rng(seed)
    names = list(predictions)
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for _ in range(draws):
        index, copies = pigeonhole_draw(cells, rng)
        for name in names:
            samples[name].append(statistics(cells, predictions[name], index, copies))
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    keys = list(samples[names[0]][0])
    for name in names:
        out[name] = {k: _interval([s[k] for s in samples[name]]) for k in keys}
    if len(names) == 2:
        first, second = names
        out[f"{second} - {first}"] = {
            k: _interval(
                [b[k] - a[k] for a, b in zip(samples[first], samples[second], strict=True)]
            )
            for k in keys
        }
    return out


def _interval(values: Sequence[float]) -> dict[str, float | None]:
    low, high, undefined = percentile_interval(np.asarray(values, dtype=np.float64))
    return {"low": low, "high": high, "undefined_draws": undefined}


def check_predictors(
    reports: Sequence[dict[str, Any]], draws: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Both predictors on the reports: point statistics, pigeonhole CIs, the stage-fit
    parameters (fit to every order) and the measured spread of ACC over orders."""
    cells = cells_from_reports(reports)
    tasks = list(reports[0]["transfer"]["tasks"])
    predictions = {
        "probes": [c.probe_predicted for c in cells],
        "stage-fit": stage_fit_predictions(cells, tasks),
    }
    levels, delta = fit_additive(cells, tasks)
    acc_by_order: dict[tuple[str, ...], list[float]] = {}
    for report in reports:
        for row in report["orders"]:
            acc_by_order.setdefault(tuple(row["order"]), []).append(float(row["measured_acc"]))
    order_means = {o: float(np.mean(v)) for o, v in acc_by_order.items()}
    return {
        "seeds": sorted(int(r["seed"]) for r in reports),
        "orders": len(order_means),
        "cells": len(cells),
        "tasks": tasks,
        "point": {name: statistics(cells, p) for name, p in predictions.items()},
        "ci": bootstrap(cells, predictions, draws=draws, seed=seed),
        "bootstrap": {"kind": "pigeonhole (orders × seeds)", "draws": draws, "seed": seed},
        "stage_fit_parameters": {"levels": levels, "delta": delta},
        "measured_acc_by_order": {
            " > ".join(o): {"mean": m, "per_seed": acc_by_order[o]}
            for o, m in sorted(order_means.items(), key=lambda kv: -kv[1])
        },
        "measured_acc_spread": max(order_means.values()) - min(order_means.values()),
    }
