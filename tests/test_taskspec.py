"""Task and track YAML: the shipped files load; every bad input names its file and key."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from ctbench.errors import UserError
from ctbench.tracks.taskdata import load_task
from ctbench.tracks.taskspec import find_task_spec, parse_task_spec
from ctbench.tracks.track import parse_track_spec

GOOD = """\
name: toy
version: 1
domain: structured
source:
  generator: reversed_addition
  params: {data_seed: 1}
prompt_template: "{a}+{b}="
max_new_tokens: 4
reward:
  kind: exact
eval:
  size: 50
"""


def write(folder: Path, text: str, name: str = "toy.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_tiny_track_loads_with_four_domains(tiny_track):
    assert list(tiny_track.tasks) == ["math", "code", "qa", "creative"]
    domains = {n: t.spec.domain for n, t in tiny_track.tasks.items()}
    assert domains == {
        "math": "structured",
        "code": "structured",
        "qa": "structured",
        "creative": "open",
    }
    for task in tiny_track.tasks.values():
        assert len(task.eval) == task.spec.eval.size
        assert all(item.demonstration for item in task.train), task.name
        # train and eval prompts never overlap (no leakage into the eval set)
        assert not {i.prompt for i in task.eval} & {i.prompt for i in task.train}, task.name


def test_generated_items_are_reproducible(tiny_track):
    again = load_task(tiny_track.tasks["qa"].spec)
    assert [i.prompt for i in again.eval] == [i.prompt for i in tiny_track.tasks["qa"].eval]


def test_track_hash_changes_with_task_content(tiny_track, tmp_path, monkeypatch):
    import shutil

    from ctbench.tracks.resources import data_root
    from ctbench.tracks.track import load_track

    shutil.copytree(data_root() / "tasks", tmp_path / "tasks")
    math_file = tmp_path / "tasks" / "math.yaml"
    math_file.write_text(math_file.read_text().replace("size: 200", "size: 100"))
    monkeypatch.setenv("CTBENCH_HOME", str(tmp_path))
    assert load_track("tiny").content_hash() != tiny_track.content_hash()


def test_good_spec_parses(task_dir):
    spec = parse_task_spec(write(task_dir, GOOD))
    assert spec.name == "toy" and spec.reward.kind == "exact" and spec.eval.size == 50


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("kind: exact", "kind: exakt"), "reward.kind: expected one of"),
        (("size: 50", "size: -3"), "eval.size: expected a positive number"),
        (("size: 50", "size: many"), "eval.size: expected int"),
        (("domain: structured", "domain: wild"), "domain: expected one of structured, open"),
        (("version: 1", "version: 1\ncolour: blue"), "colour: unknown key"),
        (("  size: 50", "  size: 50\n  sizee: 3"), "eval.sizee: unknown key"),
        (("max_new_tokens: 4\n", ""), "max_new_tokens: required key is missing"),
        (('"{a}+{b}="', '"no placeholders"'), "prompt_template: expected at least one {field}"),
        (
            ("  generator: reversed_addition", "  generator: reversed_addition\n  path: x.jsonl"),
            "source: expected exactly one of generator, dataset or path",
        ),
    ],
)
def test_bad_spec_names_file_and_key(task_dir, change, expected):
    path = write(task_dir, GOOD.replace(*change))
    with pytest.raises(UserError) as info:
        parse_task_spec(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_malformed_yaml_reports_line(task_dir):
    path = write(task_dir, "name: toy\nversion: [1\n")
    with pytest.raises(UserError, match=r"malformed YAML \(line \d+\)"):
        parse_task_spec(path)


def test_unknown_generator_and_template_field(task_dir):
    with pytest.raises(UserError, match="unknown generator 'nope'"):
        load_task(parse_task_spec(write(task_dir, GOOD.replace("reversed_addition", "nope"))))
    with pytest.raises(UserError, match=r"uses \{c\} but the items have no such field"):
        load_task(parse_task_spec(write(task_dir, GOOD.replace("{a}+{b}=", "{a}+{c}="))))


def test_unknown_task_name_lists_known_ones():
    with pytest.raises(UserError, match=r"unknown task 'nope'; known tasks: .*math"):
        find_task_spec("nope")


def test_local_jsonl_dataset_with_column_mapping(task_dir):
    """The Hugging Face `datasets` loading path, on a local file (these machines are offline)."""
    rows = [
        {"q": f"{i}*2=", "a": str(2 * i), "split": "train" if i >= 4 else "test"} for i in range(12)
    ]
    (task_dir / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = parse_task_spec(
        write(
            task_dir,
            """\
            name: doubling
            version: 1
            domain: structured
            source:
              path: data.jsonl
              columns: {question: q, answer: a, demonstration: a}
            prompt_template: "{question}"
            max_new_tokens: 4
            reward: {kind: numeric}
            eval: {size: 4}
            """,
        )
    )
    task = load_task(spec)
    assert [i.prompt for i in task.eval] == ["0*2=", "1*2=", "2*2=", "3*2="]
    assert len(task.train) == 8 and task.train[0].answer == "8"


def test_local_parquet_dataset_missing_column(task_dir):
    import datasets

    datasets.Dataset.from_list([{"q": "1+1=", "a": "2"}] * 6).to_parquet(
        str(task_dir / "d.parquet")
    )
    spec = parse_task_spec(
        write(
            task_dir,
            """\
            name: p
            version: 1
            domain: structured
            source: {path: d.parquet, columns: {question: question_text}}
            prompt_template: "{question}"
            max_new_tokens: 4
            reward: {kind: exact}
            eval: {size: 2}
            """,
        )
    )
    with pytest.raises(UserError, match="names a column the data lacks"):
        load_task(spec)


def test_track_rejects_unknown_rl_key(tmp_path):
    from ctbench.tracks.resources import tracks_dir

    text = (tracks_dir() / "tiny.yaml").read_text().replace("  group_size: 8", "  group_sise: 8")
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"rl\.group_sise: unknown key"):
        parse_track_spec(path)
