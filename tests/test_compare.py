"""Seed aggregation (bootstrap CIs, paired differences) on known inputs, and the grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import invoke
from small_tiny import small_tiny_track

from ctbench.errors import UserError
from ctbench.results.aggregate import (
    _resampled_acc,
    bootstrap_acc,
    bootstrap_paired_difference,
    run_acc,
)
from ctbench.results.compare import parse_seeds, parse_strategies, run_grid, summarise
from ctbench.runs.run import SilentObserver


def test_run_acc_is_the_mean_of_task_means():
    assert run_acc({"a": [1, 0, 1, 1], "b": [0, 0]}) == pytest.approx((0.75 + 0.0) / 2)


def test_constant_scores_give_a_zero_width_interval():
    runs = [{"a": [0.5] * 10, "b": [0.25] * 4}] * 3
    ci = bootstrap_acc(runs, samples=200)
    assert (ci.mean, ci.low, ci.high, ci.n_seeds) == pytest.approx((0.375, 0.375, 0.375, 3))


def test_interval_covers_the_mean_and_narrows_with_more_seeds():
    rng = np.random.default_rng(0)

    def seed_run():
        return {"a": list(rng.binomial(1, 0.6, 50)), "b": list(rng.binomial(1, 0.3, 50))}

    few = bootstrap_acc([seed_run() for _ in range(2)], samples=500)
    many = bootstrap_acc([seed_run() for _ in range(12)], samples=500)
    assert few.low <= few.mean <= few.high and many.low <= many.mean <= many.high
    assert many.high - many.low < few.high - few.low
    assert 0.35 < many.mean < 0.55


def test_paired_difference_of_a_uniform_shift_is_exact():
    """Both sides are resampled with the same items: a shift of every item by the same
    amount is exact however unequal the items are (drawing items apart for each side, as
    an earlier version did, blurred it into an interval around 0.5)."""
    base = {s: {"a": [0.0, 0.5, 0.25], "b": [1.0, 0.0]} for s in (0, 1, 2)}
    better = {s: {t: [v + 0.5 for v in base[s][t]] for t in ("a", "b")} for s in (0, 1, 2)}
    diff = bootstrap_paired_difference(better, base, samples=500)
    assert (diff.mean, diff.low, diff.high) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="share no seed"):
        bootstrap_paired_difference({5: base[0]}, base, samples=10)
    with pytest.raises(ValueError, match="seed 1, task 'a': 2 eval items against 3"):
        bootstrap_paired_difference({1: {"a": [0.0, 1.0], "b": [1.0, 0.0]}}, base, samples=10)


def test_paired_difference_resamples_items_once_for_both_sides():
    """Items of very unequal difficulty shared by both sides and a small true difference:
    the paired interval excludes 0 and is far narrower than one drawn with each side's
    items resampled apart (the earlier method, rebuilt here as the yardstick)."""
    rng = np.random.default_rng(3)
    difficulty = rng.beta(0.2, 0.2, size=(4, 200))  # per task and item, the same for both
    reference, ours = {}, {}
    for seed in range(3):
        base = (rng.random((4, 200)) < difficulty).astype(float)
        gain = (rng.random((4, 200)) < 0.05) & (base == 0)  # 5% of the unsolved items
        reference[seed] = {f"t{i}": list(base[i]) for i in range(4)}
        ours[seed] = {f"t{i}": list(np.maximum(base[i], gain[i])) for i in range(4)}
    diff = bootstrap_paired_difference(ours, reference, samples=500)
    assert 0.0 < diff.low < diff.mean < diff.high
    draw = np.random.default_rng(0)
    apart = [
        np.mean([_resampled_acc(ours[s], draw) - _resampled_acc(reference[s], draw) for s in seeds])
        for seeds in draw.integers(0, 3, size=(500, 3))
    ]
    low, high = np.quantile(apart, [0.025, 0.975])
    assert diff.high - diff.low < (high - low) / 2  # 0.020 against 0.057 at this seed


def test_grid_arguments_are_checked():
    assert parse_strategies("all") == ["joint", "merge", "random", "bwt", "sft_then_rl", "chord"]
    with pytest.raises(UserError, match="unknown strategy 'nope'"):
        parse_strategies("joint,nope")
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("0,0", "a", ""):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)


def _recorded(run_dir) -> tuple:
    """What a run records of its own execution: when it started and finished, and the hash
    over its whole result (timestamps included). A cell that ran again records new ones."""
    result = json.loads((run_dir / "result.json").read_text())
    return result["run_id"], result["timestamps"], result["result_hash"]


@pytest.mark.slow
def test_grid_runs_cells_once_and_summarises(tmp_path):
    grid = {"track": small_tiny_track(), "out": tmp_path, "observer": SilentObserver()}
    cells = run_grid(["joint", "random"], [0, 1], **grid, budget=4)
    stamps = {key: _recorded(path) for key, path in cells.items()}
    again = run_grid(["joint", "random"], [0, 1], **grid, budget=4)
    assert {k: _recorded(p) for k, p in again.items()} == stamps  # no cell ran again
    summary = summarise(cells, samples=200)
    rows = {row["strategy"]: row for row in summary["rows"]}
    joint_accs = [
        json.loads((cells[("joint", s)] / "result.json").read_text())["metrics"]["acc"]
        for s in (0, 1)
    ]
    assert rows["joint"]["acc"]["mean"] == pytest.approx(sum(joint_accs) / 2)
    assert rows["joint"]["acc"]["n_seeds"] == 2 and "minus_joint" not in rows["joint"]
    assert rows["random"]["minus_joint"]["n_seeds"] == 2
    assert rows["random"]["optimizer_steps"] == 4
    # joint trains in one stage: BWT is defined at no seed; random's at both
    assert rows["joint"]["bwt"] is None and rows["joint"]["defined_seeds"]["bwt"] == 0
    assert rows["random"]["defined_seeds"] == {"bwt": 2, "forgetting": 2, "merge_loss": 0}


def test_compare_cli_bad_strategy_exits_2(tmp_path):
    proc = invoke("compare", "--strategies", "nope", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown strategy 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def _numbers(result: dict) -> dict:
    """What a cell computed: everything but times, ids, hashes over them and the env."""
    out = {k: v for k, v in result.items() if k not in ("run_id", "timestamps", "env")}
    out.pop("result_hash")
    out["compute"] = {
        phase: {k: v for k, v in values.items() if k != "wall_s"}
        for phase, values in result["compute"].items()
    }
    return out


@pytest.mark.slow
def test_ray_executor_runs_cells_as_ray_tasks_with_the_local_numbers(tmp_path):
    """Two cells as tasks on a local Ray instance (one CPU and one torch thread each) give
    exactly the numbers the local executor gives with one torch thread, and a finished grid
    is not dispatched again."""
    pytest.importorskip("ray", reason="Ray is in the test extras; install ctbench[test]")
    import torch

    grid = {
        "strategies": ["joint", "random"],
        "seeds": [0],
        "track": small_tiny_track(),
        "budget": 4,
    }
    on_ray = run_grid(
        **grid, out=tmp_path / "ray", observer=SilentObserver(), executor="ray", cpus_per_cell=1
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_grid(**grid, out=tmp_path / "local", observer=SilentObserver())
    finally:
        torch.set_num_threads(threads)
    for key in (("joint", 0), ("random", 0)):
        ray_result = json.loads((on_ray[key] / "result.json").read_text())
        local_result = json.loads((local[key] / "result.json").read_text())
        assert ray_result["env"]["torch_threads"] == 1
        assert _numbers(ray_result) == _numbers(local_result)
    stamps = {k: _recorded(p) for k, p in on_ray.items()}
    again = run_grid(**grid, out=tmp_path / "ray", observer=SilentObserver(), executor="ray")
    assert {k: _recorded(p) for k, p in again.items()} == stamps


def test_ray_executor_reports_a_failing_cell_clearly(tmp_path):
    pytest.importorskip("ray", reason="Ray is in the test extras; install ctbench[test]")
    strategy = tmp_path / "broken.py"
    strategy.write_text(
        "from ctbench.strategy import Strategy\n"
        "class Broken(Strategy):\n"
        "    '''Fails on purpose.'''\n"
        "    name = 'broken'\n"
        "    def schedule(self, ctx):\n"
        "        raise RuntimeError('boom')\n"
        "        yield\n"
    )
    with pytest.raises(UserError, match="boom"):
        run_grid(
            [f"{strategy}:Broken"],
            [0],
            track=small_tiny_track(),
            out=tmp_path / "runs",
            observer=SilentObserver(),
            budget=2,
            executor="ray",
        )
    assert not any((tmp_path / "runs").glob("*/*/result.json"))
