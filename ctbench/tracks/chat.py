"""Chat-format prompts: a task prompt as an instruction-tuned model was trained to see it.

An instruct model (SmolLM2-135M-Instruct, Qwen2.5-Instruct) answers well only when the
prompt is wrapped in its chat template (``<|im_start|>user ... <|im_end|>`` and an open
assistant turn), and it ends its answer with an end-of-turn token rather than its
end-of-text token. Generation must stop at either, or it runs on into a made-up next turn.
The template is the tokenizer's own (``tokenizer.chat_template``), never a copy of it here,
so every model gets exactly the format it was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from transformers import GenerationConfig, PreTrainedTokenizerBase

from ctbench.errors import UserError

# Special tokens that end an assistant turn in the common chat formats: ChatML (SmolLM2,
# Qwen), Llama 3, Phi-3, Gemma, and the end-of-text markers a model may emit instead. Only
# the ones that are special tokens of the tokenizer at hand count (a plain word never does).
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
)


def chat_messages(prompt: str, *, system: str | None = None) -> list[dict[str, str]]:
    """The conversation for one task prompt: an optional system turn, then the user turn."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages


def render_chat_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, *, system: str | None = None
) -> str:
    """The prompt text through the tokenizer's chat template, ending with an open assistant
    turn (``add_generation_prompt``), so the model's next tokens are its answer.

    Without ``system`` the template decides: SmolLM2's inserts its own default system
    prompt ("You are a helpful AI assistant named SmolLM ..."), which is what the model saw
    in training. Encode the result with ``add_special_tokens=False`` (see
    :func:`chat_prompt_ids`): the template already holds every special token."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise UserError(
            f"tokenizer {name!r} has no chat template; drop the task's chat format or use "
            "an instruction-tuned model",
            where="chat",
        )
    text = tokenizer.apply_chat_template(
        chat_messages(prompt, system=system), tokenize=False, add_generation_prompt=True
    )
    assert isinstance(text, str)
    return text


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, *, system: str | None = None
) -> list[int]:
    """Token ids of :func:`render_chat_prompt`, without the tokenizer adding a second BOS."""
    text = render_chat_prompt(tokenizer, prompt, system=system)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _as_ids(value: Any) -> Iterable[int]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None = None
) -> tuple[int, ...]:
    """Every token id that ends a completion: the tokenizer's EOS, the generation config's
    EOS (one id or a list, as Qwen2.5 ships), and the end-of-turn special tokens the
    tokenizer knows. Sorted, without repeats.

    Why more than EOS: a chat model ends its turn with its end-of-turn token, which is not
    always the tokenizer's EOS (Llama 3: ``<|eot_id|>`` vs ``<|end_of_text|>``); a model
    that emits the other one must stop too."""
    ids: set[int] = set(_as_ids(tokenizer.eos_token_id))
    if generation_config is not None:
        ids.update(_as_ids(generation_config.eos_token_id))
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    # Only known special tokens are looked up: an unknown token would map to the UNK id.
    ids.update(
        int(tokenizer.convert_tokens_to_ids(token))
        for token in END_OF_TURN_TOKENS
        if token in special
    )
    return tuple(sorted(ids))


def first_stop(token_ids: Sequence[int], stop_ids: Iterable[int]) -> int | None:
    """Index of the first stop token in a completion, or None if it never stopped.

    The completion's answer is ``token_ids[:index]``; training keeps the stop token itself
    (``token_ids[: index + 1]``) so the policy learns to end its turn."""
    stops = set(stop_ids)
    for index, token in enumerate(token_ids):
        if token in stops:
            return index
    return None
