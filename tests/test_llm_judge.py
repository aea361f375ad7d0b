"""The LLM judge's own logic: verdict parsing, both orders, inconsistency, caching, gating,
compute booking and YAML errors.

The backend here is a small deterministic chat function written for the test (the judge's
arithmetic is what is under test); the endpoint client is tested against a real HTTP server
in test_judge_endpoint.py and the local SmolLM2 judge in test_judge_models.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from ctbench.errors import UserError
from ctbench.scoring.judge_backends import ChatReply, Conversation
from ctbench.scoring.llm_judge import LLMJudge, parse_pairwise, parse_rating
from ctbench.tracks.taskdata import Item
from ctbench.training.compute import ComputeMeter

PAIRWISE = "Task: {prompt}\nA: {first}\nB: {second}\nWhich is better? Answer A or B."
POINTWISE = "Task: {prompt}\nReference: {reference}\nAnswer: {completion}\nScore 1-10."


class FunctionBackend:
    """Answers each conversation with ``answer(user_text)``; counts what it was asked."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.asked: list[Conversation] = []

    def identity(self) -> dict:
        return {"kind": "test", "answer": self.answer.__name__}

    def complete(
        self, conversations: Sequence[Conversation], *, max_tokens: int
    ) -> list[ChatReply]:
        self.asked.extend(conversations)
        return [ChatReply(self.answer(c[-1]["content"]), 10, 2) for c in conversations]


def prefers_good(text: str) -> str:
    """A fair judge, whatever the position: "good" beats "fine" beats anything else."""
    first, second = text.split("\nA: ")[1].split("\nB: ")
    second = second.split("\nWhich")[0]

    def quality(response: str) -> int:
        return 2 if "good" in response else 1 if "fine" in response else 0

    if quality(first) == quality(second):
        return "[[C]]"
    return "[[A]]" if quality(first) > quality(second) else "[[B]]"


def always_a(text: str) -> str:
    return "A"


def item(index: int = 0, reference: str = "a fine reference") -> Item:
    return Item("t", index, f"write line {index}", None, reference, {"w1": "cat", "w2": "dog"})


def judge(answer: Callable[[str], str], **params) -> tuple[LLMJudge, FunctionBackend]:
    backend = FunctionBackend(answer)
    options = {"template": PAIRWISE, **params}
    return LLMJudge(options, "task.yaml: reward.judge", backend), backend


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("[[A]]", "first"),
        ("After thought, [[B]]", "second"),
        ("[[C]]", "tie"),
        ("[[tie]]", "tie"),
        ("A", "first"),
        ("B.", "second"),
        ("  A) is better", "first"),
        ("B is better", "second"),
        ("Response B follows the instruction.", "second"),
        ("A good answer would mention cats.", None),
        ("I cannot decide.", None),
        ("", None),
    ],
)
def test_parse_pairwise(reply: str, verdict: str | None) -> None:
    assert parse_pairwise(reply) == verdict


@pytest.mark.parametrize(
    ("reply", "rating"),
    [("7", 6 / 9), ("Score: 10/10", 1.0), ("1", 0.0), ("12", None), ("great", None)],
)
def test_parse_rating(reply: str, rating: float | None) -> None:
    assert parse_rating(reply, 1, 10) == (pytest.approx(rating) if rating is not None else None)


def test_pairwise_asks_both_orders_and_scores_wins_losses() -> None:
    the_judge, backend = judge(prefers_good)
    scores = the_judge.score_groups(
        [item(0), item(1, reference="a good one")],
        [["a good line", "a bad line"], ["bad"]],
        training=False,
    )
    assert scores == [[1.0, 0.0], [0.0]]
    assert len(backend.asked) == 6  # three completions, two orders each
    firsts = [c[-1]["content"].split("\nA: ")[1].split("\nB: ")[0] for c in backend.asked[:2]]
    assert firsts == ["a good line", "a fine reference"]  # the completion in both positions
    assert the_judge.stats.inconsistent == 0
    assert the_judge.stats.calls == 6


def test_position_bias_is_a_tie_and_counted_inconsistent() -> None:
    the_judge, _ = judge(always_a)
    assert the_judge.score_groups([item()], [["x", "y"]], training=True) == [[0.5, 0.5]]
    assert the_judge.stats.inconsistent == 2


def test_unparseable_verdicts_score_the_configured_neutral_value() -> None:
    the_judge, _ = judge(lambda text: "hmm", unparseable_score=0.25)
    assert the_judge.score_groups([item()], [["x"]], training=False) == [[0.25]]
    assert the_judge.stats.unparseable == 2


def test_pointwise_rates_against_the_reference() -> None:
    def rates(text: str) -> str:
        assert "Reference: a fine reference" in text
        return "9" if "fine" in text.split("Answer: ")[1] else "eleven"

    backend = FunctionBackend(rates)
    the_judge = LLMJudge({"mode": "pointwise", "template": POINTWISE}, "w", backend)
    scores = the_judge.score_groups([item()], [["fine line", "other"]], training=False)
    assert scores == [[pytest.approx(8 / 9), 0.5]]
    assert the_judge.stats.unparseable == 1


def test_cache_serves_repeats_and_survives_in_sqlite(tmp_path: Path) -> None:
    the_judge, backend = judge(prefers_good)
    the_judge.bind(meter=None, cache_path=tmp_path / "cache.sqlite")
    groups = [["good", "good", "bad"]]  # a repeated completion is asked once
    first = the_judge.score_groups([item()], groups, training=True)
    assert len(backend.asked) == 4
    assert the_judge.stats.cached == 0
    again, backend_again = judge(prefers_good)
    again.bind(meter=None, cache_path=tmp_path / "cache.sqlite")
    assert again.score_groups([item()], groups, training=True) == first
    assert backend_again.asked == []
    assert again.stats.cached == 6 and again.stats.calls == 0


