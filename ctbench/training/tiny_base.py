"""The tiny track's base checkpoint: built reproducibly from a seed, then cached.

A short pre-training (packed SFT on the tasks' expert demonstrations, cosine-decayed lr)
teaches the formats. A *band controller* keeps every task weak but not hopeless: each
``check_every`` steps it scores every task on a dev slice of the train pool (held out of
pre-training, never the eval set), lowers the mixture weight of a task that passed the
band's floor to 0.1× and of one past the ceiling to 0.02× (never 0: at 0 a task is
forgotten within a hundred steps and the weights oscillate, measured), keeps the
checkpoint closest to the band, and stops once every task is inside it. Reason: RL needs
reward signal (not hopeless) and room to improve (weak) on every task, or the comparison
between schedules measures nothing (REFERENCES, tiny-track calibration).

The tiny track *ships* its base checkpoint (1.7 MB, ``model.shipped`` in the track file)
so a fresh machine starts at once and every machine starts from the same weights; it is
used only while its recorded recipe key matches the track. ``ctbench base --rebuild``
re-creates it from its seed and reports how far the rebuild is from the shipped weights.
Otherwise a built checkpoint is cached under ``~/.cache/ctbench/base/<key>``, where the
key covers the model spec, the pre-training recipe and every task's content; writes are
atomic.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ctbench.errors import UserError
from ctbench.scoring.rewards import Reward, build_reward, chance_level
from ctbench.tracks.model import build_tiny_model
from ctbench.tracks.model_source import (
    PreparedModel,
    load_prepared,
    portable_source,
    prepare_model,
)
from ctbench.tracks.resources import cache_dir
from ctbench.tracks.taskdata import Item
from ctbench.tracks.tokenizer import build_char_tokenizer
from ctbench.tracks.track import PretrainSpec, Track
from ctbench.training.adapters import check_target_modules
from ctbench.training.rollout import HFRollout

BASE_RECIPE_VERSION = 1
Progress = Callable[[int, int, dict[str, float]], None]


def base_cache_key(track: Track) -> str:
    spec = track.spec.model
    payload = {
        "recipe_version": BASE_RECIPE_VERSION,
        "tiny": asdict(spec.tiny) if spec.tiny else None,
        "init_seed": spec.init_seed,
        "pretrain": asdict(spec.pretrain),
        "tasks": {n: t.content_hash() for n, t in track.tasks.items()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def normalised(score: float, chance: float) -> float:
    """(s − c) / (1 − c): 0 = blind guessing, 1 = perfect."""
    return (score - chance) / (1.0 - chance)


def band_distance(scores: dict[str, float], low: float, high: float) -> float:
    """How far a set of normalised scores lies outside [low, high], summed over tasks."""
    return sum(max(low - s, 0.0) + max(s - high, 0.0) for s in scores.values())


def _encode_example(tokenizer: PreTrainedTokenizerBase, item: Item) -> tuple[list[int], list[int]]:
    prompt = [tokenizer.bos_token_id, *tokenizer.encode(item.prompt, add_special_tokens=False)]
    answer = [
        *tokenizer.encode(item.demonstration or "", add_special_tokens=False),
        tokenizer.eos_token_id,
    ]
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


def packed_batch(
    examples: dict[str, list[tuple[list[int], list[int]]]],
    weights: dict[str, float],
    rng: random.Random,
    rows: int,
    row_tokens: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ``row_tokens`` tokens packed with whole examples drawn by task weight.

    Packing (rather than padding one short example per row) gave ~1.3× the steps/s and
    faster learning on the tiny track. Position ids restart at each example so a packed
    example looks like a lone one at inference; attention may cross example borders,
    which pre-training tolerates.
    """
    names = [n for n in sorted(weights) if weights[n] > 0]
    task_weights = [weights[n] for n in names]
    ids = torch.full((rows, row_tokens), pad_id, dtype=torch.long)
    labels_mask = torch.zeros((rows, row_tokens), dtype=torch.float32)
    positions = torch.zeros((rows, row_tokens), dtype=torch.long)
    for r in range(rows):
        filled = 0
        while True:
            name = rng.choices(names, weights=task_weights)[0]
            tokens, mask = examples[name][rng.randrange(len(examples[name]))]
            if filled + len(tokens) > row_tokens:
                break
            ids[r, filled : filled + len(tokens)] = torch.tensor(tokens)
            labels_mask[r, filled : filled + len(tokens)] = torch.tensor(mask, dtype=torch.float32)
            positions[r, filled : filled + len(tokens)] = torch.arange(len(tokens))
            filled += len(tokens)
    return ids, labels_mask, positions


