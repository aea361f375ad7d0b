"""``ctbench run`` end to end on the tiny track with a small budget: the real model, the real
sandbox, real files. Determinism, resume after an interruption, budget refusal, clean errors."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import Outcome, invoke
from killpoints import killed_at, run_files
from small_tiny import small_tiny_track

from ctbench.errors import UserError
from ctbench.runs.config import RunConfig
from ctbench.runs.run import Run, SilentObserver
from ctbench.strategy import BudgetExceeded
from ctbench.tracks.track import load_track

BUDGET = 8


class Interrupt(Exception):
    pass


class InterruptAt(SilentObserver):
    """Raises in the middle of a given stage, like a Ctrl-C or a killed job."""

    def __init__(self, stage: int, step: int) -> None:
        self.stage, self.step, self.current = stage, step, 0

    def stage_started(self, index, stage) -> None:
        self.current = index

    def step_done(self, log) -> None:
        if self.current == self.stage and log.step == self.step:
            raise Interrupt()


def deterministic_part(result: dict) -> dict:
    """Everything except wall-clock times, timestamps, the run id and the environment."""
    out = copy.deepcopy(result)
    for key in ("run_id", "timestamps", "env", "result_hash"):
        out.pop(key)
    for phase in out["compute"].values():
        phase.pop("wall_s")
    return out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("runs")
    run = Run.create(
        RunConfig(track=small_tiny_track(), strategy="random", seed=3, budget=BUDGET),
        out,
        SilentObserver(),
    )
    return run.execute() | {"_dir": str(run.dir)}


@pytest.mark.slow
def test_result_has_the_promised_fields(first_run):
    result = first_run
    assert result["schema_version"] == 1
    assert result["tasks"] == ["math", "code", "qa", "creative"]
    assert len(result["matrix"]["R"]) == 5  # base + 4 single-task stages
    assert [s["steps"] for s in result["stages"]] == [2, 2, 2, 2]
    assert sorted(s["tasks"][0] for s in result["stages"]) == sorted(result["tasks"])
    assert all(len(s["trace"]["reward"]) == 2 for s in result["stages"])
    assert result["compute"]["train"]["optimizer_steps"] == BUDGET
    assert result["compute"]["train"]["generated_tokens"] > 0
    assert result["compute"]["eval"]["samples"] > 0
    assert result["budget"] == {"steps": BUDGET, "spent_steps": BUDGET, "probe_steps": 0}
    assert result["task_info"]["qa"]["chance"] == pytest.approx(0.25)
    for key in ("acc", "bwt", "fwt", "forgetting", "learning_accuracy"):
        assert key in result["metrics"]
    assert result["metrics"]["acc"] == pytest.approx(sum(result["matrix"]["R"][-1]) / 4)
    assert len(result["entropy"]["token"]) == 5 and len(result["entropy"]["sequence"][0]) == 4
    assert result["env"]["packages"]["torch"]
    assert "cpu_model" in result["env"]  # the processor, not only the architecture
    run_dir = Path(result["_dir"])
    samples = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert len(samples) == 5 * 4 and samples[0] == "stage-00-code.jsonl"
    first = json.loads((run_dir / "samples" / "stage-00-math.jsonl").read_text().splitlines()[0])
    assert {"prompt_hash", "prompt", "completions", "scores", "score"} <= set(first)
    assert not (run_dir / "checkpoints").exists()  # intermediate state is cleaned up


@pytest.mark.slow
def test_eval_max_items_scores_the_first_items_only(first_run):
    """The track's ``eval.max_items: 50`` (tests/small_tiny.py): every task is scored on its
    first 50 eval items, the result says so, and the track hash is not the full track's."""
    assert first_run["track"]["hash"] != load_track("tiny").content_hash()
    run_dir = Path(first_run["_dir"])
    for task in first_run["tasks"]:
        assert first_run["task_info"][task]["eval_size"] == 50
        lines = (run_dir / "samples" / f"stage-00-{task}.jsonl").read_text().splitlines()
        assert [json.loads(line)["index"] for line in lines] == list(range(50))


