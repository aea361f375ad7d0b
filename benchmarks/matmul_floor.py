"""The matrix-product floor of one GRPO step of ``benchmarks/engine.py``'s workload.

Why: the engine's step time is arithmetic plus everything else (small kernels, dispatch,
sampling). Timing every linear-layer product of one step alone, at its exact shape, says
how much of the step no engine can remove on this machine without changing the arithmetic,
and so how far a speed goal is reachable at all. The shapes follow ``fastllama``'s forward:
the rollout pre-fills each GRPO group's prompt once and decodes ``NEW_TOKENS - 1`` one-token
steps for every row; the policy forward runs each group's prompt once and the completions
without their last token; the backward computes, per product, the gradient of its input and
of its weight. Attention's small batched products are left out (they are not linear layers
and are a few percent of the products' time), so the floor is a lower bound.

Prints one JSON object: per phase (rollout, forward, backward) the GFLOP, the seconds of its
products timed alone (median of repeated calls) and the rate; the total; and the rate of one
large product (``2048 × 512 × 512``) as this machine's sgemm reference.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from engine import (
    GROUP_SIZE,
    NEW_TOKENS,
    PROMPTS_PER_STEP,
    SEED,
    TRACK,
    fresh_model,
    machine,
    tiny_workload,
)
from transformers import PreTrainedTokenizerBase

from ctbench.tracks.tokenizer import build_char_tokenizer
from ctbench.tracks.track import Track, load_track
from ctbench.training.rollout import encode_prompts

Product = tuple[int, int, int]  # (M, K, N): an [M, K] @ [K, N] product


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    for _ in range(max(3, repeats // 5)):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def time_product(shape: Product, repeats: int) -> float:
    """One product as ``F.linear`` runs it: activations [M, K] times a transposed weight."""
    m, k, n = shape
    activations, weight = torch.randn(m, k), torch.randn(n, k)
    return median_seconds(lambda: activations @ weight.t(), repeats)


def prompt_width(track: Track, tokenizer: PreTrainedTokenizerBase, steps: int) -> int:
    """Median padded ``<bos> prompt`` width of the batches the engine benchmark draws."""
    pool = track.tasks[tiny_workload(PROMPTS_PER_STEP, GROUP_SIZE, NEW_TOKENS, 0.0, 0.0).task].train
    rng = random.Random(SEED)
    widths = []
    for _ in range(steps):
        items = rng.sample(pool, PROMPTS_PER_STEP)
        ids, _ = encode_prompts(tokenizer, [item.prompt for item in items], "cpu")
        widths.append(ids.shape[1])
    return int(statistics.median(widths))


def step_products(config: Any, width: int) -> dict[str, list[tuple[Product, int]]]:
    """Every linear-layer product of one GRPO step, as (shape, count) per phase."""
    hidden, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    layer = [  # (in, out) of the fused q/k/v, output, fused gate/up and down projections
        (hidden, (heads + 2 * kv_heads) * head_dim),
        (heads * head_dim, hidden),
        (hidden, 2 * inner),
        (inner, hidden),
    ]
    rows = PROMPTS_PER_STEP * GROUP_SIZE
    prefill, decode_steps = PROMPTS_PER_STEP * width, NEW_TOKENS - 1
    trained = rows * (NEW_TOKENS - 1)  # completion tokens through the forward
    layers = config.num_hidden_layers
    rollout = [((prefill, k, n), layers) for k, n in layer]
    rollout += [((rows, k, n), layers * decode_steps) for k, n in layer]
    rollout += [((PROMPTS_PER_STEP, hidden, vocab), 1), ((rows, hidden, vocab), decode_steps)]
    forward = [((m, k, n), layers) for m in (prefill, trained) for k, n in layer]
    forward.append(((rows * NEW_TOKENS, hidden, vocab), 1))
    backward = []
    for (m, k, n), count in forward:
        backward.append(((m, n, k), count))  # gradient of the input
        backward.append(((n, m, k), count))  # gradient of the weight
    return {"rollout": rollout, "forward": forward, "backward": backward}


def measure(repeats: int) -> dict[str, Any]:
    track = load_track(TRACK)
    tokenizer = build_char_tokenizer()
    model_config = fresh_model(track, tokenizer).config
    width = prompt_width(track, tokenizer, steps=20)
    phases: dict[str, Any] = {}
    cache: dict[Product, float] = {}
    total_flops = total_seconds = 0.0
    for phase, products in step_products(model_config, width).items():
        flops = seconds = 0.0
        for shape, count in products:
            if shape not in cache:
                cache[shape] = time_product(shape, repeats)
            m, k, n = shape
            flops += 2.0 * m * k * n * count
            seconds += cache[shape] * count
        phases[phase] = {
            "gflop": flops / 1e9,
            "seconds": seconds,
            "gflop_per_s": flops / seconds / 1e9,
        }
        total_flops += flops
        total_seconds += seconds
    reference = (2048, 512, 512)
    reference_flops = 2.0 * reference[0] * reference[1] * reference[2]
    reference_seconds = time_product(reference, repeats)
    return {
        "benchmark": "grpo_step_matmul_floor",
        "workload": {
            "track": TRACK,
            "prompts_per_step": PROMPTS_PER_STEP,
            "group_size": GROUP_SIZE,
            "new_tokens": NEW_TOKENS,
            "prompt_width_median": width,
            "hidden_size": model_config.hidden_size,
            "intermediate_size": model_config.intermediate_size,
            "layers": model_config.num_hidden_layers,
            "vocab_size": model_config.vocab_size,
        },
        "phases": phases,
        "total": {
            "gflop": total_flops / 1e9,
            "seconds": total_seconds,
            "gflop_per_s": total_flops / total_seconds / 1e9,
        },
        "reference_sgemm": {
            "shape_mkn": list(reference),
            "gflop_per_s": reference_flops / reference_seconds / 1e9,
        },
        "repeats": repeats,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per product shape")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats and --threads must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    print(json.dumps(measure(args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