def dev_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dev: dict[str, list[Item]],
    rewards: dict[str, Reward],
    track: Track,
    seed: int,
) -> dict[str, float]:
    """Chance-normalised score of each task on its dev slice, decoded as in evaluation."""
    rollout = HFRollout(tokenizer)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    scores = {}
    for name, items in dev.items():
        spec = track.tasks[name].spec
        greedy = spec.eval.decoding == "greedy"
        k = 1 if greedy else spec.eval.samples_per_prompt
        batch = rollout.generate(
            model,
            [i.prompt for i in items for _ in range(k)],
            max_new_tokens=spec.max_new_tokens,
            temperature=spec.eval.temperature,
            greedy=greedy,
            generator=generator,
        )
        groups = [batch.completions[j * k : (j + 1) * k] for j in range(len(items))]
        rows = rewards[name].score_groups(items, groups, training=False)
        raw = sum(sum(r) / len(r) for r in rows) / len(rows)
        scores[name] = normalised(raw, chance_level(track.tasks[name]))
    return scores


def pretrain_pools(track: Track) -> tuple[dict[str, list[Item]], dict[str, list[Item]]]:
    """Each task's dev items (the first ``pretrain.dev_items`` train items, held out to steer
    the mixture) and the demonstrations pre-training may use (the rest, where marked usable).

    A task too small for this split is a user error that names what is short and the two
    ways out, raised before any run folder exists (``check_base_buildable``)."""
    recipe = track.spec.model.pretrain
    dev: dict[str, list[Item]] = {}
    usable: dict[str, list[Item]] = {}
    for name, task in track.tasks.items():
        pool = list(task.train)
        dev[name] = pool[: recipe.dev_items]
        rest = pool[recipe.dev_items :]
        usable[name] = [i for i in rest if i.pretrain and i.demonstration is not None]
        if not usable[name]:
            with_demo = sum(1 for i in pool if i.demonstration is not None)
            raise UserError(
                f"task {name!r} has {len(pool)} train items ({with_demo} with a demonstration), "
                f"but building the tiny base holds out the first {recipe.dev_items} as its dev "
                f"set (model.pretrain.dev_items), leaving no demonstration to pre-train on; "
                f"give the task more than {recipe.dev_items} train items with demonstrations "
                f"({task.spec.file}), or lower model.pretrain.dev_items",
                where=track.spec.file,
            )
    return dev, usable


_PREPARED: dict[tuple[Any, str], PreparedModel] = {}


def prepared_source(track: Track) -> PreparedModel:
    """The track's model source made loadable (a GGUF file converted once into the cache, a
    Hugging Face folder found), remembered for the process: ``Run.create`` prepares it to
    fail early, and the run itself then needs it again."""
    source = track.spec.model.source
    assert source is not None
    key = (source, str(cache_dir()))
    prepared = _PREPARED.get(key)
    if prepared is None or not prepared.folder.is_dir():
        prepared = _PREPARED[key] = prepare_model(source)
    return prepared


def check_base_buildable(track: Track) -> None:
    """Fail early, before a run folder is made, if the base would be built and cannot be:
    a missing model package or folder is one line naming the command that gets it, and a
    chat-format task on a tokenizer without a chat template is refused now."""
    if track.spec.model.source is not None:
        prepared = prepared_source(track)
        if track.spec.model.lora is not None:
            check_target_modules(
                prepared.folder,
                track.spec.model.lora,
                where=f"{track.spec.file}: model.lora.target_modules",
            )
        if any(task.spec.chat for task in track.tasks.values()):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(prepared.folder), local_files_only=True)
            if not getattr(tokenizer, "chat_template", None):
                raise UserError(
                    f"the model's tokenizer ({prepared.folder}) has no chat template; drop "
                    "chat: true or use an instruction-tuned model",
                    where=f"{track.spec.file}: chat",
                )
        return
    if shipped_checkpoint_dir(track) is not None:
        return
    if (base_checkpoint_dir(track) / "base_report.json").exists():
        return
    pretrain_pools(track)


