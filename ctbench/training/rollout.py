"""Rollout backends: turn prompts into sampled (or greedy) completions.

The Hugging Face backend below is the default on CPU and GPU: a batched decoding loop over
the model's own forward with a KV cache (``DynamicCache``) and left padding. It is written
out rather than calling ``model.generate`` because the engine needs, per generated token,
the sampling log-probability and the entropy of the next-token distribution (GRPO's
behaviour log-probs and the entropy figures), and because ``generate``'s per-call set-up
dominated the tiny model's step time (REFERENCES: ~0.09 s of a 0.24 s step).
A vLLM backend (later issue) implements the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from ctbench.tracks.chat import stop_token_ids
from ctbench.training import fastllama


@dataclass
class Rollout:
    """A batch of prompts and their completions, laid out for a training forward pass.

    ``sequences`` = left-padded prompt ids followed by completion ids (right-padded with
    ``pad`` after the stop token); ``completion_mask`` marks generated tokens up to and
    including the stop token (EOS or end-of-turn), so training teaches the model to stop.
    """

    sequences: torch.Tensor  # [N, P + T] long
    attention_mask: torch.Tensor  # [N, P + T] long
    prompt_length: int  # P
    completion_mask: torch.Tensor  # [N, T] float
    sampling_logprobs: torch.Tensor  # [N, T] log-prob of each generated token when sampled
    token_entropy: torch.Tensor  # [N, T] entropy of the sampling distribution at each step
    completions: list[str]

    @property
    def generated_tokens(self) -> int:
        return int(self.completion_mask.sum().item())


class RolloutBackend(Protocol):
    def generate(
        self,
        model: PreTrainedModel,
        prompts: list[str],
        *,
        max_new_tokens: int,
        temperature: float,
        greedy: bool,
        generator: torch.Generator | None,
        min_new_tokens: int = 0,
    ) -> Rollout: ...


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``<bos> prompt`` ids and mask (left padding keeps every row's last token
    at the same column, so one decoding step serves the whole batch).

    A prompt whose text already begins with the BOS token gets no second one: a chat
    template writes its own special tokens, and SmolLM2's BOS *is* ``<|im_start|>``, the
    first token of every chat prompt."""
    bos_id = tokenizer.bos_token_id
    unique = list(dict.fromkeys(prompts))
    # One batched (Rust) tokenizer call for the distinct prompts: GRPO repeats each one G times.
    encoded = {
        prompt: ids if bos_id is None or (ids and ids[0] == bos_id) else [bos_id, *ids]
        for prompt, ids in zip(
            unique, tokenizer(unique, add_special_tokens=False)["input_ids"], strict=True
        )
    }
    width = max(len(ids) for ids in encoded.values())
    padded = {p: [tokenizer.pad_token_id] * (width - len(ids)) + ids for p, ids in encoded.items()}
    ids = torch.tensor([padded[p] for p in prompts], dtype=torch.long)
    lengths = torch.tensor([len(encoded[p]) for p in prompts])
    mask = (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long()
    return ids.to(device), mask.to(device)


def group_size_of(prompts: list[str]) -> int:
    """k if the prompts come as consecutive runs of k copies (GRPO groups), else 1."""
    for k in range(len(prompts), 1, -1):
        if len(prompts) % k == 0 and all(
            prompts[i] == prompts[i - i % k] for i in range(len(prompts))
        ):
            return k
    return 1


class HFCacheDecoder:
    """Decoding through the model's own forward and a ``DynamicCache`` (any architecture)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.cache = DynamicCache()
        self.mask = torch.zeros(0)

    def prefill(
        self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        self.mask = attention_mask
        output = self.model(
            input_ids=ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1, :]

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        ones = torch.ones((len(token), 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        output = self.model(
            input_ids=token[:, None],
            attention_mask=self.mask,
            position_ids=position,
            past_key_values=self.cache,
            use_cache=True,
        )
        return output.logits[:, -1, :]

    def repeat_interleave(self, repeats: int) -> None:
        self.cache.batch_repeat_interleave(repeats)
        self.mask = self.mask.repeat_interleave(repeats, dim=0)

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]


class HFRollout:
    """Batched sampling from a Hugging Face causal LM with a KV cache.

    Two exact savings over a plain loop: a prompt repeated G times (a GRPO group) is
    pre-filled once and its cache repeated; rows that have stopped leave the decoding
    batch, so a batch mixing 4-token and 24-token answers does not pay for the long ones on
    every row. For plain Llama and Qwen2 models the decoding runs through
    :mod:`ctbench.training.fastllama` (same arithmetic, far less per-call overhead);
    ``fast=False`` forces the generic path.

    A row stops at any of ``stop_ids`` (default :func:`ctbench.tracks.chat.stop_token_ids`:
    the EOS and the end-of-turn tokens the tokenizer knows, plus the model's generation
    config EOS): a chat model ends its answer with ``<|im_end|>``, not its end-of-text token.
    For the tiny track's tokenizer that set is its one EOS id, so nothing changes there.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        fast: bool = True,
        stop_ids: tuple[int, ...] | None = None,
        decode_attention: str = "matmul",
    ) -> None:
        self.tokenizer = tokenizer
        self.fast = fast
        self.decode_attention = decode_attention  # fastllama's one-token step: matmul | sdpa
        self.stop_ids = stop_ids
        self._stops: dict[tuple[int, ...], tuple[int, ...]] = {}

    def stops_for(self, model: PreTrainedModel) -> tuple[int, ...]:
        """The stop ids for ``model``: the explicit ones, else the tokenizer's with the
        model's generation-config EOS (one id or a list), computed once per distinct EOS."""
        if self.stop_ids is not None:
            return self.stop_ids
        config = getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        key = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (eos,))
        if key not in self._stops:
            self._stops[key] = stop_token_ids(self.tokenizer, config)
        return self._stops[key]

    def _decoder(self, model: PreTrainedModel, rows: int, capacity: int):
        if self.fast and fastllama.supports(model, adapters=True):
            return fastllama.LlamaDecoder(
                fastllama.unwrapped(model), rows, capacity, decode_attention=self.decode_attention
            )
        return HFCacheDecoder(model)

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        prompts: list[str],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        min_new_tokens: int = 0,
    ) -> Rollout:
        """Complete every prompt; ``min_new_tokens`` forbids every stop token before that
        many tokens (as in ``GenerationConfig``), e.g. to make benchmark batches a fixed
        length."""
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id
        stops = self.stops_for(model)
        # One id (the tiny track): a plain comparison, as before there were several.
        stop_tensor = torch.tensor(stops, dtype=torch.long, device=device)
        single_stop = stops[0] if len(stops) == 1 else None
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, device)
        n, prompt_length = prompt_ids.shape
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        group = group_size_of(prompts)
        was_training = model.training
        model.eval()
        firsts = slice(None, None, group)
        decoder = self._decoder(model, n // group, prompt_length + max_new_tokens)
        logits = decoder.prefill(prompt_ids[firsts], prompt_mask[firsts], positions[firsts]).float()
        if group > 1:
            decoder.repeat_interleave(group)
            logits = logits.repeat_interleave(group, dim=0)

        tokens = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=device)
        logprobs = torch.zeros((n, max_new_tokens), device=device)
        entropies = torch.zeros((n, max_new_tokens), device=device)
        completion_mask = torch.zeros((n, max_new_tokens), device=device)
        # Rows still in the decoding batch; None while that is every row, so writes are plain
        # column copies rather than index_put.
        active: torch.Tensor | None = None
        alive = torch.ones(n, dtype=torch.bool, device=device)  # of those, rows before their EOS
        all_alive = True  # no row has emitted EOS yet: the masking below would change nothing
        next_position = positions[:, -1:] + 1
        steps_taken = 0
        # Dividing by 1.0 is exact, so skipping it changes no bit.
        divisor = 1.0 if greedy else temperature
        for step in range(max_new_tokens):
            if step < min_new_tokens:
                logits[:, stop_tensor] = float("-inf")
            log_p = torch.log_softmax(logits if divisor == 1.0 else logits / divisor, dim=-1)
            probs = log_p.exp()  # one exp serves both the sampler and the entropy
            if greedy:
                token = logits.argmax(dim=-1)
            else:
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            if not all_alive:
                token = torch.where(alive, token, pad)
            # Every active row is written (finished rows get pad / 0, the buffers' initial
            # values), so no boolean indexing and its per-call nonzero() on each step.
            chosen = log_p.gather(-1, token[:, None]).squeeze(-1)
            entropy = -(probs * log_p).sum(-1)
            if not all_alive:
                chosen = torch.where(alive, chosen, 0.0)
                entropy = torch.where(alive, entropy, 0.0)
            rows = slice(None) if active is None else active
            tokens[rows, step] = token
            logprobs[rows, step] = chosen
            entropies[rows, step] = entropy
            completion_mask[rows, step] = alive.float()
            steps_taken = step + 1
            stopped = (
                token == single_stop if single_stop is not None else torch.isin(token, stop_tensor)
            )
            alive = alive & ~stopped
            remaining = int(alive.sum())  # the loop's one host sync per step
            if remaining == 0 or step + 1 == max_new_tokens:
                break
            # Compacting copies the whole KV cache: worth it once a quarter of the rows is done.
            if remaining <= 0.75 * len(alive):
                keep = alive.nonzero().squeeze(-1)
                decoder.select(keep)
                active, token, next_position, alive = (
                    keep if active is None else active[keep],
                    token[keep],
                    next_position[keep],
                    alive[keep],
                )
            all_alive = remaining == len(alive)
            logits = decoder.step(token, next_position).float()
            next_position = next_position + 1
        model.train(was_training)
        tokens, completion_mask = tokens[:, :steps_taken], completion_mask[:, :steps_taken]
        # One tolist per tensor instead of a slice, sum and item per row.
        lengths = completion_mask.sum(-1).long().tolist()
        texts = self.tokenizer.batch_decode(
            [row[:length] for row, length in zip(tokens.tolist(), lengths, strict=True)],
            skip_special_tokens=True,
        )
        return Rollout(
            sequences=torch.cat([prompt_ids, tokens], dim=1),
            attention_mask=torch.cat([prompt_mask, completion_mask.long()], dim=1),
            prompt_length=prompt_length,
            completion_mask=completion_mask,
            sampling_logprobs=logprobs[:, :steps_taken],
            token_entropy=entropies[:, :steps_taken],
            completions=texts,
        )
