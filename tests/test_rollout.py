"""The HF rollout backend against independent computations on a real (tiny) model."""

from __future__ import annotations

import pytest
import torch

from ctbench.tracks.model import TinyModelSpec, build_tiny_model
from ctbench.tracks.tokenizer import build_char_tokenizer
from ctbench.training import fastllama
from ctbench.training.rollout import HFRollout, group_size_of


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(
    scope="module", params=["lean path (shipped base)", "generic HF path (hooked model)"]
)
def model(request, tokenizer, tiny_track):
    """Both decoding paths: the trained base (lean Llama path) ends answers at varied
    lengths by itself; the random model needs an EOS boost through a hook, which also
    forces the generic Hugging Face path (the lean path cannot apply hooks)."""
    if request.param.startswith("lean"):
        from ctbench.training.tiny_base import load_base

        base, _, _ = load_base(tiny_track)
        assert fastllama.supports(base)
        return base.eval()
    model = build_tiny_model(TinyModelSpec(), len(tokenizer), seed=1)
    # Raise the EOS logit so completions end at varied lengths (exercises row compaction).
    eos = tokenizer.eos_token_id
    model.lm_head.register_forward_hook(
        lambda _m, _i, out: out.index_add(
            -1, torch.tensor([eos]), torch.full((*out.shape[:-1], 1), 2.5)
        )
    )
    assert not fastllama.supports(model)
    return model.eval()


PROMPTS = ["47+8=", "make 6 from 1 4 2:", "use cat sun:", "viban colour? pink red navy grey:"]


def test_group_size_detection():
    assert group_size_of(["a", "a", "b", "b"]) == 2
    assert group_size_of(["a", "b", "a", "b"]) == 1
    assert group_size_of(["a"] * 8) == 8
    assert group_size_of(["a", "b", "c"]) == 1


