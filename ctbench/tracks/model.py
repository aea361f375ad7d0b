"""Building the tiny track's small Llama from a seed.

It is a standard ``LlamaForCausalLM``, so the engine has one code path for every model
size; real models come from a track's model source (``ctbench.tracks.model_source``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny track's model. Measured on 2 cores: 128/2/4 (~0.5M parameters)
    learns as much per step as 2M at a third of the time; 8M was not viable."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 96


def build_tiny_model(spec: TinyModelSpec, vocab_size: int, seed: int) -> LlamaForCausalLM:
    """A freshly initialised small Llama; the same seed gives the same weights."""
    # The model's vocabulary must cover every tokenizer id; round up to a multiple of 8.
    padded_vocab = (vocab_size + 7) // 8 * 8
    config = LlamaConfig(
        vocab_size=padded_vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    return model


def spec_dict(spec: TinyModelSpec) -> dict[str, int]:
    return asdict(spec)
