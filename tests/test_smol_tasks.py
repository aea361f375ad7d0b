"""The smol track's four natural-language tasks, without a model: the generators are seeded
and hold their eval prompts out, every expert demonstration earns full marks from the
task's own reward (code through the real sandbox), the facts table is well formed, the
rubric's loose matching accepts what a real model writes while its default stays exact,
and a code task may declare hidden tests (``mode: tests``)."""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from ctbench.errors import UserError
from ctbench.scoring.judges import LineRules, RubricJudge
from ctbench.scoring.rewards import ExtractedAnswer, build_reward
from ctbench.scoring.sandbox import fence_facts, sandbox_level
from ctbench.tracks.answers import last_number
from ctbench.tracks.generators import GENERATORS
from ctbench.tracks.smol_generators import (
    FACT_QUESTIONS,
    FUNCTION_FAMILIES,
    MATH_TEMPLATES,
    load_facts,
)
from ctbench.tracks.taskdata import Item, Task, load_task
from ctbench.tracks.taskspec import find_task_spec, parse_task_spec

SMOL_TASKS = {
    "smol-math": "smol_word_math",
    "smol-code": "smol_functions",
    "smol-qa": "smol_facts",
    "smol-creative": "smol_sentences",
}


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return {name: load_task(find_task_spec(name)) for name in SMOL_TASKS}


def item(fields: dict, answer: str | None = None) -> Item:
    return Item(task="t", index=0, prompt="p", answer=answer, demonstration=None, fields=fields)


# ------------------------------------------------------------------- every task alike
@pytest.mark.parametrize(("name", "generator"), SMOL_TASKS.items())
def test_task_files_load_with_their_generator(tasks, name: str, generator: str) -> None:
    spec = tasks[name].spec
    assert spec.name == name and spec.chat is True
    assert spec.source.generator == generator
    assert len(tasks[name].eval) == spec.eval.size
    # smol-code keeps the ten families the base model solves only sometimes; their prompt
    # space (names x parameter names, letters for count_letter) holds ~250 distinct prompts.
    assert len(tasks[name].train) >= (150 if name == "smol-code" else 500)


@pytest.mark.parametrize("generator", SMOL_TASKS.values())
def test_generators_are_seeded(generator: str) -> None:
    make = GENERATORS[generator]
    assert make(data_seed=5, eval_size=16) == make(data_seed=5, eval_size=16)
    assert make(data_seed=5, eval_size=16) != make(data_seed=6, eval_size=16)


@pytest.mark.parametrize("name", SMOL_TASKS)
def test_eval_prompts_are_held_out(tasks, name: str) -> None:
    train = {i.prompt for i in tasks[name].train}
    evaluation = [i.prompt for i in tasks[name].eval]
    assert len(set(evaluation)) == len(evaluation)
    assert not train & set(evaluation)


@pytest.mark.parametrize("name", ["smol-math", "smol-code", "smol-qa"])
def test_structured_prompts_are_unique(tasks, name: str) -> None:
    prompts = [i.prompt for i in tasks[name].train]
    assert len(set(prompts)) == len(prompts)


# ------------------------------------------------------------------------------ math
def test_math_demonstrations_end_in_their_answer(tasks) -> None:
    task = tasks["smol-math"]
    reward = build_reward(task)
    items = [*task.train, *task.eval]
    for it in items:
        assert last_number(it.demonstration or "") == it.answer, it.prompt
        assert int(it.answer or "0") > 0
        assert it.demonstration and it.demonstration.endswith(f"The answer is {it.answer}.")
    scores = reward.score_groups(items, [[i.demonstration or ""] for i in items], training=False)
    assert all(row == [1.0] for row in scores)
    # The track's calibration: one addition or subtraction.
    ops = collections.Counter(i.fields["ops"] for i in items)
    assert {len(k) for k in ops} == {1}
    assert {op for key in ops for op in key} == {"+", "-"}
    # The generator's defaults: both step counts and every operation, each demonstration
    # ending in its answer.
    train, evaluation = GENERATORS["smol_word_math"](data_seed=7, eval_size=16)
    records = [*train, *evaluation]
    assert {len(r["ops"]) for r in records} == {1, 2}
    assert {op for r in records for op in r["ops"]} == {"+", "-", "*", "/"}
    assert all(last_number(r["demonstration"]) == r["answer"] for r in records)


