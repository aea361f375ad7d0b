"""The public Strategy API: what a baseline or a submitted strategy is written against.

A strategy decides the *schedule* and nothing else. It sees the task names and domains,
the total budget, a seeded RNG and the evaluation after every item it yielded, and it
yields :class:`Stage` and :class:`Merge` objects; the engine trains (or merges) and
evaluates each one before the generator resumes, so an adaptive strategy reads
``ctx.evaluations[-1]`` (or ``ctx.scores(name)``) right after a yield. It never touches
models or optimizers, which is what keeps strategies comparable.

The *main line* is the model the run is about: its rows form the matrix R that the
metrics read. A stage may instead be a *branch* (trained aside from a start point, its row
kept apart and its checkpoint kept for a later merge) or a *probe* (a branch whose only
purpose is measurement; its steps are booked to the probe phase). Every stage's steps
count against the budget, and the engine refuses a stage that would overrun it
(:class:`BudgetExceeded`).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ctbench.errors import UserError

Objective = Literal["rl", "sft", "blend"]
OBJECTIVES: tuple[str, ...] = ("rl", "sft", "blend")
BASE = "base"
CURRENT = "current"


@dataclass(frozen=True)
class Stage:
    """One training phase.

    ``mixture``: task → sampling weight. ``objective``: ``rl`` (GRPO), ``sft`` (expert
    demonstrations) or ``blend`` (CHORD: ``(1 - mu) * GRPO + mu * SFT``). ``start``:
    ``"current"`` (the main line as it is), ``"base"``, or the ``name`` of an earlier
    branch. ``branch``/``probe``: train aside instead of advancing the main line.
    ``hparams``: engine overrides for this stage only (e.g. ``lr``, ``mu_peak``); the
    engine validates them and the result records them.
    """

    mixture: Mapping[str, float]
    steps: int
    objective: Objective = "rl"
    name: str = ""
    start: str = CURRENT
    branch: bool = False
    probe: bool = False
    hparams: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return sorted(t for t, w in self.mixture.items() if w > 0)

    @property
    def main_line(self) -> bool:
        return not (self.branch or self.probe)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "stage",
            "name": self.name,
            "tasks": self.tasks,
            "mixture": {k: float(v) for k, v in sorted(self.mixture.items())},
            "objective": self.objective,
            "steps": self.steps,
            "start": self.start,
            "branch": self.branch,
            "probe": self.probe,
            "hparams": dict(sorted(self.hparams.items())),
        }


# The mergekit methods ctbench has tested on its checkpoints.
MERGE_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear")


def check_merge_settings(method: Any, weights: Any, density: Any, where: str = "merge") -> None:
    """Reject a merge ctbench would refuse later, *before* anything trains: a strategy whose
    parameters configure a merge calls this from ``check_params``."""
    if method not in MERGE_METHODS:
        raise UserError(
            f"unknown merge method {method!r}; expected one of {', '.join(MERGE_METHODS)}",
            where=f"{where}.method",
        )
    if weights is not None and not all(
        isinstance(w, int | float) and not isinstance(w, bool) for w in weights
    ):
        try:
            [float(w) for w in weights]
        except (TypeError, ValueError):
            raise UserError(
                f"expected numbers, got {list(weights)!r}", where=f"{where}.weights"
            ) from None
    if density is not None and (
        isinstance(density, bool) or not isinstance(density, int | float) or not 0 < density <= 1
    ):
        raise UserError(f"expected a density in (0, 1], got {density!r}", where=f"{where}.density")


@dataclass(frozen=True)
class Merge:
    """Merge earlier branches (by name) with mergekit; the result becomes the main line.

    ``method``: a mergekit method (``linear``, ``task_arithmetic``, ``ties``, ``dare_ties``,
    ``dare_linear``). ``weights``: one per source (default 1 each). ``density``: the share of
    each task vector kept by TIES/DARE. Methods that work on task vectors merge against the
    track's base model. A merge costs no optimizer steps.
    """

    sources: tuple[str, ...]
    method: str = "ties"
    weights: tuple[float, ...] | None = None
    density: float | None = None
    name: str = "merge"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_merge_settings(self.method, self.weights, self.density, where=f"merge {self.name}")

    @property
    def steps(self) -> int:
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "merge",
            "name": self.name,
            "sources": list(self.sources),
            "method": self.method,
            "weights": list(self.weights) if self.weights is not None else None,
            "density": self.density,
            "options": dict(sorted(self.options.items())),
        }


@dataclass(frozen=True)
class GradientProbe:
    """Measure each task's policy gradient at the base model: no training, no optimizer
    step, no row of R (DESIGN's probe-free transfer estimate; see
    :mod:`ctbench.training.gradients`).

    For every task of ``tasks`` the engine samples ``batches`` RL batches (the track's
    prompts per step × group size) from the base (with fresh adapters under LoRA, as a
    probe would train) and takes two gradients: of the GRPO loss (the direction a stage
    would move) and of the expected reward (how the task's score would respond). After the
    yield, ``ctx.measurements[-1]`` holds ``tasks``, ``transfer_adam`` and ``transfer_sgd``
    (Δ̂[i][j] = u_i · g_j, row trained, column scored, one shared positive scale),
    ``cosine`` (of the reward gradients), ``mean_reward``, ``samples``,
    ``generated_tokens`` and ``wall_s``. Its rollouts are booked to the probe phase; it
    spends none of the step budget.
    """

    tasks: tuple[str, ...]
    batches: int = 2
    name: str = "gradient-probe"

    @property
    def steps(self) -> int:
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "gradient-probe",
            "name": self.name,
            "tasks": list(self.tasks),
            "batches": self.batches,
        }


ScheduleItem = Stage | Merge


@dataclass
class StrategyContext:
    """What a strategy may know: tasks, budget, seed, and every evaluation so far.

    ``evaluations[0]`` is the base model; ``evaluations[k]`` the row after the k-th item the
    strategy yielded (branches and probes included). ``report`` is where a strategy puts the
    facts that define it (a transfer matrix, a chosen order, predictions); it lands in
    ``result.json`` under ``strategy.report`` and must be JSON-serialisable.
    ``measurements[k]`` is what the k-th :class:`GradientProbe` measured.
    """

    task_names: tuple[str, ...]
    domains: dict[str, str]
    budget: int
    seed: int
    rng: random.Random
    chance: dict[str, float] = field(default_factory=dict)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    entropies: list[dict[str, float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    spent: int = 0
    measurements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.budget - self.spent

    @property
    def base_scores(self) -> dict[str, float]:
        return self.evaluations[0]

    def scores(self, name: str) -> dict[str, float]:
        """The row of R measured after the yielded item called ``name``."""
        for item_name, row in zip(self.names, self.evaluations[1:], strict=True):
            if item_name == name:
                return row
        raise KeyError(f"no evaluated stage or merge is named {name!r}")


class StrategyFailed(UserError):
    """The strategy raised or asked for something impossible; no result is written."""


class BudgetExceeded(StrategyFailed):
    """A strategy asked for more optimizer steps than its budget has left."""


class Strategy(ABC):
    """Base class of every strategy.

    Subclasses set ``name``, ``version``, ``defaults`` (parameter name → default value; the
    default's type is the parameter's type, which is how ``--param key=value`` is parsed and
    checked) and write :meth:`schedule` as a generator of stages and merges. The class
    docstring is what ``ctbench strategies`` shows.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            allowed = ", ".join(self.defaults) or "(none)"
            raise UserError(
                f"unknown parameter {unknown[0]!r} (parameters: {allowed})",
                where=f"strategy {self.name}",
            )
        self.params: dict[str, Any] = {
            **self.defaults,
            **{k: coerce_param(self.name, k, v, self.defaults[k]) for k, v in params.items()},
        }
        self.check_params()

    def check_params(self) -> None:  # noqa: B027 (optional hook, deliberately empty)
        """Override to reject parameter values (raise :class:`UserError`); called once."""

    @abstractmethod
    def schedule(self, ctx: StrategyContext) -> Iterator[ScheduleItem | GradientProbe]:
        """Yield stages and merges (after each yield ``ctx.evaluations[-1]`` is its row)
        and, where wanted, gradient probes (``ctx.measurements[-1]``)."""


def coerce_param(strategy: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default``: a typo'd parameter value fails here, by name."""
    where = f"strategy {strategy}: parameter {key}"
    kind = type(default)
    if default is None or (
        isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    ):
        return list(value) if isinstance(value, tuple) else value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise UserError(f"expected {kind.__name__}, got {value!r}", where=where)


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` steps over ``parts`` stages, the remainder going to the first stages."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def require_budget(ctx: StrategyContext, needed: int, what: str) -> None:
    """A strategy's own early check, with a message that says why the budget is too small."""
    if ctx.budget < needed:
        raise UserError(
            f"a budget of {ctx.budget} steps is too small: {what} needs at least {needed}",
            where="--budget",
        )
