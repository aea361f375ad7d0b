"""Measuring the *band*: is every task of a track weak-but-learnable for its base model?

A task is in the band when the base model's chance-normalised eval score is in
[0.20, 0.60] and one single-task RL stage of the track's per-task budget raises it by at
least 0.10. Outside the band a schedule comparison measures nothing on that task: a
hopeless task gives RL no reward signal, a saturated one has no room to move or forget.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ctbench.runs.config import derived_seed
from ctbench.runs.evaluate import Evaluator
from ctbench.scoring.rewards import build_reward, chance_level
from ctbench.tracks.chat import PromptFormat
from ctbench.tracks.track import Track
from ctbench.training.adapters import add_adapters
from ctbench.training.compute import ComputeMeter
from ctbench.training.engine import Engine, StepLog
from ctbench.training.rollout import HFRollout
from ctbench.training.tiny_base import load_base, normalised

BAND_LOW, BAND_HIGH, MIN_GAIN = 0.20, 0.60, 0.10


@dataclass(frozen=True)
class BandRow:
    task: str
    chance: float
    base: float
    after_rl: list[float]
    base_token_entropy: float
    after_token_entropy: list[float]
    base_sequence_entropy: float
    after_sequence_entropy: list[float]
    base_raw: float = 0.0  # the base score before chance normalisation
    base_stderr: float = 0.0
    base_n: int = 0
    base_format_failures: int | None = None

    @property
    def gain(self) -> float:
        if not self.after_rl:  # the base half only (no RL measured)
            return float("nan")
        return sum(self.after_rl) / len(self.after_rl) - self.base

    @property
    def base_in_band(self) -> bool:
        return BAND_LOW <= self.base <= BAND_HIGH

    @property
    def in_band(self) -> bool:
        return BAND_LOW <= self.base <= BAND_HIGH and self.gain >= MIN_GAIN

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "chance": self.chance,
            "base_normalised": self.base,
            "base_raw": self.base_raw,
            "base_stderr": self.base_stderr,
            "base_n": self.base_n,
            "base_format_failures": self.base_format_failures,
            "after_rl_normalised": self.after_rl,
            "gain": self.gain if self.after_rl else None,
            "base_in_band": self.base_in_band,
            "in_band": self.in_band,
            "token_entropy": {
                "base": self.base_token_entropy,
                "after_rl": self.after_token_entropy,
            },
            "sequence_entropy": {
                "base": self.base_sequence_entropy,
                "after_rl": self.after_sequence_entropy,
            },
        }


def measure_band(
    track: Track,
    seeds: list[int],
    steps: int | None = None,
    on_row: Callable[[BandRow], None] | None = None,
    task_names: list[str] | None = None,
    on_step: Callable[[str, StepLog], None] | None = None,
) -> list[BandRow]:
    """Base scores, and the gain of a single-task RL stage per task and seed. ``on_row``
    sees each task's row as soon as it is measured: on a real model on CPU a task's RL
    stage takes many minutes, and a run cut short should still leave what it measured.
    ``task_names`` measures a subset (in the track's order), so a long CPU measurement
    can be split into runs that each fit a quiet window; ``on_step`` sees every RL step
    (a real model's stage gives no other sign of progress for most of an hour)."""
    if task_names is not None:
        unknown = sorted(set(task_names) - set(track.tasks))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; the track has {sorted(track.tasks)}")
    base_model, tokenizer, _ = load_base(track)
    steps = track.spec.steps_per_task if steps is None else steps
    rewards = {n: build_reward(t) for n, t in track.tasks.items()}
    rollout = HFRollout(tokenizer)
    meter = ComputeMeter()
    evaluator = Evaluator(
        track.tasks,
        rewards,
        rollout,
        meter,
        entropy_prompts=track.spec.eval.entropy_prompts,
        entropy_samples=track.spec.eval.entropy_samples,
        max_items=track.spec.eval.max_items,
        prompt_text=PromptFormat(tokenizer, track.tasks).text,
    )
    base_eval = evaluator.evaluate(base_model, derived_seed(0, 0, 1))
    rows = []
    for task_index, (name, task) in enumerate(track.tasks.items()):
        if task_names is not None and name not in task_names:
            continue
        chance = chance_level(task)
        after, token_h, seq_h = [], [], []
        for seed in seeds if steps > 0 else []:  # steps 0: the base half of the band only
            model = copy.deepcopy(base_model)
            if track.spec.model.lora is not None:  # as a run's first stage would
                model = add_adapters(model, track.spec.model.lora, derived_seed(seed, 1, 3))
            engine = Engine(
                model,
                tokenizer,
                track.tasks,
                rewards,
                rollout,
                rl=track.spec.rl,
                sft=track.spec.sft,
                meter=meter,
                memory=track.spec.memory,
            )
            engine.train_stage(
                {name: 1.0},
                "rl",
                steps,
                derived_seed(seed, 1, task_index),
                on_step=None if on_step is None else functools.partial(on_step, name),
            )
            result = evaluator.evaluate_task(model, task, derived_seed(seed, 1, 1))
            after.append(normalised(result.score, chance))
            token_h.append(result.token_entropy)
            seq_h.append(result.sequence_entropy)
        rows.append(
            BandRow(
                task=name,
                chance=chance,
                base=normalised(base_eval[name].score, chance),
                after_rl=after,
                base_token_entropy=base_eval[name].token_entropy,
                after_token_entropy=token_h,
                base_sequence_entropy=base_eval[name].sequence_entropy,
                after_sequence_entropy=seq_h,
                base_raw=base_eval[name].score,
                base_stderr=base_eval[name].stderr,
                base_n=base_eval[name].n,
                base_format_failures=base_eval[name].format_failures,
            )
        )
        if on_row is not None:
            on_row(rows[-1])
    return rows