def test_math_demonstration_arithmetic_is_right(tasks) -> None:
    """Each line ``a op b = v.`` of a demonstration is true, and the question states a and b."""
    symbols = {"+": int.__add__, "-": int.__sub__, "×": int.__mul__, "÷": int.__floordiv__}
    for it in tasks["smol-math"].train[:400]:
        for a, op, b, value in re.findall(r"(\d+) ([-+×÷]) (\d+) = (\d+)\.", it.demonstration):
            assert symbols[op](int(a), int(b)) == int(value), it.demonstration
            if op == "÷":
                assert int(a) % int(b) == 0
        assert len(re.findall(r"=", it.demonstration or "")) == len(it.fields["ops"])


def test_math_knobs_restrict_the_problems() -> None:
    train, evaluation = GENERATORS["smol_word_math"](
        data_seed=1, eval_size=10, n_items=200, ops=["+"], steps=[1], max_operand=9
    )
    for record in [*train, *evaluation]:
        assert record["ops"] == "+"
        assert 2 <= int(record["answer"]) <= 18
    with pytest.raises(ValueError, match="no word-problem template"):
        GENERATORS["smol_word_math"](data_seed=1, eval_size=10, ops=["/"], steps={2: 1.0})
    assert all(len(k) in (1, 2) for k in MATH_TEMPLATES)


# ------------------------------------------------------------------------------ code
def test_code_demonstrations_pass_their_hidden_tests_in_the_sandbox(tasks) -> None:
    if sandbox_level() != "bwrap":
        pytest.skip(f"no kernel fence on this machine: {fence_facts()['reason']}")
    task = tasks["smol-code"]
    reward = build_reward(task)
    assert isinstance(reward, ExtractedAnswer) and reward.rule == "function_block"
    items = [*task.eval, *task.train]
    groups = [[i.demonstration or ""] for i in items]
    scores = reward.score_groups(items, groups, training=False)
    failed = [i.demonstration for i, row in zip(items, scores, strict=True) if row != [1.0]]
    assert failed == []
    # A wrong function fails: the tests tell functions apart.
    wrong = [["```python\ndef f(*args):\n    return 0\n```"] for _ in items[:64]]
    assert sum(r[0] for r in reward.score_groups(items[:64], wrong, training=False)) == 0.0


def test_code_items_cover_every_family_with_three_tests(tasks) -> None:
    task = tasks["smol-code"]
    items = [*task.train, *task.eval]
    assert {i.fields["family"] for i in items} == set(task.spec.source.params["families"])
    train, evaluation = GENERATORS["smol_functions"](data_seed=7, eval_size=16)
    assert {r["family"] for r in [*train, *evaluation]} == set(FUNCTION_FAMILIES)
    literal = [t for r in [*train, *evaluation] for t in r["tests"] if "expected_literal" in t]
    assert literal and all(t["expected_literal"].startswith("(") for t in literal)
    for it in items:
        tests = it.fields["tests"]
        assert len(tests) == 3 and len({t["call"] for t in tests}) == 3
        assert all(("expected" in t) != ("expected_literal" in t) for t in tests)
        assert it.prompt.startswith("Write a Python function `")
        assert it.demonstration and it.demonstration.startswith("```python\ndef ")


def test_code_families_knob() -> None:
    train, evaluation = GENERATORS["smol_functions"](
        data_seed=3, eval_size=5, families=["add_constant"], max_constant=5
    )
    # 5 constants x 3 names x 4 parameter names: the whole space, no more.
    assert len(train) + len(evaluation) == 60
    assert {r["family"] for r in train} == {"add_constant"}
    with pytest.raises(ValueError, match="unknown"):
        GENERATORS["smol_functions"](data_seed=3, eval_size=5, families=["sort_list"])


