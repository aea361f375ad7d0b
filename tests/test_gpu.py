"""The engine on a CUDA GPU: rollouts, a GRPO step, an evaluation and a short run.

Skipped with a reason on machines without a GPU (CI has none); run on a GPU machine with
``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none"),
]


@pytest.fixture(scope="module")
def engine_on_gpu(tiny_track):
    from ctbench.scoring.rewards import build_reward
    from ctbench.training.compute import ComputeMeter
    from ctbench.training.engine import Engine
    from ctbench.training.rollout import HFRollout
    from ctbench.training.tiny_base import load_base

    model, tokenizer, _ = load_base(tiny_track)
    model.to("cuda")
    rewards = {n: build_reward(t) for n, t in tiny_track.tasks.items()}
    return Engine(
        model,
        tokenizer,
        tiny_track.tasks,
        rewards,
        HFRollout(tokenizer),
        rl=tiny_track.spec.rl,
        sft=tiny_track.spec.sft,
        meter=ComputeMeter(),
    )


def test_rollout_and_grpo_step_on_gpu(engine_on_gpu, tiny_track):
    engine = engine_on_gpu
    before = [p.detach().clone() for p in engine.model.parameters()]
    logs = engine.train_stage({"math": 1.0, "creative": 1.0}, "rl", 2, seed=0)
    assert len(logs) == 2 and all(0.0 <= log.reward <= 1.0 for log in logs)
    after = list(engine.model.parameters())
    assert all(p.is_cuda for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert engine.meter.phases["train"].generated_tokens > 0


def test_sft_step_on_gpu(engine_on_gpu):
    logs = engine_on_gpu.train_stage({"qa": 1.0}, "sft", 2, seed=1)
    assert all(log.loss > 0 for log in logs)


def test_gpu_and_cpu_greedy_evaluation_agree(engine_on_gpu, tiny_track):
    """Greedy decoding of the same weights gives (nearly) the same score on either device."""
    import copy

    from ctbench.runs.evaluate import Evaluator
    from ctbench.scoring.rewards import build_reward
    from ctbench.training.compute import ComputeMeter
    from ctbench.training.rollout import HFRollout

    gpu_model = engine_on_gpu.model
    cpu_model = copy.deepcopy(gpu_model).to("cpu")
    rewards = {n: build_reward(t) for n, t in tiny_track.tasks.items()}
    evaluator = Evaluator(
        tiny_track.tasks, rewards, HFRollout(engine_on_gpu.tokenizer), ComputeMeter()
    )
    on_gpu = evaluator.evaluate_task(gpu_model, tiny_track.tasks["math"], seed=0)
    on_cpu = evaluator.evaluate_task(cpu_model, tiny_track.tasks["math"], seed=0)
    assert abs(on_gpu.score - on_cpu.score) <= 0.02


def test_short_run_on_gpu(tmp_path):
    from ctbench.runs.config import RunConfig
    from ctbench.runs.run import Run, SilentObserver

    result = Run.create(
        RunConfig(strategy="random", seed=0, budget=4, device="cuda"), tmp_path, SilentObserver()
    ).execute()
    assert result["env"]["device"] == "cuda" and result["env"]["cuda"]
    assert len(result["matrix"]["R"]) == 5
