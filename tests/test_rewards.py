"""Every reward function, on hand-made completions: right answers score 1, wrong ones 0."""

from __future__ import annotations

import collections
import random
import re

import pytest

from ctbench.scoring.judges import EmbeddingJudge, RubricJudge
from ctbench.scoring.rewards import build_reward, chance_level
from ctbench.tracks.taskdata import Item


def item(task="t", answer=None, **fields):
    return Item(task=task, index=0, prompt="p", answer=answer, demonstration=answer, fields=fields)


def test_exact_match_on_math(tiny_track):
    reward = build_reward(tiny_track.tasks["math"])
    it = tiny_track.tasks["math"].eval[0]
    assert reward.score_groups(
        [it], [[it.answer, it.answer + "1", "", f" {it.answer} "]], training=True
    ) == [[1.0, 0.0, 0.0, 1.0]]


def test_choice_on_qa_has_chance_one_quarter(tiny_track):
    task = tiny_track.tasks["qa"]
    reward = build_reward(task)
    it = task.eval[0]
    wrong = next(o for o in it.fields["options"] if o != it.answer)
    assert reward.score_groups([it], [[it.answer, wrong, "a"]], training=False) == [[1.0, 0.0, 0.0]]
    assert chance_level(task) == pytest.approx(0.25)
    assert chance_level(tiny_track.tasks["math"]) == 0.0


def test_numeric_reward_reads_last_number():
    from ctbench.scoring.rewards import NumericMatch

    reward = NumericMatch(tolerance=1e-6)
    it = item(answer="#### 1,234")
    assert reward.score(it, "so the answer is 1234") == 1.0
    assert reward.score(it, "1234 then 5") == 0.0
    assert reward.score(it, "no number") == 0.0


def test_code_reward_runs_the_expression(tiny_track):
    task = tiny_track.tasks["code"]
    reward = build_reward(task)
    it = item(task="code", answer="6", digits="1 4 2")
    groups = [["4+2", "2+4", "4+1+1", "9-3", "42/7", "1+4+2-1", "6", ""]]
    # 4+1+1 uses '1' twice (given once); 9-3 uses digits not given; 42/7 fails the pattern;
    # "6" is a digit not given; 1+4+2-1 reuses 1.
    assert reward.score_groups([it], groups, training=True) == [
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    ]


def test_code_reward_scores_wrong_value_zero(tiny_track):
    reward = build_reward(tiny_track.tasks["code"])
    it = item(task="code", answer="5", digits="1 4 2")
    assert reward.score_groups([it], [["4+2", "4+1"]], training=False) == [[0.0, 1.0]]


RULES = {
    "required_fields": ["w1", "w2"],
    "max_words": 6,
    "allowed_words": ["and", "with", "big", "the"],
}


def test_rubric_judge_validity_and_uniqueness():
    judge = RubricJudge(dict(RULES), "test")
    it = item(w1="cat", w2="sun")
    group = [
        "cat and sun",
        "dog and sun",
        "cat and sun",
        "sun with cat",
        "cat cat sun",
        "the big cat with the sun x",
    ]
    # valid: 0 (pattern X and Y, twice -> 1/2), 2 (same), 3 (Y with X, unique -> 1);
    # invalid: 1 (no cat), 4 (cat twice), 5 (7 words and 'x' not allowed)
    assert judge.score_groups([it], [group], training=False) == [[0.5, 0.0, 0.5, 1.0, 0.0, 0.0]]


def test_rubric_judge_training_rewards_rarity_and_resets():
    judge = RubricJudge(dict(RULES), "test")
    it = item(w1="cat", w2="sun")
    first = judge.score_groups([it], [["cat and sun", "sun with cat"]], training=True)[0]
    assert first == [1.0, 1.0]  # unique in group (0.5) + never seen before (0.5)
    second = judge.score_groups([it], [["cat and sun", "the cat with sun"]], training=True)[0]
    # "X and Y" was 1 of the 2 remembered patterns: rarity 0.5; the new pattern: rarity 1
    assert second == [pytest.approx(0.75), pytest.approx(1.0)]
    judge.reset()
    assert judge.score_groups([it], [["cat and sun", "cat and sun"]], training=True)[0] == [
        0.75,
        0.75,
    ]


@pytest.fixture(scope="module")
def embedding_judge():
    return EmbeddingJudge(dict(RULES), "test")


def test_embedding_judge_uses_a_real_model_and_prefers_variety(embedding_judge):
    it = item(w1="cat", w2="sun")
    same = embedding_judge.score_groups([it], [["cat and sun"] * 4], training=False)[0]
    varied = embedding_judge.score_groups(
        [it],
        [["cat and sun", "the big cat with sun", "sun with the cat", "the sun and big cat"]],
        training=False,
    )[0]
    assert same == [0.0] * 4  # identical lines: no spread at all
    assert all(v > 0.0 for v in varied)
    assert embedding_judge.score_groups([it], [["dog and sun", "sun with dog"]], training=False)[
        0
    ] == [0.0, 0.0]
    vectors = embedding_judge.embed(["cat", "kitten", "bridge"])
    assert vectors.shape[1] == 384  # all-MiniLM-L6-v2's width: the real model, not a stand-in
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])


