"""``benchmarks/matmul_floor.py`` accounts for exactly the products the engine computes.

The floor is only a floor if its list of products is the engine's: this counts the
matrix-product FLOPs of one real GRPO step of the engine benchmark (rollout, policy forward,
backward) with torch's ``FlopCounterMode`` and checks them against the benchmark's list. A
product the engine adds or drops (a second forward, a prompt no longer shared by its group)
fails it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# The benchmark scripts are top-level modules named ``engine`` and ``matmul_floor``; loaded
# under these names and removed afterwards, they can never shadow another ``engine``.
PRIVATE = {"engine": "_ctbench_benchmark_engine", "matmul_floor": "_ctbench_benchmark_floor"}


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def benchmark_scripts() -> Iterator[tuple[ModuleType, ModuleType]]:
    names = (*PRIVATE, *PRIVATE.values())
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    try:
        engine = _load(PRIVATE["engine"], BENCHMARKS / "engine.py")
        sys.modules["engine"] = engine  # only while matmul_floor runs `from engine import`
        floor = _load(PRIVATE["matmul_floor"], BENCHMARKS / "matmul_floor.py")
        sys.modules.pop("engine")
        if "engine" in saved:
            sys.modules["engine"] = saved["engine"]
        yield engine, floor
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


@pytest.fixture
def benchmark_modules() -> Iterator[tuple[ModuleType, ModuleType]]:
    with benchmark_scripts() as modules:
        yield modules


def test_loading_the_benchmarks_leaves_no_module_behind():
    before = set(sys.modules)
    with benchmark_scripts() as (engine, floor):
        assert engine.__file__ == str(BENCHMARKS / "engine.py") and callable(floor.step_products)
        assert "engine" not in sys.modules and "matmul_floor" not in sys.modules
    assert {"engine", "matmul_floor", *PRIVATE.values()}.isdisjoint(set(sys.modules) - before)


def test_floor_lists_every_matrix_product_of_a_grpo_step(benchmark_modules):
    engine, floor = benchmark_modules

    torch.manual_seed(engine.SEED)
    workload = engine.tiny_workload(
        engine.PROMPTS_PER_STEP,
        engine.GROUP_SIZE,
        engine.NEW_TOKENS,
        engine.LEARNING_RATE,
        engine.BETA,
    )
    side = engine.CtbenchSide(workload)
    widths: list[int] = []
    generate = side.rollout.inner.generate

    def recording_generate(*args, **kwargs):
        rollout = generate(*args, **kwargs)
        widths.append(rollout.prompt_length)
        return rollout

    side.rollout.inner.generate = recording_generate
    with FlopCounterMode(display=False) as counter:
        side.rl_step()
    counted = counter.get_flop_counts()["Global"]
    measured_mm = counted.get(torch.ops.aten.mm, 0)

    products = floor.step_products(side.model.config, widths[0])
    listed = sum(2 * m * k * n * count for phase in products.values() for (m, k, n), count in phase)
    assert measured_mm == listed
    # Everything else the counter saw is attention's batched products, which the floor
    # leaves out: they must stay a small share, or the floor would mislead.
    other = sum(flops for op, flops in counted.items() if op is not torch.ops.aten.mm)
    assert other < 0.1 * listed


def test_floor_phases_follow_the_workload(benchmark_modules):
    engine, floor = benchmark_modules
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=8,
        intermediate_size=12,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=10,
    )
    products = floor.step_products(config, width=5)
    # Backward: two products (input and weight gradients) per forward product, same FLOPs each.
    forward = sum(2 * m * k * n * c for (m, k, n), c in products["forward"])
    backward = sum(2 * m * k * n * c for (m, k, n), c in products["backward"])
    assert backward == 2 * forward
    # Decoding: every row, every layer, NEW_TOKENS - 1 one-token steps (the last sampled token
    # is never fed back).
    rows = engine.PROMPTS_PER_STEP * engine.GROUP_SIZE
    decode = [(shape, c) for shape, c in products["rollout"] if shape[0] == rows]
    assert {c for _, c in decode} == {
        config.num_hidden_layers * (engine.NEW_TOKENS - 1),
        engine.NEW_TOKENS - 1,
    }
    # The fused q/k/v projection with grouped-query attention: 2 heads + 2 × 1 KV head of 4.
    assert (5 * engine.PROMPTS_PER_STEP, 8, 16) in [shape for shape, _ in products["rollout"]]
