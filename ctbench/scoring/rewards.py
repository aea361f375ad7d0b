"""Rewards: verifiable rules for structured tasks, judges for open ones; all in [0, 1].

Omni-Thinker's hybrid reward: deterministic domains get rule-based checks (exact answer,
numeric answer, a multiple-choice option, a program that is *run*), subjective ones a
judge. Every reward scores *groups* of completions (the G samples of a prompt) so judges
that value variety fit the same interface.
"""

from __future__ import annotations

import ast
import collections
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

from ctbench.errors import UserError
from ctbench.scoring.judges import build_judge
from ctbench.scoring.llm_judge import build_llm_judge
from ctbench.scoring.sandbox import (
    SandboxLimits,
    require_fence,
    run_programs,
    run_tests,
    sandbox_level,
)
from ctbench.scoring.sandbox_cgroup import cgroup_facts
from ctbench.tracks.answers import choice_index, extract_answer
from ctbench.tracks.taskdata import Item, Task


class Reward(Protocol):
    def score_groups(
        self, items: Sequence[Item], groups: Sequence[Sequence[str]], *, training: bool
    ) -> list[list[float]]: ...

    def reset(self) -> None: ...


class _PerCompletion(ABC):
    """Base for stateless rewards that score each completion on its own."""

    def reset(self) -> None:  # noqa: B027 - stateless rewards have nothing to reset
        """Stateless."""

    @abstractmethod
    def score(self, item: Item, completion: str) -> float:
        """Reward of one completion of one item, in [0, 1]."""

    def score_groups(
        self, items: Sequence[Item], groups: Sequence[Sequence[str]], *, training: bool
    ) -> list[list[float]]:
        return [[self.score(i, c) for c in g] for i, g in zip(items, groups, strict=True)]


class ExactMatch(_PerCompletion):
    def score(self, item: Item, completion: str) -> float:
        return float(completion.strip() == (item.answer or "").strip())


class ChoiceMatch(_PerCompletion):
    """The completion must be the correct option; any other option or text scores 0."""

    def score(self, item: Item, completion: str) -> float:
        return float(completion.strip().lower() == (item.answer or "").strip().lower())


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


class NumericMatch(_PerCompletion):
    """The last number in the completion equals the answer within a tolerance (GSM8K style)."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance

    def score(self, item: Item, completion: str) -> float:
        found = _NUMBER.findall(completion)
        if not found or item.answer is None:
            return 0.0
        try:
            expected = float(_NUMBER.findall(item.answer)[-1].replace(",", ""))
        except IndexError:
            return 0.0
        return float(abs(float(found[-1].replace(",", "")) - expected) <= self.tolerance)


class CodeExecution:
    """Runs the model's code in the sandbox and compares what it computes with the answer.

    ``mode: expression``: the completion is evaluated and ``repr(value)`` compared with the
    answer. ``mode: program``: it is executed and its stdout compared. ``mode: tests``: it is
    executed and each hidden test of the item (``tests_field``, default ``tests``: a list of
    ``{call: "f(3)", expected: 9}`` or ``{call: ..., expected_literal: "(1, 2)"}``) is called;
    it scores 1 only if every call returns a value equal to the expected one, which never
    enters the sandbox. Optional rules are checked first (a ``pattern`` regex the code must
    match; ``digits_field``: digits may be used at most as often as the prompt gives them), so a
    malformed answer costs no run. Each completion runs in its own process inside one fenced
    sandbox per call; ``sandbox`` is the fence level, recorded in results.
    """

    def __init__(self, params: dict[str, Any], where: str) -> None:
        self.mode = params.get("mode", "expression")
        if self.mode not in ("expression", "program", "tests"):
            raise UserError(
                f"mode: expected expression, program or tests, got {self.mode!r}", where=where
            )
        pattern = params.get("pattern")
        try:
            self.pattern = re.compile(pattern) if pattern else None
        except re.error as exc:
            raise UserError(f"pattern: not a valid regular expression: {exc}", where=where) from exc
        self.digits_field = params.get("digits_field")
        self.tests_field = params.get("tests_field", "tests")
        limits = params.get("limits", {})
        try:
            self.limits = SandboxLimits(**limits)
        except (TypeError, ValueError) as exc:
            raise UserError(f"limits: {exc}", where=where) from exc
        # Refuse before any training when there is no kernel fence and no explicit opt-in.
        self.sandbox = require_fence()

    def reset(self) -> None:
        """Stateless."""

    def _allowed(self, item: Item, code: str) -> bool:
        if self.pattern is not None and not self.pattern.fullmatch(code):
            return False
        if self.digits_field is not None:
            given = collections.Counter(str(item.fields[self.digits_field]).split())
            used = collections.Counter(re.findall(r"\d", code))
            if any(used[d] > given[d] for d in used):
                return False
        return True

    def _tests(self, item: Item) -> tuple[list[str], list[Any]]:
        """The item's hidden tests as (calls, expected values); expected stay in this process."""
        raw = item.fields.get(self.tests_field) or []
        calls: list[str] = []
        expected: list[Any] = []
        for test in raw:
            if not (isinstance(test, dict) and isinstance(test.get("call"), str)):
                raise UserError(
                    f"{self.tests_field}: each test needs a 'call' expression",
                    where=f"task {item.task} item {item.index}",
                )
            calls.append(test["call"])
            if "expected_literal" in test:
                expected.append(ast.literal_eval(str(test["expected_literal"])))
            else:
                expected.append(test.get("expected"))
        return calls, expected

    def score_groups(
        self, items: Sequence[Item], groups: Sequence[Sequence[str]], *, training: bool
    ) -> list[list[float]]:
        scores = [[0.0] * len(g) for g in groups]
        to_run: list[tuple[int, int]] = []
        sources: list[str] = []
        for gi, (item, group) in enumerate(zip(items, groups, strict=True)):
            for ci, completion in enumerate(group):
                code = completion.strip()
                if code and self._allowed(item, code):
                    to_run.append((gi, ci))
                    sources.append(code)
        if self.mode == "tests":
            hidden = [self._tests(items[gi]) for gi, _ in to_run]
            outcomes = run_tests(
                sources, [c for c, _ in hidden], [e for _, e in hidden], self.limits
            )
            for (gi, ci), outcome in zip(to_run, outcomes, strict=True):
                scores[gi][ci] = float(outcome.ok and outcome.total > 0)
            return scores
        results = run_programs(sources, mode=self.mode, limits=self.limits)
        for (gi, ci), result in zip(to_run, results, strict=True):
            output = result.value if self.mode == "expression" else result.stdout.strip()
            expected = (items[gi].answer or "").strip()
            scores[gi][ci] = float(result.ok and output == expected)
        return scores


