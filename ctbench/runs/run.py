"""One run: (track, strategy, seed) → ``<out>/<run-id>/result.json``.

The loop: evaluate the base model (row 0); then for each stage or merge the strategy
yields, check it (tasks, start point, budget), train or merge, evaluate every task, and
*commit* it (samples, checkpoint, then state), so an interrupted run resumes after its last
finished item. Each stage's random seeds derive from (run seed, item index) and each stage
starts a fresh optimizer, so a resumed run ends with exactly the numbers of an
uninterrupted one on the same CPU.

Checkpoints live in ``checkpoints/<index>-<name>`` and are never overwritten: state.json
names the main line's current checkpoint and every kept branch, so a crash between writing
a checkpoint and writing the state leaves an orphan folder (removed on resume), never a
checkpoint that is ahead of the state. When the run ends, the main line's last checkpoint
is copied to ``final-model/`` (what ``ctbench eval-general`` scores) and checkpoints/ goes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import fcntl
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from ctbench.common.atomic import (
    fsync_dir,
    fsync_tree,
    write_json_atomic,
    write_jsonl_atomic,
)
from ctbench.errors import UserError
from ctbench.runs.config import RunConfig, derived_seed, resolve_device
from ctbench.runs.evaluate import Evaluator, TaskEvaluation
from ctbench.runs.result import SCHEMA_VERSION, build_result
from ctbench.scoring.judge_backends import JudgeUnavailable
from ctbench.scoring.llm_judge import JUDGE_CACHE, LLMJudge, llm_judges
from ctbench.scoring.rewards import build_reward, chance_level
from ctbench.strategies.plugins import resolve_strategy
from ctbench.strategy import (
    BASE,
    CURRENT,
    OBJECTIVES,
    BudgetExceeded,
    GradientProbe,
    Merge,
    ScheduleItem,
    Stage,
    StrategyContext,
    StrategyFailed,
)
from ctbench.tracks.track import Track, is_track_path, load_track
from ctbench.training import adapters
from ctbench.training.compute import ComputeMeter
from ctbench.training.engine import Engine, StepLog
from ctbench.training.gradients import first_order_transfer, gradient_cosines, task_gradient
from ctbench.training.merging import merge_checkpoints
from ctbench.training.rollout import HFRollout
from ctbench.training.tiny_base import check_base_buildable, ensure_base_checkpoint, load_base

__all__ = ["FINAL_MODEL", "SCHEMA_VERSION", "Run", "RunObserver", "SilentObserver"]

# The main line's final model, kept when the run ends (checkpoints/ is removed).
FINAL_MODEL = "final-model"


class RunObserver(Protocol):
    """Where progress goes (the CLI draws rich bars; tests pass a silent one)."""

    def base_progress(self, step: int, total: int, dev: dict[str, float]) -> None: ...
    def stage_started(self, index: int, stage: ScheduleItem) -> None: ...
    def step_done(self, log: StepLog) -> None: ...
    def stage_finished(self, index: int, row: dict[str, TaskEvaluation]) -> None: ...
    def note(self, message: str) -> None: ...


class SilentObserver:
    def base_progress(self, step: int, total: int, dev: dict[str, float]) -> None: ...
    def stage_started(self, index: int, stage: ScheduleItem) -> None: ...
    def step_done(self, log: StepLog) -> None: ...
    def stage_finished(self, index: int, row: dict[str, TaskEvaluation]) -> None: ...
    def note(self, message: str) -> None: ...


def _ensure_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write there: {exc.strerror}", where=f"--out {out}") from exc


def new_run_id(track_name: str, strategy_name: str, seed: int) -> str:
    """``<track>-<strategy>-s<seed>-<time>-<random>``: the track's *name*, never the path it
    was given by, so a run folder always lands under ``--out``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    suffix = os.urandom(2).hex()

    def safe(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)

    return f"{safe(track_name)}-{safe(strategy_name)}-s{seed}-{stamp}-{suffix}"