@pytest.mark.slow
def test_same_seed_gives_identical_numbers(first_run, tmp_path):
    again = Run.create(
        RunConfig(track=small_tiny_track(), strategy="random", seed=3, budget=BUDGET),
        tmp_path,
        SilentObserver(),
    ).execute()
    assert deterministic_part(again) == deterministic_part(
        {k: v for k, v in first_run.items() if k != "_dir"}
    )


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted_run(first_run, tmp_path):
    run = Run.create(
        RunConfig(track=small_tiny_track(), strategy="random", seed=3, budget=BUDGET),
        tmp_path,
        InterruptAt(stage=3, step=1),
    )
    with pytest.raises(Interrupt):
        run.execute()
    state = json.loads((run.dir / "state.json").read_text())
    assert len(state["items"]) == 2 and not (run.dir / "result.json").exists()
    resumed = Run.resume(run.dir, SilentObserver()).execute()
    expected = deterministic_part({k: v for k, v in first_run.items() if k != "_dir"})
    assert deterministic_part(resumed) == expected


@pytest.mark.slow
def test_joint_has_undefined_bwt_with_reason(tmp_path):
    result = Run.create(
        RunConfig(track=small_tiny_track(), strategy="joint", seed=0, budget=2),
        tmp_path,
        SilentObserver(),
    ).execute()
    assert len(result["stages"]) == 1 and result["stages"][0]["tasks"] == sorted(result["tasks"])
    assert (
        result["metrics"]["bwt"] is None
        and "before the final stage" in result["metrics"]["bwt_reason"]
    )


def test_budget_overrun_is_refused(tmp_path):
    greedy = tmp_path / "greedy.py"
    greedy.write_text(
        "from ctbench.strategy import Stage, Strategy\n"
        "class Greedy(Strategy):\n"
        "    name = 'greedy'\n"
        "    def schedule(self, ctx):\n"
        "        yield Stage(mixture={'math': 1.0}, steps=ctx.budget + 1)\n"
    )
    run = Run.create(
        RunConfig(track=small_tiny_track(), strategy=f"{greedy}:Greedy", budget=3),
        tmp_path / "out",
        SilentObserver(),
    )
    with pytest.raises(
        BudgetExceeded, match="asks for 4 steps but only 3 of the budget of 3 remain"
    ):
        run.execute()
    assert not (run.dir / "result.json").exists()


def test_budget_too_small_for_random(tmp_path):
    run = Run.create(
        RunConfig(track=small_tiny_track(), strategy="random", budget=3), tmp_path, SilentObserver()
    )
    with pytest.raises(
        UserError, match="too small: one stage for each of 4 tasks needs at least 4"
    ):
        run.execute()
    assert not run.dir.exists()  # failed before any stage: nothing is left behind