def reward_info(task: Task, reward: Reward | None = None) -> dict[str, Any]:
    """What a result records about how a task was scored beyond its kind: for code rewards, the
    sandbox level (``bwrap`` or ``none``), so numbers produced without a fence stand out, and
    the cgroup version that capped the whole sandbox's memory and processes (None: no cap)."""
    if task.spec.reward.kind != "code":
        return {}
    level = reward.sandbox if isinstance(reward, CodeExecution) else sandbox_level()
    return {"sandbox": level, "sandbox_cap": cgroup_facts()["cgroup"]}


class ExtractedAnswer:
    """A reward applied to the answer a declared rule pulls out of the completion
    (``reward.extract``: ``last_number``, ``boxed``, ``after_hashes``, ``choice``,
    ``code_block``; see :mod:`ctbench.tracks.answers`).

    Why a wrapper: a real model answers in sentences, the rewards compare bare answers, and
    the rule is the task's declared answer format, the same for every reward kind. A
    completion with no extractable answer scores 0 whatever the inner reward would say and
    is a *format failure*, which evaluation counts (:meth:`answers`) so a result tells
    "never answered" from "answered wrongly". For ``choice`` the extracted letter becomes
    the option's text (or stays a letter when the item's answer is written as one)."""

    def __init__(self, inner: Reward, rule: str, *, options_field: str = "options") -> None:
        self.inner = inner
        self.rule = rule
        self.options_field = options_field

    def reset(self) -> None:
        self.inner.reset()

    def answer(self, item: Item, completion: str) -> str | None:
        """The extracted answer of one completion, in the form the inner reward compares;
        None when the completion holds none."""
        if self.rule != "choice":
            return extract_answer(self.rule, completion)
        options = [str(o) for o in item.fields.get(self.options_field) or []]
        index = choice_index(extract_answer("choice", completion, options=options))
        if index is None:
            return None
        written = (item.answer or "").strip()
        by_letter = len(written) == 1 and written.lower() not in (o.lower() for o in options)
        return chr(ord("A") + index) if by_letter else options[index]

    def answers(
        self, items: Sequence[Item], groups: Sequence[Sequence[str]]
    ) -> list[list[str | None]]:
        return [[self.answer(i, c) for c in g] for i, g in zip(items, groups, strict=True)]

    def score_groups(
        self, items: Sequence[Item], groups: Sequence[Sequence[str]], *, training: bool
    ) -> list[list[float]]:
        answers = self.answers(items, groups)
        scores = self.inner.score_groups(
            items, [[a or "" for a in g] for g in answers], training=training
        )
        return [
            [0.0 if a is None else s for a, s in zip(ga, gs, strict=True)]
            for ga, gs in zip(answers, scores, strict=True)
        ]


def build_reward(task: Task) -> Reward:
    """The task's reward, applied to the extracted answer when the task declares a rule."""
    reward = _build_reward(task)
    rule = task.spec.reward.params.get("extract")
    if rule is None:
        return reward
    options_field = str(task.spec.reward.params.get("options_field", "options"))
    return ExtractedAnswer(reward, str(rule), options_field=options_field)


def _build_reward(task: Task) -> Reward:
    spec = task.spec.reward
    where = f"{task.spec.file}: reward"
    if spec.kind == "exact":
        return ExactMatch()
    if spec.kind == "choice":
        return ChoiceMatch()
    if spec.kind == "numeric":
        return NumericMatch(float(spec.params.get("tolerance", 1e-6)))
    if spec.kind == "code":
        return CodeExecution(spec.params, where)
    if spec.kind == "judge":
        params = dict(spec.params["judge"])
        if params.get("type") == "llm":
            return build_llm_judge(params, f"{where}.judge")
        return build_judge(params, f"{where}.judge")
    raise UserError(f"unknown reward kind {spec.kind!r}", where=where)


def chance_level(task: Task) -> float:
    """Expected score of blind guessing: 1/k for k-way choice tasks, else 0."""
    if task.spec.reward.kind != "choice":
        return 0.0
    field = task.spec.reward.params.get("options_field", "options")
    sizes = [len(item.fields.get(field) or []) for item in task.eval]
    if not all(sizes):
        raise UserError(
            f"choice reward needs an options list in field {field!r} on every eval item",
            where=f"{task.spec.file}: reward.options_field",
        )
    return sum(1.0 / s for s in sizes) / len(sizes)
