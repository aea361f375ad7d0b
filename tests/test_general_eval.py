"""``ctbench eval-general``: a finished tiny run's base and final model scored by lm-eval on
two local task YAML files (tests/fixtures/lmeval: a multiple-choice loglikelihood task and a
generate_until task with exact match), through the real CLI.

The run is a LoRA variant of the tiny track (the shipped base, adapters on q/v), so the
final model is kept as adapters and folded into plain weights before lm-eval scores it.
The machine is offline: subprocesses run with the Hub switched off, so a registry task's
dataset fails at once rather than after retries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_runner import Outcome, invoke

from ctbench.runs.config import RunConfig
from ctbench.runs.run import FINAL_MODEL, Run, SilentObserver

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lmeval"
TASKS = ("ctbench_fixture_choice", "ctbench_fixture_gen")
SIZES = {"ctbench_fixture_choice": 12, "ctbench_fixture_gen": 12}  # lines of the jsonl files


def lora_tiny_track(root: Path) -> Path:
    """The tiny track with LoRA adapters, in a folder of its own (with copies of its task
    files): same tasks and recipe, so its base is the shipped tiny checkpoint. Its RL rate is
    raised so that one step moves the adapters clearly away from zero."""
    (root / "tasks" / "tracks").mkdir(parents=True)
    for name in ("math", "code", "qa", "creative"):
        shutil.copy(REPO / "tasks" / f"{name}.yaml", root / "tasks" / f"{name}.yaml")
    text = (REPO / "tasks" / "tracks" / "tiny.yaml").read_text()
    text = text.replace("name: tiny\n", "name: tiny-lora\n", 1)
    text = text.replace(
        "  shipped: tiny-base\n", f"  shipped: {REPO / 'tasks' / 'tracks' / 'tiny-base'}\n", 1
    )
    text = text.replace(
        "  init_seed: 0\n",
        "  init_seed: 0\n  lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}\n",
        1,
    )
    assert "\n  lr: 0.0004\n" in text  # the RL learning rate
    text = text.replace("\n  lr: 0.0004\n", "\n  lr: 0.05\n", 1)
    path = root / "tasks" / "tracks" / "tiny-lora.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("general")


@pytest.fixture(scope="module")
def run_dir(work: Path) -> Path:
    """One finished LoRA run (joint, one step): the cheapest run that trains something."""
    track = lora_tiny_track(work / "track")
    config = RunConfig(track=str(track), strategy="joint", seed=0, budget=1)
    run = Run.create(config, work / "runs", SilentObserver())
    run.execute()
    return run.dir


def ctbench(*args: str, work: Path, cwd: Path = FIXTURES) -> subprocess.CompletedProcess:
    """The CLI in a real process, from the fixtures folder (datasets resolves the task
    YAMLs' relative data_files from there), offline, with its datasets cache in ``work``."""
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "COLUMNS": "200",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(work / "hf-datasets"),
    }
    return subprocess.run(
        [sys.executable, "-m", "ctbench", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def ctbench_here(*args: str, cwd: Path = FIXTURES) -> Outcome:
    """The CLI in this process, for errors found before lm-eval or datasets is imported
    (a real process costs ~10 s of imports; the ones that reach the Hub keep it)."""
    return invoke(*args, cwd=cwd)


def one_line_error(proc: subprocess.CompletedProcess | Outcome) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return " ".join(proc.stderr[proc.stderr.index("error:") :].split())


# ------------------------------------------------------------------ the kept final model
def test_the_final_model_is_kept_and_replaced_atomically(tmp_path: Path) -> None:
    """Run._keep_final_model alone (no training): a full-weight checkpoint is copied, an
    earlier copy and a half-made staging folder are replaced, a run whose main line trained
    nothing keeps none."""
    checkpoint = tmp_path / "checkpoints" / "001-stage"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"new")
    (tmp_path / FINAL_MODEL).mkdir()
    (tmp_path / FINAL_MODEL / "model.safetensors").write_bytes(b"old")
    (tmp_path / ".final-model-x1").mkdir()  # a copy killed half way
    fake = SimpleNamespace(dir=tmp_path)
    kept = Run._keep_final_model(fake, {"main": "checkpoints/001-stage"})
    assert kept == {"path": FINAL_MODEL, "kind": "full"}
    assert (tmp_path / FINAL_MODEL / "model.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", FINAL_MODEL]
    assert Run._keep_final_model(fake, {"main": None}) is None
    assert not (tmp_path / FINAL_MODEL).exists()


@pytest.mark.slow
def test_a_finished_run_keeps_its_final_adapters(run_dir: Path) -> None:
    result = json.loads((run_dir / "result.json").read_text())
    assert result["final_model"] == {"path": FINAL_MODEL, "kind": "adapters"}
    assert (run_dir / FINAL_MODEL / "adapter_config.json").exists()
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_the_final_model_is_scored_with_its_adapters_folded(run_dir: Path) -> None:
    """What lm-eval is handed: a plain model (no peft wrapper) whose weights are the base's
    plus the trained adapters, computing what the run's adapters compute."""
    import torch

    from ctbench.runs.general_eval import load_models
    from ctbench.tracks.track import load_track
    from ctbench.training import adapters
    from ctbench.training.tiny_base import ensure_base_checkpoint

    result = json.loads((run_dir / "result.json").read_text())
    _, base, load_final, _ = load_models(run_dir, result, run_dir / FINAL_MODEL, "cpu")
    final = load_final()
    assert not adapters.is_adapted(final)
    track = json.loads((run_dir / "config.json").read_text())["track"]
    adapted = adapters.load_checkpoint(
        run_dir / FINAL_MODEL, ensure_base_checkpoint(load_track(track)), "cpu"
    )
    ids = torch.tensor([[1, 10, 12, 40, 8, 41]])  # <bos> and a few characters
    with torch.no_grad():
        folded_logits = final(input_ids=ids).logits
        assert torch.allclose(folded_logits, adapted(input_ids=ids).logits, atol=1e-5)
        assert not torch.allclose(folded_logits, base(input_ids=ids).logits, atol=1e-3)


# ------------------------------------------------------------------------- lm-eval
@pytest.mark.slow
def test_eval_general_scores_base_and_final_and_overwrites_atomically(
    run_dir: Path, work: Path
) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval is the eval extra: pip install 'ctbench[eval]'")
    import lm_eval

    args = ["eval-general", str(run_dir), "--tasks", ",".join(TASKS)]
    args += ["--include-path", str(FIXTURES), "--batch-size", "4", "--device", "cpu"]
    proc = ctbench(*args, work=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == run_dir / "general_eval.json"
    first = json.loads(path.read_text())
    assert first["lm_eval_version"] == lm_eval.__version__
    assert first["limit"] is None and isinstance(first["seed"], int) and first["created"]
    # the tiny track is no chat track and its tokenizer has no template: auto is off
    assert first["protocol"] == {"num_fewshot": None, "chat_template": False}
    assert first["final_model"] == {"path": FINAL_MODEL, "kind": "adapters"}
    assert set(first["tasks"]) == set(TASKS)
    assert set(first["tasks"]["ctbench_fixture_choice"]["metrics"]) == {"acc", "acc_norm"}
    assert set(first["tasks"]["ctbench_fixture_gen"]["metrics"]) == {"exact_match"}
    for name in TASKS:
        info = first["tasks"][name]
        assert info["n"] == SIZES[name] == info["n_available"]
        assert len(info["config_hash"]) == 64 and len(info["docs_hash"]) == 64
        for model in ("base", "final"):
            assert set(first[model][name]) == set(info["metrics"])
            assert all(0.0 <= v <= 1.0 for v in first[model][name].values())
        for metric, base in first["base"][name].items():
            assert first["delta"][name][metric] == pytest.approx(
                first["final"][name][metric] - base
            )
    # the table names every task and metric; the path is the last line
    assert all(name in proc.stdout for name in TASKS) and "exact_match" in proc.stdout

    inode = path.stat().st_ino
    again = ctbench(*args, "--limit", "5", work=work)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(path.read_text())
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten
    assert [p.name for p in run_dir.glob(".general_eval.json*")] == []
    assert second["limit"] == 5 and second["created"] > first["created"]
    assert all(second["tasks"][name]["n"] == 5 for name in TASKS)
    for name in TASKS:  # same task config, fewer documents
        assert second["tasks"][name]["config_hash"] == first["tasks"][name]["config_hash"]
        assert second["tasks"][name]["docs_hash"] != first["tasks"][name]["docs_hash"]


@pytest.mark.slow
def test_a_run_whose_final_model_is_the_base_scores_it_once(run_dir: Path, work: Path) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval is the eval extra: pip install 'ctbench[eval]'")
    copy = work / "base-only"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(FINAL_MODEL, "general_eval*"))
    result = json.loads((copy / "result.json").read_text())
    (copy / "result.json").write_text(json.dumps({**result, "final_model": None}))
    proc = ctbench(
        "eval-general",
        str(copy),
        "--tasks",
        TASKS[0],
        "--include-path",
        str(FIXTURES),
        "--limit",
        "4",
        work=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "its final model is the base" in proc.stderr
    summary = json.loads((copy / "general_eval.json").read_text())
    assert summary["final_model"] is None and summary["final"] == summary["base"]
    assert set(summary["delta"][TASKS[0]].values()) == {0.0}


# ------------------------------------------------------------------------ protocol
def test_the_protocol_follows_the_track_and_the_tokenizer() -> None:
    from ctbench.errors import UserError
    from ctbench.runs.general_eval import Protocol, resolve_protocol

    chat = SimpleNamespace(chat_template="{{ messages }}")
    plain = SimpleNamespace(chat_template=None)
    assert resolve_protocol(None, "auto", track_chat=True, tokenizer=chat) == Protocol(None, True)
    assert resolve_protocol(3, "auto", track_chat=False, tokenizer=chat) == Protocol(3, False)
    assert resolve_protocol(None, "auto", track_chat=True, tokenizer=plain) == Protocol()
    assert resolve_protocol(0, "on", track_chat=False, tokenizer=chat) == Protocol(0, True)
    assert resolve_protocol(None, "off", track_chat=True, tokenizer=chat) == Protocol()
    with pytest.raises(UserError, match="--chat-template: the run's tokenizer has no chat"):
        resolve_protocol(None, "on", track_chat=True, tokenizer=plain)
    with pytest.raises(UserError, match="--chat-template: expected one of auto, on, off"):
        resolve_protocol(None, "yes", track_chat=True, tokenizer=chat)
    with pytest.raises(UserError, match="--num-fewshot: expected a number of few-shot"):
        resolve_protocol(-1, "auto", track_chat=True, tokenizer=chat)


@pytest.mark.slow
def test_a_chat_protocol_renders_requests_and_shots_as_turns(monkeypatch, tmp_path) -> None:
    """What lm-eval is asked under each protocol, read from its logged requests: the tiny
    model with a chat template of its own (markers it can spell), one task of each kind."""
    pytest.importorskip("lm_eval", reason="lm-eval is the eval extra: pip install 'ctbench[eval]'")
    import lm_eval

    from ctbench.runs.general_eval import Protocol, _score, task_manager
    from ctbench.tracks.track import load_track
    from ctbench.training.tiny_base import load_base

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.chdir(FIXTURES)  # the YAMLs name their data relatively
    model, tokenizer, _ = load_base(load_track("tiny"))
    tokenizer.chat_template = (
        "{% for m in messages %}({{ m['role'] }}){{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}(assistant){% endif %}"
    )
    manager = task_manager(TASKS, FIXTURES)

    def contexts(protocol: Protocol) -> tuple[dict[str, str], dict[str, int]]:
        out = _score(lm_eval, model, tokenizer, TASKS, manager, 2, 4, protocol)
        return {name: out["samples"][name][0]["arguments"][0][0] for name in TASKS}, out["n-shot"]

    plain, shots = contexts(Protocol())
    assert plain == {TASKS[0]: "51+2=", TASKS[1]: "73+0="} and set(shots.values()) == {0}
    chat, shots = contexts(Protocol(num_fewshot=1, chat_template=True))
    assert set(shots.values()) == {1}
    for name, question in ((TASKS[0], "51+2="), (TASKS[1], "73+0=")):
        # one example as a user turn and an assistant turn, then the question
        assert chat[name].count("(user)") == 2 and chat[name].count("(assistant)") == 2
        assert chat[name].startswith("(user)")
        assert chat[name].endswith(f"(user){question}(assistant)")


def test_bad_protocol_options_are_one_line_before_anything_loads(work: Path) -> None:
    missing = work / "never-made"
    args = ["eval-general", str(missing), "--num-fewshot", "-2"]
    message = one_line_error(ctbench_here(*args))
    assert "--num-fewshot: expected a number of few-shot examples >= 0, got -2" in message
    message = one_line_error(ctbench_here("eval-general", str(missing), "--chat-template", "maybe"))
    assert "--chat-template: expected one of auto, on, off, got 'maybe'" in message


# -------------------------------------------------------------------------- errors
def test_an_unfinished_run_folder_is_one_line(work: Path) -> None:
    unfinished = work / "unfinished"
    unfinished.mkdir(exist_ok=True)
    (unfinished / "config.json").write_text(json.dumps({"track": "tiny"}))
    message = one_line_error(ctbench_here("eval-general", str(unfinished)))
    assert f"{unfinished}: not a finished run folder (no result.json)" in message
    assert f"ctbench run --resume {unfinished}" in message
    assert not (unfinished / "general_eval.json").exists()


@pytest.mark.slow
def test_a_run_without_its_final_model_folder_is_one_line(run_dir: Path, work: Path) -> None:
    copy = work / "no-final"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(FINAL_MODEL, "general_eval*"))
    message = one_line_error(ctbench_here("eval-general", str(copy)))
    assert "names the final model final-model/ but it is missing" in message


@pytest.mark.slow
def test_unknown_and_unreachable_tasks_are_one_line(run_dir: Path, work: Path) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval is the eval extra: pip install 'ctbench[eval]'")
    output = run_dir / "general_eval.json"
    before = output.read_bytes() if output.exists() else None
    unknown = one_line_error(
        ctbench("eval-general", str(run_dir), "--tasks", "ctbench_fixture_chioce", work=work)
    )
    assert "--tasks: unknown lm-eval task 'ctbench_fixture_chioce'" in unknown
    assert "--include-path" in unknown
    # arc_easy is in lm-eval's registry; its dataset is on the Hub, which is unreachable here
    offline = one_line_error(
        ctbench("eval-general", str(run_dir), "--tasks", "arc_easy", work=work)
    )
    assert "the dataset of lm-eval task 'arc_easy'" in offline and "cannot be fetched" in offline
    assert "--include-path" in offline
    assert (output.read_bytes() if output.exists() else None) == before  # nothing written


@pytest.mark.slow
def test_local_data_missing_from_the_current_directory_is_one_line(
    run_dir: Path, work: Path, tmp_path: Path
) -> None:
    """The fixture YAMLs name their data relatively: run from elsewhere, and the message
    says where datasets looked and why."""
    pytest.importorskip("lm_eval", reason="lm-eval is the eval extra: pip install 'ctbench[eval]'")
    args = ["eval-general", str(run_dir), "--tasks", TASKS[1], "--include-path", str(FIXTURES)]
    message = one_line_error(ctbench(*args, work=work, cwd=tmp_path))
    assert f"lm-eval task {TASKS[1]!r} cannot read its local data" in message
    assert "resolved from the current directory" in message


def test_without_lm_eval_the_error_names_the_extra(tmp_path: Path) -> None:
    """lm-eval stays optional: ctbench imports it only here, and its absence is one line."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"final_model": None}))
    code = (
        "import sys; sys.modules['lm_eval'] = None; sys.argv = ['ctbench', 'eval-general', "
        f"{str(run)!r}]; from ctbench.cli import main; main()"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    message = one_line_error(proc)
    assert "pip install 'ctbench[eval]'" in message