def pretrain_tiny_base(
    track: Track, progress: Progress | None = None
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Build and pre-train the tiny base model; returns it with a report of what happened."""
    spec = track.spec.model
    recipe: PretrainSpec = spec.pretrain
    assert spec.tiny is not None
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(spec.tiny, len(tokenizer), spec.init_seed)
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    dev, usable = pretrain_pools(track)
    examples = {
        name: [_encode_example(tokenizer, i) for i in items] for name, items in usable.items()
    }
    rewards = {name: build_reward(task) for name, task in track.tasks.items()}
    weights = {name: 1.0 for name in track.tasks}
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    # Cosine decay to 0.1× the peak: late changes of the mixture then move scores gently.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(s / recipe.max_steps, 1.0)))
    )
    history = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    started = time.perf_counter()
    step = 0
    model.train()
    while step < recipe.max_steps:
        ids, mask, positions = packed_batch(
            examples, weights, rng, recipe.rows, recipe.row_tokens, tokenizer.pad_token_id
        )
        logits = model(input_ids=ids, position_ids=positions).logits[:, :-1]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        target_mask = mask[:, 1:]
        loss = -(logp * target_mask).sum() / target_mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        if step % recipe.check_every == 0 or step == recipe.max_steps:
            scores = dev_scores(model, tokenizer, dev, rewards, track, recipe.seed + step)
            model.train()
            history.append(
                {
                    "step": step,
                    "loss": float(loss.detach()),
                    "dev": scores,
                    "weights": dict(weights),
                }
            )
            if progress is not None:
                progress(step, recipe.max_steps, scores)
            distance = band_distance(scores, recipe.band_low, recipe.band_high)
            if best is None or distance < best[0]:
                best = (distance, step, copy.deepcopy(model.state_dict()))
            if distance == 0.0 or (step - best[1]) // recipe.check_every >= recipe.patience:
                break
            for name, score in scores.items():
                weights[name] = (
                    0.02 if score > recipe.band_high else 0.1 if score >= recipe.band_low else 1.0
                )
    if best is not None:
        model.load_state_dict(best[2])
    report = {
        "recipe_key": base_cache_key(track),
        "steps": step,
        "chosen_step": best[1] if best else step,
        "band_distance": best[0] if best else None,
        "wall_s": time.perf_counter() - started,
        "final_dev": next((h["dev"] for h in history if best and h["step"] == best[1]), {}),
        "history": history,
        "torch": torch.__version__,
    }
    return model, report


def _save_atomic(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, report: dict, target: Path
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "base_report.json").write_text(json.dumps(report, indent=2))
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished the same build first; its checkpoint is identical.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def base_checkpoint_dir(track: Track) -> Path:
    return cache_dir() / "base" / f"{track.spec.name}-{base_cache_key(track)}"


def shipped_checkpoint_dir(track: Track) -> Path | None:
    """The shipped checkpoint, if the track names one *and* it was built by this recipe."""
    if track.spec.model.shipped is None:
        return None
    folder = Path(track.spec.file).parent / track.spec.model.shipped
    report = folder / "base_report.json"
    if not report.exists():
        return None
    if json.loads(report.read_text()).get("recipe_key") != base_cache_key(track):
        return None
    return folder


def ensure_base_checkpoint(
    track: Track, progress: Progress | None = None, *, rebuild: bool = False
) -> Path:
    """The path of the track's base checkpoint, building and caching it if needed (for a
    model source: the prepared local folder)."""
    if track.spec.model.source is not None:
        return prepared_source(track).folder
    shipped = shipped_checkpoint_dir(track)
    if shipped is not None and not rebuild:
        return shipped
    target = base_checkpoint_dir(track)
    if rebuild:
        shutil.rmtree(target, ignore_errors=True)
    if not (target / "base_report.json").exists():
        model, report = pretrain_tiny_base(track, progress)
        _save_atomic(model, build_char_tokenizer(), report, target)
    return target


def load_base(
    track: Track, progress: Progress | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """The base model, its tokenizer and the report a result keeps under ``base`` (for a
    model source: its portable description and ``weights_sha256``)."""
    if track.spec.model.source is not None:
        prepared = prepared_source(track)
        if track.spec.model.lora is not None:
            check_target_modules(
                prepared.folder,
                track.spec.model.lora,
                where=f"{track.spec.file}: model.lora.target_modules",
            )
        model, tokenizer = load_prepared(prepared)
        report = {
            "source": portable_source(prepared.source, Path(track.spec.file).parent),
            "weights_sha256": prepared.weights_sha256,
        }
        return model, tokenizer, report
    path = ensure_base_checkpoint(track, progress)
    report = json.loads((path / "base_report.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, build_char_tokenizer(), report