def test_cache_key_includes_the_backend_identity(tmp_path: Path) -> None:
    the_judge, _ = judge(prefers_good)
    the_judge.bind(meter=None, cache_path=tmp_path / "cache.sqlite")
    the_judge.score_groups([item()], [["good"]], training=True)
    other, backend = judge(always_a)  # another judge model: nothing reused
    other.bind(meter=None, cache_path=tmp_path / "cache.sqlite")
    other.score_groups([item()], [["good"]], training=True)
    assert len(backend.asked) == 2


def test_rules_gate_the_judge() -> None:
    the_judge, backend = judge(
        prefers_good, required_fields=["w1", "w2"], max_words=5, match="loose"
    )
    scores = the_judge.score_groups(
        [item()],
        [["A good cat. Dog!", "no words", "good cat dog but far too long"]],
        training=False,
    )
    assert scores == [[1.0, 0.0, 0.0]]
    assert len(backend.asked) == 2
    assert the_judge.stats.gated == 2 and the_judge.stats.judged == 1


def test_calls_are_booked_to_the_phase_being_timed() -> None:
    the_judge, _ = judge(prefers_good)
    meter = ComputeMeter()
    the_judge.bind(meter=meter, cache_path=None)
    with meter.timed("eval"):
        the_judge.score_groups([item()], [["good", "bad"]], training=False)
    the_judge.score_groups([item(3)], [["good"]], training=False)  # outside any phase: not booked
    assert meter.phases["eval"].judge_calls == 4
    assert meter.phases["eval"].judge_tokens == 4 * 12
    assert meter.phases["train"].judge_calls == 0
    assert the_judge.stats.calls == 6


def test_a_redone_stage_books_the_replies_its_stopped_attempt_paid_for(tmp_path: Path) -> None:
    """A resumed run redoes the stage it was stopped in; the replies that attempt stored are
    calls it paid for, not cache hits, so the resumed run counts what an uninterrupted one
    does. Replies committed before the stop stay hits, as they would have been in memory."""
    cache = tmp_path / "cache.sqlite"
    committed_part = [["good", "bad"]]  # 4 conversations, stored and committed
    stopped_part = [["fine", "good", "fine"]]  # 4 distinct of 6, stored, then the stop

    uninterrupted, _ = judge(prefers_good)
    uninterrupted.bind(meter=ComputeMeter(), cache_path=tmp_path / "other.sqlite")
    uninterrupted.score_groups([item()], committed_part, training=True)
    uninterrupted.score_groups([item()], committed_part, training=True)  # a repeat: 4 hits
    uninterrupted.score_groups([item(1)], stopped_part, training=True)

    first, _ = judge(prefers_good)
    first.bind(meter=None, cache_path=cache)
    first.score_groups([item()], committed_part, training=True)
    first.score_groups([item()], committed_part, training=True)
    mark, counts = first.cache_high_water(), first.stats_json()
    first.score_groups([item(1)], stopped_part, training=True)  # stored; then the process dies

    meter = ComputeMeter()
    resumed, backend = judge(prefers_good)
    resumed.bind(meter=meter, cache_path=cache)
    resumed.resume_from(mark)
    resumed.restore_stats(counts)
    with meter.timed("train"):
        resumed.score_groups([item(1)], stopped_part, training=True)
    assert backend.asked == []  # nothing asked twice
    assert resumed.stats == uninterrupted.stats
    assert (resumed.stats.calls, resumed.stats.cached) == (8, 4)
    assert meter.phases["train"].judge_calls == 4
    assert meter.phases["train"].judge_tokens == 4 * 12
    # Replies committed before the stop are hits after it, as they were in memory before.
    resumed.score_groups([item()], committed_part, training=True)
    assert (resumed.stats.calls, resumed.stats.cached) == (8, 8)


def test_braces_in_completions_are_not_placeholders() -> None:
    the_judge, backend = judge(prefers_good)
    the_judge.score_groups([item()], [["good {first} {x}"]], training=False)
    assert "A: good {first} {x}\n" in backend.asked[0][-1]["content"]


def test_system_turn_and_reference_field() -> None:
    backend = FunctionBackend(prefers_good)
    the_judge = LLMJudge(
        {"template": PAIRWISE, "system": "Be fair.", "reference_field": "w1"}, "w", backend
    )
    the_judge.score_groups([item()], [["good"]], training=False)
    assert backend.asked[0][0] == {"role": "system", "content": "Be fair."}
    assert "B: cat" in backend.asked[0][-1]["content"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "template"),
        ({"template": "no placeholders"}, "template"),
        ({"template": POINTWISE}, "template"),  # pointwise template in pairwise mode
        ({"template": PAIRWISE, "mode": "ranked"}, "mode"),
        ({"template": PAIRWISE, "max_tokens": 0}, "max_tokens"),
        ({"template": PAIRWISE, "scale": [10, 1]}, "scale"),
        ({"template": PAIRWISE, "unparseable_score": 2}, "unparseable_score"),
        ({"template": PAIRWISE, "temprature": 0}, "unknown key"),
    ],
)
def test_bad_judge_options_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(UserError) as raised:
        LLMJudge(params, "creative.yaml: reward.judge", FunctionBackend(always_a))
    assert field in str(raised.value)
    assert "creative.yaml: reward.judge" in str(raised.value)


def test_missing_reference_is_a_clear_error() -> None:
    the_judge, _ = judge(prefers_good)
    bare = Item("t", 5, "p", None, None, {})
    with pytest.raises(UserError, match="no demonstration"):
        the_judge.score_groups([bare], [["x"]], training=False)
