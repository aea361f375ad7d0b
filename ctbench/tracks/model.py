"""Loading and building causal language models.

One function loads any Hugging Face causal LM by name or local path (GPU tracks); another
builds the tiny track's small Llama from a seed. Both return the standard
``PreTrainedModel`` so the engine has one code path for every model size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ctbench.errors import UserError


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


def load_causal_lm(
    name_or_path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a Hugging Face causal LM and its tokenizer by hub name or local directory.

    These machines are offline-first: a local directory always works; a hub name works only
    where the model is already in the Hugging Face cache or the hub is reachable.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load a causal language model from {name_or_path!r}: {exc}",
            where="model",
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def spec_dict(spec: TinyModelSpec) -> dict[str, int]:
    return asdict(spec)
