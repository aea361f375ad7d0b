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


def total_wall_s(compute: dict[str, dict[str, float]]) -> float:
    """Wall seconds of a result's ``compute`` section, all phases together."""
    return sum(phase.get("wall_s") or 0.0 for phase in compute.values())


@dataclass
class ComputeMeter:
    phases: dict[str, PhaseCompute] = field(
        default_factory=lambda: {p: PhaseCompute() for p in PHASES}
    )

    def book(self, phase: str, **amounts: float) -> None:
        entry = self.phases[phase]
        for key, amount in amounts.items():
            setattr(entry, key, getattr(entry, key) + amount)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase].wall_s += time.perf_counter() - start

    def to_json(self) -> dict[str, dict[str, float]]:
        return {name: asdict(entry) for name, entry in self.phases.items()}

    @classmethod
    def from_json(cls, data: dict[str, dict[str, float]]) -> ComputeMeter:
        meter = cls()
        for name, values in data.items():
            meter.phases[name] = PhaseCompute(**values)
        return meter
