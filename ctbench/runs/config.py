"""What names one run: (track, strategy, params, seed, budget, device), and the seeds and
device derived from it.

It sits below ``run`` and ``result`` so that both can use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ctbench.errors import UserError


@dataclass(frozen=True)
class RunConfig:
    track: str = "tiny"
    strategy: str = "random"
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    budget: int | None = None
    device: str = "auto"  # auto = cuda when available, else cpu


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("CUDA was asked for but torch sees no GPU", where="--device")
    if not (requested == "cpu" or requested.startswith("cuda")):
        raise UserError(f"expected auto, cpu or cuda[:N], got {requested!r}", where="--device")
    return requested


def derived_seed(seed: int, *parts: int) -> int:
    """A seed for one stage/evaluation, a fixed function of the run seed and its position."""
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part * 7_919 + 17) % (2**31 - 1)
    return value
