"""Seeded generators of the tiny track's synthetic tasks.

Each generator turns a *data seed* (part of the frozen track, never the run seed: every run
of a track sees the same items) into a train pool and an eval set of records. A record is a
plain dict of fields that the task's prompt template and reward read; ``demonstration`` is
the expert answer used for SFT, ``pretrain`` says whether the base model's short
pre-training may see it.

The four tasks mirror Omni-Thinker's four domains and were calibrated so a 0.5M-parameter
model starts weak but not hopeless (see README, "The band"):

- ``reversed_addition`` (math): ``47+8=`` → ``55`` (the sum's digits reversed: a small model
  learns carries far more easily least-significant digit first).
- ``digit_expression`` (code): ``make 6 from 1 4 2:`` → ``4+2``, checked by running it.
- ``colour_facts`` (qa): invented names with a colour each, four options with distractors.
- ``two_word_lines`` (creative): ``use cat sun:`` → a short line with both words; the
  expert lines are deliberately formulaic, so variety has to be learned.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

Record = dict[str, Any]
Generator = Callable[..., tuple[list[Record], list[Record]]]

GENERATORS: dict[str, Generator] = {}


def register_generator(name: str) -> Callable[[Generator], Generator]:
    def wrap(fn: Generator) -> Generator:
        GENERATORS[name] = fn
        return fn

    return wrap


def _split(records: list[Record], eval_size: int, rng: random.Random) -> tuple[list, list]:
    rng.shuffle(records)
    if eval_size >= len(records):
        raise ValueError(f"eval_size {eval_size} leaves no training items out of {len(records)}")
    return records[eval_size:], records[:eval_size]


@register_generator("reversed_addition")
def reversed_addition(
    *, data_seed: int, eval_size: int, min_a: int = 10, max_a: int = 99, max_b: int = 9
) -> tuple[list[Record], list[Record]]:
    """Every a + b with a two-digit and b one-digit; the answer's digits are reversed."""
    rng = random.Random(data_seed)
    records = []
    for a, b in itertools.product(range(min_a, max_a + 1), range(max_b + 1)):
        answer = str(a + b)[::-1]
        records.append({"a": a, "b": b, "answer": answer, "demonstration": answer})
    return _split(records, eval_size, rng)


def _expression_value(digits: list[int], ops: list[str]) -> int:
    value = digits[0]
    for op, digit in zip(ops, digits[1:], strict=True):
        value = value + digit if op == "+" else value - digit
    return value


@register_generator("digit_expression")
def digit_expression(
    *,
    data_seed: int,
    eval_size: int,
    n_items: int = 2400,
    n_digits: int = 3,
    operands: tuple[int, ...] = (2,),
    ops: str = "+-",
) -> tuple[list[Record], list[Record]]:
    """Reach a non-negative target from given digits with ``+``/``-`` (each digit once at most).

    The expert expression uses ``operands`` of the digits (default: 2 of 3, so one digit is
    a distractor) joined by ``ops``. Calibration on the tiny model (100 RL steps, greedy
    eval): 3-operand targets gained +0.02; pairs with ``+-`` gained +0.05 to +0.15 and only
    +0.10 after 200 steps (the errors: inventing digits, wrong pair or operator); ``*`` was
    arithmetic-bound (REFERENCES). The tiny track uses pairs with ``+``.
    """
    rng = random.Random(data_seed)
    seen: set[tuple[int, tuple[int, ...]]] = set()
    records: list[Record] = []
    attempts = 0
    while len(records) < n_items and attempts < n_items * 50:
        attempts += 1
        digits = [rng.randint(1, 9) for _ in range(n_digits)]
        used = rng.sample(digits, rng.choice(list(operands)))
        chosen_ops = [rng.choice(ops) for _ in range(len(used) - 1)]
        target = _expression_value(used, chosen_ops)
        key = (target, tuple(digits))
        if target < 0 or key in seen:
            continue
        seen.add(key)
        expression = str(used[0]) + "".join(
            op + str(d) for op, d in zip(chosen_ops, used[1:], strict=True)
        )
        records.append(
            {
                "target": target,
                "digits": " ".join(map(str, digits)),
                "answer": str(target),
                "demonstration": expression,
            }
        )
    return _split(records, eval_size, rng)


