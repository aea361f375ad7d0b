"""The predictor check at scale: cells from validation reports, the leave-one-order-out
stage fit, the pigeonhole bootstrap, and the statistics, on hand-made reports."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

from ctbench.results.predictor_check import (
    cells_from_reports,
    check_predictors,
    fit_additive,
    pigeonhole_draw,
    stage_fit_predictions,
    statistics,
)

TASKS = ["a", "b", "c", "d"]
LEVELS = {"a": 0.7, "b": 0.5, "c": 0.6, "d": 0.4}
# D[i][j]: what training i later does to j.
D = {
    (i, j): 0.01 * (3 * k - 17)
    for k, (i, j) in enumerate((i, j) for i in TASKS for j in TASKS if i != j)
}


def additive(order: list[str]) -> dict[str, float]:
    return {
        t: LEVELS[t] + sum(D[(later, t)] for later in order[m + 1 :]) for m, t in enumerate(order)
    }


def report(seed: int, noise: float, probe_bias: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for order in map(list, permutations(TASKS)):
        truth = additive(order)
        measured = {t: v + float(rng.normal(0, noise)) for t, v in truth.items()}
        rows.append(
            {
                "order": order,
                "predicted": {t: v - probe_bias for t, v in truth.items()},
                "measured": measured,
                "predicted_acc": float(np.mean(list(truth.values()))) - probe_bias,
                "measured_acc": float(np.mean(list(measured.values()))),
            }
        )
    return {"seed": seed, "orders": rows, "transfer": {"tasks": TASKS}}


def test_an_exactly_additive_track_is_recovered_and_predicted_out_of_sample():
    cells = cells_from_reports([report(0, 0.0), report(1, 0.0)])
    assert len(cells) == 24 * 2 * 4
    levels, delta = fit_additive(cells, TASKS)
    # Under the additive form only the order-dependent D and the levels of each task plus its
    # column sums are identified, and here they are exact: predictions reproduce the truth.
    predicted = stage_fit_predictions(cells, TASKS)
    assert predicted == pytest.approx([c.measured for c in cells], abs=1e-9)
    assert delta["b>a"] == pytest.approx(D[("b", "a")], abs=1e-9)
    assert levels["a"] == pytest.approx(LEVELS["a"], abs=1e-9)


def test_the_stage_fit_never_sees_the_order_it_predicts():
    reports = [report(0, 0.0), report(1, 0.0)]
    # Corrupt one order's measurements: its own prediction must not move towards them.
    target = ["d", "c", "b", "a"]
    for r in reports:
        for row in r["orders"]:
            if row["order"] == target:
                row["measured"] = {t: 0.0 for t in TASKS}
    cells = cells_from_reports(reports)
    predicted = stage_fit_predictions(cells, TASKS)
    truth = additive(target)
    for c, p in zip(cells, predicted, strict=True):
        if list(c.order) == target:
            assert p == pytest.approx(truth[c.task], abs=1e-9)


def test_a_pigeonhole_draw_keeps_whole_runs_and_resamples_orders_and_seeds():
    cells = cells_from_reports([report(0, 0.01), report(1, 0.01), report(2, 0.01)])
    index, copies = pigeonhole_draw(cells, np.random.default_rng(3))
    assert len(index) == len(copies) == 24 * 3 * 4  # 24 orders × 3 seeds drawn, 4 cells each
    by_copy: dict[int, set] = {}
    for k, copy in zip(index, copies, strict=True):
        by_copy.setdefault(int(copy), set()).add((cells[k].order, cells[k].seed, cells[k].task))
    assert all(len(run) == 4 and len({(o, s) for o, s, _ in run}) == 1 for run in by_copy.values())
    drawn_orders = {next(iter(run))[0] for run in by_copy.values()}
    assert len(drawn_orders) < 24  # with replacement: some orders repeat, some are left out


def test_statistics_match_scipy_and_a_constant_bias_changes_no_correlation():
    from scipy.stats import pearsonr

    reports = [report(0, 0.02, probe_bias=0.2), report(1, 0.02, probe_bias=0.2)]
    cells = cells_from_reports(reports)
    probes = [c.probe_predicted for c in cells]
    stats = statistics(cells, probes)
    measured = [c.measured for c in cells]
    assert stats["pooled_pearson"] == pytest.approx(pearsonr(probes, measured).statistic)
    # A constant bias shifts predictions but leaves every Pearson correlation unchanged
    # (Spearman too, up to ties that the added constant's rounding breaks differently).
    unbiased = statistics(cells, [p + 0.2 for p in probes])
    for key in ("pooled_pearson", "centred_pearson", "acc_pearson"):
        assert unbiased[key] == pytest.approx(stats[key])


def test_centring_is_within_each_task_and_seed():
    """One task, two orders, two seeds, no order effect at all: the levels differ by seed on
    both sides. Centred over both seeds together that shared seed effect read as a perfect
    order effect (+1.0); within each seed nothing is left to correlate."""
    from ctbench.results.predictor_check import Cell

    cells = [
        Cell(order=order, seed=seed, task="a", measured=measured, probe_predicted=predicted)
        for seed, measured, predicted in ((0, 0.5, 0.3), (1, 0.7, 0.4))
        for order in (("a", "b"), ("b", "a"))
    ]
    stats = statistics(cells, [c.probe_predicted for c in cells])
    assert stats["pooled_pearson"] == pytest.approx(1.0)
    assert np.isnan(stats["centred_pearson"]) and np.isnan(stats["centred_spearman"])


def test_check_predictors_reports_both_predictors_with_cis_that_cover_the_point():
    found = check_predictors([report(0, 0.03), report(1, 0.03)], draws=200)
    assert found["orders"] == 24 and found["cells"] == 192 and found["seeds"] == [0, 1]
    for name in ("probes", "stage-fit"):
        point, ci = found["point"][name], found["ci"][name]
        for key in ("pooled_pearson", "centred_pearson", "acc_spearman"):
            assert ci[key]["low"] <= point[key] <= ci[key]["high"]
    # Probes here are the truth itself; the stage fit is estimated from noisy runs.
    assert (
        found["point"]["probes"]["centred_pearson"]
        >= found["point"]["stage-fit"]["centred_pearson"]
    )
    assert "stage-fit - probes" in found["ci"]
    assert found["measured_acc_spread"] > 0
    with pytest.raises(ValueError, match="two validation reports of one seed"):
        cells_from_reports([report(0, 0.0), report(0, 0.0)])
