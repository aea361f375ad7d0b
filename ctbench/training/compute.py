"""Compute accounting by phase (probe / train / eval / merge).

Strategies are compared at equal compute, and probes count against the budget, so every
optimizer step, sample and generated token is booked to the phase that spent it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

PHASES = ("probe", "train", "eval", "merge")


@dataclass
class PhaseCompute:
    optimizer_steps: int = 0
    samples: int = 0
    generated_tokens: int = 0
    trained_tokens: int = 0
    wall_s: float = 0.0
    # An LLM judge's calls and tokens (prompt + reply): spent by the reward, not the policy,
    # and zero for rule, rubric and embedding rewards.
    judge_calls: int = 0
    judge_tokens: int = 0


def total_wall_s(compute: dict[str, dict[str, float]]) -> float:
    """Wall seconds of a result's ``compute`` section, all phases together."""
    return sum(phase.get("wall_s") or 0.0 for phase in compute.values())


@dataclass
class ComputeMeter:
    phases: dict[str, PhaseCompute] = field(
        default_factory=lambda: {p: PhaseCompute() for p in PHASES}
    )
    # The phases being timed, innermost last: a reward scored inside a training or an
    # evaluation books its judge calls to that phase without being told which it is.
    _active: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def active_phase(self) -> str | None:
        return self._active[-1] if self._active else None

    def book(self, phase: str, **amounts: float) -> None:
        entry = self.phases[phase]
        for key, amount in amounts.items():
            setattr(entry, key, getattr(entry, key) + amount)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        self._active.append(phase)
        try:
            yield
        finally:
            self._active.pop()
            self.phases[phase].wall_s += time.perf_counter() - start

    def to_json(self) -> dict[str, dict[str, float]]:
        return {name: asdict(entry) for name, entry in self.phases.items()}

    @classmethod
    def from_json(cls, data: dict[str, dict[str, float]]) -> ComputeMeter:
        meter = cls()
        for name, values in data.items():
            meter.phases[name] = PhaseCompute(**values)
        return meter
