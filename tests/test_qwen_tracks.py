"""The Qwen2.5 GPU tracks without a GPU, a model or the hub.

The shipped task files run on small local files written in the exact schemas of their
datasets (GSM8K main, MBPP sanitized, ARC-Challenge, WritingPrompts): the test copies each
task YAML with ``source.dataset`` swapped for ``source.path`` (the ``json`` / ``parquet``
builders of ``datasets``, as any local task file), so the real transforms, rendering and
rewards run; MBPP's hidden tests run in the sandbox, the creative judge against a fake
OpenAI-compatible server. Both track files parse without loading a model, and offline the
CLI stops with one line naming what is missing and the command that gets it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runner import one_line, run_cli

from ctbench.scoring.rewards import ExtractedAnswer, build_reward, chance_level
from ctbench.scoring.sandbox import fence_facts, sandbox_level
from ctbench.tracks.resources import data_root
from ctbench.tracks.taskdata import Task, load_task
from ctbench.tracks.taskspec import parse_task_spec
from ctbench.tracks.track import find_track_spec, track_task_specs

REPO_TASKS = data_root() / "tasks"
TRACKS = ("qwen2.5-0.5b", "qwen2.5-1.5b")
TASKS = ("qwen-gsm8k", "qwen-mbpp", "qwen-arc", "qwen-creative")

# ------------------------------------------------------------------- rows in real schemas
GSM8K_ROWS = [  # openai/gsm8k, config main: question, answer ("... #### N")
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half "
        "as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
        "<<48+24=72>>72 clips altogether in April and May.\n#### 72",
        "split": "train",
    },
    {
        "question": "A shop sold 1,200 pens on Monday and 850 pens on Tuesday. How many pens "
        "did it sell on the two days?",
        "answer": "It sold 1,200 + 850 = <<1200+850=2050>>2,050 pens.\n#### 2,050",
        "split": "test",
    },
]

MBPP_ROWS = [  # google-research-datasets/mbpp, config sanitized
    {
        "source_file": "Benchmark Questions Verification V2.ipynb",
        "task_id": 11,
        "prompt": "Write a python function to remove first and last occurrence of a given "
        "character from the string.",
        "code": "def remove_Occ(s,ch): \n    first = s.find(ch)\n    if first != -1:\n"
        "        s = s[:first] + s[first + 1:]\n    last = s.rfind(ch)\n    if last != -1:\n"
        "        s = s[:last] + s[last + 1:]\n    return s ",
        "test_imports": [],
        "test_list": [
            'assert remove_Occ("hello","l") == "heo"',
            'assert remove_Occ("abcda","a") == "bcd"',
            'assert remove_Occ("PHP","P") == "H"',
        ],
        "split": "test",
    },
    {
        "source_file": "Benchmark Questions Verification V2.ipynb",
        "task_id": 82,
        "prompt": "Write a function to find the volume of a sphere.",
        "code": "import math\ndef volume_sphere(r):\n  volume=(4/3)*math.pi*r*r*r\n  return volume",
        "test_imports": ["import math"],
        "test_list": [
            "assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)",
            "assert math.isclose(volume_sphere(25), 65449.84694978735, rel_tol=0.001)",
        ],
        "split": "train",
    },
    {
        "source_file": "Benchmark Questions Verification V2.ipynb",
        "task_id": 2,
        "prompt": "Write a function to find the shared elements from the given two lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & "
        "set(test_tup2))\n  return (res) ",
        "test_imports": [],
        "test_list": [
            "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
        ],
        "split": "train",
    },
    {
        "source_file": "Benchmark Questions Verification V2.ipynb",
        "task_id": 17,
        "prompt": "Write a function that returns the perimeter of a square given its side "
        "length as input.",
        "code": "def square_perimeter(a):\n  perimeter=4*a\n  return perimeter",
        "test_imports": [],
        "test_list": [
            "assert square_perimeter(10)==40",
            "assert 20 == square_perimeter(5)",
            "assert square_perimeter(4)==16",
        ],
        "split": "train",
    },
]

ARC_ROWS = [  # allenai/ai2_arc, config ARC-Challenge (a parquet struct column `choices`)
    {
        "id": "Mercury_SC_415702",
        "question": "George wants to warm his hands quickly by rubbing them. Which skin "
        "surface will produce the most heat?",
        "choices": {
            "text": [
                "dry palms",
                "wet palms",
                "palms covered with oil",
                "palms covered with lotion",
            ],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "A",
        "split": "test",
    },
    {
        "id": "NYSEDREGENTS_2015_4_8",
        "question": "Which form of energy is needed to change water from a liquid to a gas?",
        "choices": {
            "text": ["chemical", "heat", "electrical", "mechanical"],
            "label": ["1", "2", "3", "4"],
        },
        "answerKey": "2",
        "split": "test",
    },
    {
        "id": "Mercury_7175875",
        "question": "Which is the most likely effect of a faster planetary rotation?",
        "choices": {
            "text": ["Days will become shorter.", "Years will become longer.", "Density drops."],
            "label": ["A", "B", "C"],
        },
        "answerKey": "A",
        "split": "train",
    },
]

SHORT_STORY = (
    "The card was white, with one line of silver print. <newline> <newline> I kept it for "
    "two hundred years before I called . He answered on the first ring."
)
WRITING_ROWS = [  # euclaise/writingprompts: prompt, story (NLTK-spaced prompts)
    {
        "prompt": "[ WP ] You 've finally discovered the secret to immortality . Suddenly , "
        "Death appears and says , `` When you realize living forever sucks , call me . ''",
        "story": SHORT_STORY,
        "split": "test",
    },
    {
        "prompt": "[ WP ] [ EU ] The moon is n't what you thought .",
        "story": " ".join(["word"] * 301),
        "split": "test",
    },
    {"prompt": "[ WP ] A door opens .", "story": "It opened. Nobody came.", "split": "train"},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def local_copy(name: str, root: Path, data: Path, edit=None) -> Path:
    """``root/tasks/<name>.yaml``: the shipped task with its hub dataset swapped for a local
    file (one file, a ``split`` column holding train/test); nothing else changed."""
    raw = yaml.safe_load((REPO_TASKS / f"{name}.yaml").read_text())
    source = raw["source"]
    for key in ("dataset", "subset", "revision", "train_split", "eval_split"):
        source.pop(key, None)
    source["path"] = str(data)
    if edit is not None:
        edit(raw)
    folder = root / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def local_data(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {
        "qwen-gsm8k": write_jsonl(root / "gsm8k.jsonl", GSM8K_ROWS),
        "qwen-mbpp": write_jsonl(root / "mbpp.jsonl", MBPP_ROWS),
        "qwen-arc": write_parquet(root / "arc.parquet", ARC_ROWS),
        "qwen-creative": write_jsonl(root / "writingprompts.jsonl", WRITING_ROWS),
    }


def local_task(name: str, tmp_path: Path, edit=None) -> Task:
    data = local_data(tmp_path / "data")
    return load_task(parse_task_spec(local_copy(name, tmp_path, data[name], edit)))


# ------------------------------------------------------------------------------ GSM8K
def test_gsm8k_answer_is_scored_by_the_numeric_reward(tmp_path: Path) -> None:
    task = local_task("qwen-gsm8k", tmp_path)
    (train,), (test,) = task.train, task.eval
    assert (train.answer, test.answer) == ("72", "2050")
    assert test.prompt.startswith("A shop sold 1,200 pens")
    assert test.prompt.endswith("give the final answer as a number on the last line.")
    assert train.demonstration is not None and "<<" not in train.demonstration
    assert train.demonstration.endswith("#### 72")
    reward = build_reward(task)
    assert isinstance(reward, ExtractedAnswer) and reward.rule == "last_number"
    groups = [
        [
            "Monday 1,200 and Tuesday 850: 1,200 + 850 = 2,050.\nThe answer is 2,050.",
            "1,200 + 850 = 2,000 pens in all.",
            "They sold a lot of pens.",
        ]
    ]
    assert reward.score_groups([test], groups, training=False) == [[1.0, 0.0, 0.0]]
    # The expert rows earn full marks from the task's own reward.
    assert reward.score_groups([train], [[train.demonstration]], training=False) == [[1.0]]


# ------------------------------------------------------------------------------ MBPP
def test_mbpp_asserts_become_hidden_tests_and_unconvertible_problems_are_dropped(
    tmp_path: Path,
) -> None:
    task = local_task("qwen-mbpp", tmp_path)
    assert task.dropped == {"train": 2}  # math.isclose and set(...) == set(...)
    assert [i.fields["task_id"] for i in task.train] == [17]
    (item,) = task.eval
    assert item.fields["tests"][0] == {
        "call": "remove_Occ('hello', 'l')",
        "expected_literal": "'heo'",
    }
    assert task.train[0].fields["tests"][1] == {
        "call": "square_perimeter(5)",
        "expected_literal": "20",
    }
    assert 'Your code should pass this test:\n\nassert remove_Occ("hello","l") == "heo"' in (
        item.prompt
    )
    assert item.demonstration is not None and item.demonstration.startswith("```python\n")


def test_mbpp_hidden_tests_run_in_the_sandbox(tmp_path: Path) -> None:
    if sandbox_level() != "bwrap":
        pytest.skip(f"no kernel fence on this machine: {fence_facts()['reason']}")
    task = local_task("qwen-mbpp", tmp_path)
    reward = build_reward(task)
    assert isinstance(reward, ExtractedAnswer) and reward.rule == "function_block"
    right = (
        "Here it is:\n```python\ndef remove_Occ(s, ch):\n    i = s.find(ch)\n"
        "    if i >= 0:\n        s = s[:i] + s[i + 1:]\n    j = s.rfind(ch)\n"
        "    if j >= 0:\n        s = s[:j] + s[j + 1:]\n    return s\n```\n"
        "Example usage:\n```python\nprint(remove_Occ('hello', 'l'))\n```"
    )
    wrong = "```python\ndef remove_Occ(s, ch):\n    return s[1:-1]\n```"
    items = [*task.eval, *task.train]
    scores = reward.score_groups(
        items, [[right, wrong, "no code"], [task.train[0].demonstration or ""]], training=False
    )
    assert scores == [[1.0, 0.0, 0.0], [1.0]]
    assert reward.answers(items[:1], [["no code"]]) == [[None]]  # a format failure


# ------------------------------------------------------------------------------ ARC
def test_arc_choice_reward_on_letter_and_numeric_labels(tmp_path: Path) -> None:
    task = local_task("qwen-arc", tmp_path)
    first, numeric = task.eval
    assert first.answer == "dry palms" and numeric.answer == "heat"
    assert "\n\nA. chemical\nB. heat\nC. electrical\nD. mechanical\n\n" in numeric.prompt
    assert first.fields["options"] == ARC_ROWS[0]["choices"]["text"]
    reward = build_reward(task)
    assert isinstance(reward, ExtractedAnswer) and reward.rule == "choice"
    scores = reward.score_groups(
        [first, numeric],
        [
            ["Rubbing dry skin makes the most friction. The answer is A.", "The answer is B."],
            ["Boiling needs heat. The answer is B", "The answer is 2."],
        ],
        training=False,
    )
    assert scores == [[1.0, 0.0], [1.0, 0.0]]
    assert chance_level(task) == pytest.approx(0.25)
    (train,) = task.train  # three options: the expert row names the answer's letter
    assert train.demonstration == "The answer is A."
    assert reward.score_groups([train], [[train.demonstration]], training=False) == [[1.0]]


# ------------------------------------------------------------------------------ creative
def prefers_the_lighthouse(body: Any) -> str:
    """A judge that prefers the story mentioning a lighthouse (A or B, by its position)."""
    text = body["messages"][-1]["content"]
    story_a, story_b = re.search(r"\[Story A\]\n(.*)\n\n\[Story B\]\n(.*)\n\n", text, re.S).groups()
    if ("lighthouse" in story_a) == ("lighthouse" in story_b):
        return "[[C]]"
    return "[[A]]" if "lighthouse" in story_a else "[[B]]"


def test_creative_prompts_references_and_the_pairwise_judge(tmp_path: Path, judge_server) -> None:
    judge_server.default = prefers_the_lighthouse

    def point_at_the_fake_server(raw: dict[str, Any]) -> None:
        raw["reward"]["judge"]["backend"]["endpoint"]["base_url"] = judge_server.base_url

    task = local_task("qwen-creative", tmp_path, point_at_the_fake_server)
    assert task.dropped == {"eval": 1}  # the 301-word story
    (item,) = task.eval
    assert item.prompt == (
        "Write a short story of at most 300 words for this writing prompt:\n"
        "You've finally discovered the secret to immortality. Suddenly, Death appears and "
        'says, "When you realize living forever sucks, call me."'
    )
    reference = item.fields["reference"]
    assert reference.startswith("The card was white, with one line of silver print.\n\nI kept")
    assert item.demonstration == reference
    reward = build_reward(task)
    long = " ".join(["lighthouse"] * 301)
    scores = reward.score_groups(
        [item], [["The lighthouse keeper found the card.", "A short story.", long]], training=True
    )
    assert scores == [[1.0, 0.5, 0.0]]
    assert len(judge_server.chat_requests()) == 4  # two orders each; the long one gated


# ------------------------------------------------------------------------------ tracks
@pytest.mark.parametrize(("track", "size"), [("qwen2.5-0.5b", "0.5B"), ("qwen2.5-1.5b", "1.5B")])
def test_track_files_parse_without_a_model(track: str, size: str) -> None:
    spec = find_track_spec(track)
    assert spec.model.source is not None
    assert spec.model.source.name == f"Qwen/Qwen2.5-{size}-Instruct"  # type: ignore[union-attr]
    assert spec.model.lora is not None and (spec.model.lora.r, spec.model.lora.alpha) == (16, 32)
    assert len(spec.model.lora.target_modules) == 7
    assert spec.memory.precision == "bf16" and spec.chat
    assert spec.task_names == TASKS
    assert (spec.rl.prompts_per_step, spec.rl.group_size, spec.rl.beta) == (32, 8, 0.0)
    specs = track_task_specs(spec)  # every task file parses; no data is read
    assert list(specs) == list(TASKS)
    assert all(s.source.revision for s in specs.values())  # every dataset pinned


def ctb(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``ctbench ARGS`` in this process: (exit code, stderr as one line)."""
    code, _, err = run_cli(capsys, *args)
    return code, one_line(err)


