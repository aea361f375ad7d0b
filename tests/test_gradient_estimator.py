"""The probe-free transfer estimate: per-task gradients at the base, the first-order Δ̂ built
from them, the GradientProbe a strategy yields (durable across a resume), and ``bwt
--param estimator=gradient`` end to end on the tiny track."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
from cli_runner import one_line, run_cli
from tiny_engine import tiny_engine

from ctbench.strategies.transfer import best_order
from ctbench.training.adapters import trainable_parameters
from ctbench.training.engine import Engine
from ctbench.training.gradients import (
    TaskGradient,
    first_order_transfer,
    gradient_cosines,
    task_gradient,
)
from ctbench.training.tiny_base import load_base


def _vectors(update: list[float], reward: list[float]) -> TaskGradient:
    u = torch.tensor(update)
    return TaskGradient(
        update_adam=torch.sign(u),
        update_sgd=u / u.norm(),
        reward_gradient=torch.tensor(reward),
        mean_reward=0.5,
        samples=1,
        generated_tokens=1,
    )


def test_first_order_transfer_is_the_update_of_the_row_task_dotted_with_the_column_gradient():
    gradients = {
        "a": _vectors([3.0, 0.0], [1.0, 0.0]),
        "b": _vectors([0.0, -1.0], [2.0, 4.0]),
    }
    adam = first_order_transfer(["a", "b"], gradients, "adam")
    # u_a = sign([3, 0]) = [1, 0]; u_b = [0, -1].
    assert adam == [[1.0, 2.0], [0.0, -4.0]]
    sgd = first_order_transfer(["a", "b"], gradients, "sgd")
    assert sgd == [[1.0, 2.0], [0.0, -4.0]]
    # Asymmetric, so orders differ in value: training a first helps b (+2), b first hurts
    # nothing of a (0), so the search puts b first (a, trained last, adds +2 to b).
    assert adam[0][1] != adam[1][0]
    from ctbench.strategies.transfer import TransferMatrix

    order, _ = best_order(TransferMatrix(("a", "b"), ((1.0, 2.0), (0.0, -4.0)), (0.0, 0.0)))
    assert order == ["b", "a"]
    cos = gradient_cosines(["a", "b"], gradients)
    assert cos[0][0] == pytest.approx(1.0) and cos[0][1] == pytest.approx(2 / 20**0.5)
    assert cos[0][1] == cos[1][0]
    with pytest.raises(ValueError, match="unknown update"):
        first_order_transfer(["a"], gradients, "lion")


@pytest.fixture(scope="module")
def engine(tiny_track) -> Engine:
    return tiny_engine(tiny_track, load_base(tiny_track)[0])


def _flat(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in params])


def test_task_gradient_is_the_engines_own_first_grpo_direction_and_changes_no_weight(
    engine: Engine,
) -> None:
    params = trainable_parameters(engine.model)
    before = _flat(params)
    booked = copy.deepcopy(engine.meter.phases["probe"])
    measured = task_gradient(engine, "math", batches=1, seed=11)
    assert torch.equal(_flat(params), before)  # a measurement, not a step
    assert all(p.grad is None for p in params)
    rl = engine.rl
    assert measured.samples == rl.prompts_per_step * rl.group_size
    probe = engine.meter.phases["probe"]
    assert probe.optimizer_steps == booked.optimizer_steps
    assert probe.samples - booked.samples == measured.samples
    assert probe.generated_tokens - booked.generated_tokens == measured.generated_tokens > 0

    # The same prompts and sampling seed through the engine's RL loss, as a stage's first
    # step would compute it: its gradient must point where update_sgd says (opposite).
    rng = random.Random(11)
    pool = engine.tasks["math"].train
    items = [pool[rng.randrange(len(pool))] for _ in range(rl.prompts_per_step)]
    generator = torch.Generator().manual_seed(11)
    loss, _ = engine.rl_loss(items, generator, "train")
    grads = torch.autograd.grad(loss, params)
    flat = torch.cat([g.flatten() for g in grads])
    cosine = torch.nn.functional.cosine_similarity(
        -flat.double(), measured.update_sgd.double(), dim=0
    )
    assert float(cosine) == pytest.approx(1.0, abs=1e-5)
    clear = flat.abs() > 1e-8  # where the sign is not decided by rounding
    assert torch.equal(measured.update_adam[clear], -torch.sign(flat[clear]))
    assert float(measured.reward_gradient.norm()) > 0.0

    again = task_gradient(engine, "math", batches=1, seed=11)
    assert torch.equal(again.reward_gradient, measured.reward_gradient)
    # creative's rubric judge remembers recent training outputs; a measurement leaves its
    # memory as a stage does (empty), so a resumed run (which replays it) sees the same
    task_gradient(engine, "creative", batches=1, seed=11)
    assert len(engine.rewards["creative"].recent) == 0
    with pytest.raises(ValueError, match="at least one batch"):
        task_gradient(engine, "math", batches=0, seed=1)


PROBING_STRATEGY = """
import os