# ------------------------------------------------------------------------------ facts
def test_facts_table_is_well_formed() -> None:
    facts = load_facts()
    assert len(facts) >= 150
    assert len({(f.relation, f.subject) for f in facts}) == len(facts)
    assert {f.relation for f in facts} == set(FACT_QUESTIONS)
    assert all(f.subject and f.answer and f.answer == f.answer.strip() for f in facts)
    # No single-letter answers: an option "C" could not be told from the letter C.
    assert all(len(f.answer) > 1 or f.answer.isdigit() for f in facts)


def test_qa_demonstrations_choose_the_answer_among_same_relation_options(tasks) -> None:
    task = tasks["smol-qa"]
    reward = build_reward(task)
    assert isinstance(reward, ExtractedAnswer)
    values: dict[str, set[str]] = collections.defaultdict(set)
    for fact in load_facts():
        values[fact.relation].add(fact.answer)
    items = [*task.train, *task.eval]
    for it in items:
        options = it.fields["options"]
        assert len(options) == 4 and len({o.lower() for o in options}) == 4
        assert options.count(it.answer) == 1
        assert set(options) <= values[it.fields["relation"]]
        assert reward.answer(it, it.demonstration or "") == it.answer
        letter = "ABCD"[options.index(it.answer)]
        assert reward.answer(it, letter) == it.answer  # a bare letter answers too
        assert f"{letter}) {it.answer}" in it.fields["options_text"]
        assert it.fields["options_inline"] in it.prompt  # the track's letterless prompt
    scores = reward.score_groups(items, [[i.demonstration or ""] for i in items], training=False)
    assert all(row == [1.0] for row in scores)


def test_qa_knobs() -> None:
    train, evaluation = GENERATORS["smol_facts"](
        data_seed=2,
        eval_size=12,
        relations=["capital"],
        n_options=3,
        hard_share=1.0,
        holdout="facts",
    )
    assert all(len(r["options"]) == 3 and r["hard"] for r in [*train, *evaluation])
    assert not {r["subject"] for r in train} & {r["subject"] for r in evaluation}
    # Hard distractors share the answer's continent where the table has enough capitals.
    groups = {f.answer: f.group for f in load_facts() if f.relation == "capital"}
    europe = [r for r in train if groups[r["answer"]] == "Europe"]
    assert europe and all(groups[o] == "Europe" for r in europe for o in r["options"])
    with pytest.raises(ValueError, match="fewer than"):
        GENERATORS["smol_facts"](data_seed=2, eval_size=4, relations=["continent"], n_options=6)


# --------------------------------------------------------------------------- creative
def test_creative_demonstrations_score_under_the_loose_rubric(tasks) -> None:
    task = tasks["smol-creative"]
    judge = build_reward(task)
    assert isinstance(judge, RubricJudge) and judge.rules.match == "loose"
    items = [*task.eval, *task.train]
    scores = judge.score_groups(items, [[i.demonstration or ""] for i in items], training=False)
    assert all(row[0] > 0 for row in scores)
    assert task.spec.eval.decoding == "sample" and task.spec.eval.samples_per_prompt == 4
    # The expert is formulaic: on each topic, most demonstrations share one pattern.
    by_topic: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for it in items:
        by_topic[it.fields["topic"]][judge.rules.pattern(it, it.demonstration or "")] += 1
    for patterns in by_topic.values():
        assert patterns.most_common(1)[0][1] > patterns.total() / 2
    # Eval pairs are unseen in training in either order.
    trained = {frozenset((i.fields["w1"], i.fields["w2"])) for i in task.train}
    assert not trained & {frozenset((i.fields["w1"], i.fields["w2"])) for i in task.eval}


def reference_is_valid(rules: LineRules, required: Sequence[str], completion: str) -> bool:
    """LineRules.is_valid as it was before ``match`` existed, copied to pin the default."""
    words = completion.split()
    if not words or len(words) > rules.max_words:
        return False
    if any(words.count(w) != 1 for w in required):
        return False
    others = [w for w in words if w not in required]
    return rules.allowed_words is None or all(w in rules.allowed_words for w in others)