class Run:
    """A run folder and everything needed to (re)start it."""

    def __init__(
        self, run_dir: Path, config: RunConfig, observer: RunObserver, *, fresh: bool = False
    ) -> None:
        self.dir = run_dir
        # Made by this process just now (not resumed): only such a folder may be removed
        # when its strategy fails before doing anything.
        self.fresh = fresh
        self.judges: dict[str, LLMJudge] = {}  # the tasks scored by an LLM judge
        self.config = config
        self.observer = observer
        self.resolved = resolve_strategy(config.strategy)
        self.strategy = self.resolved.instantiate(config.params)
        self.track: Track = load_track(config.track)
        self.budget = config.budget if config.budget is not None else self.track.spec.budget_steps
        self.state_path = run_dir / "state.json"
        self.checkpoints = run_dir / "checkpoints"

    # ------------------------------------------------------------------ public entry
    @classmethod
    def create(
        cls, config: RunConfig, out: Path, observer: RunObserver, *, run_id: str | None = None
    ) -> Run:
        """Validate everything *before* any folder is made: bad input writes nothing."""
        if config.budget is not None and config.budget <= 0:
            raise UserError(
                f"expected a positive number of steps, got {config.budget}", where="--budget"
            )
        device = resolve_device(config.device)
        resolved = resolve_strategy(config.strategy)
        resolved.instantiate(config.params)
        track = load_track(config.track)
        if track.spec.memory.precision == "bf16" and not device.startswith("cuda"):
            raise UserError(
                "precision bf16 is CUDA autocast and this run has no GPU (--device "
                f"{config.device}); use precision: fp32 on CPU",
                where=f"{track.spec.file}: memory.precision",
            )
        if is_track_path(config.track):
            # Recorded absolute, so `--resume` works from any directory.
            config = dataclasses.replace(config, track=str(Path(config.track).resolve()))
        for task in track.tasks.values():  # reward settings and item fields, checked now
            build_reward(task)
            chance_level(task)
        check_base_buildable(track)
        _ensure_writable(out)
        run_dir = out / (run_id or new_run_id(track.spec.name, resolved.name, config.seed))
        if run_id is not None and run_dir.exists():
            return cls.resume(run_dir, observer)
        staging = Path(tempfile.mkdtemp(prefix=".run-", dir=out))
        write_json_atomic(staging / "config.json", asdict(config))
        os.rename(staging, run_dir)
        return cls(run_dir, config, observer, fresh=True)

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
            # Killed between writing result.json and removing checkpoints/: finish that.
            shutil.rmtree(self.checkpoints, ignore_errors=True)
            self.observer.note(f"{self.dir} is already complete")
            return json.loads((self.dir / "result.json").read_text())
        with self._exclusive():
            return self._execute_guarded()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One process per run folder: two resumes of one folder would remove each other's
        staging checkpoints and merges. The lock is on config.json (no file of its own) and
        the kernel drops it when the process ends, however it ends."""
        with open(self.dir / "config.json", "rb") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    "another ctbench process is running this folder; wait for it to finish "
                    "(or stop it) before resuming",
                    where=str(self.dir),
                ) from None
            yield

    def _execute_guarded(self) -> dict[str, Any]:
        try:
            return self._execute()
        except JudgeUnavailable as exc:
            raise JudgeUnavailable(
                f"{exc.message} — the run folder keeps its finished items and every verdict "
                f"so far ({JUDGE_CACHE}); once the judge answers, "
                f"`ctbench run --resume {self.dir}`",
                where=exc.where,
            ) from exc
        except StrategyFailed as exc:
            done = self._abandon_if_nothing_trained()
            if done is None:
                raise
            # Something only the running strategy could reveal: keep the finished items,
            # mark the folder failed (a leaderboard never mistakes it for a result), and say
            # how to go on once the cause is fixed.
            write_json_atomic(
                self.dir / "failed.json",
                {
                    "error": str(exc),
                    "items_done": done,
                    "time": dt.datetime.now(dt.UTC).isoformat(),
                },
            )
            raise type(exc)(  # the same kind (BudgetExceeded stays BudgetExceeded)
                f"{exc.message} — the run folder keeps its {done} finished item(s) and is "
                f"marked failed; fix the cause, then `ctbench run --resume {self.dir}`",
                where=exc.where,
            ) from exc

    def _execute(self) -> dict[str, Any]:
        # Branches and merges load and save checkpoints often; their per-file bars are noise.
        hf_logging.disable_progress_bar()
        started = dt.datetime.now(dt.UTC).isoformat()
        model, tokenizer, base_report = load_base(self.track, self.observer.base_progress)
        adapters.mark_track_base(model)
        self.base_path = ensure_base_checkpoint(self.track)
        self.device = resolve_device(self.config.device)
        state = self._load_state()
        (self.dir / "failed.json").unlink(missing_ok=True)  # a resume is the retry
        inputs = {
            "track_hash": self.track.content_hash(),
            "strategy_source_hash": self.resolved.source_hash(),
        }
        if state is None:
            state = {
                "started": started,
                "meter": ComputeMeter().to_json(),
                "rows": [],
                "items": [],
                "main": None,
                "kept": {},
                "inputs": inputs,
            }
        else:
            self._check_inputs_unchanged(state, inputs)
            self.observer.note(f"resuming after item {len(state['items'])}")
            if state["main"] is not None:
                model = self._load(self.dir / state["main"])
        model.to(self.device)
        meter = ComputeMeter.from_json(state["meter"])
        tasks = self.track.tasks
        rewards = {name: build_reward(task) for name, task in tasks.items()}
        self.judges = llm_judges(rewards)
        # The judge cache's last row at the last commit: replies stored past it were paid
        # for by the attempt being redone. A state without judge counts committed none; one
        # written before this mark existed counts every row as committed, as it then did.
        committed_rows = state.get("judge_cache_rows", None if state.get("judges") else 0)
        for name, judge in self.judges.items():
            judge.bind(meter=meter, cache_path=self.dir / JUDGE_CACHE)
            judge.resume_from(committed_rows)
            if name in state.get("judges", {}):
                judge.restore_stats(state["judges"][name])
        rollout = HFRollout(tokenizer)
        spec = self.track.spec
        engine = Engine(
            model,
            tokenizer,
            tasks,
            rewards,
            rollout,
            rl=spec.rl,
            sft=spec.sft,
            meter=meter,
            memory=spec.memory,
        )
        evaluator = Evaluator(
            tasks,
            rewards,
            rollout,
            meter,
            entropy_prompts=spec.eval.entropy_prompts,
            entropy_samples=spec.eval.entropy_samples,
            max_items=spec.eval.max_items,
            prompt_text=engine.prompts.text,
        )
        seed = self.config.seed
        if not state["rows"]:
            row = evaluator.evaluate(model, derived_seed(seed, 0, 1))
            self._commit(state, meter, None, row, [])
        ctx = StrategyContext(
            task_names=tuple(tasks),
            domains={n: t.spec.domain for n, t in tasks.items()},
            budget=self.budget,
            seed=seed,
            rng=random.Random(seed),
            chance={n: chance_level(t) for n, t in tasks.items()},
            evaluations=[_scores(state["rows"][0])],
            entropies=[_entropies(state["rows"][0])],
        )
        main = model
        index = 0
        for item in self._schedule(ctx):
            if isinstance(item, GradientProbe):  # a measurement: no row, no steps, no index
                ctx.measurements.append(
                    self._gradient_probe(item, ctx, state, len(ctx.measurements), engine, meter)
                )
                continue
            index += 1
            self._check_item(item, ctx, state, index)
            self._check_report(ctx.report)  # what the strategy reported before this yield
            if isinstance(item, Stage):
                try:  # hyper-parameters checked by name and type before the stage trains
                    engine.stage_config(item.objective, item.hparams)
                except UserError as exc:
                    raise StrategyFailed(
                        f"stage {item.name or index}: {exc}", where=self._where()
                    ) from exc
            if index <= len(state["items"]):
                recorded = state["items"][index - 1]["item"]
                if recorded != item.to_json():
                    raise StrategyFailed(
                        f"asked for a different item {index} than the interrupted run "
                        "recorded; it is not deterministic in its seed",
                        where=self._where(),
                    )
            else:
                self.observer.stage_started(index, item)
                if isinstance(item, Merge):
                    with meter.timed("merge"):
                        main = self._merge(item, state, index)
                    row = evaluator.evaluate(main, derived_seed(seed, index, 1))
                    self._commit(state, meter, item, row, [], model=main, index=index)
                else:
                    target = self._with_adapters(
                        self._start_model(item, main, state), derived_seed(seed, index, 3)
                    )
                    if item.main_line:
                        main = target
                    engine.bind(target)
                    phase = "probe" if item.probe else "train"
                    logs = engine.train_stage(
                        item.mixture,
                        item.objective,
                        item.steps,
                        derived_seed(seed, index, 0),
                        phase=phase,
                        hparams=item.hparams,
                        on_step=self.observer.step_done,
                    )
                    if adapters.is_adapted(target) and not adapters.on_track_base(target):
                        # Adapters over a merged model: folded now, as its checkpoint will be.
                        target = adapters.folded(target)
                        if item.main_line:
                            main = target
                    row = evaluator.evaluate(
                        target,
                        derived_seed(seed, index, 1),
                        phase="probe" if item.probe else "eval",
                    )
                    self._commit(state, meter, item, row, logs, model=target, index=index)
                self.observer.stage_finished(index, row)
            ctx.spent += item.steps
            ctx.names.append(item.name)
            ctx.evaluations.append(_scores(state["rows"][index]))
            ctx.entropies.append(_entropies(state["rows"][index]))
        self._check_report(ctx.report)
        final_model = self._keep_final_model(state)
        result = build_result(
            run_id=self.dir.name,
            config=self.config,
            budget=self.budget,
            track=self.track,
            resolved=self.resolved,
            strategy=self.strategy,
            report=ctx.report,
            state=state,
            meter=meter,
            base_report=base_report,
            device=self.device,
            engine_config=engine.config_json(),
            samples_dir=self.dir,
            final_model=final_model,
        )
        write_json_atomic(self.dir / "result.json", result)
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        return result

    def _gradient_probe(
        self,
        probe: GradientProbe,
        ctx: StrategyContext,
        state: dict[str, Any],
        position: int,
        engine: Engine,
        meter: ComputeMeter,
    ) -> dict[str, Any]:
        """Measure (or, on resume, replay) the ``position``-th gradient probe; durable in
        state.json before the strategy sees it, like a finished stage."""
        where = self._where()
        unknown = sorted(set(probe.tasks) - set(ctx.task_names))
        if not probe.tasks or unknown or len(set(probe.tasks)) != len(probe.tasks):
            raise StrategyFailed(
                "a gradient probe needs distinct known task names; got "
                f"{', '.join(probe.tasks) or '(none)'}",
                where=where,
            )
        if (
            isinstance(probe.batches, bool)
            or not isinstance(probe.batches, int)
            or (probe.batches < 1)
        ):
            raise StrategyFailed(
                f"a gradient probe needs a positive whole number of batches, got {probe.batches!r}",
                where=where,
            )
        recorded = state.setdefault("measurements", [])
        if position < len(recorded):
            if recorded[position]["request"] != probe.to_json():
                raise StrategyFailed(
                    f"asked for a different gradient probe {position + 1} than the "
                    "interrupted run recorded; it is not deterministic in its seed",
                    where=where,
                )
            return recorded[position]["result"]
        seed = self.config.seed
        self.observer.note(
            f"gradient probe at the base: {len(probe.tasks)} task(s) × {probe.batches} batch(es)"
        )
        model = self._with_adapters(self._load(self.base_path), derived_seed(seed, 0, 5, position))
        engine.bind(model)
        started = time.perf_counter()
        with meter.timed("probe"):
            gradients = {
                task: task_gradient(
                    engine, task, probe.batches, derived_seed(seed, 0, 6, position, k)
                )
                for k, task in enumerate(probe.tasks)
            }
        wall = time.perf_counter() - started
        result = {
            "tasks": list(probe.tasks),
            "transfer_adam": first_order_transfer(probe.tasks, gradients, "adam"),
            "transfer_sgd": first_order_transfer(probe.tasks, gradients, "sgd"),
            "cosine": gradient_cosines(probe.tasks, gradients),
            "mean_reward": {t: g.mean_reward for t, g in gradients.items()},
            "batches": probe.batches,
            "samples": sum(g.samples for g in gradients.values()),
            "generated_tokens": sum(g.generated_tokens for g in gradients.values()),
            "wall_s": wall,
        }
        del gradients, model
        recorded.append({"request": probe.to_json(), "result": result})
        state["meter"] = meter.to_json()
        self._commit_judges(state)  # an LLM judge scored the probe's rollouts
        write_json_atomic(self.state_path, state)
        return result

    def _commit_judges(self, state: dict[str, Any]) -> None:
        """The judges' counts so far, and the cache row they reach, go into the state about to
        be written: a resume restores the counts and books replies past that row as calls."""
        if not self.judges:
            return
        state["judges"] = {n: j.stats_json() for n, j in self.judges.items()}
        state["judge_cache_rows"] = max(j.cache_high_water() for j in self.judges.values())

    def _keep_final_model(self, state: dict[str, Any]) -> dict[str, str] | None:
        """Copy the main line's last checkpoint to ``final-model/`` (checkpoints/ goes when
        the run ends): staged, then renamed over any earlier copy, so a resume after a crash
        between this copy and result.json redoes it cleanly. None: no main-line item trained
        or merged anything, so the final model is the base."""
        for stale in self.dir.glob(".final-model-*"):  # a copy killed half way
            shutil.rmtree(stale, ignore_errors=True)
        if state["main"] is None:
            shutil.rmtree(self.dir / FINAL_MODEL, ignore_errors=True)
            return None
        source = self.dir / state["main"]
        staging = Path(tempfile.mkdtemp(prefix=".final-model-", dir=self.dir))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            old = self.dir / f".final-model-old-{os.urandom(4).hex()}"
            if (self.dir / FINAL_MODEL).exists():  # os.replace cannot replace a non-empty dir
                os.rename(self.dir / FINAL_MODEL, old)
            os.rename(staging, self.dir / FINAL_MODEL)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        kind = "adapters" if (source / adapters.ADAPTER_CONFIG).exists() else "full"
        return {"path": FINAL_MODEL, "kind": kind}

    def _check_report(self, report: dict[str, Any]) -> None:
        """``ctx.report`` goes into result.json: refuse what JSON cannot hold now, not after
        the last stage."""
        for key, value in report.items():
            try:  # as result.json is written: NaN and infinities are no JSON
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise StrategyFailed(
                    f"ctx.report[{key!r}] cannot be written as JSON ({exc}); report plain "
                    "finite numbers (None for a missing one), strings, lists and dicts",
                    where=self._where(),
                ) from exc

    def _where(self) -> str:
        return f"strategy {self.resolved.name} ({self.resolved.origin})"

    def _schedule(self, ctx: StrategyContext):
        """The strategy's generator, with its own failures reported as the strategy's."""
        try:
            iterator = iter(self.strategy.schedule(ctx))
        except UserError as exc:
            raise StrategyFailed(str(exc)) from exc
        except Exception as exc:
            raise StrategyFailed(
                f"schedule() raised {type(exc).__name__}: {exc}", where=self._where()
            ) from exc
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except StrategyFailed:
                raise
            except UserError as exc:  # the strategy's own check (e.g. too small a budget)
                raise StrategyFailed(str(exc)) from exc
            except Exception as exc:
                raise StrategyFailed(
                    f"schedule() raised {type(exc).__name__}: {exc}", where=self._where()
                ) from exc
            yield item

    def _abandon_if_nothing_trained(self) -> int | None:
        """A fresh run whose strategy fails before its first item leaves no folder behind;
        returns how many items the folder keeps (None: it was removed). A resumed folder is
        never removed, nor one holding paid-for work without an item yet (an LLM judge's
        verdicts, a gradient probe's measurements)."""
        state = self._load_state_quietly()
        done = len(state["items"]) if state is not None else 0
        paid = (self.dir / JUDGE_CACHE).exists() or bool(state and state.get("measurements"))
        if self.fresh and done == 0 and not paid:
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        return done

    # --------------------------------------------------------------------- checking
    def _check_item(
        self, item: Any, ctx: StrategyContext, state: dict[str, Any], index: int
    ) -> None:
        where = self._where()
        if not isinstance(item, Stage | Merge):
            raise StrategyFailed(
                f"yielded {type(item).__name__}; expected a Stage or a Merge", where=where
            )
        taken = set(ctx.names)
        kept = set(state["kept"])  # branches and probes with a checkpoint on disk
        if isinstance(item, Merge):
            missing = [s for s in item.sources if s not in kept]
            if not item.sources or missing:
                raise StrategyFailed(
                    f"merge {item.name!r} needs earlier branch names as sources; "
                    f"unknown: {', '.join(missing) or '(none given)'}",
                    where=where,
                )
        else:
            unknown = sorted(set(item.mixture) - set(ctx.task_names))
            if unknown:
                raise StrategyFailed(f"asked for unknown task {unknown[0]!r}", where=where)
            if item.objective not in OBJECTIVES:
                raise StrategyFailed(
                    f"unknown objective {item.objective!r}; expected one of "
                    f"{', '.join(OBJECTIVES)}",
                    where=where,
                )
            if not isinstance(item.steps, int) or item.steps <= 0 or not item.tasks:
                raise StrategyFailed(
                    "a stage needs a positive number of steps and a task with positive weight",
                    where=where,
                )
            if item.start not in (CURRENT, BASE) and item.start not in kept:
                raise StrategyFailed(
                    f"stage {item.name or index} starts from {item.start!r}, which is neither "
                    "'current', 'base' nor an earlier branch",
                    where=where,
                )
            if item.steps > ctx.remaining:
                raise BudgetExceeded(
                    f"stage {item.name or '?'} asks for {item.steps} steps but only "
                    f"{ctx.remaining} of the budget of {ctx.budget} remain",
                    where=self._where(),
                )
        needs_name = isinstance(item, Merge) or not item.main_line
        if needs_name and (not item.name or item.name in taken or item.name in (BASE, CURRENT)):
            raise StrategyFailed(
                f"branches, probes and merges need a unique name, got {item.name!r}", where=where
            )

    # ------------------------------------------------------------------------ models
    def _load(self, path: Path) -> PreTrainedModel:
        return adapters.load_checkpoint(path, self.base_path, self.device)

    def _with_adapters(self, model: PreTrainedModel, seed: int) -> PreTrainedModel:
        """The model a LoRA stage trains: ``model`` itself when it carries adapters already
        (a curriculum trains one adapter across its stages), else fresh ones from ``seed``."""
        lora = self.track.spec.model.lora
        if lora is None or adapters.is_adapted(model):
            return model
        return adapters.add_adapters(model, lora, seed)

    def _start_model(
        self, stage: Stage, main: PreTrainedModel, state: dict[str, Any]
    ) -> PreTrainedModel:
        """The model a stage trains: the main line itself, or a fresh copy of its start."""
        if stage.start == CURRENT:
            return main if stage.main_line else copy.deepcopy(main)
        if stage.start == BASE:
            return self._load(self.base_path)
        return self._load(self.dir / state["kept"][stage.start])

    def _merge(self, merge: Merge, state: dict[str, Any], index: int) -> PreTrainedModel:
        staging = Path(tempfile.mkdtemp(prefix=".merge-", dir=self.dir))
        try:
            sources = []
            for name in merge.sources:
                folder = self.dir / state["kept"][name]
                if (folder / adapters.ADAPTER_CONFIG).exists():
                    # mergekit merges full weights: fold the branch's adapters into its base.
                    full = staging / "sources" / name
                    adapters.folded(self._load(folder)).save_pretrained(full)
                    folder = full
                sources.append(folder)
            merged = staging / "merged"
            merge_checkpoints(
                sources,
                self.base_path,
                merged,
                method=merge.method,
                weights=merge.weights,
                density=merge.density,
                options=merge.options,
                seed=derived_seed(self.config.seed, index, 2),
            )
            return self._load(merged)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------------- persistence
    def _load_state_quietly(self) -> dict[str, Any] | None:
        if not self.state_path.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text())
        except ValueError as exc:
            # Writes are atomic, so this is damage from outside ctbench (a copy cut short).
            raise UserError(
                f"state.json is not valid JSON ({exc}); restore it or start the run afresh",
                where=str(self.state_path),
            ) from exc
        expected = {"rows", "items", "main", "kept", "meter"}
        if not isinstance(state, dict) or not expected <= set(state):
            raise UserError(
                f"state.json lacks {', '.join(sorted(expected - set(state or {})))}; "
                "restore it or start the run afresh",
                where=str(self.state_path),
            )
        return state

    def _check_inputs_unchanged(self, state: dict[str, Any], now: dict[str, str]) -> None:
        """A resumed run must finish on the track (tasks, base weights, recipe) it started
        on: else one result.json would mix two under the new hash. The strategy's code may
        change (fixing it is how a failed run goes on), but the result then says so: its
        ``strategy.earlier_source_hashes`` name the code that scheduled the earlier items.
        (Folders from before the inputs were recorded are not checked.)"""
        recorded = state.get("inputs")
        if recorded is None:
            return
        if recorded["track_hash"] != now["track_hash"]:
            raise UserError(
                f"the track (its tasks, base model or recipe) changed since this run started "
                f"(hash {recorded['track_hash'][:12]}…, now {now['track_hash'][:12]}…): "
                "restore it to resume, or start a new run",
                where=str(self.dir),
            )
        if recorded["strategy_source_hash"] != now["strategy_source_hash"]:
            earlier = recorded.setdefault("earlier_strategy_source_hashes", [])
            earlier.append(recorded["strategy_source_hash"])
            recorded["strategy_source_hash"] = now["strategy_source_hash"]
            self.observer.note(
                "the strategy's code changed since this run started: its earlier items were "
                "scheduled by the earlier code (the result names both)"
            )

    def _load_state(self) -> dict[str, Any] | None:
        state = self._load_state_quietly()
        if state is None:
            return None
        referenced = {p for p in [state["main"], *state["kept"].values()] if p}
        for path in referenced:
            if not (self.dir / path).exists():
                raise UserError(
                    f"state.json names checkpoint {path} but it is missing", where=str(self.dir)
                )
        for staging in self.dir.glob(".merge-*"):  # a merge killed before it was loaded
            shutil.rmtree(staging, ignore_errors=True)
        if self.checkpoints.exists():  # orphans of a crash between checkpoint and state
            for folder in self.checkpoints.iterdir():
                if f"checkpoints/{folder.name}" not in referenced:
                    shutil.rmtree(folder, ignore_errors=True)
        return state

    def _commit(
        self,
        state: dict[str, Any],
        meter: ComputeMeter,
        item: ScheduleItem | None,
        row: dict[str, TaskEvaluation],
        logs: list[StepLog],
        *,
        model: PreTrainedModel | None = None,
        index: int = 0,
    ) -> None:
        """Make a finished item durable: samples, then its checkpoint, then state (last)."""
        for name, evaluation in row.items():
            write_jsonl_atomic(
                self.dir / "samples" / f"stage-{index:02d}-{name}.jsonl", evaluation.items
            )
        previous_main = state["main"]
        if item is not None and model is not None:
            label = "".join(c if c.isalnum() or c in "-_" else "-" for c in item.name)
            relative = f"checkpoints/{index:03d}-{label or 'stage'}"
            self.checkpoints.mkdir(exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=self.checkpoints))
            adapters.save_checkpoint(model, staging)
            fsync_tree(staging)  # durable before state.json names it and the old one goes
            os.rename(staging, self.dir / relative)
            fsync_dir(self.checkpoints)
            main_line = isinstance(item, Merge) or item.main_line
            if main_line:
                state["main"] = relative
            else:
                state["kept"][item.name] = relative
            state["items"].append({"item": item.to_json(), "trace": _trace(logs)})
        state["rows"].append({name: e.summary() for name, e in row.items()})
        state["meter"] = meter.to_json()
        self._commit_judges(state)
        write_json_atomic(self.state_path, state)
        if previous_main is not None and previous_main != state["main"]:
            shutil.rmtree(self.dir / previous_main, ignore_errors=True)


def _trace(logs: list[StepLog]) -> dict[str, Any]:
    trace: dict[str, Any] = {
        "reward": [log.reward for log in logs],
        "entropy": [log.entropy for log in logs],
        "loss": [log.loss for log in logs],
        "reward_by_task": [log.reward_by_task for log in logs],
        "entropy_by_task": [log.entropy_by_task for log in logs],
    }
    if logs and "mu" in logs[0].extra:
        trace["mu"] = [log.extra["mu"] for log in logs]
        trace["sft_loss"] = [log.extra["sft_loss"] for log in logs]
    return trace


def _scores(row: dict[str, dict[str, float]]) -> dict[str, float]:
    return {name: cell["score"] for name, cell in row.items()}


def _entropies(row: dict[str, dict[str, float]]) -> dict[str, float]:
    return {name: cell["token_entropy"] for name, cell in row.items()}
