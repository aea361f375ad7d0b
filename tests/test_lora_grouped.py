"""The grouped training forward under LoRA adapters against peft's own forward.

The grouped path (each GRPO group's prompt computed once) keeps peft's low-rank expression
``base(x) + B(A(x)) · scale`` on stacked adapters; these tests hold its log-probs and the
adapters' gradients to the model's own forward, on layouts where the stacking has edges:
adapters on some projections only (zero-width blocks), and per-layer ranks and alphas (one
scale per output row)."""

from __future__ import annotations

import copy

import pytest
import torch
from lora_checks import (
    assert_bf16_grouped_no_worse_on_gpu,
    logprobs_and_grads,
    randomise_lora_b,
)

from ctbench.tracks.tokenizer import build_char_tokenizer
from ctbench.training import fastllama
from ctbench.training.rollout import HFRollout

peft = pytest.importorskip("peft")

PROMPTS = ["47+8=", "make 6 from 1 4 2:", "use cat sun:", "viban colour? pink red navy grey:"]
GROUP = 4
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYOUTS = {
    "every projection": {"r": 4, "lora_alpha": 8, "target_modules": ALL},
    "some projections, mixed ranks and alphas": {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"],
        "rank_pattern": {"v_proj": 2},
        "alpha_pattern": {"q_proj": 3, "up_proj": 16},
    },
}


@pytest.fixture(scope="module")
def base(tiny_track):
    from ctbench.training.tiny_base import load_base

    model, _, _ = load_base(tiny_track)
    return model


@pytest.fixture(scope="module")
def rollout(base):
    """Sampled completions of uneven length (padding inside the completion is covered)."""
    tokenizer = build_char_tokenizer()
    prompts = [p for p in PROMPTS for _ in range(GROUP)]
    out = HFRollout(tokenizer).generate(
        base, prompts, max_new_tokens=12, generator=torch.Generator().manual_seed(1)
    )
    assert out.completion_mask.sum(-1).min() < out.completion_mask.sum(-1).max()
    return out


def _adapted(base, **config):
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
    randomise_lora_b(model)
    return model


def _logprobs_and_grads(model, rollout, grouped: bool):
    return logprobs_and_grads(model, rollout, GROUP, grouped=grouped)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_grouped_lora_forward_equals_peft_forward(base, rollout, layout: str) -> None:
    model = _adapted(base, **LAYOUTS[layout])
    assert fastllama.supports(model, adapters=True, training=True)
    logp, entropy, grads = _logprobs_and_grads(model, rollout, grouped=False)
    g_logp, g_entropy, g_grads = _logprobs_and_grads(model, rollout, grouped=True)
    torch.testing.assert_close(g_logp, logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(g_entropy, entropy, atol=1e-5, rtol=0)
    assert set(g_grads) == set(grads) and all("lora_" in n for n in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(g_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_grouped_lora_forward_with_adapters_off_is_the_base_model(base, rollout) -> None:
    """The KL reference of a LoRA run (adapters switched off) computes the base exactly."""
    model = _adapted(base, **LAYOUTS["every projection"])
    args = (rollout.sequences, rollout.attention_mask, rollout.prompt_length, GROUP)
    with torch.no_grad():
        adapted = fastllama.grouped_completion_logits(model, *args)
        with model.disable_adapter():
            off = fastllama.grouped_completion_logits(model, *args)
        plain = fastllama.grouped_completion_logits(base, *args)
    assert torch.equal(off, plain)
    assert not torch.allclose(adapted, plain)


def test_adapter_dropout_keeps_training_on_the_models_own_forward(base) -> None:
    """A dropout mask draws from the RNG inside peft's layer: decoding (no dropout) may fuse
    the adapters, training must not take the grouped path."""
    model = _adapted(base, r=4, lora_alpha=8, lora_dropout=0.1, target_modules=ALL)
    assert fastllama.supports(model, adapters=True)
    assert not fastllama.supports(model, adapters=True, training=True)
    assert not fastllama.supports(model)  # a peft model is never taken as a plain one


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none")
def test_grouped_lora_forward_under_bf16_autocast_on_gpu(base, rollout) -> None:
    """See :func:`lora_checks.assert_bf16_grouped_no_worse_on_gpu`."""
    model = _adapted(base, **LAYOUTS["some projections, mixed ranks and alphas"])
    assert_bf16_grouped_no_worse_on_gpu(model, rollout, GROUP)


def test_a_per_row_lora_scale_is_applied_as_peft_applies_a_float_scale() -> None:
    """Where ranks or alphas differ, the scale is a per-row tensor; under bf16 autocast the
    low-rank product must be multiplied as peft multiplies it by a Python float (in float32,
    rounded once), not by a scale first rounded to bf16 (10/3 is not a bf16 number).
    With the identity as A and B and a zero base weight the projection is the scaling
    alone, so the comparison is exact."""
    width, scales = 8, (10 / 3, 0.7)
    x = torch.randn(4, 5, width, generator=torch.Generator().manual_seed(0))
    identity = torch.eye(width)
    projection = fastllama._Projection(
        torch.zeros(2 * width, width),
        None,
        torch.cat([identity, identity]),
        torch.block_diag(identity, identity),
        torch.tensor([scales[0]] * width + [scales[1]] * width),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = projection(x)
        expected = torch.cat([torch.nn.functional.linear(x, identity) * s for s in scales], -1)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(out, expected)