from ctbench.strategy import GradientProbe, Stage, Strategy


class Gauge(Strategy):
    name = "gauge"

    def schedule(self, ctx):
        yield GradientProbe(tasks=("math", "qa"), batches={BATCHES})
        ctx.report["measured"] = ctx.measurements[-1]
        yield Stage(mixture={"math": 1.0}, steps=1, name="math")
        if os.environ.get("GAUGE_FAIL"):
            raise RuntimeError("stopping here on purpose")
        yield Stage(mixture={"qa": 1.0}, steps=1, name="qa")
"""


@pytest.mark.slow
def test_a_gradient_probe_is_durable_and_replayed_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = tmp_path / "gauge.py"
    plugin.write_text(PROBING_STRATEGY.replace("{BATCHES}", "1"))
    out = tmp_path / "out"
    monkeypatch.setenv("GAUGE_FAIL", "1")
    code, _, err = run_cli(
        capsys, "run", "--strategy", f"{plugin}:Gauge", "--budget", "2", "--out", str(out)
    )
    assert code == 2 and "stopping here on purpose" in one_line(err)
    (run_dir,) = out.iterdir()
    state = json.loads((run_dir / "state.json").read_text())
    (recorded,) = state["measurements"]
    assert recorded["request"] == {
        "kind": "gradient-probe",
        "name": "gradient-probe",
        "tasks": ["math", "qa"],
        "batches": 1,
    }
    once = state["meter"]["probe"]["samples"]
    assert once == recorded["result"]["samples"] > 0

    monkeypatch.delenv("GAUGE_FAIL")
    code, _, err = run_cli(capsys, "run", "--resume", str(run_dir))
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    measured = result["strategy"]["report"]["measured"]
    assert measured == recorded["result"]  # replayed, not measured again
    assert result["compute"]["probe"]["samples"] == once
    assert result["compute"]["probe"]["optimizer_steps"] == 0
    assert result["compute"]["train"]["optimizer_steps"] == 2
    assert len(result["matrix"]["R"]) == 3  # base + two stages: the probe adds no row
    assert [len(row) for row in measured["transfer_adam"]] == [2, 2]


@pytest.mark.slow
def test_bwt_orders_by_the_gradient_estimate_and_spends_the_whole_budget_on_stages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "run", "--strategy", "bwt", "--param", "estimator=gradient",
        "--param", "gradient_batches=1", "--budget", "8", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    (run_dir,) = out.iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    report = result["strategy"]["report"]
    estimate = report["estimate"]
    assert estimate["estimator"] == "gradient" and estimate["optimizer_steps"] == 0
    tasks = result["tasks"]
    assert sorted(report["order"]) == sorted(tasks)
    delta = report["transfer"]["delta"]
    assert [len(row) for row in delta] == [len(tasks)] * len(tasks)
    from ctbench.strategies.transfer import TransferMatrix

    expected, _ = best_order(
        TransferMatrix(tuple(tasks), tuple(map(tuple, delta)), tuple(report["transfer"]["base"]))
    )
    assert report["order"] == expected
    assert "predicted_final" not in report  # Δ̂ has no score units
    compute = result["compute"]
    assert compute["train"]["optimizer_steps"] == 8
    assert compute["probe"]["optimizer_steps"] == 0
    per_task = result["engine"]["rl"]["prompts_per_step"] * result["engine"]["rl"]["group_size"]
    assert compute["probe"]["samples"] == len(tasks) * per_task
    assert estimate["samples"] == compute["probe"]["samples"]
    assert "single_task_levels" not in report["transfer"]  # base + Δ̂ would mix units

    # Δ̂ predicts no scores, so validate-prediction refuses it as its Δ, by name.
    from ctbench.errors import UserError
    from ctbench.results.validation import find_transfer, load_transfer

    with pytest.raises(UserError, match="gradient estimate"):
        load_transfer(run_dir)
    with pytest.raises(UserError, match="no measured transfer matrix"):
        find_transfer(out, "tiny")


def test_bwt_refuses_an_unknown_estimator_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        capsys, "run", "--strategy", "bwt", "--param", "estimator=tea-leaves",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2
    assert "estimator must be one of probes, gradient" in one_line(err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


UNKNOWN_TASK_PROBE = """
from ctbench.strategy import GradientProbe, Strategy


class Lost(Strategy):
    name = "lost"

    def schedule(self, ctx):
        yield GradientProbe(tasks=("math", "poetry"))
"""


def test_a_gradient_probe_of_an_unknown_task_is_the_strategys_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = tmp_path / "lost.py"
    plugin.write_text(UNKNOWN_TASK_PROBE)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", "--strategy", f"{plugin}:Lost", "--out", str(out))
    assert code == 2
    message = one_line(err)
    assert "gradient probe needs distinct known task names" in message and "poetry" in message
    assert not any(out.iterdir())  # nothing finished: no run folder left behind
