"""The grid of a comparison: one cell per (strategy, seed), each with a fixed folder name.

Both executors (local, in ``compare``; Ray, in ``ray_executor``) run the same cells, so the
plan lives below them both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ctbench.runs.config import RunConfig


@dataclass(frozen=True)
class Cell:
    """One (strategy, seed) run of the grid, with the fixed folder name that makes it
    resumable: a finished cell is read, an interrupted one resumes, a missing one runs."""

    strategy: str
    seed: int
    config: RunConfig
    run_id: str


def plan_cells(
    strategies: Sequence[str],
    seeds: Sequence[int],
    *,
    track: str,
    budget: int | None = None,
    device: str = "auto",
) -> list[Cell]:
    cells = []
    for name in strategies:
        # A file reference (path/to/file.py:Class) becomes a safe folder name.
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
        for seed in seeds:
            config = RunConfig(track=track, strategy=name, seed=seed, budget=budget, device=device)
            cells.append(Cell(name, seed, config, f"{safe}-s{seed}"))
    return cells
