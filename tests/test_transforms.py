"""Row transforms (``ctbench.tracks.transforms``) on hand-made records in the real schemas of
GSM8K, ARC and MBPP; specs checked when the task file is parsed; the loader's errors, drop
counts and the hub path's ``revision`` (with ``datasets.load_dataset`` replaced, offline)."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from ctbench.common.yamlspec import Fields
from ctbench.errors import UserError
from ctbench.tracks.taskdata import load_task
from ctbench.tracks.taskspec import parse_task_spec
from ctbench.tracks.transforms import (
    DropRecord,
    TransformFailed,
    apply_transforms,
    assert_to_test,
    parse_transforms,
    read_path,
)

GSM8K_ANSWER = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 1,272"
)
ARC_LETTERS = {
    "id": "Mercury_7175875",
    "question": "An astronomer observes that a planet rotates faster after a meteorite impact. "
    "Which is the most likely effect of this increase in rotation?",
    "choices": {
        "text": [
            "Planetary density will decrease.",
            "Planetary years will become longer.",
            "Planetary days will become shorter.",
            "Planetary gravity will become stronger.",
        ],
        "label": ["A", "B", "C", "D"],
    },
    "answerKey": "C",
}
ARC_NUMBERS = {
    "id": "NYSEDREGENTS_2015_4_8",
    "question": "Which form of energy is needed to change water from a liquid to a gas?",
    "choices": {"text": ["chemical", "heat", "electrical", "mechanical"], "label": list("1234")},
    "answerKey": "2",
}


def transforms(**specs: Any):
    return parse_transforms(Fields(specs, path="t.yaml", prefix="source.transforms."))


# ------------------------------------------------------------------------------ paths
def test_field_paths_read_nested_keys_and_list_items() -> None:
    assert read_path(ARC_LETTERS, "choices.text")[2] == "Planetary days will become shorter."
    assert read_path(ARC_LETTERS, "choices.label.0") == "A"
    assert read_path({"test_list": ["assert f(1) == 2"]}, "test_list.0") == "assert f(1) == 2"
    assert read_path({"a.b": 1}, "a.b") == 1  # a key holding a dot is read whole first
    with pytest.raises(TransformFailed, match="no field 'txt' in choices"):
        read_path(ARC_LETTERS, "choices.txt")
    with pytest.raises(TransformFailed, match="list of 4; no item '7'"):
        read_path(ARC_LETTERS, "choices.text.7")
    with pytest.raises(TransformFailed, match="is a str"):
        read_path(ARC_LETTERS, "question.x")


# ------------------------------------------------------------------------------ GSM8K
def test_gsm8k_answer_after_the_marker_without_commas_and_the_solution_kept() -> None:
    record = {"question": "Natalia sold clips ...", "answer": GSM8K_ANSWER}
    out = apply_transforms(
        transforms(
            final={"from": "answer", "after": "####"},
            demonstration={"from": "answer", "replace": {"pattern": "<<[^>]*>>", "with": ""}},
        ),
        record,
    )
    assert out["final"] == "1272"
    assert out["answer"] == GSM8K_ANSWER  # the full solution stays available
    assert out["demonstration"].startswith("Natalia sold 48/2 = 24 clips in May.")
    assert out["demonstration"].endswith("#### 1,272")
    # Only thousands separators go: a list "3,4" and a decimal stay as written.
    after = transforms(x={"from": "a", "after": "####"})
    assert apply_transforms(after, {"a": "#### 12,345,678"})["x"] == "12345678"
    assert apply_transforms(after, {"a": "#### -1,000.50"})["x"] == "-1000.50"
    assert apply_transforms(after, {"a": "#### 3,4"})["x"] == "3,4"


def test_a_value_without_the_marker_fails_and_names_the_transform() -> None:
    with pytest.raises(TransformFailed, match="no '####'") as caught:
        apply_transforms(transforms(final={"from": "answer", "after": "####"}), {"answer": "72"})
    assert caught.value.transform is not None and caught.value.transform.target == "final"


# ------------------------------------------------------------------------------ ARC
@pytest.mark.parametrize(
    ("record", "text", "letter"),
    [
        (ARC_LETTERS, "Planetary days will become shorter.", "C"),
        (ARC_NUMBERS, "heat", "B"),
    ],
)
def test_arc_choices_become_options_and_the_answer_an_option_text(record, text, letter) -> None:
    out = apply_transforms(
        transforms(
            options={"from": "choices.text"},
            lettered={"from": "choices.text", "lettered": "{letter}. {text}"},
            answer={"from": "choices", "option_text": "answerKey"},
            answer_letter={"from": "choices", "option_letter": "answerKey"},
            demonstration={"from": "answer_letter", "format": "The answer is {value}."},
        ),
        record,
    )
    assert out["options"] == record["choices"]["text"]
    assert out["answer"] == text
    assert out["answer_letter"] == letter
    assert out["demonstration"] == f"The answer is {letter}."
    lines = out["lettered"].splitlines()
    assert [line[:3] for line in lines] == ["A. ", "B. ", "C. ", "D. "]  # 1-4 shown as A-D
    assert lines[ord(letter) - ord("A")] == f"{letter}. {text}"


def test_an_answer_key_that_is_no_label_fails() -> None:
    bad = {**ARC_NUMBERS, "answerKey": "E"}
    with pytest.raises(TransformFailed, match="'E' is not one of the labels"):
        apply_transforms(transforms(a={"from": "choices", "option_text": "answerKey"}), bad)
    with pytest.raises(TransformFailed, match="mapping of text and label"):
        apply_transforms(transforms(a={"from": "question", "option_text": "answerKey"}), bad)


# ------------------------------------------------------------------------------ MBPP
@pytest.mark.parametrize(
    ("source", "call", "expected"),
    [
        ('assert remove_Occ("hello","l") == "heo"', "remove_Occ('hello', 'l')", "heo"),
        ("assert 6 == find_Volume(10,8,6)//40", "find_Volume(10, 8, 6) // 40", 6),
        ("assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)", None, (4, 5)),
        ("assert heap_queue_largest( [25, 35, 22],2)==[35, 25]", None, [35, 25]),
        ("assert is_not_prime(2) == False", "is_not_prime(2)", False),
        ("assert f(-1) == -2.5, 'negative'", "f(-1)", -2.5),
        ("assert count({'a': 1}) == {'a': None}", None, {"a": None}),
        ("assert   uniq([1,1]) == {1}  ", None, {1}),
    ],
)
def test_an_assert_of_call_equals_literal_becomes_a_hidden_test(source, call, expected) -> None:
    test = assert_to_test(source)
    assert test is not None
    if call is not None:
        assert test["call"] == call
    assert ast.literal_eval(test["expected_literal"]) == expected
    assert type(ast.literal_eval(test["expected_literal"])) is type(expected)


@pytest.mark.parametrize(
    "source",
    [
        "assert math.isclose(volume_sphere(10), 4188.79, rel_tol=0.001)",
        "assert set(similar_elements((3, 4), (4, 5))) == set((4,))",
        "assert f(1) != 2",
        "assert f(1) is True",
        "assert f(1)",
        "assert not f(1)",
        "assert f(1) == 2 == g(1)",
        "assert 1 == 1",
        "assert f(1) == g(2)",
        "assert f(1) == [x for x in range(3)]",
        "assert f(1) == 2; assert f(2) == 3",
        "x = f(1)",
        "assert f(1 == 2",
    ],
)
def test_other_asserts_do_not_convert(source: str) -> None:
    assert assert_to_test(source) is None


def test_a_problem_whose_asserts_do_not_all_convert_is_dropped() -> None:
    tests = transforms(tests={"from": "test_list", "tests_from_asserts": True})
    ok = {"test_list": ['assert remove_Occ("hello","l") == "heo"', "assert f(2) == 4"]}
    assert apply_transforms(tests, ok)["tests"] == [
        {"call": "remove_Occ('hello', 'l')", "expected_literal": "'heo'"},
        {"call": "f(2)", "expected_literal": "4"},
    ]
    mixed = {"test_list": ["assert f(2) == 4", "assert math.isclose(f(1), 2.0)"]}
    with pytest.raises(DropRecord, match=r"math\.isclose"):
        apply_transforms(tests, mixed)
    with pytest.raises(DropRecord, match="no asserts"):
        apply_transforms(tests, {"test_list": []})
    with pytest.raises(TransformFailed, match="list of assert statements"):
        apply_transforms(tests, {"test_list": "assert f(2) == 4"})


def test_max_words_passes_short_text_and_drops_long() -> None:
    limit = transforms(reference={"from": "story", "max_words": 5})
    assert apply_transforms(limit, {"story": "one two three"})["reference"] == "one two three"
    with pytest.raises(DropRecord, match="6 words > 5"):
        apply_transforms(limit, {"story": "one two three four five six"})


def test_transforms_apply_in_order_each_reading_the_ones_above() -> None:
    chain = transforms(
        a={"from": "x", "replace": {"pattern": "b", "with": "c"}},
        b={"from": "a", "format": "<{value}>"},
    )
    assert apply_transforms(chain, {"x": "abc"}) == {"x": "abc", "a": "acc", "b": "<acc>"}


# ------------------------------------------------------------------------------ bad specs
def write_task(root: Path, source: str, name: str = "t") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nversion: 1\ndomain: structured\nsource:\n{source}"
        "prompt_template: '{question}'\nmax_new_tokens: 8\nreward: {kind: exact}\n"
        "eval: {size: 2}\n"
    )
    return path


@pytest.mark.parametrize(
    ("source", "key", "message"),
    [
        ("  transforms:\n    final: {after: '####'}\n", "source.transforms.final.from",
         "required key is missing"),
        ("  transforms:\n    final: {from: answer, after: ''}\n",
         "source.transforms.final.after", "non-empty string"),
        ("  transforms:\n    final: {from: answer, after: '#', replace: {pattern: x}}\n",
         "source.transforms.final.replace", "one operation per field"),
        ("  transforms:\n    final: {from: answer, aftr: '#'}\n",
         "source.transforms.final.aftr", "unknown key (allowed here: from and one of after"),
        ("  transforms:\n    d: {from: a, replace: {pattern: '(', with: ''}}\n",
         "source.transforms.d.replace", "not a valid regular expression"),
        ("  transforms:\n    d: {from: a, replace: {pattern: x, by: y}}\n",
         "source.transforms.d.replace", "unknown key 'by'"),
        ("  transforms:\n    d: {from: code, format: '```{code}```'}\n",
         "source.transforms.d.format", "only {value}"),
        ("  transforms:\n    d: {from: c, lettered: '{letter}) {txt}'}\n",
         "source.transforms.d.lettered", "got {txt}"),
        ("  transforms:\n    t: {from: test_list, tests_from_asserts: false}\n",
         "source.transforms.t.tests_from_asserts", "expected true"),
        ("  transforms:\n    r: {from: story, max_words: 0}\n",
         "source.transforms.r.max_words", "positive whole number"),
        ("  transforms:\n    r: {from: 'a..b'}\n", "source.transforms.r.from", "field path"),
        ("  transforms:\n    'my field': {from: a}\n", "source.transforms.my field",
         "expected a field name"),
        ("  transforms:\n    r: story\n", "source.transforms.r", "expected dict"),
        ("  transforms: [a, b]\n", "source.transforms", "expected dict"),
    ],
)  # fmt: skip
def test_a_bad_transform_spec_names_the_file_and_key(
    tmp_path: Path, source: str, key: str, message: str
) -> None:
    path = write_task(tmp_path, "  path: data.jsonl\n" + source)
    with pytest.raises(UserError) as caught:
        parse_task_spec(path)
    assert caught.value.where == f"{path}: {key}", caught.value.where
    assert message in caught.value.message, caught.value.message


@pytest.mark.parametrize(
    ("source", "key", "message"),
    [
        ("  path: d.jsonl\n  revision: abc\n", "source.revision", "only to a hub dataset"),
        ("  dataset: a/b\n  revision: ''\n", "source.revision", "empty string"),
        ("  generator: reversed_addition\n  transforms: {x: {from: a}}\n",
         "source.transforms", "not a generator"),
    ],
)  # fmt: skip
def test_revision_and_transforms_belong_to_datasets(
    tmp_path: Path, source: str, key: str, message: str
) -> None:
    path = write_task(tmp_path, source)
    with pytest.raises(UserError) as caught:
        parse_task_spec(path)
    assert caught.value.where == f"{path}: {key}"
    assert message in caught.value.message


def test_revision_and_transforms_enter_the_task_hash_only_when_set(tmp_path: Path) -> None:
    plain = parse_task_spec(write_task(tmp_path / "a", "  dataset: a/b\n"))
    pinned = parse_task_spec(write_task(tmp_path / "b", "  dataset: a/b\n  revision: abc\n"))
    other = parse_task_spec(write_task(tmp_path / "c", "  dataset: a/b\n  revision: abd\n"))
    moved = parse_task_spec(
        write_task(tmp_path / "d", "  dataset: a/b\n  transforms: {q: {from: a}}\n")
    )
    hashes = {t.content_hash() for t in (plain, pinned, other, moved)}
    assert len(hashes) == 4
    # Unset, the keys are left out of the hashed payload (as the chat keys are), so every
    # task written before they existed keeps its hash.
    payload = {k: v for k, v in asdict(plain).items() if k not in ("file", "chat", "system_prompt")}
    del payload["source"]["revision"], payload["source"]["transforms"]
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    assert plain.content_hash() == hashlib.sha256(blob).hexdigest()[:16]


# ------------------------------------------------------------------------------ loading
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GSM8K_SOURCE = "  path: gsm8k.jsonl\n  transforms:\n    final: {from: answer, after: '####'}\n"


def test_a_transform_that_fails_on_a_row_names_dataset_split_row_and_field(
    tmp_path: Path,
) -> None:
    write_jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {"question": "q0", "answer": "#### 1", "split": "train"},
            {"question": "q1", "answer": "no marker", "split": "train"},
            {"question": "q2", "answer": "#### 2", "split": "test"},
        ],
    )
    path = write_task(tmp_path, GSM8K_SOURCE)
    with pytest.raises(UserError) as caught:
        load_task(parse_task_spec(path))
    assert caught.value.where == f"{path}: source.transforms.final"
    message = caught.value.message
    for fragment in (str(tmp_path / "gsm8k.jsonl"), "split train", "row 1", "(from 'answer')"):
        assert fragment in message, message


def test_dropped_rows_are_counted_on_the_task_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"question": f"q{i}", "tests": [f"assert f({i}) == {i}"], "split": "train"}
        for i in range(3)
    ]
    rows[1]["tests"] = ["assert math.isclose(f(1), 1.0)"]
    rows.append({"question": "e", "tests": ["assert f(9) == 9"], "split": "test"})
    write_jsonl(tmp_path / "mbpp.jsonl", rows)
    source = (
        "  path: mbpp.jsonl\n  transforms:\n    hidden: {from: tests, tests_from_asserts: true}\n"
    )
    with caplog.at_level(logging.WARNING, logger="ctbench.tracks.taskdata"):
        task = load_task(parse_task_spec(write_task(tmp_path, source)))
    assert task.dropped == {"train": 1}
    assert [i.fields["question"] for i in task.train] == ["q0", "q2"]
    assert [i.prompt for i in task.eval] == ["e"]
    assert "t: dropped 1 of 3 rows" in caplog.text and "math.isclose" in caplog.text


def test_a_split_that_loses_every_row_says_so(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "w.jsonl",
        [{"question": "q", "story": "a b c d", "split": s} for s in ("train", "test")],
    )
    source = "  path: w.jsonl\n  transforms:\n    r: {from: story, max_words: 2}\n"
    with pytest.raises(UserError, match=r"every row of .* split train was dropped"):
        load_task(parse_task_spec(write_task(tmp_path, source)))


class FakeDatasets:
    """``datasets.load_dataset`` for a hub name, answering from memory (offline)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.error = error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        train = [{"question": "q", "answer": "x\n#### 1,024"}]
        return [train, [{"question": "e", "answer": "#### 7"}]]


