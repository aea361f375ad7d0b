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
from lora_checks import (
    assert_bf16_grouped_no_worse_on_gpu,
    logprobs_and_grads,
    randomise_lora_b,
)

from ctbench.tracks.tokenizer import build_char_tokenizer
from ctbench.training import fastllama
from ctbench.training.rollout import HFRollout

PROMPTS = ["47+8=", "make 6 from 1 4 2:", "use cat sun:", "viban colour? pink red navy grey:"]
GROUP = 4
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYOUTS = {
    "every projection": {"r": 4, "lora_alpha": 8, "target_modules": ALL},
    # peft's own default for Qwen2 is q and v: a plain biased k sits between two adapted
    # projections in the fused q/k/v (a zero-width block), with per-layer ranks and alphas.
    "q, v and up, mixed ranks and alphas": {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj", "up_proj"],
        "rank_pattern": {"v_proj": 2},
        "alpha_pattern": {"q_proj": 3},
    },
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def _shape(tokenizer, *, tied: bool) -> dict:
    """A small grouped-query shape: 6 query heads on 2 KV heads, two layers."""
    return dict(
        vocab_size=(len(tokenizer) + 7) // 8 * 8,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _qwen2(tokenizer, **overrides) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(3)
    # Tied input and output embeddings, as Qwen2.5-0.5B and 1.5B have them.
    return Qwen2ForCausalLM(Qwen2Config(**{**_shape(tokenizer, tied=True), **overrides}))


def _biased_llama(tokenizer) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(**_shape(tokenizer, tied=False), attention_bias=True, mlp_bias=True)
    return LlamaForCausalLM(config)


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
    decoder = HFRollout(tokenizer)._decoder(model, 1, 8)
    assert isinstance(decoder, fastllama.LlamaDecoder), "the rollouts must take the lean path"
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


def test_sliding_window_rope_scaling_and_attention_dropout_are_refused(tokenizer):
    """A sliding-window layer masks keys beyond its window, YaRN (which Qwen's model cards
    suggest for long inputs) rescales the rotary, and attention dropout draws from the RNG
    in training: the lean path computes none of them, so it must not take such a model."""
    assert fastllama.supports(_qwen2(tokenizer))
    windowed = _qwen2(tokenizer, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert "sliding_attention" in windowed.config.layer_types
    assert not fastllama.supports(windowed)
    yarn = {
        "rope_type": "yarn",
        "factor": 2.0,
        "rope_theta": 10000.0,
        "original_max_position_embeddings": 64,
    }
    assert not fastllama.supports(_qwen2(tokenizer, rope_parameters=yarn))
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
    return logprobs_and_grads(model, rollout, GROUP, grouped=grouped)


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


def _adapted(model, layout: str):
    peft = pytest.importorskip("peft")
    adapted = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(**LAYOUTS[layout]))
    randomise_lora_b(adapted)
    return adapted


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_grouped_lora_forward_equals_peft_forward(model, rollout, layout: str):
    """LoRA over biased base layers: the base bias enters once, the adapters' gradients match
    peft's forward, and nothing frozen gets a gradient."""
    adapted = _adapted(model, layout).train()
    assert fastllama.supports(adapted, adapters=True, training=True)
    grads = _assert_same(adapted, rollout)
    assert grads and all("lora_" in n for n in grads)
    args = (rollout.sequences, rollout.attention_mask, rollout.prompt_length, GROUP)
    with torch.no_grad(), adapted.disable_adapter():
        off = fastllama.grouped_completion_logits(adapted, *args)
    with torch.no_grad():
        plain = fastllama.grouped_completion_logits(model, *args)
    assert torch.equal(off, plain)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_lora_decoding_equals_peft_generation(model, tokenizer, layout: str):
    """Decoding folds each adapter into its layer's weight, next to the base layer's bias:
    the samples and log-probs are those of peft's own forward (the generic path), and with
    the adapters off those of the base model."""
    adapted = _adapted(model, layout).eval()
    prompts = [p for p in PROMPTS for _ in range(GROUP)]

    def sample(target, fast: bool):
        return HFRollout(tokenizer, fast=fast).generate(
            target, prompts, max_new_tokens=12, generator=torch.Generator().manual_seed(5)
        )

    lean, generic = sample(adapted, True), sample(adapted, False)
    assert lean.completions == generic.completions
    torch.testing.assert_close(lean.sampling_logprobs, generic.sampling_logprobs, atol=1e-5, rtol=0)
    base = sample(model, True)
    assert not torch.equal(lean.sampling_logprobs, base.sampling_logprobs)  # adapters matter
    with adapted.disable_adapter():
        off = sample(adapted, True)
    assert off.completions == base.completions
    assert torch.equal(off.sampling_logprobs, base.sampling_logprobs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none")
def test_grouped_lora_forward_under_bf16_autocast_on_gpu(model, rollout):
    """The Qwen tracks' setting (LoRA, CUDA bf16 autocast) on a biased model; see
    :func:`lora_checks.assert_bf16_grouped_no_worse_on_gpu`."""
    adapted = _adapted(model, "q, v and up, mixed ranks and alphas").train()
    assert_bf16_grouped_no_worse_on_gpu(adapted, rollout, GROUP)
