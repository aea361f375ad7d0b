"""One GRPO optimizer step: ctbench's ``Engine`` against TRL's ``GRPOTrainer``, side by side.

What is measured
----------------
Both sides train the same workload: the tiny track's ~0.43M-parameter Llama (two copies
built from the same seed, so they start from identical weights), the same character
tokenizer, 16 prompts of the ``math`` task × 8 samples (group size 8) × exactly 12 new
tokens, temperature 1, β = 0 (no reference model), one policy update per batch, AdamW at
lr 4e-4, gradient clipping at 1, an exact-match reward on the math answer. One *step* is
everything that turns a batch of prompts into an optimizer update: sampling the completions
(prompt encoding + KV-cached decoding), rewards, group advantages, the policy forward, the
clipped surrogate loss, backward, clipping and the optimizer step.

* ctbench: ``Engine.rl_loss`` (rollout + reward + GRPO loss) then ``Engine.apply``
  (backward + clip + step), including drawing the step's 16 prompts.
* TRL: one optimizer step of ``trainer.train()`` itself, i.e. the Trainer's own loop:
  fetching the batch from its ``RepeatSampler`` dataloader, ``training_step`` (which
  generates with ``model.generate``, scores, builds advantages and computes the loss),
  backward, clipping, ``optimizer.step``, the scheduler step and ``zero_grad``.

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
* Same prompts: TRL's dataset prompts carry the tokenizer's ``<bos>`` text, so TRL's
  tokenisation gives the same ``<bos> prompt`` ids that ctbench's rollout builds.
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
"trl>=0.20"``); without it the script still prints ctbench's figures with ``"trl": null``
and the reason. Progress goes to stderr; the one JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
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
from ctbench.tracks.engine_settings import RLConfig, SFTConfig
from ctbench.tracks.model import build_tiny_model
from ctbench.tracks.taskdata import Item, Task
from ctbench.tracks.tokenizer import build_char_tokenizer
from ctbench.tracks.track import Track, load_track
from ctbench.training.compute import ComputeMeter
from ctbench.training.engine import Engine
from ctbench.training.rollout import HFRollout, Rollout

TRACK = "tiny"
TASK = "math"
PROMPTS_PER_STEP = 16
GROUP_SIZE = 8
NEW_TOKENS = 12
LEARNING_RATE = 4e-4
BETA = 0.0
SEED = 0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- shared set-up
def fresh_model(track: Track, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    spec = track.spec.model.tiny
    if spec is None:
        raise RuntimeError(f"track {TRACK!r} has no tiny model")
    model = build_tiny_model(spec, len(tokenizer), seed=SEED)
    model.train()
    return model


def benchmark_task(track: Track) -> Task:
    """The math task with ``max_new_tokens`` set to the benchmark's completion length."""
    task = track.tasks[TASK]
    spec = dataclasses.replace(task.spec, max_new_tokens=NEW_TOKENS)
    return Task(spec=spec, train=task.train, eval=task.eval)


def exact_match(completion: str, answer: str | None) -> float:
    """The math task's reward (``ctbench.scoring.rewards.ExactMatch``), restated for TRL."""
    return float(completion.strip() == (answer or "").strip())


# ----------------------------------------------------------------------------- ctbench
@dataclasses.dataclass
class RolloutCall:
    seconds: float
    tokens: int
    completions: int


class TimedRollout:
    """The ``HFRollout`` backend, timed: seconds and generated tokens of every call."""

    def __init__(self, inner: HFRollout) -> None:
        self.inner = inner
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
            min_new_tokens=NEW_TOKENS,
        )
        seconds = time.perf_counter() - start
        self.calls.append(RolloutCall(seconds, rollout.generated_tokens, len(prompts)))
        return rollout