HUB_SOURCE = (
    "  dataset: openai/gsm8k\n  subset: main\n  revision: cc7b047b\n"
    "  transforms:\n    final: {from: answer, after: '####'}\n"
)


def test_the_revision_reaches_load_dataset_with_both_splits_in_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    fake = FakeDatasets()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    spec = parse_task_spec(write_task(tmp_path, HUB_SOURCE + "answer_field: final\n"))
    task = load_task(spec)
    assert fake.calls == [
        (("openai/gsm8k", "main"), {"split": ["train", "test"], "revision": "cc7b047b"})
    ]
    assert task.train[0].answer == "1024" and task.eval[0].answer == "7"


def test_an_unreachable_hub_is_one_line_naming_the_dataset_and_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    error = ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", FakeDatasets(error))
    path = write_task(tmp_path, HUB_SOURCE)
    with pytest.raises(UserError) as caught:
        load_task(parse_task_spec(path))
    assert caught.value.where == f"{path}: source.dataset"
    message = caught.value.message
    assert "\n" not in message
    assert "dataset 'openai/gsm8k' (subset main, revision cc7b047b)" in message
    assert "import datasets; datasets.load_dataset('openai/gsm8k', 'main', " in message
    assert "revision='cc7b047b')" in message
    # Any other failure is one line too, without the command.
    monkeypatch.setattr(datasets, "load_dataset", FakeDatasets(ValueError("Bad split: tst\nx")))
    with pytest.raises(UserError, match=r"cannot load dataset 'openai/gsm8k' .*Bad split: tst$"):
        load_task(parse_task_spec(path))
