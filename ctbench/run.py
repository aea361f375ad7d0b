"""One run: (track, strategy, seed) → ``<out>/<run-id>/result.json``.

The loop: evaluate the base model (row 0 of R); then for each stage the strategy yields,
check the budget, train, evaluate every task, and *commit* the stage (checkpoint, samples,
state), so an interrupted run resumes from its last finished stage. Each stage's random
seeds derive from (run seed, stage index) and each stage starts a fresh optimizer, so a
resumed run ends with exactly the numbers of an uninterrupted one on the same CPU.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import AutoModelForCausalLM

from ctbench.atomic import replace_dir_atomic, write_json_atomic, write_jsonl_atomic
from ctbench.base import load_base
from ctbench.compute import ComputeMeter
from ctbench.engine import Engine, StepLog
from ctbench.errors import UserError
from ctbench.evaluate import Evaluator, TaskEvaluation
from ctbench.metrics import all_metrics, metrics_to_json
from ctbench.provenance import config_hash, environment
from ctbench.rewards import build_reward, chance_level
from ctbench.rollout import HFRollout
from ctbench.strategy import (
    BudgetExceeded,
    Stage,
    Strategy,
    StrategyContext,
    load_strategy_class,
    strategy_source_hash,
)
from ctbench.track import Track, load_track

SCHEMA_VERSION = 1


class RunObserver(Protocol):
    """Where progress goes (the CLI draws rich bars; tests pass a silent one)."""

    def base_progress(self, step: int, total: int, dev: dict[str, float]) -> None: ...
    def stage_started(self, index: int, stage: Stage) -> None: ...
    def step_done(self, log: StepLog) -> None: ...
    def stage_finished(self, index: int, row: dict[str, TaskEvaluation]) -> None: ...
    def note(self, message: str) -> None: ...


class SilentObserver:
    def base_progress(self, step: int, total: int, dev: dict[str, float]) -> None: ...
    def stage_started(self, index: int, stage: Stage) -> None: ...
    def step_done(self, log: StepLog) -> None: ...
    def stage_finished(self, index: int, row: dict[str, TaskEvaluation]) -> None: ...
    def note(self, message: str) -> None: ...


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


def _ensure_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write there: {exc.strerror}", where=f"--out {out}") from exc


def new_run_id(config: RunConfig, strategy: type[Strategy]) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    suffix = os.urandom(2).hex()
    return f"{config.track}-{strategy.name}-s{config.seed}-{stamp}-{suffix}"


class Run:
    """A run folder and everything needed to (re)start it."""

    def __init__(self, run_dir: Path, config: RunConfig, observer: RunObserver) -> None:
        self.dir = run_dir
        self.config = config
        self.observer = observer
        self.strategy_cls = load_strategy_class(config.strategy)
        self.strategy = self.strategy_cls(**config.params)
        self.track: Track = load_track(config.track)
        self.budget = config.budget if config.budget is not None else self.track.spec.budget_steps
        self.state_path = run_dir / "state.json"
        self.checkpoint = run_dir / "checkpoint"

    # ------------------------------------------------------------------ public entry
    @classmethod
    def create(cls, config: RunConfig, out: Path, observer: RunObserver) -> Run:
        """Validate everything *before* any folder is made: bad input writes nothing."""
        if config.budget is not None and config.budget <= 0:
            raise UserError(
                f"expected a positive number of steps, got {config.budget}", where="--budget"
            )
        resolve_device(config.device)
        strategy_cls = load_strategy_class(config.strategy)
        strategy_cls(**config.params)
        load_track(config.track)
        _ensure_writable(out)
        run_dir = out / new_run_id(config, strategy_cls)
        run_dir.mkdir(parents=True)
        write_json_atomic(run_dir / "config.json", asdict(config))
        return cls(run_dir, config, observer)

    @classmethod
    def resume(cls, run_dir: Path, observer: RunObserver) -> Run:
        config_file = run_dir / "config.json"
        if not config_file.exists():
            raise UserError("not a ctbench run folder (no config.json)", where=str(run_dir))
        try:
            config = RunConfig(**json.loads(config_file.read_text()))
        except (ValueError, TypeError) as exc:
            raise UserError(f"unreadable config.json: {exc}", where=str(run_dir)) from exc
        return cls(run_dir, config, observer)

    # ------------------------------------------------------------------------- running
    def execute(self) -> dict[str, Any]:
        if (self.dir / "result.json").exists():
            self.observer.note(f"{self.dir} is already complete")
            return json.loads((self.dir / "result.json").read_text())
        started = dt.datetime.now(dt.UTC).isoformat()
        model, tokenizer, base_report = load_base(self.track, self.observer.base_progress)
        state = self._load_state()
        if state is None:
            state = {
                "started": started,
                "meter": ComputeMeter().to_json(),
                "rows": [],
                "stages": [],
            }
        else:
            model = AutoModelForCausalLM.from_pretrained(self.checkpoint, dtype=torch.float32)
            self.observer.note(f"resuming after stage {len(state['stages'])}")
        device = resolve_device(self.config.device)
        model.to(device)
        meter = ComputeMeter.from_json(state["meter"])
        tasks = self.track.tasks
        rewards = {name: build_reward(task) for name, task in tasks.items()}
        rollout = HFRollout(tokenizer)
        engine = Engine(
            model,
            tokenizer,
            tasks,
            rewards,
            rollout,
            rl=self.track.spec.rl,
            sft=self.track.spec.sft,
            meter=meter,
        )
        evaluator = Evaluator(
            tasks,
            rewards,
            rollout,
            meter,
            entropy_prompts=self.track.spec.eval.entropy_prompts,
            entropy_samples=self.track.spec.eval.entropy_samples,
        )
        seed = self.config.seed
        if not state["rows"]:
            row = evaluator.evaluate(model, derived_seed(seed, 0, 1))
            self._commit(state, meter, None, row, [], model, index=0)
        ctx = StrategyContext(
            task_names=tuple(tasks),
            domains={n: t.spec.domain for n, t in tasks.items()},
            budget=self.budget,
            seed=seed,
            rng=random.Random(seed),
            evaluations=[_scores(state["rows"][0])],
        )
        schedule = self.strategy.schedule(ctx)
        for index, stage in enumerate(schedule, start=1):
            self._check_stage(stage, ctx)
            if index <= len(state["stages"]):
                # Replaying a finished stage: the strategy must ask for the same thing again.
                if state["stages"][index - 1]["stage"] != stage.to_json():
                    raise UserError(
                        f"strategy {self.strategy_cls.name!r} asked for a different stage {index} "
                        "than the interrupted run recorded; it is not deterministic in its seed",
                        where=str(self.dir),
                    )
            else:
                self.observer.stage_started(index, stage)
                phase = "probe" if stage.probe else "train"
                logs = engine.train_stage(
                    stage.mixture,
                    stage.objective,
                    stage.steps,
                    derived_seed(seed, index, 0),
                    phase=phase,
                    on_step=self.observer.step_done,
                )
                row = evaluator.evaluate(model, derived_seed(seed, index, 1))
                self._commit(state, meter, stage, row, logs, model, index=index)
                self.observer.stage_finished(index, row)
            ctx.spent += stage.steps
            ctx.evaluations.append(_scores(state["rows"][index]))
        result = self._result(state, meter, base_report, device, engine)
        write_json_atomic(self.dir / "result.json", result)
        shutil.rmtree(self.checkpoint, ignore_errors=True)
        return result

    def _check_stage(self, stage: Stage, ctx: StrategyContext) -> None:
        unknown = sorted(set(stage.mixture) - set(ctx.task_names))
        if unknown:
            raise UserError(
                f"strategy asked for unknown task {unknown[0]!r}",
                where=f"strategy {self.strategy_cls.name}",
            )
        if stage.steps <= 0 or not stage.tasks:
            raise UserError(
                "a stage needs a positive number of steps and a task with positive weight",
                where=f"strategy {self.strategy_cls.name}",
            )
        if stage.steps > ctx.remaining:
            raise BudgetExceeded(
                f"stage {stage.name or '?'} asks for {stage.steps} steps but only {ctx.remaining} "
                f"of the budget of {ctx.budget} remain",
                where=f"strategy {self.strategy_cls.name}",
            )

    # ------------------------------------------------------------------- persistence
    def _load_state(self) -> dict[str, Any] | None:
        if not self.state_path.exists():
            return None
        state = json.loads(self.state_path.read_text())
        if state["stages"] and not self.checkpoint.exists():
            raise UserError(
                "state.json lists finished stages but the checkpoint is missing",
                where=str(self.dir),
            )
        return state

    def _commit(self, state, meter, stage, row, logs, model, *, index: int) -> None:
        """Make a finished stage durable: samples, then checkpoint, then state (last)."""
        for name, evaluation in row.items():
            write_jsonl_atomic(
                self.dir / "samples" / f"stage-{index:02d}-{name}.jsonl", evaluation.items
            )
        if stage is not None:
            staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=self.dir))
            model.save_pretrained(staging)
            replace_dir_atomic(staging, self.checkpoint)
            state["stages"].append(
                {
                    "stage": stage.to_json(),
                    "trace": {
                        "reward": [log.reward for log in logs],
                        "entropy": [log.entropy for log in logs],
                        "loss": [log.loss for log in logs],
                        "reward_by_task": [log.reward_by_task for log in logs],
                    },
                }
            )
        state["rows"].append({name: e.summary() for name, e in row.items()})
        state["meter"] = meter.to_json()
        write_json_atomic(self.state_path, state)

    # ------------------------------------------------------------------------ result
    def _result(self, state, meter, base_report, device, engine) -> dict[str, Any]:
        names = list(self.track.tasks)
        rows = state["rows"]
        matrix = [[row[n]["score"] for n in names] for row in rows]
        chances = {n: chance_level(t) for n, t in self.track.tasks.items()}
        schedule = [{names.index(t) for t in s["stage"]["tasks"]} for s in state["stages"]]
        metrics = metrics_to_json(all_metrics(matrix, schedule)) if schedule else {}
        resolved = {
            "config": asdict(self.config),
            "budget": self.budget,
            "track_hash": self.track.content_hash(),
            "strategy_params": self.strategy.params,
        }
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.dir.name,
            "config_hash": config_hash(resolved),
            "track": {
                "name": self.track.spec.name,
                "version": self.track.spec.version,
                "hash": self.track.content_hash(),
            },
            "strategy": {
                "name": self.strategy_cls.name,
                "version": self.strategy_cls.version,
                "params": self.strategy.params,
                "source_hash": strategy_source_hash(self.strategy_cls),
            },
            "seed": self.config.seed,
            "budget": {
                "steps": self.budget,
                "spent_steps": sum(s["stage"]["steps"] for s in state["stages"]),
            },
            "tasks": names,
            "task_info": {
                n: {
                    "domain": t.spec.domain,
                    "chance": chances[n],
                    "eval_size": len(t.eval),
                    "reward_kind": t.spec.reward.kind,
                    "version": t.spec.version,
                    "hash": t.content_hash(),
                }
                for n, t in self.track.tasks.items()
            },
            "engine": engine.config_json(),
            "stages": [
                {"index": i + 1, **s["stage"], "trace": s["trace"]}
                for i, s in enumerate(state["stages"])
            ],
            "matrix": {
                "rows": ["base"]
                + [f"stage {i + 1}: {s['stage']['name']}" for i, s in enumerate(state["stages"])],
                "R": matrix,
                "stderr": [[row[n]["stderr"] for n in names] for row in rows],
                "n": [[row[n]["n"] for n in names] for row in rows],
                "normalised": [
                    [(row[n]["score"] - chances[n]) / (1 - chances[n]) for n in names]
                    for row in rows
                ],
            },
            "metrics": metrics,
            "entropy": {
                "token": [[row[n]["token_entropy"] for n in names] for row in rows],
                "sequence": [[row[n]["sequence_entropy"] for n in names] for row in rows],
                "distinct_ratio": [[row[n]["distinct_ratio"] for n in names] for row in rows],
            },
            "compute": meter.to_json(),
            "base": {
                k: base_report.get(k) for k in ("steps", "final_dev", "source") if k in base_report
            },
            "env": environment(device),
            "timestamps": {
                "started": state["started"],
                "finished": dt.datetime.now(dt.UTC).isoformat(),
            },
        }


def _scores(row: dict[str, dict[str, float]]) -> dict[str, float]:
    return {name: cell["score"] for name, cell in row.items()}
