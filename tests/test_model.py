"""The tiny model and its character tokenizer (real models: tests/test_model_source.py)."""

from __future__ import annotations

import torch

from ctbench.tracks.model import TinyModelSpec, build_tiny_model
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
