"""The one training engine every strategy runs on: GRPO, SFT, and their blend.

Strategies differ only in the *schedule* of stages they ask for; the losses, rollouts,
optimizer and bookkeeping are the same code for all of them, which is what makes a
comparison between strategies fair.

A step is built from two loss terms that share one forward convention:
``rl_loss`` (rollouts → rewards → group advantages → clipped surrogate) and ``sft_loss``
(NLL on expert demonstrations, prompt masked, optionally CHORD's phi weighting). An RL
step applies the first, an SFT step the second, and a blended step applies
``(1 - mu) * rl + mu * sft`` — a composition, not a fork.
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ctbench import fastllama
from ctbench.compute import ComputeMeter
from ctbench.losses import (
    Aggregation,
    chord_phi,
    group_advantages,
    grpo_loss,
    sft_loss,
    token_logprobs,
)
from ctbench.rewards import Reward
from ctbench.rollout import RolloutBackend
from ctbench.taskdata import Item, Task

Objective = Literal["rl", "sft"]


@dataclass(frozen=True)
class RLConfig:
    """GRPO knobs; every one is recorded in the result (DESIGN §6)."""

    prompts_per_step: int = 16
    group_size: int = 8
    lr: float = 4e-4
    temperature: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0
    aggregation: Aggregation = "token-mean"
    scale_advantages: bool = True
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class SFTConfig:
    batch_size: int = 32
    lr: float = 1e-3
    max_grad_norm: float = 1.0


@dataclass
class StepLog:
    step: int
    loss: float
    reward: float | None = None
    entropy: float | None = None
    reward_by_task: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


def sequence_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class Engine:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        tasks: dict[str, Task],
        rewards: dict[str, Reward],
        rollout: RolloutBackend,
        *,
        rl: RLConfig,
        sft: SFTConfig,
        meter: ComputeMeter,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.tasks = tasks
        self.rewards = rewards
        self.rollout = rollout
        self.rl = rl
        self.sft = sft
        self.meter = meter
        self.device = next(model.parameters()).device
        self.reference: PreTrainedModel | None = None
        self.demonstration_pools = {
            name: tuple(i for i in task.train if i.demonstration is not None)
            for name, task in tasks.items()
        }

    # ----------------------------------------------------------------- forward helpers
    def completion_logprobs(
        self,
        model: PreTrainedModel,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
        group: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies of tokens ``start..`` given their prefixes.

        With ``group`` > 1 consecutive rows sharing a prompt, plain Llama models compute the
        prompt once per group (:func:`fastllama.grouped_completion_logits`: the same
        arithmetic minus the duplicates). Otherwise the model's own forward runs, and only
        positions that predict completion tokens go through the output layer."""
        if group > 1 and fastllama.supports(model):
            logits = fastllama.grouped_completion_logits(
                model, sequences, attention_mask, start, group
            )
            return token_logprobs(logits, sequences[:, start:])
        keep = sequences.shape[1] - start + 1
        logits = model(
            input_ids=sequences,
            attention_mask=attention_mask,
            position_ids=sequence_positions(attention_mask),
            logits_to_keep=keep,
        ).logits
        return token_logprobs(logits[:, :-1], sequences[:, start:])

    # ----------------------------------------------------------------------- RL term
    def rl_loss(
        self, items: Sequence[Item], generator: torch.Generator, phase: str
    ) -> tuple[torch.Tensor, StepLog]:
        group = self.rl.group_size
        prompts = [item.prompt for item in items for _ in range(group)]
        max_new = max(self.tasks[item.task].spec.max_new_tokens for item in items)
        rollout = self.rollout.generate(
            self.model,
            prompts,
            max_new_tokens=max_new,
            temperature=self.rl.temperature,
            greedy=False,
            generator=generator,
        )
        rewards = torch.zeros(len(items), group)
        by_task: dict[str, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            by_task[item.task].append(index)
        reward_by_task = {}
        for task_name, indices in sorted(by_task.items()):
            groups = [rollout.completions[i * group : (i + 1) * group] for i in indices]
            scores = self.rewards[task_name].score_groups(
                [items[i] for i in indices], groups, training=True
            )
            rewards[indices] = torch.tensor(scores, dtype=torch.float32)
            reward_by_task[task_name] = float(torch.tensor(scores).mean())
        advantages = (
            group_advantages(rewards, scale=self.rl.scale_advantages).flatten().to(self.device)
        )

        start = rollout.prompt_length
        logp, entropy = self.completion_logprobs(
            self.model, rollout.sequences, rollout.attention_mask, start, group
        )
        mask = rollout.completion_mask
        ref_logp = None
        if self.rl.beta > 0.0:
            with torch.no_grad():
                ref_logp, _ = self.completion_logprobs(
                    self.reference, rollout.sequences, rollout.attention_mask, start, group
                )
        # One update per batch (on-policy): old log-probs are the current ones, detached, so
        # the ratio starts at 1 exactly as in TRL/verl with a single PPO epoch.
        loss, stats = grpo_loss(
            logp,
            logp.detach(),
            advantages,
            mask,
            eps_low=self.rl.eps_low,
            eps_high=self.rl.eps_high,
            ref_logp=ref_logp,
            beta=self.rl.beta,
            aggregation=self.rl.aggregation,
        )
        tokens = rollout.generated_tokens
        self.meter.book(phase, samples=len(prompts), generated_tokens=tokens, trained_tokens=tokens)
        log = StepLog(
            step=-1,
            loss=float(loss.detach()),
            reward=float(rewards.mean()),
            entropy=float((entropy.detach() * mask).sum() / mask.sum().clamp(min=1.0)),
            reward_by_task=reward_by_task,
            extra=stats,
        )
        return loss, log

    # ---------------------------------------------------------------------- SFT term
    def demonstration_batch(
        self, items: Sequence[Item]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``<bos> prompt demonstration <eos>`` rows and the expert-token mask."""
        bos, eos, pad = (
            self.tokenizer.bos_token_id,
            self.tokenizer.eos_token_id,
            self.tokenizer.pad_token_id,
        )
        rows, masks = [], []
        for item in items:
            if item.demonstration is None:
                raise ValueError(
                    f"task {item.task!r} item {item.index} has no expert demonstration"
                )
            prompt = [bos, *self.tokenizer.encode(item.prompt, add_special_tokens=False)]
            answer = [*self.tokenizer.encode(item.demonstration, add_special_tokens=False), eos]
            rows.append(prompt + answer)
            masks.append([0] * len(prompt) + [1] * len(answer))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        expert = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, (row, m) in enumerate(zip(rows, masks, strict=True)):
            ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
            expert[i, : len(row)] = torch.tensor(m, dtype=torch.float32)
        return ids.to(self.device), attention.to(self.device), expert.to(self.device)

    def sft_loss(
        self, items: Sequence[Item], phase: str, *, phi_weighting: bool = False
    ) -> tuple[torch.Tensor, StepLog]:
        ids, attention, expert = self.demonstration_batch(items)
        logits = self.model(input_ids=ids, attention_mask=attention).logits
        logp, entropy = token_logprobs(logits[:, :-1], ids[:, 1:])
        mask = expert[:, 1:]
        weights = chord_phi(logp) if phi_weighting else None
        loss = sft_loss(logp, mask, weights=weights)
        tokens = int(mask.sum())
        self.meter.book(phase, samples=len(items), trained_tokens=tokens)
        log = StepLog(
            step=-1,
            loss=float(loss.detach()),
            entropy=float((entropy.detach() * mask).sum() / mask.sum().clamp(min=1.0)),
        )
        return loss, log

    # ---------------------------------------------------------------------- applying
    def apply(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, max_grad_norm: float, phase: str
    ) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        optimizer.step()
        self.meter.book(phase, optimizer_steps=1)
        return float(norm)

    def new_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """A fresh AdamW per stage: a stage is a training phase of its own, and a fresh
        optimizer makes a stage's outcome depend only on its start checkpoint and seed
        (which is also what lets an interrupted run resume bit-for-bit).

        ``foreach=True``: torch picks the per-parameter loop on CPU, one small kernel per
        parameter and operation; the multi-tensor path does the same arithmetic in fewer
        calls (bitwise-equal updates, measured) and halves the tiny model's optimizer step.
        ``fused=True`` would be faster still but rounds differently."""
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0, foreach=True)

    def train_stage(
        self,
        mixture: dict[str, float],
        objective: Objective,
        steps: int,
        seed: int,
        *,
        phase: str = "train",
        on_step: Callable[[StepLog], None] | None = None,
    ) -> list[StepLog]:
        """Run ``steps`` optimizer steps of one objective on a task mixture."""
        rng = random.Random(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        torch.manual_seed(seed)
        names = sorted(mixture)
        weights = [mixture[n] for n in names]
        lr = self.rl.lr if objective == "rl" else self.sft.lr
        optimizer = self.new_optimizer(lr)
        if objective == "rl" and self.rl.beta > 0.0:
            self.reference = copy.deepcopy(self.model).eval()
        self.model.train()
        logs = []
        with self.meter.timed(phase):
            for step in range(steps):
                if objective == "rl":
                    items = self._sample_items(
                        rng, names, weights, self.rl.prompts_per_step, demos=False
                    )
                    loss, log = self.rl_loss(items, generator, phase)
                    norm = self.apply(loss, optimizer, self.rl.max_grad_norm, phase)
                else:
                    items = self._sample_items(rng, names, weights, self.sft.batch_size, demos=True)
                    loss, log = self.sft_loss(items, phase)
                    norm = self.apply(loss, optimizer, self.sft.max_grad_norm, phase)
                log.step = step
                log.extra["grad_norm"] = norm
                logs.append(log)
                if on_step is not None:
                    on_step(log)
        self.reference = None
        for name in names:
            self.rewards[name].reset()
        return logs

    def _sample_items(
        self, rng: random.Random, names: list[str], weights: list[float], count: int, *, demos: bool
    ) -> list[Item]:
        chosen = rng.choices(names, weights=weights, k=count)
        pools = self.demonstration_pools if demos else {n: t.train for n, t in self.tasks.items()}
        items = []
        for name in chosen:
            pool = pools[name]
            if not pool:
                raise ValueError(f"task {name!r} has no expert demonstrations to train on")
            items.append(pool[rng.randrange(len(pool))])
        return items

    def config_json(self) -> dict[str, Any]:
        return {"rl": asdict(self.rl), "sft": asdict(self.sft)}
