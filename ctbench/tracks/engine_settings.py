"""The engine's knobs as a track fixes them and a stage may override them (DESIGN §6).

They live with the tracks, not the engine, because a track *declares* them: the track is
read before anything is trained, and the engine receives them as plain data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ctbench.errors import UserError

# How a loss over tokens becomes one number (see ``training.losses.aggregate``).
Aggregation = Literal["token-mean", "seq-mean-token-mean"]


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


@dataclass(frozen=True)
class BlendConfig:
    """CHORD (arXiv 2508.11408): loss ``(1 - mu_t) * L_GRPO + mu_t * L_SFT``, one optimizer.

    ``mu_t`` warms up linearly 0 → ``mu_peak`` over ``warmup_frac`` of the stage, decays
    (cosine) to ``mu_valley`` over the next ``decay_frac``, then stays there; CHORD-phi is
    ``mu_peak = mu_valley = 0.1`` with no warm-up or decay. ``expert_share`` is the share of
    each step's sequences that are expert demonstrations instead of rollouts (the paper's
    example: 64 of 320). ``phi`` weights each expert token by p(1 - p) (off: plain NLL).
    The GRPO half uses the stage's RL settings (learning rate included).
    """

    mu_peak: float = 0.1
    mu_valley: float = 0.1
    warmup_frac: float = 0.0
    decay_frac: float = 0.0
    expert_share: float = 0.2
    phi: bool = True

    def __post_init__(self) -> None:
        for key in ("mu_peak", "mu_valley", "warmup_frac", "decay_frac", "expert_share"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"expected a value in [0, 1], got {value!r}", where=key)
        if self.warmup_frac + self.decay_frac > 1.0:
            raise UserError("warmup_frac + decay_frac must not exceed 1", where="blend")
        if self.expert_share >= 1.0:
            raise UserError("expert_share must leave room for rollouts (< 1)", where="blend")


def with_overrides(config: Any, overrides: Mapping[str, Any], where: str) -> Any:
    """``config`` with some fields replaced, each value checked against the field's type."""
    fields = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise UserError(
                f"unknown stage hyper-parameter {key!r} (allowed: {', '.join(fields)})",
                where=where,
            )
        current = getattr(config, key)
        if isinstance(current, bool):
            ok = isinstance(value, bool)
        elif isinstance(current, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(current)) and not isinstance(value, bool)
        if not ok:
            raise UserError(f"{key}: expected {type(current).__name__}, got {value!r}", where=where)
        changes[key] = type(current)(value)
    return dataclasses.replace(config, **changes)


@dataclass(frozen=True)
class StageConfig:
    """The engine settings of one stage: the track's defaults plus the stage's overrides."""

    rl: RLConfig
    sft: SFTConfig
    blend: BlendConfig


# peft's names for a Llama block's linear layers: adapting all of them (not only q/v) is
# what QLoRA found necessary to match full fine-tuning, and what TRL's examples use.
LLAMA_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    """``model.lora`` of a track: train low-rank adapters (peft) instead of every weight.

    ``alpha / r`` scales the adapters' output (peft's ``lora_alpha``); ``dropout`` applies to
    the adapters' input while training."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LLAMA_LINEAR_MODULES

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise UserError(f"expected a positive rank, got {self.r!r}", where="model.lora.r")
        if self.alpha <= 0:
            raise UserError(f"expected alpha > 0, got {self.alpha!r}", where="model.lora.alpha")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(
                f"expected a dropout in [0, 1), got {self.dropout!r}", where="model.lora.dropout"
            )
        if not self.target_modules or not all(isinstance(m, str) for m in self.target_modules):
            raise UserError(
                "expected a non-empty list of module names", where="model.lora.target_modules"
            )


Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class MemorySettings:
    """``memory:`` of a track: how a step is computed, not what it computes.

    ``micro_batch``: sequences per forward/backward (0: the whole batch at once); a step's
    gradient is accumulated over its micro-batches and equals the one-batch gradient within
    float rounding, so it is not part of the track's identity. ``gradient_checkpointing``
    recomputes activations in the backward pass instead of keeping them (same arithmetic,
    less memory, ~30% more compute). ``precision: bf16`` runs forwards under CUDA bf16
    autocast with fp32 master weights and optimizer state; it changes the numbers, so it
    enters the track hash."""

    micro_batch: int = 0
    gradient_checkpointing: bool = False
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        if self.micro_batch < 0:
            raise UserError(
                f"expected 0 (whole batch) or a positive size, got {self.micro_batch!r}",
                where="memory.micro_batch",
            )
        if self.precision not in ("fp32", "bf16"):
            raise UserError(
                f"expected fp32 or bf16, got {self.precision!r}", where="memory.precision"
            )