LINES = [
    "cat and sun",
    "The cat sat in the sun.",
    "Cat and Sun",
    "the cat. the sun!",
    'A "cat" - and a sun…',
    "cat cat sun",
    "",
    "cat and the big warm sun today",
]


@pytest.mark.parametrize("allowed", [None, ["and", "the", "a"]])
def test_rubric_default_matching_is_exact_and_unchanged(allowed) -> None:
    params = {"required_fields": ["w1", "w2"], "max_words": 6}
    if allowed is not None:
        params["allowed_words"] = allowed
    rules = LineRules.from_params(params, "here")
    assert rules.match == "exact"
    it = item({"w1": "cat", "w2": "sun"})
    for line in LINES:
        assert rules.is_valid(it, line) == reference_is_valid(rules, ["cat", "sun"], line), line
    assert rules.pattern(it, "The cat sat in the sun.") == "The <0> sat in the sun."
    assert not rules.is_valid(it, "Cat and sun.")


def test_rubric_loose_matching_ignores_case_and_punctuation() -> None:
    rules = LineRules.from_params(
        {"required_fields": ["w1", "w2"], "max_words": 6, "match": "loose"}, "here"
    )
    it = item({"w1": "cat", "w2": "Sun"})
    assert rules.is_valid(it, "The Cat sat in the sun.")
    assert rules.is_valid(it, 'A "cat" - and a sun…')  # the lone dash is not a word
    assert not rules.is_valid(it, "cat cat sun")  # each word exactly once, still
    assert not rules.is_valid(it, "the cats sat in the sun")  # no stemming
    assert not rules.is_valid(it, "cat and the big warm sun today")  # 7 words > 6
    assert rules.pattern(it, "The Cat sat in the sun.") == rules.pattern(
        it, "the cat sat in the SUN"
    )
    assert rules.pattern(it, "The Cat sat in the sun.") == "the <0> sat in the <1>"
    judge = RubricJudge({"required_fields": ["w1", "w2"], "match": "loose"}, "here")
    lines = ["The cat sat in the sun.", "the cat sat in the sun", "Sun, then cat."]
    assert judge.score_groups([it], [lines], training=False) == [[0.5, 0.5, 1.0]]
    allowed = LineRules.from_params(
        {"required_fields": ["w1", "w2"], "allowed_words": ["And"], "match": "loose"}, "here"
    )
    assert allowed.is_valid(it, "Cat, and sun!") and not allowed.is_valid(it, "cat or sun")
    with pytest.raises(UserError, match="match: expected exact or loose"):
        LineRules.from_params({"match": "fuzzy"}, "here")


# --------------------------------------------------------------------------- task spec
def write_code_task(folder: Path, reward: str) -> Path:
    path = folder / "fn.yaml"
    path.write_text(
        "name: fn\nversion: 1\ndomain: structured\nsource: {generator: smol_functions}\n"
        'prompt_template: "{instruction}"\nmax_new_tokens: 64\n'
        f"reward: {reward}\neval: {{size: 8}}\n"
    )
    return path


def test_taskspec_accepts_hidden_tests_mode(task_dir: Path) -> None:
    spec = parse_task_spec(
        write_code_task(
            task_dir, "{kind: code, mode: tests, tests_field: cases, extract: code_block}"
        )
    )
    assert spec.reward.params == {"mode": "tests", "tests_field": "cases", "extract": "code_block"}
    for reward, key in [
        ("{kind: code, mode: unit}", "reward.mode"),
        ("{kind: code, mode: tests, tests_field: 3}", "reward.tests_field"),
        ("{kind: code, mode: tests, test_field: cases}", "reward.test_field"),
    ]:
        with pytest.raises(UserError) as caught:
            parse_task_spec(write_code_task(task_dir, reward))
        assert caught.value.where.endswith(key), caught.value.where