@pytest.fixture()
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub switched off (as ``HF_HUB_OFFLINE=1`` does) and empty caches, so nothing is
    found and nothing waits for a network that is not there."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")


def test_offline_the_track_stops_at_its_first_dataset_with_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], offline_hub: None
) -> None:
    out = tmp_path / "out"
    code, err = ctb(capsys, "run", "--track", TRACKS[0], "--device", "cpu", "--out", str(out))
    assert code == 2 and "Traceback" not in err, err
    assert "qwen-gsm8k.yaml: source.dataset: dataset 'openai/gsm8k' (subset main, revision" in err
    assert "datasets.load_dataset('openai/gsm8k', 'main', revision='cc7b047b6e5b" in err
    assert not out.exists() or not any(out.iterdir())


def test_offline_with_the_data_at_hand_the_track_names_the_model_and_the_command(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    offline_hub: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shipped track with its datasets replaced by local files (and fp32, since this
    machine has no GPU): what is left missing is the model."""
    if sandbox_level() != "bwrap":  # the code reward would refuse first
        monkeypatch.setenv("CTBENCH_ALLOW_UNSAFE_CODE", "1")
    root = tmp_path / "mine"
    data = local_data(tmp_path / "data")
    for name in TASKS:
        local_copy(name, root, data[name])
    (root / "tasks" / "tracks").mkdir()
    track = root / "tasks" / "tracks" / "q.yaml"
    text = (data_root() / "tasks" / "tracks" / f"{TRACKS[0]}.yaml").read_text()
    track.write_text(text.replace("precision: bf16", "precision: fp32"))
    out = tmp_path / "out"
    code, err = ctb(capsys, "run", "--track", str(track), "--device", "cpu", "--out", str(out))
    assert code == 2 and "Traceback" not in err, err
    assert "model 'Qwen/Qwen2.5-0.5B-Instruct' is neither a local folder nor in the" in err
    assert "get it with: hf download Qwen/Qwen2.5-0.5B-Instruct" in err
    assert not out.exists() or not any(out.iterdir())
