"""The public Strategy API: what a baseline or a submitted strategy is written against.

A strategy decides the *schedule* and nothing else. It sees the task names and domains,
the total budget, a seeded RNG and the evaluations after every stage it asked for, and it
yields :class:`Stage` objects; the engine trains and evaluates each one before the
generator resumes, so an adaptive strategy reads ``ctx.evaluations[-1]`` after a yield.
It never touches models or optimizers, which is what keeps strategies comparable.

The engine refuses a stage that would overrun the budget (:class:`BudgetExceeded`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import random
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ctbench.errors import UserError
from ctbench.resources import data_root

Objective = Literal["rl", "sft"]


@dataclass(frozen=True)
class Stage:
    """One training phase: a task mixture (weights), an objective and a number of steps."""

    mixture: dict[str, float]
    steps: int
    objective: Objective = "rl"
    name: str = ""
    probe: bool = False

    @property
    def tasks(self) -> list[str]:
        return sorted(t for t, w in self.mixture.items() if w > 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tasks": self.tasks,
            "mixture": dict(sorted(self.mixture.items())),
            "objective": self.objective,
            "steps": self.steps,
            "probe": self.probe,
        }


@dataclass
class StrategyContext:
    """What a strategy may know: tasks, budget, seed, and the rows of R measured so far."""

    task_names: tuple[str, ...]
    domains: dict[str, str]
    budget: int
    seed: int
    rng: random.Random
    evaluations: list[dict[str, float]] = field(default_factory=list)
    spent: int = 0

    @property
    def remaining(self) -> int:
        return self.budget - self.spent


class BudgetExceeded(UserError):
    """A strategy asked for more optimizer steps than its budget has left."""


class Strategy(ABC):
    """Base class of every strategy. Subclasses set ``name``, ``version``, ``defaults``
    (parameter name → default value, which also fixes each parameter's type) and write
    :meth:`schedule` as a generator of stages."""

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
        self.params: dict[str, Any] = {**self.defaults, **params}

    @abstractmethod
    def schedule(self, ctx: StrategyContext) -> Iterator[Stage]:
        """Yield stages; after each yield, ``ctx.evaluations[-1]`` holds the new row of R."""


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` steps over ``parts`` stages, the remainder going to the first stages."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# ----------------------------------------------------------------------- loading strategies
def baselines_dir() -> Path:
    return data_root() / "baselines"


def _load_module(path: Path):
    module_name = (
        f"ctbench_strategy_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    )
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError("not a loadable Python file", where=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a plugin may fail in any way; the user needs to know where
        del sys.modules[module_name]
        raise UserError(
            f"importing the strategy failed: {type(exc).__name__}: {exc}", where=str(path)
        ) from exc
    return module


def _strategy_classes(module) -> list[type[Strategy]]:
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Strategy)
        and obj is not Strategy
        and not inspect.isabstract(obj)
        and obj.__module__ == module.__name__
    ]


def builtin_strategies() -> dict[str, type[Strategy]]:
    """The reference strategies, found in ``baselines/*.py`` (the form a submission takes)."""
    found: dict[str, type[Strategy]] = {}
    for path in sorted(baselines_dir().glob("*.py")):
        for cls in _strategy_classes(_load_module(path)):
            found[cls.name] = cls
    return found


def load_strategy_class(ref: str) -> type[Strategy]:
    """A strategy by name (a baseline) or as ``path/to/file.py:ClassName``."""
    if ":" in ref and ref.split(":", 1)[0].endswith(".py"):
        file_part, class_name = ref.rsplit(":", 1)
        path = Path(file_part)
        if not path.exists():
            raise UserError(f"strategy file {file_part!r} does not exist", where="--strategy")
        module = _load_module(path)
        cls = getattr(module, class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
            raise UserError(
                f"no Strategy subclass named {class_name!r} in that file", where=str(path)
            )
        return cls
    strategies = builtin_strategies()
    if ref not in strategies:
        raise UserError(
            f"unknown strategy {ref!r}; known: {', '.join(sorted(strategies))}", where="--strategy"
        )
    return strategies[ref]


def strategy_source_hash(cls: type[Strategy]) -> str:
    source = Path(inspect.getfile(cls)).read_bytes()
    return hashlib.sha256(source).hexdigest()[:16]
