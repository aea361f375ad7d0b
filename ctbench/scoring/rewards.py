"""Rewards: verifiable rules for structured tasks, judges for open ones; all in [0, 1].

Omni-Thinker's hybrid reward: deterministic domains get rule-based checks (exact answer,
numeric answer, a multiple-choice option, a program that is *run*), subjective ones a
judge. Every reward scores *groups* of completions (the G samples of a prompt) so judges
that value variety fit the same interface.
"""

from __future__ import annotations

import collections
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

from ctbench.errors import UserError
from ctbench.scoring.judges import build_judge
from ctbench.scoring.sandbox import SandboxLimits, run_programs
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
    answer. ``mode: program``: it is executed and its stdout compared. Optional rules are
    checked first (a ``pattern`` regex the code must match; ``digits_field``: digits may be
    used at most as often as the prompt gives them), so a malformed answer costs no run.
    All completions of a call run in one sandboxed interpreter (one start per batch).
    """

    def __init__(self, params: dict[str, Any], where: str) -> None:
        self.mode = params.get("mode", "expression")
        pattern = params.get("pattern")
        try:
            self.pattern = re.compile(pattern) if pattern else None
        except re.error as exc:
            raise UserError(f"pattern: not a valid regular expression: {exc}", where=where) from exc
        self.digits_field = params.get("digits_field")
        limits = params.get("limits", {})
        try:
            self.limits = SandboxLimits(**limits)
        except (TypeError, ValueError) as exc:
            raise UserError(f"limits: {exc}", where=where) from exc

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
        results = run_programs(sources, mode=self.mode, limits=self.limits)
        for (gi, ci), result in zip(to_run, results, strict=True):
            output = result.value if self.mode == "expression" else result.stdout.strip()
            expected = (items[gi].answer or "").strip()
            scores[gi][ci] = float(result.ok and output == expected)
        return scores


def build_reward(task: Task) -> Reward:
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
        return build_judge(dict(spec.params["judge"]), f"{where}.judge")
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
