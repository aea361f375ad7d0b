"""What an LLM judge talks to: a chat model behind one small interface.

The judge (:mod:`ctbench.scoring.llm_judge`) renders prompts and parses verdicts; a backend
only turns conversations into replies. Two backends exist: a local model named by a model
source, as a track names its model (frozen, batched, greedy), and an OpenAI-compatible
chat-completions endpoint (:mod:`ctbench.scoring.judge_endpoint`). Keeping them apart lets
the endpoint's faults (timeouts, 500s, malformed bodies) be tested against a real server
without a model, and the local judge without a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ctbench.errors import UserError

Conversation = list[dict[str, str]]  # chat messages: [{"role": ..., "content": ...}, ...]


@dataclass(frozen=True)
class ChatReply:
    """One reply and what it cost; token counts are the backend's own (the endpoint's
    ``usage``, or the local tokenizer's)."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class ChatBackend(Protocol):
    def identity(self) -> dict[str, Any]:
        """What determines a reply besides the conversation (kind, model, revision or weights
        hash, decoding settings). It enters the verdict cache key and the result."""
        ...

    def complete(
        self, conversations: Sequence[Conversation], *, max_tokens: int
    ) -> list[ChatReply]:
        """Replies to each conversation, in order. Raises :class:`JudgeUnavailable` when the
        backend cannot answer after its retries."""
        ...


class JudgeUnavailable(UserError):
    """The judge could not be reached or kept failing after its retries. A run stops with
    this message; verdicts obtained so far are cached in the run folder, so a resume loses
    nothing."""


class LocalModelBackend:
    """A frozen local chat model as the judge: named by a model source exactly as a track
    names its model (``package``/``file`` for a GGUF in an installed package, ``gguf``, or
    ``hf`` with an optional ``revision``), loaded once and decoded greedily in batches, so a
    verdict is a deterministic function of its conversation.

    Decoding goes through ``model.generate`` rather than the engine's rollout loop: the judge
    needs no per-token log-probabilities, and scoring sits before training in the package's
    flow (the engine imports the rewards, not the other way round)."""

    def __init__(self, params: dict[str, Any], where: str, *, device: str = "cpu") -> None:
        # Imported here: the endpoint judge and the rule rewards load no model code.
        from ctbench.common.yamlspec import Fields
        from ctbench.tracks.chat import stop_token_ids
        from ctbench.tracks.model_source import (
            describe_source,
            load_prepared,
            prepare_model,
            source_from_fields,
        )

        fields = Fields(params, path=where)
        self.batch_size = fields.positive("batch_size", int, 16)
        source = source_from_fields(fields)
        if source is None:
            raise fields.error("", "expected a model source: one of hf, gguf or package")
        fields.finish()
        prepared = prepare_model(source)
        self.model, self.tokenizer = load_prepared(prepared, device=device)
        self.model.requires_grad_(False)
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(
                "the judge model's tokenizer has no chat template; use an instruction-tuned model",
                where=where,
            )
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)
        self._identity = {
            "kind": "local",
            "source": describe_source(source),
            "weights_sha256": prepared.weights_sha256,
            "decoding": "greedy",
        }

    def identity(self) -> dict[str, Any]:
        return self._identity

    def complete(
        self, conversations: Sequence[Conversation], *, max_tokens: int
    ) -> list[ChatReply]:
        import torch

        from ctbench.tracks.chat import first_stop

        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        replies: list[ChatReply] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                add_special_tokens=False,  # the chat template wrote them
                padding=True,
                return_tensors="pt",
            ).to(self.model.device)
            with torch.no_grad():
                output = self.model.generate(
                    **batch,
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    eos_token_id=list(self.stop_ids),
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            prompt_tokens = batch["attention_mask"].sum(-1).tolist()
            for row, prompt_length in zip(
                output[:, batch["input_ids"].shape[1] :], prompt_tokens, strict=True
            ):
                ids = row.tolist()
                stop = first_stop(ids, self.stop_ids)
                answer = ids if stop is None else ids[:stop]
                used = len(ids) if stop is None else stop + 1
                replies.append(
                    ChatReply(
                        self.tokenizer.decode(answer, skip_special_tokens=True),
                        int(prompt_length),
                        used,
                    )
                )
        return replies