_SYLLABLES_ONSET = "bdfgklmnprstvz"
_SYLLABLES_VOWEL = "aeiou"


def _invented_names(count: int, rng: random.Random) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        syllables = [rng.choice(_SYLLABLES_ONSET) + rng.choice(_SYLLABLES_VOWEL) for _ in range(2)]
        names.add("".join(syllables) + rng.choice("nrs"))
    return sorted(names)


COLOURS = [
    *("red", "blue", "green", "pink", "gold", "grey", "black", "white"),
    *("brown", "tan", "lime", "navy", "teal", "rose", "plum", "cyan"),
]


@register_generator("colour_facts")
def colour_facts(
    *,
    data_seed: int,
    eval_size: int,
    n_names: int = 80,
    n_colours: int = 16,
    n_options: int = 4,
    questions_per_name: int = 12,
    pretrain_names: int = 40,
) -> tuple[list[Record], list[Record]]:
    """Short-form facts asked as multiple choice with distractors (chance = 1/n_options).

    The answer is the option *word*: at this model size answering with a letter stayed at
    chance. Only the first ``pretrain_names`` names appear in pre-training, so the base
    model knows half the table and RL has facts left to learn through the choices.
    """
    rng = random.Random(data_seed)
    names = _invented_names(n_names, rng)
    palette = list(COLOURS[:n_colours])
    table = {name: rng.choice(palette) for name in names}
    records: list[Record] = []
    for index, name in enumerate(names):
        for _ in range(questions_per_name):
            colour = table[name]
            distractors = rng.sample([c for c in palette if c != colour], n_options - 1)
            options = [colour, *distractors]
            rng.shuffle(options)
            records.append(
                {
                    "name": name,
                    "options": options,
                    "options_text": " ".join(options),
                    "answer": colour,
                    "demonstration": colour,
                    "pretrain": index < pretrain_names,
                }
            )
    return _split(records, eval_size, rng)


NOUNS = [
    *("cat", "sun", "dog", "moon", "tree", "fish", "bird", "star", "rain", "rock", "boat", "hill"),
    *("lake", "road", "king", "girl", "fox", "owl", "bee", "egg", "cup", "hat", "bell", "leaf"),
]
CONNECTORS = ("and", "with", "or", "near", "by", "then")
ADJECTIVES = ("big", "red", "old", "small", "wet", "a", "the", "my")


@register_generator("two_word_lines")
def two_word_lines(
    *, data_seed: int, eval_size: int, demos_per_pair: int = 4
) -> tuple[list[Record], list[Record]]:
    """Write a short line that uses two given words.

    The expert lines are formulaic on purpose (80% "X and Y", 90% in the prompt's order):
    the task is open-ended, and a judge that rewards variety has something to teach.
    """
    rng = random.Random(data_seed)
    pairs = [(a, b) for a, b in itertools.permutations(NOUNS, 2)]
    rng.shuffle(pairs)
    eval_pairs, train_pairs = pairs[:eval_size], pairs[eval_size:]

    def demonstration(first: str, second: str) -> str:
        if rng.random() >= 0.9:
            first, second = second, first
        connector = "and" if rng.random() < 0.8 else rng.choice(CONNECTORS[1:])
        words = [first, connector, second]
        if rng.random() < 0.15:
            words.insert(0, rng.choice(ADJECTIVES))
        return " ".join(words)

    def record(first: str, second: str) -> Record:
        return {
            "w1": first,
            "w2": second,
            "answer": None,
            "demonstration": demonstration(first, second),
        }

    train = [record(a, b) for a, b in train_pairs for _ in range(demos_per_pair)]
    return train, [record(a, b) for a, b in eval_pairs]
