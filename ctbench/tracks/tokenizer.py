"""A character-level tokenizer for the tiny track, as a real Hugging Face tokenizer.

Why characters: the tiny tasks (reversed sums, digit expressions, colour facts, short
lines) are all spelled in a few dozen symbols, and a 0.5M-parameter model learns them far
faster one character at a time than through a BPE vocabulary. Wrapping it as a
``PreTrainedTokenizerFast`` keeps every other part of the engine (generation, saving,
mergekit's ``copy_tokenizer``) on the standard Hugging Face path used for real models.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARACTERS = " 0123456789abcdefghijklmnopqrstuvwxyz+-*=:?,.()'/"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny track's tokenizer: one token per character, left padding for batched decoding."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in CHARACTERS:
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    # padding_side must be given to the constructor: transformers 5 saves it only then.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )
