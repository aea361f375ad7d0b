"""The training engine over the tiny track's shipped base: what engine-level tests drive."""

from __future__ import annotations

from transformers import PreTrainedModel

from ctbench.scoring.rewards import build_reward
from ctbench.tracks.engine_settings import MemorySettings
from ctbench.tracks.track import Track
from ctbench.training.compute import ComputeMeter
from ctbench.training.engine import Engine
from ctbench.training.rollout import HFRollout
from ctbench.training.tiny_base import load_base


def tiny_engine(track: Track, model: PreTrainedModel, micro_batch: int = 0) -> Engine:
    """An engine with the track's rewards, RL/SFT settings and a fresh compute meter."""
    tokenizer = load_base(track)[1]
    return Engine(
        model,
        tokenizer,
        track.tasks,
        {n: build_reward(t) for n, t in track.tasks.items()},
        HFRollout(tokenizer),
        rl=track.spec.rl,
        sft=track.spec.sft,
        meter=ComputeMeter(),
        memory=MemorySettings(micro_batch=micro_batch),
    )
