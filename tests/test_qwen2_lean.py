"""The lean decoder and the grouped training forward on biased Llama-family models.

The Qwen2.5 tracks' models are ``Qwen2ForCausalLM``: Llama's arithmetic plus biases on the
q/k/v projections (and an optional sliding window, which the lean path refuses). A Llama
configured with ``attention_bias`` and ``mlp_bias`` puts a bias on every projection. Both
are held here to Hugging Face's own forward and ``generate``, with biases drawn at random
(the models' initialisation zeroes them, which would hide a dropped bias), for decoding,
full fine-tuning gradients and LoRA gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from ctbench.tracks.tokenizer import build_char_tokenizer
from ctbench.training import fastllama
from ctbench.training.engine import sequence_positions
from ctbench.training.losses import token_logprobs
from ctbench.training.rollout import HFRollout

PROMPTS = ["47+8=", "make 6 from 1 4 2:", "use cat sun:", "viban colour? pink red navy grey:"]
GROUP = 4
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def _shape(tokenizer) -> dict:
    """A small grouped-query shape: 6 query heads on 2 KV heads, two layers."""
    return dict(
        vocab_size=(len(tokenizer) + 7) // 8 * 8,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _qwen2(tokenizer, **overrides) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(3)
    return Qwen2ForCausalLM(Qwen2Config(**{**_shape(tokenizer), **overrides}))


def _biased_llama(tokenizer) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    return LlamaForCausalLM(LlamaConfig(**_shape(tokenizer), attention_bias=True, mlp_bias=True))


def _randomise_biases(model, tokenizer) -> None:
    """Draw every projection bias (initialisation leaves them zero) and lift the EOS row of
    the output layer, so sampled completions end at uneven lengths (row compaction and
    padding inside the completion get exercised)."""
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("proj.bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        model.lm_head.weight[tokenizer.eos_token_id] *= 6.0


MODELS = {"qwen2 (q/k/v bias)": _qwen2, "llama (bias on every projection)": _biased_llama}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request, tokenizer):
    model = MODELS[request.param](tokenizer)
    _randomise_biases(model, tokenizer)
    biased = [n for n, p in model.named_parameters() if n.endswith("bias") and p.abs().sum() > 0]
    assert biased, "the model under test must carry non-zero projection biases"
    assert fastllama.supports(model)
    return model.eval()


@pytest.fixture(scope="module")
def rollout(model, tokenizer):
    prompts = [p for p in PROMPTS for _ in range(GROUP)]
    out = HFRollout(tokenizer).generate(
        model, prompts, max_new_tokens=12, generator=torch.Generator().manual_seed(1)
    )
    lengths = out.completion_mask.sum(-1)
    assert lengths.min() < lengths.max(), "completions should end at different lengths"
    return out


def test_sliding_window_and_attention_dropout_are_refused(tokenizer):
    """A sliding-window layer masks keys beyond its window and attention dropout draws from
    the RNG in training: the lean path computes neither, so it must not take such a model."""
    assert fastllama.supports(_qwen2(tokenizer))
    windowed = _qwen2(tokenizer, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert "sliding_attention" in windowed.config.layer_types
    assert not fastllama.supports(windowed)
    assert not fastllama.supports(_qwen2(tokenizer, attention_dropout=0.1))


def test_greedy_equals_model_generate(model, tokenizer):
    encoded = tokenizer(
        [tokenizer.bos_token + p for p in PROMPTS],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    reference = model.generate(
        **encoded,
        max_new_tokens=10,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    expected = tokenizer.batch_decode(
        reference[:, encoded.input_ids.shape[1] :], skip_special_tokens=True
    )
    lean = HFRollout(tokenizer).generate(model, PROMPTS, max_new_tokens=10, greedy=True)
    assert lean.completions == expected


def test_lean_and_generic_paths_sample_the_same(model, tokenizer, rollout):
    generic = HFRollout(tokenizer, fast=False).generate(
        model,
        [p for p in PROMPTS for _ in range(GROUP)],
        max_new_tokens=12,
        generator=torch.Generator().manual_seed(1),
    )
    assert rollout.completions == generic.completions
    torch.testing.assert_close(
        rollout.sampling_logprobs, generic.sampling_logprobs, atol=1e-5, rtol=0
    )


def _logprobs_and_grads(model, rollout, grouped: bool):
    sequences, attention, start = rollout.sequences, rollout.attention_mask, rollout.prompt_length
    mask = rollout.completion_mask
    model.zero_grad(set_to_none=True)
    if grouped:
        logits = fastllama.grouped_completion_logits(model, sequences, attention, start, GROUP)
    else:
        logits = model(
            input_ids=sequences,
            attention_mask=attention,
            position_ids=sequence_positions(attention),
        ).logits[:, start - 1 : -1]
    logp, entropy = token_logprobs(logits, sequences[:, start:])
    (-(logp * mask).sum() / mask.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (logp * mask).detach(), (entropy * mask).detach(), grads


def _assert_same(model, rollout) -> dict:
    logp, entropy, grads = _logprobs_and_grads(model, rollout, grouped=False)
    g_logp, g_entropy, g_grads = _logprobs_and_grads(model, rollout, grouped=True)
    torch.testing.assert_close(g_logp, logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(g_entropy, entropy, atol=1e-5, rtol=0)
    assert set(g_grads) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(g_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    return grads


def test_grouped_training_forward_equals_the_full_forward(model, rollout):
    """Full fine-tuning: log-probs, entropies and every parameter's gradient, biases too.
    The pad id is sampled as a real token here, so the embedding's ``padding_idx`` (whose row
    ``nn.Embedding`` gives no gradient; SmolLM2's pad is its <|im_end|>) is covered."""
    inputs = rollout.sequences[:, :-1][rollout.attention_mask[:, :-1].bool()]
    assert (inputs == model.model.embed_tokens.padding_idx).any()
    trained = copy.deepcopy(model).train()
    assert fastllama.supports(trained, adapters=True, training=True)
    grads = _assert_same(trained, rollout)
    bias_grads = [n for n in grads if n.endswith("proj.bias")]
    assert bias_grads and all(grads[n].abs().sum() > 0 for n in bias_grads)


def test_grouped_lora_forward_equals_peft_forward(model, rollout):
    """LoRA on every projection, over biased base layers: the base bias enters once, the
    adapters' gradients match peft's forward, and nothing frozen gets a gradient."""
    peft = pytest.importorskip("peft")
    adapted = peft.get_peft_model(
        copy.deepcopy(model), peft.LoraConfig(r=4, lora_alpha=8, target_modules=ALL)
    ).train()
    with torch.no_grad():  # B != 0, as after training, so the adapters change the output
        generator = torch.Generator().manual_seed(7)
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    assert fastllama.supports(adapted, adapters=True, training=True)
    grads = _assert_same(adapted, rollout)
    assert grads and all("lora_" in n for n in grads)
    args = (rollout.sequences, rollout.attention_mask, rollout.prompt_length, GROUP)
    with torch.no_grad(), adapted.disable_adapter():
        off = fastllama.grouped_completion_logits(adapted, *args)
    with torch.no_grad():
        plain = fastllama.grouped_completion_logits(model, *args)
    assert torch.equal(off, plain)
