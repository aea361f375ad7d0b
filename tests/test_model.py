"""Model and tokenizer loading through the standard Hugging Face path, on local files."""

from __future__ import annotations

import pytest
import torch

from ctbench.errors import UserError
from ctbench.tracks.model import TinyModelSpec, build_tiny_model, load_causal_lm
from ctbench.tracks.tokenizer import CHARACTERS, build_char_tokenizer


def test_char_tokenizer_round_trips_and_pads_left():
    tokenizer = build_char_tokenizer()
    text = "make 6 from 1 4 2: 4+2"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert tokenizer.padding_side == "left"
    assert len(tokenizer) == 4 + len(CHARACTERS)


def test_same_seed_same_weights():
    tokenizer = build_char_tokenizer()
    a = build_tiny_model(TinyModelSpec(), len(tokenizer), seed=7)
    b = build_tiny_model(TinyModelSpec(), len(tokenizer), seed=7)
    c = build_tiny_model(TinyModelSpec(), len(tokenizer), seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=True))
    assert a.config.vocab_size >= len(tokenizer)


def test_load_causal_lm_from_a_local_directory(tmp_path):
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelSpec(), len(tokenizer), seed=3)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_causal_lm(tmp_path)
    assert loaded_tokenizer.padding_side == "left"  # saved because it was given to the constructor
    ids = torch.tensor([tokenizer.encode("47+8=", add_special_tokens=False)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_load_causal_lm_bad_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load a causal language model"):
        load_causal_lm(tmp_path / "nowhere")
