"""Chat-format prompts: a task prompt as an instruction-tuned model was trained to see it.

An instruct model (SmolLM2-135M-Instruct, Qwen2.5-Instruct) answers well only when the
prompt is wrapped in its chat template (``<|im_start|>user ... <|im_end|>`` and an open
assistant turn), and it ends its answer with an end-of-turn token rather than its
end-of-text token. Generation must stop at either, or it runs on into a made-up next turn.
The template is the tokenizer's own (``tokenizer.chat_template``), never a copy of it here,
so every model gets exactly the format it was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from transformers import GenerationConfig, PreTrainedTokenizerBase

from ctbench.errors import UserError
from ctbench.tracks.taskdata import Item, Task

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


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that closes an assistant turn in the tokenizer's own chat template.

    Why: an SFT row for a chat task must end the way the model ends its answers, or SFT
    teaches it to run on past its turn. The template is asked directly (an assistant turn
    holding a marker is rendered and the first stop token after the marker is taken), so
    ChatML's ``<|im_end|>``, Llama 3's ``<|eot_id|>`` and the rest need no table here. A
    template that closes its turns with no stop token falls back to the EOS token."""
    marker = "ctbench-answer-marker"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
        tokenize=False,
    )
    assert isinstance(text, str)
    stops = set(stop_token_ids(tokenizer))
    if marker in text:
        tail = text.split(marker, 1)[1]
        for token in tokenizer(tail, add_special_tokens=False)["input_ids"]:
            if token in stops:
                return int(token)
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has neither an end-of-turn nor an EOS token", where="chat")
    return int(tokenizer.eos_token_id)


class PromptFormat:
    """What the model sees for each task's items: the plain prompt, or for a chat task
    (``chat: true``) the prompt rendered through the tokenizer's chat template with the
    task's system prompt.

    One object serves rollouts, evaluation and SFT rows, so the three can never format a
    task differently. Rendered prompts are remembered (a GRPO step renders each prompt
    G times; an evaluation renders the same eval set after every stage)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, tasks: Mapping[str, Task]) -> None:
        self.tokenizer = tokenizer
        self.settings = {
            name: (bool(task.spec.chat), task.spec.system_prompt) for name, task in tasks.items()
        }
        self._rendered: dict[tuple[str, str], str] = {}
        self._end_of_turn: int | None = None

    def is_chat(self, task: str) -> bool:
        return self.settings.get(task, (False, None))[0]

    def text(self, item: Item) -> str:
        """The prompt text to encode (without adding special tokens) and complete."""
        chat, system = self.settings.get(item.task, (False, None))
        if not chat:
            return item.prompt
        key = (item.task, item.prompt)
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = self._rendered[key] = render_chat_prompt(
                self.tokenizer, item.prompt, system=system
            )
        return rendered

    def texts(self, items: Sequence[Item], repeats: int = 1) -> list[str]:
        """Each item's prompt text, ``repeats`` times in a row (a GRPO group)."""
        return [text for item in items for text in [self.text(item)] * repeats]

    @property
    def end_of_turn(self) -> int:
        """The id a chat task's SFT rows end with (:func:`end_of_turn_id`)."""
        if self._end_of_turn is None:
            self._end_of_turn = end_of_turn_id(self.tokenizer)
        return self._end_of_turn