def cli(*args: str, cwd: Path) -> Outcome:
    """The CLI in this process (see ``tests/cli_runner.py``); the SIGKILL tests below start
    the killed runs as real processes."""
    return invoke(*args, cwd=cwd)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--strategy", "nope"], "unknown strategy 'nope'; known:"),
        (["run", "--track", "nope"], "unknown track 'nope'"),
        (["run", "--budget", "0"], "--budget: expected a positive number of steps, got 0"),
        (["run", "--strategy", "missing.py:Cls"], "strategy file 'missing.py' does not exist"),
        (["run", "--param", "oops"], "--param: expected key=value"),
        (["run", "--param", "x=1"], "unknown parameter 'x'"),
        (["run", "--resume", "no/such/dir"], "no such run folder"),
    ],
)
def test_cli_bad_input_exits_2_without_traceback_or_files(tmp_path, args, message):
    proc = cli(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = cli("run", "--out", str(blocker / "sub"), cwd=tmp_path)
    assert (
        proc.returncode == 2
        and "cannot write there" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_cli_malformed_track_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    proc = cli("run", "--track", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and f"{bad}: malformed YAML" in " ".join(proc.stderr.split())


def test_cli_lists_tasks_and_strategies(tmp_path):
    tasks = cli("tasks", cwd=tmp_path)
    assert tasks.returncode == 0 and all(
        n in tasks.stdout for n in ("math", "code", "qa", "creative")
    )
    strategies = cli("strategies", cwd=tmp_path)
    assert (
        strategies.returncode == 0
        and "joint" in strategies.stdout
        and "random" in strategies.stdout
    )


@pytest.mark.slow
def test_sigkill_mid_run_then_cli_resume_gives_the_same_result(first_run, tmp_path):
    """A real process killed at an arbitrary point (SIGKILL: no clean-up runs) resumes."""
    import signal
    import time

    out = tmp_path / "out"
    args = [
        "run",
        "--track",
        small_tiny_track(),
        "--strategy",
        "random",
        "--seed",
        "3",
        "--budget",
        str(BUDGET),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctbench", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    state = None
    while time.monotonic() < deadline and proc.poll() is None:
        states = list(out.glob("*/state.json"))
        if states and len(json.loads(states[0].read_text())["items"]) >= 2:
            state = states[0]
            break
        time.sleep(0.05)
    assert state is not None, "the run finished or stalled before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = state.parent
    assert not (run_dir / "result.json").exists()
    resumed = cli("run", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((run_dir / "result.json").read_text())
    expected = deterministic_part({k: v for k, v in first_run.items() if k != "_dir"})
    assert deterministic_part(result) == expected


@pytest.mark.slow
def test_report_writes_the_runs_figures(first_run, tmp_path):
    """A sequential run has R, forgetting, item-transition and entropy figures; real PNGs."""
    # A copy: the shared run folder must stay exactly as the run left it (other tests compare
    # their resumed runs' files with it).
    run_dir = tmp_path / "run"
    shutil.copytree(first_run["_dir"], run_dir)
    proc = cli("report", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = sorted(Path(line).name for line in proc.stdout.split())
    assert written == ["entropy.png", "forgetting.png", "items.png", "r_heatmap.png"]
    for name in written:
        data = (run_dir / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = cli("report", str(empty), cwd=tmp_path)
    assert bad.returncode == 2 and "not a finished run folder" in bad.stderr


@pytest.mark.slow
def test_sigkill_at_every_commit_point_then_resume_gives_the_same_run(first_run, tmp_path):
    """Killed mid-evaluation, between two samples files, between a checkpoint's rename and
    the state write, and between result.json and the checkpoint removal — each time resumed
    with the next kill — the run ends with the uninterrupted numbers, samples and files."""
    out = tmp_path / "out"
    args = ["run", "--track", small_tiny_track(), "--strategy", "random", "--seed", "3"]
    args += ["--budget", str(BUDGET), "--out", str(out)]
    killed_at("evaluation", 7, args, tmp_path)  # the base row, then 3rd task of row 1
    (run_dir,) = out.iterdir()
    state = json.loads((run_dir / "state.json").read_text())
    assert len(state["rows"]) == 1 and not state["items"]
    resume = ["run", "--resume", str(run_dir)]

    killed_at("samples", 3, resume, tmp_path)  # stage 1 retrained; 2 of its 4 files written
    assert len(list((run_dir / "samples").glob("stage-01-*.jsonl"))) == 2
    assert not json.loads((run_dir / "state.json").read_text())["items"]

    killed_at("checkpoint-state", 1, resume, tmp_path)
    state = json.loads((run_dir / "state.json").read_text())
    named = {state["main"], *state["kept"].values()}
    orphans = [p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert not state["items"] and orphans  # renamed into place, but the state does not name it
    assert all(f"checkpoints/{name}" not in named for name in orphans)

    killed_at("result-cleanup", 1, resume, tmp_path)
    assert (run_dir / "result.json").exists() and (run_dir / "checkpoints").exists()

    resumed = cli("run", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((run_dir / "result.json").read_text())
    expected = deterministic_part({k: v for k, v in first_run.items() if k != "_dir"})
    assert deterministic_part(result) == expected
    assert run_files(run_dir) == run_files(Path(first_run["_dir"]))
