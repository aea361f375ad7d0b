"""Checks shared by the grouped-forward tests (`test_lora_grouped.py`, `test_qwen2_lean.py`):
each holds fastllama's grouped training forward to the model's own forward on a rollout."""

from __future__ import annotations

import dataclasses

import torch

from ctbench.training import fastllama
from ctbench.training.engine import sequence_positions
from ctbench.training.losses import token_logprobs


def randomise_lora_b(model, seed: int = 7) -> None:
    """B != 0, as after training, so the adapters change the output (peft starts B at 0)."""
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def logprobs_and_grads(model, rollout, group: int, *, grouped: bool):
    """Masked token log-probs, entropies and the gradient of every trainable parameter
    (each must get one), through the grouped forward or the model's own full forward."""
    sequences, attention, start = rollout.sequences, rollout.attention_mask, rollout.prompt_length
    mask = rollout.completion_mask
    model.zero_grad(set_to_none=True)
    if grouped:
        logits = fastllama.grouped_completion_logits(model, sequences, attention, start, group)
    else:
        logits = model(
            input_ids=sequences,
            attention_mask=attention,
            position_ids=sequence_positions(attention),
        ).logits[:, start - 1 : -1]
    logp, entropy = token_logprobs(logits, sequences[:, start:])
    (-(logp * mask).sum() / mask.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return (logp * mask).detach(), (entropy * mask).detach(), grads


def assert_bf16_grouped_no_worse_on_gpu(model, rollout, group: int) -> None:
    """Under CUDA bf16 autocast (``memory.precision: bf16``) the grouped path is no further
    from the fp32 log-probs than the model's own forward under the same autocast, every
    adapter gets a finite gradient, and the master weights stay fp32."""
    model = model.to("cuda")
    on_gpu = dataclasses.replace(
        rollout,
        sequences=rollout.sequences.to("cuda"),
        attention_mask=rollout.attention_mask.to("cuda"),
        completion_mask=rollout.completion_mask.to("cuda"),
    )
    reference, _, _ = logprobs_and_grads(model, on_gpu, group, grouped=False)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        own_bf16, _, _ = logprobs_and_grads(model, on_gpu, group, grouped=False)
        grouped_bf16, _, grads = logprobs_and_grads(model, on_gpu, group, grouped=True)
    own_error = (own_bf16.float() - reference).abs().mean()
    grouped_error = (grouped_bf16.float() - reference).abs().mean()
    assert grouped_error <= 2 * own_error + 1e-4, (float(grouped_error), float(own_error))
    assert grads and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())
