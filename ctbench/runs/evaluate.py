"""Evaluation of every task after every stage: scores, per-item results, and entropy.

Verifiable tasks are decoded greedily. Open tasks whose judge values variety are scored on
K samples at temperature 1 (greedy decoding gives one pattern per prompt, so a greedy
novelty score would be 0 by construction). Entropy has two views (DESIGN §5): the mean
token entropy of the policy on sampled completions, and the entropy over *distinct*
completions among K samples per prompt, because token entropy can fall while whole outputs
grow more varied.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from ctbench.runs.metrics import mean_and_stderr
from ctbench.scoring.rewards import ExtractedAnswer, Reward
from ctbench.tracks.taskdata import Item, Task
from ctbench.training.compute import ComputeMeter
from ctbench.training.rollout import RolloutBackend


@dataclass
class TaskEvaluation:
    score: float
    stderr: float
    n: int
    token_entropy: float
    sequence_entropy: float
    distinct_ratio: float
    items: list[dict[str, Any]] = field(default_factory=list, repr=False)
    # Completions with no extractable answer (tasks that declare ``reward.extract``; None
    # for the others, whose reward reads the whole completion).
    format_failures: int | None = None

    def summary(self) -> dict[str, float]:
        summary = {
            "score": self.score,
            "stderr": self.stderr,
            "n": self.n,
            "token_entropy": self.token_entropy,
            "sequence_entropy": self.sequence_entropy,
            "distinct_ratio": self.distinct_ratio,
        }
        if self.format_failures is not None:
            summary["format_failures"] = self.format_failures
        return summary


def distinct_entropy(completions: Sequence[str]) -> float:
    """Entropy (nats) of the empirical distribution over distinct completions."""
    counts = collections.Counter(completions)
    total = len(completions)
    return -sum(c / total * math.log(c / total) for c in counts.values())


class Evaluator:
    def __init__(
        self,
        tasks: dict[str, Task],
        rewards: dict[str, Reward],
        rollout: RolloutBackend,
        meter: ComputeMeter,
        *,
        entropy_prompts: int = 48,
        entropy_samples: int = 4,
        max_items: int | None = None,
        batch_size: int = 512,
        prompt_text: Callable[[Item], str] | None = None,
    ) -> None:
        self.tasks = tasks
        # What the model sees for an item (the engine's PromptFormat for chat tasks).
        self.prompt_text = prompt_text or (lambda item: item.prompt)
        self.rewards = rewards
        self.rollout = rollout
        self.meter = meter
        self.entropy_prompts = entropy_prompts
        self.entropy_samples = entropy_samples
        self.max_items = max_items  # the track's eval.max_items: score the first N items only
        self.batch_size = batch_size

    def _generate(
        self,
        model: PreTrainedModel,
        items: Sequence[Item],
        samples: int,
        *,
        greedy: bool,
        temperature: float,
        max_new_tokens: int,
        generator: torch.Generator,
        phase: str,
    ) -> tuple[list[list[str]], list[float]]:
        """Completions grouped per item, plus per-token entropies of every sampled token."""
        prompts = [text for item in items for text in [self.prompt_text(item)] * samples]
        completions: list[str] = []
        entropies: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = self.rollout.generate(
                model,
                prompts[start : start + self.batch_size],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                greedy=greedy,
                generator=generator,
            )
            completions.extend(batch.completions)
            entropies.extend(batch.token_entropy[batch.completion_mask.bool()].tolist())
            self.meter.book(
                phase, samples=len(batch.completions), generated_tokens=batch.generated_tokens
            )
        groups = [completions[i * samples : (i + 1) * samples] for i in range(len(items))]
        return groups, entropies

    @torch.no_grad()
    def evaluate_task(
        self, model: PreTrainedModel, task: Task, seed: int, phase: str = "eval"
    ) -> TaskEvaluation:
        spec = task.spec
        items = task.eval if self.max_items is None else task.eval[: self.max_items]
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        greedy = spec.eval.decoding == "greedy"
        samples = 1 if greedy else spec.eval.samples_per_prompt
        groups, _ = self._generate(
            model,
            items,
            samples,
            greedy=greedy,
            temperature=spec.eval.temperature,
            max_new_tokens=spec.max_new_tokens,
            generator=generator,
            phase=phase,
        )
        reward = self.rewards[spec.name]
        scores = reward.score_groups(items, groups, training=False)
        per_item = [sum(row) / len(row) for row in scores]
        answers = reward.answers(items, groups) if isinstance(reward, ExtractedAnswer) else None
        mean, stderr = mean_and_stderr(per_item)

        # Entropy view: K samples at temperature 1 on the first prompts of the eval set.
        probe_items = items[: self.entropy_prompts]
        k = self.entropy_samples
        sampled, token_entropies = self._generate(
            model,
            probe_items,
            k,
            greedy=False,
            temperature=1.0,
            max_new_tokens=spec.max_new_tokens,
            generator=generator,
            phase=phase,
        )
        token_entropy = sum(token_entropies) / max(len(token_entropies), 1)
        seq_entropy = sum(distinct_entropy(g) for g in sampled) / len(sampled)
        distinct = sum(len(set(g)) / k for g in sampled) / len(sampled)

        records = [
            {
                "index": item.index,
                "prompt_hash": item.prompt_hash,
                "prompt": item.prompt,
                "answer": item.answer,
                "completions": group,
                "scores": row,
                "score": score,
            }
            for item, group, row, score in zip(items, groups, scores, per_item, strict=True)
        ]
        failures = None
        if answers is not None:  # what each completion was graded as; None = format failure
            for record, extracted in zip(records, answers, strict=True):
                record["answers"] = extracted
            failures = sum(a is None for group in answers for a in group)
        return TaskEvaluation(
            score=mean,
            stderr=stderr,
            n=len(per_item),
            token_entropy=token_entropy,
            sequence_entropy=seq_entropy,
            distinct_ratio=distinct,
            items=records,
            format_failures=failures,
        )

    def evaluate(
        self, model: PreTrainedModel, seed: int, phase: str = "eval"
    ) -> dict[str, TaskEvaluation]:
        with self.meter.timed(phase):
            return {
                name: self.evaluate_task(model, task, seed + 7919 * index, phase)
                for index, (name, task) in enumerate(self.tasks.items())
            }