class CtbenchSide:
    """ctbench's engine on the benchmark workload; ``rl_step`` times one GRPO step."""

    def __init__(self, track: Track, tokenizer: PreTrainedTokenizerBase) -> None:
        self.track = track
        task = benchmark_task(track)
        tasks = {**track.tasks, TASK: task}
        rewards = {name: build_reward(t) for name, t in tasks.items()}
        self.rollout = TimedRollout(HFRollout(tokenizer))
        self.rl_config = RLConfig(
            prompts_per_step=PROMPTS_PER_STEP,
            group_size=GROUP_SIZE,
            lr=LEARNING_RATE,
            beta=BETA,
        )
        self.sft_config = SFTConfig()
        self.model = fresh_model(track, tokenizer)
        self.engine = Engine(
            self.model,
            tokenizer,
            tasks,
            rewards,
            self.rollout,
            rl=self.rl_config,
            sft=self.sft_config,
            meter=ComputeMeter(),
        )
        self.pool = task.train
        self.rng = random.Random(SEED)
        self.generator = torch.Generator().manual_seed(SEED)
        self.optimizer = self.engine.new_optimizer(self.rl_config.lr)
        self.step_seconds: list[float] = []

    def rl_step(self) -> None:
        start = time.perf_counter()
        items = self.rng.sample(self.pool, PROMPTS_PER_STEP)
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

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
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
    """Wraps the TRL model's ``generate`` (instance attribute) to time it and count calls."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.inner = model.generate
        self.seconds: list[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
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


def run_alternating_with_trl(
    track: Track,
    tokenizer: PreTrainedTokenizerBase,
    ctbench: CtbenchSide,
    total: int,
    workdir: Path,
) -> dict[str, Any]:
    """Build TRL's trainer and train ``total`` steps, interleaved with ctbench steps."""
    import datasets
    import trl

    pool = benchmark_task(track).train
    dataset = datasets.Dataset.from_list(
        [{"prompt": f"{tokenizer.bos_token}{item.prompt}", "answer": item.answer} for item in pool]
    )
    completion_lengths: list[int] = []

    def math_exact(
        completions: list[str], answer: list[str], completion_ids: list[list[int]], **_: Any
    ) -> list[float]:
        completion_lengths.extend(len(ids) for ids in completion_ids)
        return [exact_match(c, a) for c, a in zip(completions, answer, strict=True)]

    config = trl.GRPOConfig(
        output_dir=str(workdir),
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP_SIZE,
        num_generations=GROUP_SIZE,
        gradient_accumulation_steps=1,
        num_iterations=1,
        max_completion_length=NEW_TOKENS,
        generation_kwargs={"min_new_tokens": NEW_TOKENS},
        temperature=1.0,
        beta=BETA,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        max_grad_norm=ctbench.rl_config.max_grad_norm,
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
    )
    if getattr(config, "use_vllm", False):
        raise RuntimeError("TRL would generate with vLLM; this benchmark needs model.generate")
    model = fresh_model(track, tokenizer)
    generate = TimedGenerate(model)
    model.generate = generate  # type: ignore[method-assign]
    interleave = Interleave(ctbench.rl_step, total)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[math_exact],
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
    return {
        "step_seconds": interleave.step_seconds,
        "generate_seconds": generate.seconds,
        "completion_lengths": completion_lengths,
        "config": {name: jsonable(getattr(config, name, None)) for name in TRL_CONFIG_FIELDS},
        "generation_backend": "model.generate (transformers)",
    }


def trl_figures(raw: dict[str, Any], warmup: int) -> dict[str, Any]:
    per_step = PROMPTS_PER_STEP * GROUP_SIZE
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


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import trl

        found["trl"] = trl.__version__
    except Exception:
        found["trl"] = None
    return found


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Libraries may print; keep stdout for the one JSON object."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def run(steps: int, warmup: int) -> dict[str, Any]:
    torch.manual_seed(SEED)
    track = load_track(TRACK)
    tokenizer = build_char_tokenizer()
    ctbench = CtbenchSide(track, tokenizer)
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
                trl_result = run_alternating_with_trl(
                    track, tokenizer, ctbench, total, Path(workdir)
                )
            except Exception as exc:
                trl_reason = f"TRL run failed: {type(exc).__name__}: {exc}"
    if trl_reason is not None:
        log(f"TRL unavailable ({trl_reason}); timing ctbench alone")
    while len(ctbench.step_seconds) < total:
        ctbench.rl_step()
    load_end = os.getloadavg()

    ct_steps = ctbench.step_seconds[warmup:]
    ctbench_out: dict[str, Any] = {
        "step_s_median": statistics.median(ct_steps),
        "step_s_min": min(ct_steps),
        "step_s_max": max(ct_steps),
        "steps": len(ct_steps),
        **ctbench.rollout_figures(warmup),
        "rollout_backend": type(ctbench.training.rollout.inner).__name__,
        "config": ctbench.training.engine.config_json(),
    }
    log("timing ctbench SFT steps")
    ctbench_out.update(ctbench.sft_figures(steps, warmup))

    trl_out = trl_figures(trl_result, warmup) if trl_result is not None else None
    ratio = trl_out["step_s_median"] / ctbench_out["step_s_median"] if trl_out else None
    return {
        "benchmark": "grpo_step_ctbench_vs_trl",
        "workload": {
            "track": TRACK,
            "task": TASK,
            "prompts_per_step": PROMPTS_PER_STEP,
            "group_size": GROUP_SIZE,
            "completions_per_step": PROMPTS_PER_STEP * GROUP_SIZE,
            "max_new_tokens": NEW_TOKENS,
            "min_new_tokens": NEW_TOKENS,
            "beta": BETA,
            "learning_rate": LEARNING_RATE,
            "model_parameters": sum(p.numel() for p in ctbench.tracks.model.parameters()),
            "tokenizer_vocab": len(tokenizer),
        },
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per engine")
    parser.add_argument("--warmup", type=int, default=3, help="discarded steps per engine")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--steps and --threads must be >= 1 and --warmup >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with stdout_to_stderr():
        result = run(args.steps, args.warmup)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