def generate_greedily(model, tokenizer, prompts: list[str], new_tokens: int) -> list[str]:
    """The reference: Hugging Face ``generate``'s greedy completions of the same prompts."""
    encoded = tokenizer(
        [tokenizer.bos_token + p for p in prompts],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    reference = model.generate(
        **encoded,
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.batch_decode(
        reference[:, encoded.input_ids.shape[1] :], skip_special_tokens=True
    )


def test_greedy_equals_model_generate(model, tokenizer):
    rollout = HFRollout(tokenizer).generate(model, PROMPTS, max_new_tokens=10, greedy=True)
    expected = generate_greedily(model, tokenizer, PROMPTS, 10)
    assert rollout.completions == expected


def test_sampling_logprobs_match_a_full_forward(model, tokenizer):
    """Cache repetition and row compaction must not change what the model computes."""
    prompts = [p for p in PROMPTS for _ in range(4)]
    generator = torch.Generator().manual_seed(0)
    rollout = HFRollout(tokenizer).generate(model, prompts, max_new_tokens=12, generator=generator)
    lengths = rollout.completion_mask.sum(-1)
    assert lengths.min() < lengths.max(), "completions should end at different lengths"
    positions = (rollout.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(
            input_ids=rollout.sequences,
            attention_mask=rollout.attention_mask,
            position_ids=positions,
        ).logits
    start = rollout.prompt_length
    log_p = torch.log_softmax(logits[:, start - 1 : -1], dim=-1)
    recomputed = (
        log_p.gather(-1, rollout.sequences[:, start:, None]).squeeze(-1) * rollout.completion_mask
    )
    assert torch.allclose(
        recomputed, rollout.sampling_logprobs * rollout.completion_mask, atol=1e-4
    )
    entropy = -(log_p.exp() * log_p).sum(-1) * rollout.completion_mask
    assert torch.allclose(entropy, rollout.token_entropy * rollout.completion_mask, atol=1e-4)
    # every completion ends with EOS or fills the budget; nothing is generated after EOS
    eos = tokenizer.eos_token_id
    for row, n in zip(rollout.sequences[:, start:], lengths.long(), strict=True):
        assert n == 12 or row[n - 1] == eos
        assert (row[n:] == tokenizer.pad_token_id).all()


def test_same_generator_seed_same_samples(model, tokenizer):
    backend = HFRollout(tokenizer)
    first = backend.generate(
        model, PROMPTS * 2, max_new_tokens=8, generator=torch.Generator().manual_seed(5)
    )
    second = backend.generate(
        model, PROMPTS * 2, max_new_tokens=8, generator=torch.Generator().manual_seed(5)
    )
    assert first.completions == second.completions


def test_lean_and_generic_paths_sample_the_same(tiny_track, tokenizer):
    from ctbench.training.tiny_base import load_base

    base, _, _ = load_base(tiny_track)
    prompts = [p for p in PROMPTS for _ in range(8)]
    outs = [
        HFRollout(tokenizer, fast=fast).generate(
            base, prompts, max_new_tokens=16, generator=torch.Generator().manual_seed(3)
        )
        for fast in (True, False)
    ]
    assert outs[0].completions == outs[1].completions
    assert torch.allclose(outs[0].sampling_logprobs, outs[1].sampling_logprobs, atol=1e-5)


def test_min_new_tokens_forbids_early_eos(model, tokenizer):
    out = HFRollout(tokenizer).generate(model, PROMPTS, max_new_tokens=9, min_new_tokens=9)
    assert (out.completion_mask.sum(-1) == 9).all()
    assert (out.sequences[:, out.prompt_length :] != tokenizer.eos_token_id).all()


def test_grouped_training_forward_equals_the_full_forward(tiny_track, tokenizer):
    """Shared-prefix logits, log-probs and *gradients* match the plain HF forward."""
    from ctbench.training.engine import sequence_positions
    from ctbench.training.losses import token_logprobs
    from ctbench.training.tiny_base import load_base

    base, _, _ = load_base(tiny_track)
    group = 4
    prompts = [p for p in PROMPTS for _ in range(group)]
    out = HFRollout(tokenizer).generate(
        base, prompts, max_new_tokens=12, generator=torch.Generator().manual_seed(1)
    )
    start, mask = out.prompt_length, out.completion_mask
    assert mask.sum(-1).min() < mask.sum(-1).max()  # padded completions are covered

    def loss_and_grads(logits):
        logp, entropy = token_logprobs(logits, out.sequences[:, start:])
        loss = -(logp * mask).sum() / mask.sum()
        base.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in base.parameters()]
        return (logp * mask).detach(), (entropy * mask).detach(), grads

    full = base(
        input_ids=out.sequences,
        attention_mask=out.attention_mask,
        position_ids=sequence_positions(out.attention_mask),
    ).logits[:, start - 1 : -1]
    grouped = fastllama.grouped_completion_logits(
        base, out.sequences, out.attention_mask, start, group
    )
    a, b = loss_and_grads(full), loss_and_grads(grouped)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    for g_full, g_grouped in zip(a[2], b[2], strict=True):
        assert torch.allclose(g_full, g_grouped, atol=1e-6, rtol=1e-4)


def test_grouped_training_forward_with_one_completion_token(tiny_track, tokenizer):
    """A one-token completion has no completion input to run (only the prompt's last
    position predicts); the grouped forward still matches the full one."""
    from ctbench.training.engine import sequence_positions
    from ctbench.training.tiny_base import load_base

    base, _, _ = load_base(tiny_track)
    prompts = [p for p in PROMPTS for _ in range(2)]
    out = HFRollout(tokenizer).generate(
        base, prompts, max_new_tokens=1, generator=torch.Generator().manual_seed(2)
    )
    start = out.prompt_length
    assert out.sequences.shape[1] == start + 1
    with torch.no_grad():
        full = base(
            input_ids=out.sequences,
            attention_mask=out.attention_mask,
            position_ids=sequence_positions(out.attention_mask),
        ).logits[:, start - 1 : -1]
        grouped = fastllama.grouped_completion_logits(
            base, out.sequences, out.attention_mask, start, 2
        )
    assert grouped.shape == full.shape
    assert torch.allclose(full, grouped, atol=1e-5)


def test_swiglu_backward_is_autograds_bit_for_bit():
    # The custom backward exists only to skip a copy: its gradient must be autograd's own,
    # exactly, or training results would drift from the Hugging Face formulation.
    torch.manual_seed(0)
    gate_up = torch.randn(16, 5, 2 * 24, dtype=torch.float32)
    upstream = torch.randn(16, 5, 24)
    ours = gate_up.clone().requires_grad_(True)
    (fastllama.swiglu(ours) * upstream).sum().backward()
    reference = gate_up.clone().requires_grad_(True)
    gate, up = reference.chunk(2, dim=-1)
    (torch.nn.functional.silu(gate) * up * upstream).sum().backward()
    expected = torch.nn.functional.silu(gate.detach()) * up.detach()
    assert torch.equal(fastllama.swiglu(gate_up), expected)
    assert torch.equal(ours.grad, reference.grad)


def test_sign_folded_rotary_is_llamas_bit_for_bit():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 7, 32, requires_grad=True)
    angles = torch.randn(7, 32)
    cos, sin = angles.cos(), angles.sin()
    half = x.shape[-1] // 2
    llama = x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
    folded = x * cos + x.roll(half, dims=-1) * fastllama.signed_sin(sin)
    assert torch.equal(llama, folded)
    (grad_llama,) = torch.autograd.grad(llama.square().sum(), x)
    (grad_folded,) = torch.autograd.grad(folded.square().sum(), x)
    assert torch.equal(grad_llama, grad_folded)


def _gqa_model(tokenizer) -> torch.nn.Module:
    """A random small Llama with grouped-query attention: 6 query heads on 2 KV heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=(len(tokenizer) + 7) // 8 * 8,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(2)
    return LlamaForCausalLM(config).eval()


def test_gqa_decode_step_equals_generate_and_sdpa(tokenizer):
    """The one-token step with the query viewed as [B, KV, G, D] (no K/V copies) gives
    generate's greedy tokens and SDPA's log-probs on a grouped-query model."""
    model = _gqa_model(tokenizer)
    assert fastllama.supports(model)
    prompts = [p for p in PROMPTS for _ in range(2)]
    outs = {
        path: HFRollout(tokenizer, decode_attention=path).generate(
            model, prompts, max_new_tokens=12, generator=torch.Generator().manual_seed(4)
        )
        for path in ("matmul", "sdpa")
    }
    assert outs["matmul"].completions == outs["sdpa"].completions
    assert torch.allclose(
        outs["matmul"].sampling_logprobs, outs["sdpa"].sampling_logprobs, atol=1e-5
    )
    greedy = HFRollout(tokenizer).generate(model, PROMPTS, max_new_tokens=10, greedy=True)
    expected = generate_greedily(model, tokenizer, PROMPTS, 10)
    assert greedy.completions == expected


def test_fast_path_refuses_projections_that_are_not_plain_linear(tiny_track):
    """A subclass or wrapper of Linear (a peft LoRA layer, a quantized linear) computes more
    than ``.weight``: the lean path would silently drop it, so it must not take the model."""
    from ctbench.training.tiny_base import load_base

    class Adapted(torch.nn.Linear):
        pass

    base, _, _ = load_base(tiny_track)
    assert fastllama.supports(base)
    old = base.model.layers[1].mlp.down_proj
    new = Adapted(old.in_features, old.out_features, bias=False)
    new.weight = old.weight
    base.model.layers[1].mlp.down_proj = new
    assert not fastllama.supports(base)
    base.model.layers[1].mlp.down_proj = old
    base.lm_head = Adapted(base.lm_head.in_features, base.lm_head.out_features, bias=False)
    assert not fastllama.supports(base)


def test_decoding_in_bf16_attends_through_sdpa(tokenizer):
    """In bf16 the one-token step must not take the plain matmul path, which would round the
    scores and softmax them in bf16; SDPA keeps them in float32 as the model's own forward
    does. So under bf16 autocast both ``decode_attention`` settings compute the same."""
    model = _gqa_model(tokenizer)
    prompts = [p for p in PROMPTS for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = {
            path: HFRollout(tokenizer, decode_attention=path).generate(
                model, prompts, max_new_tokens=12, generator=torch.Generator().manual_seed(4)
            )
            for path in ("matmul", "sdpa")
        }
    assert outs["matmul"].completions == outs["sdpa"].completions
    assert torch.equal(outs["matmul"].sampling_logprobs, outs["sdpa"].sampling_logprobs)