def test_creative_task_uses_the_judge_from_its_yaml(tiny_track):
    assert isinstance(build_reward(tiny_track.tasks["creative"]), RubricJudge)


def _old_code_score(item, completion: str) -> float:
    """The code reward's semantics before the sandbox rebuild, re-implemented plainly: the
    pattern, the digit budget, then ``repr`` of the value equal to the answer. Only expressions
    the pattern admits (digits joined by + and -) are ever evaluated, so ``eval`` is safe here."""
    code = completion.strip()
    if not code or re.fullmatch(r"[1-9]([+-][1-9])*", code) is None:
        return 0.0
    given = collections.Counter(str(item.fields["digits"]).split())
    used = collections.Counter(re.findall(r"\d", code))
    if any(used[d] > given[d] for d in used):
        return 0.0
    return float(repr(eval(code)) == (item.answer or "").strip())


def test_code_reward_scores_are_unchanged_by_the_sandbox_rebuild(tiny_track):
    """Every benign completion of the tiny code task scores exactly as before the rebuild
    (the published results must not move): a few hundred completions built from the task's
    own items, right, wrong and malformed."""
    task = tiny_track.tasks["code"]
    reward = build_reward(task)
    rng = random.Random(15)
    items = list(task.eval[:40])
    groups = []
    for it in items:
        digits = str(it.fields["digits"]).split()
        a, b, c = digits[:3]
        group = [
            f"{b}+{c}",
            f"{a}+{b}",
            f"{a}+{c}",
            f"{c}-{a}",
            f"{a}+{b}+{c}",
            f"{a}-{b}+{c}",
            a,
            f"{a}+{a}",
            f"{b} + {c}",
            f" {b}+{c} ",
            "",
            "0+1",
            f"{b}*{c}",
            "x",
        ]
        group.append(rng.choice(group) + rng.choice(["", "+1", "-9"]))
        groups.append(group)
    new = reward.score_groups(items, groups, training=False)
    old = [[_old_code_score(it, c) for c in g] for it, g in zip(items, groups, strict=True)]
    assert sum(len(g) for g in groups) >= 400
    assert new == old
    assert 0 < sum(map(sum, new)) < sum(len(g) for g in groups)  # both outcomes occur
    assert reward.sandbox in ("bwrap", "none")


def test_code_reward_records_its_sandbox_level(tiny_track):
    from ctbench.scoring.rewards import reward_info
    from ctbench.scoring.sandbox import sandbox_level
    from ctbench.scoring.sandbox_cgroup import cgroup_facts

    reward = build_reward(tiny_track.tasks["code"])
    assert reward_info(tiny_track.tasks["code"], reward) == {
        "sandbox": sandbox_level(),
        "sandbox_cap": cgroup_facts()["cgroup"],
    }
    assert reward_info(tiny_track.tasks["math"]) == {}


def test_code_reward_refuses_without_a_fence_unless_opted_in(tiny_track, monkeypatch):
    from ctbench.errors import UserError
    from ctbench.scoring import sandbox

    monkeypatch.setattr(sandbox, "_bwrap_facts", lambda: None)  # a machine without a fence
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    with pytest.raises(UserError, match="CTBENCH_ALLOW_UNSAFE_CODE=1"):
        build_reward(tiny_track.tasks["code"])
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    reward = build_reward(tiny_track.tasks["code"])
    assert reward.sandbox == "none"
    it = item(task="code", answer="6", digits="1 4 2")
    assert reward.score_groups([it], [["4+2", "4+1"]], training=False) == [[1.0, 0.0]]


def test_tests_mode_scores_hidden_calls(tmp_path):
    from ctbench.scoring.rewards import CodeExecution

    reward = CodeExecution({"mode": "tests"}, "test")
    it = item(
        task="mbpp",
        tests=[
            {"call": "pair(2)", "expected_literal": "(2, 4)"},
            {"call": "pair(3)", "expected": [3, 9]},
        ],
    )
    good = "def pair(x):\n    return (x, x * x) if x == 2 else [x, x * x]"
    wrong_type = "def pair(x):\n    return [x, x * x]"
    liar = "class Y:\n    def __eq__(self, o): return True\ndef pair(x):\n    return Y()"
    assert reward.score_groups([it], [[good, wrong_type, liar, ""]], training=False) == [
        [1.0, 0.0, 0.0, 0.0]
    ]
