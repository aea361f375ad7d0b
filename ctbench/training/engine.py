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

import contextlib
import copy
import dataclasses
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ctbench.scoring.rewards import Reward
from ctbench.strategy import Objective
from ctbench.tracks.chat import PromptFormat
from ctbench.tracks.engine_settings import (
    BlendConfig,
    MemorySettings,
    RLConfig,
    SFTConfig,
    StageConfig,
    with_overrides,
)
from ctbench.tracks.taskdata import Item, Task
from ctbench.training import fastllama
from ctbench.training.adapters import (
    is_adapted,
    parameter_counts,
    reference_weights,
    trainable_parameters,
)
from ctbench.training.compute import ComputeMeter
from ctbench.training.losses import (
    chord_phi,
    group_advantages,
    grpo_loss,
    mu_schedule,
    sft_loss,
    token_logprobs,
)
from ctbench.training.rollout import Rollout, RolloutBackend


@dataclass
class StepLog:
    step: int
    loss: float
    reward: float | None = None
    entropy: float | None = None
    reward_by_task: dict[str, float] = field(default_factory=dict)
    # Token entropy of each task's sampled completions: a mixed batch's mean hides whether
    # structured and open tasks move their entropy in opposite directions.
    entropy_by_task: dict[str, float] = field(default_factory=dict)
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
        blend: BlendConfig | None = None,
        memory: MemorySettings | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.tasks = tasks
        self.rewards = rewards
        self.rollout = rollout
        self.defaults = StageConfig(rl=rl, sft=sft, blend=blend or BlendConfig())
        # The settings in force; ``train_stage`` swaps in a stage's overrides for its duration.
        self.rl = rl
        self.sft = sft
        self.meter = meter
        self.memory = memory or MemorySettings()
        self.device = next(model.parameters()).device
        self.reference: PreTrainedModel | None = None
        # Plain or chat-template prompt text per task, shared with evaluation (run.py).
        self.prompts = PromptFormat(tokenizer, tasks)
        self.demonstration_pools = {
            name: tuple(i for i in task.train if i.demonstration is not None)
            for name, task in tasks.items()
        }

    def bind(self, model: PreTrainedModel) -> None:
        """Train ``model`` from now on (a branch, a probe, or the main line again)."""
        self.model = model
        self.device = next(model.parameters()).device

    def stage_config(self, objective: Objective, hparams: Mapping[str, Any]) -> StageConfig:
        """The track's engine settings with a stage's overrides, checked by name and type.

        Which fields a stage may override follows its objective: RL settings for ``rl``,
        SFT settings for ``sft``, RL and CHORD settings for ``blend``."""
        where = f"stage hparams ({objective})"
        if objective == "sft":
            return dataclasses.replace(
                self.defaults, sft=with_overrides(self.defaults.sft, hparams, where)
            )
        rl_keys = {f.name for f in dataclasses.fields(RLConfig)}
        rl_part = {k: v for k, v in hparams.items() if k in rl_keys}
        rest = {k: v for k, v in hparams.items() if k not in rl_keys}
        if objective == "rl":
            blend = self.defaults.blend
            if rest:
                with_overrides(self.defaults.rl, rest, where)  # raises, naming the key
        else:
            blend = with_overrides(self.defaults.blend, rest, where)
        return dataclasses.replace(
            self.defaults, rl=with_overrides(self.defaults.rl, rl_part, where), blend=blend
        )

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

        With ``group`` > 1 consecutive rows sharing a prompt, Llama and Qwen2 models compute the
        prompt once per group (:func:`fastllama.grouped_completion_logits`: the same
        arithmetic minus the duplicates). Otherwise the model's own forward runs, and only
        positions that predict completion tokens go through the output layer."""
        if self.grouped_path(model, group):
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
        self, items: Sequence[Item], generator: torch.Generator, phase: str, *, weight: float = 1.0
    ) -> tuple[torch.Tensor, StepLog]:
        """The GRPO term. Whole-batch mode returns the loss for :meth:`apply` to backward;
        micro-batch mode (``memory.micro_batch``) backwards ``weight`` × each micro-batch's
        share itself and returns the detached total (see :meth:`accumulating`)."""
        group = self.rl.group_size
        rollout, rewards, by_task = self.sample_and_score(items, generator)
        reward_by_task = {
            name: float(rewards[indices].mean()) for name, indices in sorted(by_task.items())
        }
        advantages = (
            group_advantages(rewards, scale=self.rl.scale_advantages).flatten().to(self.device)
        )
        mask = rollout.completion_mask
        if self.accumulating:
            loss, stats, entropy = self._grpo_microbatches(rollout, advantages, group, weight)
        else:
            loss, stats, entropy = self._grpo_term(
                rollout.sequences, rollout.attention_mask, rollout.prompt_length, group,
                advantages, mask,
            )  # fmt: skip
        tokens = rollout.generated_tokens
        self.meter.book(
            phase, samples=len(rollout.completions), generated_tokens=tokens, trained_tokens=tokens
        )
        row_entropy = (entropy * mask).sum(-1).view(len(items), group).sum(-1)
        row_tokens = mask.sum(-1).view(len(items), group).sum(-1)
        entropy_by_task = {
            name: float(row_entropy[indices].sum() / row_tokens[indices].sum().clamp(min=1.0))
            for name, indices in sorted(by_task.items())
        }
        log = StepLog(
            step=-1,
            loss=float(loss.detach()),
            reward=float(rewards.mean()),
            entropy=float((entropy * mask).sum() / mask.sum().clamp(min=1.0)),
            reward_by_task=reward_by_task,
            entropy_by_task=entropy_by_task,
            extra=stats,
        )
        return loss, log

    def sample_and_score(
        self, items: Sequence[Item], generator: torch.Generator
    ) -> tuple[Rollout, torch.Tensor, dict[str, list[int]]]:
        """Sample ``group_size`` completions of every item's prompt and score them: the
        rollout, rewards [items, group], and the item indices of each task. Shared by the
        GRPO term and the gradient measurement (:mod:`ctbench.training.gradients`), so both
        see rollouts drawn and scored the same way."""
        group = self.rl.group_size
        prompts = self.prompts.texts(items, group)
        max_new = max(self.tasks[item.task].spec.max_new_tokens for item in items)
        with self.autocast():
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
        for task_name, indices in sorted(by_task.items()):
            groups = [rollout.completions[i * group : (i + 1) * group] for i in indices]
            scores = self.rewards[task_name].score_groups(
                [items[i] for i in indices], groups, training=True
            )
            rewards[indices] = torch.tensor(scores, dtype=torch.float32)
        return rollout, rewards, dict(by_task)

    def _grpo_term(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
        group: int,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        totals: tuple[float, int] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """GRPO loss of some rows of a rollout, its stats, and its detached token entropy."""
        with self.autocast():
            logp, entropy = self.completion_logprobs(
                self.model, sequences, attention_mask, start, group
            )
            ref_logp = None
            if self.rl.beta > 0.0:
                ref_logp = self.reference_logprobs(sequences, attention_mask, start, group)
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
            totals=totals,
        )
        return loss, stats, entropy.detach()

    def _grpo_microbatches(
        self, rollout: Any, advantages: torch.Tensor, group: int, weight: float
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        mask = rollout.completion_mask
        totals = (float(mask.sum()), mask.shape[0])
        total = torch.zeros((), device=self.device)
        entropy = torch.zeros_like(mask)
        weighted: dict[str, float] = defaultdict(float)
        for rows in self.row_chunks(mask.shape[0], group):
            loss, stats, entropy[rows] = self._grpo_term(
                rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_length,
                group, advantages[rows], mask[rows], totals,
            )  # fmt: skip
            (weight * loss).backward()
            total += loss.detach()
            share = float(mask[rows].sum()) / max(totals[0], 1.0)
            for key, value in stats.items():  # token-weighted, as the whole batch's would be
                weighted[key] += value * share
        return total, dict(weighted), entropy

    def reference_logprobs(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, start: int, group: int
    ) -> torch.Tensor:
        """Log-probs under the KL reference: the stage's start (a frozen copy) for full
        fine-tuning; the frozen weights under the adapters (adapters off, no copy) for LoRA."""
        with torch.no_grad():
            if self.reference is not None:
                return self.completion_logprobs(
                    self.reference, sequences, attention_mask, start, group
                )[0]
            with reference_weights(self.model):
                return self.completion_logprobs(
                    self.model, sequences, attention_mask, start, group
                )[0]

    def grouped_path(self, model: PreTrainedModel, group: int) -> bool:
        """Whether training log-probs take fastllama's grouped forward (each group's prompt
        computed once): Llama weights (plain, or under dropout-free LoRA adapters), groups,
        and no activation checkpointing (which only the model's own modules apply)."""
        return (
            group > 1
            and not self.memory.gradient_checkpointing
            and fastllama.supports(model, adapters=True, training=True)
        )

    @property
    def accumulating(self) -> bool:
        """Micro-batch mode: loss terms backward their own parts as they go (gradient
        accumulation), so a step never holds the whole batch's activations."""
        return self.memory.micro_batch > 0

    def row_chunks(self, rows: int, group: int = 1) -> list[slice]:
        """Consecutive row slices of at most ``memory.micro_batch`` rows; whole groups when
        the grouped fast path computes each group's prompt once."""
        size = self.memory.micro_batch
        if self.grouped_path(self.model, group):
            size = max(group, size - size % group)
        return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA when the track asks for it (weights and optimizer stay
        fp32); a no-op otherwise."""
        if self.memory.precision == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------------- SFT term
    def demonstration_batch(
        self, items: Sequence[Item]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``<bos> prompt demonstration <eos>`` rows and the expert-token mask.

        A chat task's row is what its rollouts look like: the chat-template prompt (which
        holds its own BOS), the demonstration, and the template's end-of-turn token (SFT
        must teach the model to close its turn where generation stops)."""
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
            prompt = self.tokenizer.encode(self.prompts.text(item), add_special_tokens=False)
            if bos is not None and prompt[:1] != [bos]:
                prompt = [bos, *prompt]
            end = self.prompts.end_of_turn if self.prompts.is_chat(item.task) else eos
            answer = [*self.tokenizer.encode(item.demonstration, add_special_tokens=False), end]
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
        self, items: Sequence[Item], phase: str, *, phi_weighting: bool = False, weight: float = 1.0
    ) -> tuple[torch.Tensor, StepLog]:
        """The SFT term; micro-batch mode as in :meth:`rl_loss`."""
        ids, attention, expert = self.demonstration_batch(items)
        mask = expert[:, 1:]
        if self.accumulating:
            totals = (float(mask.sum()), mask.shape[0])
            loss = torch.zeros((), device=self.device)
            entropy_sum = torch.zeros((), device=self.device)
            for rows in self.row_chunks(ids.shape[0]):
                width = int(attention[rows].sum(-1).max())  # right padding: trim the tail
                part, part_entropy = self._sft_term(
                    ids[rows, :width], attention[rows, :width], mask[rows, : width - 1],
                    phi_weighting, totals,
                )  # fmt: skip
                (weight * part).backward()
                loss += part.detach()
                entropy_sum += part_entropy
        else:
            loss, entropy_sum = self._sft_term(ids, attention, mask, phi_weighting, None)
        tokens = int(mask.sum())
        self.meter.book(phase, samples=len(items), trained_tokens=tokens)
        log = StepLog(
            step=-1,
            loss=float(loss.detach()),
            entropy=float(entropy_sum / mask.sum().clamp(min=1.0)),
        )
        return loss, log

    def _sft_term(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        mask: torch.Tensor,
        phi_weighting: bool,
        totals: tuple[float, int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SFT loss of some demonstration rows and the summed entropy over their expert tokens."""
        with self.autocast():
            logits = self.model(input_ids=ids, attention_mask=attention).logits
        logp, entropy = token_logprobs(logits[:, :-1], ids[:, 1:])
        weights = chord_phi(logp) if phi_weighting else None
        loss = sft_loss(logp, mask, weights=weights, totals=totals)
        return loss, (entropy.detach() * mask).sum()

    # -------------------------------------------------------------------- blend (CHORD)
    def blend_loss(
        self,
        rl_items: Sequence[Item],
        expert_items: Sequence[Item],
        mu: float,
        generator: torch.Generator,
        phase: str,
        *,
        phi_weighting: bool,
    ) -> tuple[torch.Tensor, StepLog]:
        """CHORD's step: ``(1 - mu) * L_GRPO(rollouts) + mu * L_SFT(expert rows)``.

        Both terms are the engine's own ``rl_loss`` and ``sft_loss``, so the blend is a
        composition (CHORD's loss, with its phi token weighting when ``phi_weighting``)."""
        rl, log = self.rl_loss(rl_items, generator, phase, weight=1.0 - mu)
        sft, sft_log = self.sft_loss(expert_items, phase, phi_weighting=phi_weighting, weight=mu)
        loss = (1.0 - mu) * rl + mu * sft
        log.loss = float(loss.detach())
        log.extra.update(
            mu=mu, rl_loss=float(rl.detach()), sft_loss=sft_log.loss, expert_rows=len(expert_items)
        )
        return loss, log

    # ---------------------------------------------------------------------- applying
    def apply(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, max_grad_norm: float, phase: str
    ) -> float:
        """Finish a step: backward (unless micro-batches did it), clip, update. The caller
        zeroes the gradients *before* the step's loss terms run, since in micro-batch mode
        they accumulate gradients as they go."""
        if not self.accumulating:  # micro-batches were backwarded as they were computed
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(self.model), max_grad_norm)
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
        ``fused=True`` would be faster still but rounds differently.

        Only parameters that train are handed over (all of them under full fine-tuning, the
        adapters under LoRA), so AdamW keeps no state for frozen weights."""
        return torch.optim.AdamW(
            trainable_parameters(self.model), lr=lr, weight_decay=0.0, foreach=True
        )

    def train_stage(
        self,
        mixture: Mapping[str, float],
        objective: Objective,
        steps: int,
        seed: int,
        *,
        phase: str = "train",
        hparams: Mapping[str, Any] | None = None,
        on_step: Callable[[StepLog], None] | None = None,
    ) -> list[StepLog]:
        """Run ``steps`` optimizer steps of one objective on a task mixture."""
        config = self.stage_config(objective, hparams or {})
        rng = random.Random(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        torch.manual_seed(seed)
        names = sorted(mixture)
        weights = [mixture[n] for n in names]
        self.rl, self.sft = config.rl, config.sft
        optimizer = self.new_optimizer(config.sft.lr if objective == "sft" else config.rl.lr)
        if objective != "sft" and config.rl.beta > 0.0 and not is_adapted(self.model):
            self.reference = copy.deepcopy(self.model).eval()
        if self.memory.gradient_checkpointing:
            self.model.gradient_checkpointing_enable({"use_reentrant": False})
        self.model.train()
        logs = []
        try:
            with self.meter.timed(phase):
                for step in range(steps):
                    optimizer.zero_grad(set_to_none=True)
                    loss, log, max_norm = self._stage_step(
                        objective, config, step, steps, rng, names, weights, generator, phase
                    )
                    log.step = step
                    log.extra["grad_norm"] = self.apply(loss, optimizer, max_norm, phase)
                    logs.append(log)
                    if on_step is not None:
                        on_step(log)
        finally:
            self.rl, self.sft = self.defaults.rl, self.defaults.sft
            self.reference = None
            if self.memory.gradient_checkpointing:
                self.model.gradient_checkpointing_disable()
            for name in names:
                self.rewards[name].reset()
        return logs

    def _stage_step(
        self,
        objective: Objective,
        config: StageConfig,
        step: int,
        steps: int,
        rng: random.Random,
        names: list[str],
        weights: list[float],
        generator: torch.Generator,
        phase: str,
    ) -> tuple[torch.Tensor, StepLog, float]:
        if objective == "sft":
            items = self._sample_items(rng, names, weights, config.sft.batch_size, demos=True)
            loss, log = self.sft_loss(items, phase)
            return loss, log, config.sft.max_grad_norm
        if objective == "rl":
            items = self._sample_items(rng, names, weights, config.rl.prompts_per_step, demos=False)
            loss, log = self.rl_loss(items, generator, phase)
            return loss, log, config.rl.max_grad_norm
        rl_prompts, expert_rows = blend_batch_split(
            config.rl.prompts_per_step, config.rl.group_size, config.blend.expert_share
        )
        rl_items = self._sample_items(rng, names, weights, rl_prompts, demos=False)
        expert_items = self._sample_items(rng, names, weights, expert_rows, demos=True)
        blend = config.blend
        mu = mu_schedule(
            step,
            steps,
            peak=blend.mu_peak,
            valley=blend.mu_valley,
            warmup_steps=round(blend.warmup_frac * steps),
            decay_steps=round(blend.decay_frac * steps),
        )
        loss, log = self.blend_loss(
            rl_items, expert_items, mu, generator, phase, phi_weighting=blend.phi
        )
        return loss, log, config.rl.max_grad_norm

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
        """The engine settings a result records: the track's RL/SFT/CHORD defaults, how a
        step is computed (``memory``) and what trains (parameter counts; LoRA or not)."""
        config = {name: asdict(getattr(self.defaults, name)) for name in ("rl", "sft", "blend")}
        config["memory"] = asdict(self.memory)
        config["parameters"] = parameter_counts(self.model)
        return config


def blend_batch_split(prompts: int, group: int, expert_share: float) -> tuple[int, int]:
    """(rollout prompts, expert rows) of one CHORD step of ``prompts * group`` sequences.

    A blended step keeps the sequence count of an RL step, so it costs about the same; the
    expert rows take the place of ``expert_share`` of the rollouts (rounded to whole groups,
    at least one group and, when the share is positive, at least one expert row)."""
    total = prompts * group
    rl_prompts = min(prompts, max(1, round((1.0 - expert_share) * prompts)))
    experts = total - rl_prompts * group
    if expert_share > 0.0 and experts == 0:
        experts = 1
    return rl_prompts, experts
