"""Seeded generators of the smol track's natural-language tasks.

The smol track prompts a real instruct model (SmolLM2-135M-Instruct) through its chat
template, so its items are written in English, the way a person would ask, rather than in
the tiny track's compressed formats. Each generator follows the conventions of
:mod:`ctbench.tracks.generators` (a data seed in, a train pool and a held-out eval set out,
no prompt in both) and exposes its difficulty as keyword parameters, so a track calibrates
a task by editing ``source.params`` in the YAML rather than the code.

- ``smol_word_math`` (math): one- and two-step arithmetic word problems; the expert shows
  the calculation and ends "The answer is N." (rewarded through ``last_number``).
- ``smol_functions`` (code): "Write a Python function `f(x)` that ..."; every item carries
  three hidden tests whose expected values are computed here by a reference implementation
  written separately from the expert's code, so a slip in either shows up as a failing
  demonstration (the tests run the demonstrations through the sandbox).
- ``smol_facts`` (qa): multiple choice over a shipped table of real facts
  (``data/smol_facts.tsv``), distractors drawn from the same relation.
- ``smol_sentences`` (creative): one sentence on a topic that uses two given words; the
  expert sentences are formulaic on purpose, as in the tiny track, so a judge that rewards
  variety has something to teach.
"""

from __future__ import annotations

import csv
import io
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ctbench.tracks.generators import Record, _split, register_generator

# --------------------------------------------------------------------------- word math

NAMES: tuple[tuple[str, str], ...] = (
    *(("Tom", "He"), ("Anna", "She"), ("Sam", "He"), ("Maria", "She"), ("Leo", "He")),
    *(("Emma", "She"), ("Ben", "He"), ("Lucy", "She"), ("Omar", "He"), ("Mia", "She")),
    *(("Jack", "He"), ("Sara", "She"), ("Ravi", "He"), ("Nina", "She"), ("Paul", "He")),
    *(("Grace", "She"), ("Ivan", "He"), ("Chloe", "She"), ("Kenji", "He"), ("Lily", "She")),
)
COUNTABLES = (
    *("apples", "pencils", "stickers", "marbles", "cookies", "stamps", "shells", "cards"),
    *("balloons", "oranges", "crayons", "buttons", "coins", "toy cars", "beads", "eggs"),
)
PURCHASES = ("book", "toy", "hat", "ticket", "lamp", "ball", "kite", "plant", "cup", "game")

# Each template's numbers are a, b (and c): the answer is ``(a op1 b) op2 c``, so one
# evaluator and one demonstration format serve them all. ``{P}`` is the pronoun.
MATH_TEMPLATES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("+",): (
        "{name} has {a} {items}. {P} buys {b} more {items}. How many {items} does {name} have now?",
        "{name} read {a} pages of a book on Monday and {b} pages on Tuesday. "
        "How many pages did {name} read in total?",
        "There are {a} children in the park. Then {b} more children arrive. "
        "How many children are in the park now?",
    ),
    ("-",): (
        "{name} has {a} {items}. {P} gives {b} of them to a friend. "
        "How many {items} does {name} have left?",
        "A book has {a} pages. {name} has read {b} pages so far. How many pages are left to read?",
        "{name} has {a} dollars and spends {b} dollars on a {thing}. "
        "How many dollars does {name} have left?",
    ),
    ("*",): (
        "{name} buys {a} bags of {items}. Each bag has {b} {items}. "
        "How many {items} does {name} buy in total?",
        "{name} reads {a} pages every day for {b} days. How many pages does {name} read?",
        "A {thing} costs {a} dollars. {name} buys {b} of them. How many dollars does {name} spend?",
    ),
    ("/",): (
        "{name} shares {a} {items} equally among {b} friends. "
        "How many {items} does each friend get?",
        "{name} puts {a} {items} into boxes, {b} in each box. How many boxes does {name} fill?",
    ),
    ("+", "+"): (
        "{name} has {a} {items}. {P} buys {b} more and then finds {c} more. "
        "How many {items} does {name} have now?",
    ),
    ("+", "-"): (
        "{name} has {a} {items}. {P} buys {b} more and then gives {c} to a friend. "
        "How many {items} does {name} have now?",
    ),
    ("-", "+"): (
        "{name} has {a} {items}. {P} gives {b} to a friend and then buys {c} more. "
        "How many {items} does {name} have now?",
    ),
    ("-", "-"): (
        "{name} has {a} {items}. {P} gives {b} to a friend and then loses {c}. "
        "How many {items} does {name} have left?",
    ),
    ("*", "+"): (
        "{name} buys {a} bags with {b} {items} in each bag. {P} already had {c} {items}. "
        "How many {items} does {name} have now?",
    ),
    ("*", "-"): (
        "{name} buys {a} bags with {b} {items} in each bag and gives {c} of the {items} "
        "away. How many {items} does {name} have left?",
    ),
    ("/", "+"): (
        "{name} shares {a} {items} equally among {b} friends. One friend already had "
        "{c} {items}. How many {items} does that friend have now?",
    ),
    ("+", "*"): (
        "Each of {c} children gets {a} {items} on Monday and {b} {items} on Tuesday. "
        "How many {items} do the children get in total?",
    ),
}
# How the demonstration writes each operation: a calculation a reader (and a small model)
# can follow, in the symbols chat models use for arithmetic.
OP_SYMBOLS = {"+": "+", "-": "-", "*": "×", "/": "÷"}


def _apply(op: str, left: int, right: int) -> int:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    quotient, remainder = divmod(left, right)
    if remainder:
        raise ValueError(f"{left} / {right} is not exact")
    return quotient


def _operand_for(
    op: str, left: int, rng: random.Random, min_operand: int, max_operand: int, max_factor: int
) -> int | None:
    """The right operand of ``left op ?`` within the knobs, or None when none fits.

    Why per operation: subtraction must leave something (answers stay positive), a factor
    stays small (``max_factor``) so products are mental arithmetic, and division is exact."""
    if op == "+":
        return rng.randint(min_operand, max_operand)
    if op == "-":
        high = min(max_operand, left - 1)
        return rng.randint(1, high) if high >= 1 else None
    if op == "*":
        return rng.randint(2, max_factor)
    divisors = [d for d in range(2, max_factor + 1) if left % d == 0 and left // d >= 2]
    return rng.choice(divisors) if divisors else None


def _first_pair(
    op: str, rng: random.Random, min_operand: int, max_operand: int, max_factor: int
) -> tuple[int, int]:
    if op == "*":
        return rng.randint(2, max_factor), rng.randint(2, max_factor)
    if op == "/":
        divisor, quotient = rng.randint(2, max_factor), rng.randint(2, max_factor)
        return divisor * quotient, divisor
    if op == "-":
        a = rng.randint(min_operand + 1, max(max_operand, min_operand + 1))
        return a, rng.randint(1, a - 1)
    return rng.randint(min_operand, max_operand), rng.randint(min_operand, max_operand)


def _step_weights(steps: Mapping[Any, float] | Sequence[int]) -> dict[int, float]:
    """``steps`` as {number of operations: weight}: a mapping, or a list meaning uniform."""
    if isinstance(steps, Mapping):
        weights = {int(k): float(v) for k, v in steps.items()}
    else:
        weights = {int(k): 1.0 for k in steps}
    if not weights or any(k not in (1, 2) for k in weights) or any(v < 0 for v in weights.values()):
        raise ValueError(f"steps: expected operation counts 1 and/or 2 with weights, got {steps!r}")
    if sum(weights.values()) <= 0:
        raise ValueError("steps: the weights sum to zero")
    return weights


@register_generator("smol_word_math")
def smol_word_math(
    *,
    data_seed: int,
    eval_size: int,
    n_items: int = 2000,
    min_operand: int = 2,
    max_operand: int = 50,
    max_factor: int = 10,
    ops: Sequence[str] = ("+", "-", "*", "/"),
    steps: Mapping[Any, float] | Sequence[int] | None = None,
) -> tuple[list[Record], list[Record]]:
    """Arithmetic word problems with one or two operations (GSM8K's shape, smaller numbers).

    Knobs: ``max_operand`` bounds what is added or subtracted, ``max_factor`` both factors of
    a product and the divisor and quotient of a division; ``ops`` restricts the operations
    (``*`` and ``/`` as written in Python); ``steps`` weights one- against two-operation
    problems (``{1: 0.7, 2: 0.3}``, or a list such as ``[1]``; default half and half).
    Every intermediate and final value is a positive integer, so the answer is a plain whole
    number.
    """
    weights = _step_weights({1: 0.5, 2: 0.5} if steps is None else steps)
    unknown = set(ops) - set(OP_SYMBOLS)
    if unknown:
        raise ValueError(f"ops: unknown operations {sorted(unknown)}; known: + - * /")
    if not 1 <= min_operand < max_operand or max_factor < 2:
        raise ValueError("expected 1 <= min_operand < max_operand and max_factor >= 2")
    by_steps = {
        count: [key for key in MATH_TEMPLATES if len(key) == count and set(key) <= set(ops)]
        for count in weights
    }
    usable = [count for count in weights if by_steps[count] and weights[count] > 0]
    if not usable:
        raise ValueError(f"no word-problem template uses only ops {list(ops)} with {steps!r}")
    rng = random.Random(data_seed)
    seen: set[str] = set()
    records: list[Record] = []
    attempts = 0
    while len(records) < n_items and attempts < n_items * 50:
        attempts += 1
        count = rng.choices(usable, weights=[weights[c] for c in usable])[0]
        key = rng.choice(by_steps[count])
        template = rng.choice(MATH_TEMPLATES[key])
        a, b = _first_pair(key[0], rng, min_operand, max_operand, max_factor)
        value = _apply(key[0], a, b)
        lines = [f"{a} {OP_SYMBOLS[key[0]]} {b} = {value}."]
        numbers = {"a": a, "b": b}
        if count == 2:
            c = _operand_for(key[1], value, rng, min_operand, max_operand, max_factor)
            if c is None:
                continue
            previous, value = value, _apply(key[1], value, c)
            lines.append(f"{previous} {OP_SYMBOLS[key[1]]} {c} = {value}.")
            numbers["c"] = c
        if value <= 0:
            continue
        name, pronoun = rng.choice(NAMES)
        question = template.format(
            name=name,
            P=pronoun,
            items=rng.choice(COUNTABLES),
            thing=rng.choice(PURCHASES),
            **numbers,
        )
        if question in seen:
            continue
        seen.add(question)
        records.append(
            {
                "question": question,
                "ops": "".join(key),
                "answer": str(value),
                "demonstration": " ".join([*lines, f"The answer is {value}."]),
            }
        )
    return _split(records, eval_size, rng)


# ------------------------------------------------------------------------ python functions

# Parameter names a family's signature may use, by the kind of its arguments: the same spec
# asked with other names is another prompt, so the item space is large enough for RL.
PARAM_NAMES: dict[str, tuple[tuple[str, ...], ...]] = {
    "int": (("x",), ("n",), ("num",), ("value",)),
    "two_ints": (("a", "b"), ("x", "y"), ("m", "n")),
    "list": (("xs",), ("nums",), ("numbers",), ("values",)),
    "str": (("s",), ("text",), ("word",)),
    "str_int": (("s", "n"), ("text", "count"), ("word", "times")),
}
WORDS = (
    *("apple", "banana", "cherry", "garden", "window", "river", "pencil", "rocket", "planet"),
    *("button", "summer", "winter", "basket", "candle", "dragon", "forest", "island", "jacket"),
    *("kitten", "lemon", "market", "number", "orange", "pepper", "rabbit", "silver", "tomato"),
    *("umbrella", "violin", "yellow", "zebra", "bridge", "cloud", "dance", "eagle", "flower"),
    *("guitar", "hammer", "igloo", "jungle", "koala", "ladder", "mirror", "noodle", "ocean"),
    *("puzzle", "queen", "rainbow", "sandwich", "tiger", "unicorn", "valley", "wizard", "anchor"),
)
LETTER_CHOICES = "aeiorstnl"  # every one starts and occurs in several of WORDS

Inputs = Callable[[random.Random, dict[str, Any]], tuple[Any, ...]]


def _int(rng: random.Random, _: dict[str, Any]) -> tuple[Any, ...]:
    return (rng.randint(-20, 20),)


def _two_ints(rng: random.Random, _: dict[str, Any]) -> tuple[Any, ...]:
    return rng.randint(-20, 20), rng.randint(-20, 20)


def _int_list(rng: random.Random, _: dict[str, Any]) -> tuple[Any, ...]:
    return ([rng.randint(-9, 30) for _ in range(rng.randint(1, 6))],)


def _word(rng: random.Random, _: dict[str, Any]) -> tuple[Any, ...]:
    return (rng.choice(WORDS),)


def _word_and_count(rng: random.Random, _: dict[str, Any]) -> tuple[Any, ...]:
    return rng.choice(WORDS), rng.randint(0, 3)


def _multiple_or_not(rng: random.Random, const: dict[str, Any]) -> tuple[Any, ...]:
    return (rng.randint(-5, 10) * const["k"] + rng.choice((0, 0, 1)),)


def _word_holding(rng: random.Random, const: dict[str, Any]) -> tuple[Any, ...]:
    """A word holding the family's letter half of the time."""
    holding = [w for w in WORDS if const["c"] in w]
    return (rng.choice(holding if rng.random() < 0.5 else WORDS),)


def _word_starting(rng: random.Random, const: dict[str, Any]) -> tuple[Any, ...]:
    """A word starting with the family's letter half of the time."""
    starting = [w for w in WORDS if w.startswith(const["c"])]
    return (rng.choice(starting if rng.random() < 0.5 else WORDS),)


def _total(xs: list[int]) -> int:
    total = 0
    for x in xs:
        total += x
    return total


@dataclass(frozen=True)
class FunctionFamily:
    """One kind of small function: how to ask for it, the expert's code, and a reference.

    ``names``, ``spec`` and ``body`` are format strings over the parameter names (``{p}``,
    ``{q}``) and the family's constant: ``{k}`` (a number, from the ``constant`` knob range)
    or ``{c}`` (a letter). ``reference`` computes a test call's expected value from its
    arguments and is written independently of ``body``, so each checks the other (the unit
    tests run every demonstration against its hidden tests). ``inputs`` draws the arguments
    of one call; ``mixed`` families must not give one answer to all calls, or a function
    returning a constant (always True, always 0) would pass.
    """

    kind: str
    names: tuple[str, ...]
    spec: str
    body: str
    reference: Callable[..., Any]
    inputs: Inputs
    constant: str | None = None  # "constant", "factor" (knob ranges) or "letter"
    mixed: bool = False


FUNCTION_FAMILIES: dict[str, FunctionFamily] = {
    "add_constant": FunctionFamily(
        "int",
        ("add_{k}", "plus_{k}", "increase_by_{k}"),
        "returns {p} plus {k}",
        "return {p} + {k}",
        lambda x, k: x + k,
        _int,
        "constant",
    ),
    "subtract_constant": FunctionFamily(
        "int",
        ("subtract_{k}", "minus_{k}", "decrease_by_{k}"),
        "returns {p} minus {k}",
        "return {p} - {k}",
        lambda x, k: x - k,
        _int,
        "constant",
    ),
    "multiply_constant": FunctionFamily(
        "int",
        ("times_{k}", "multiply_by_{k}", "scale_by_{k}"),
        "returns {p} multiplied by {k}",
        "return {p} * {k}",
        lambda x, k: x * k,
        _int,
        "factor",
    ),
    "is_divisible": FunctionFamily(
        "int",
        ("divisible_by_{k}", "is_multiple_of_{k}"),
        "returns True if {p} is divisible by {k} and False otherwise",
        "return {p} % {k} == 0",
        lambda n, k: n - (n // k) * k == 0,
        _multiple_or_not,
        "factor",
        mixed=True,
    ),
    "repeat_constant": FunctionFamily(
        "str",
        ("repeat_{k}", "repeat_{k}_times"),
        "returns the string {p} repeated {k} times",
        "return {p} * {k}",
        lambda s, k: "".join([s] * k),
        _word,
        "factor",
    ),
    "count_letter": FunctionFamily(
        "str",
        ("count_{c}", "count_letter_{c}", "number_of_{c}"),
        "returns how many times the letter '{c}' appears in the string {p}",
        "return {p}.count('{c}')",
        lambda s, c: sum(ch == c for ch in s),
        _word_holding,
        "letter",
        mixed=True,
    ),
    "starts_with": FunctionFamily(
        "str",
        ("starts_with_{c}", "begins_with_{c}"),
        "returns True if the string {p} starts with the letter '{c}' and False otherwise",
        "return {p}.startswith('{c}')",
        lambda s, c: s[:1] == c,
        _word_starting,
        "letter",
        mixed=True,
    ),
    "square": FunctionFamily(
        "int",
        ("square", "squared", "square_number", "sq", "power_two"),
        "returns the square of {p}",
        "return {p} * {p}",
        lambda x: x**2,
        _int,
    ),
    "absolute_difference": FunctionFamily(
        "two_ints",
        ("abs_diff", "distance", "absolute_difference", "gap", "diff_abs"),
        "returns the absolute difference between {p} and {q}",
        "return abs({p} - {q})",
        lambda a, b: a - b if a >= b else b - a,
        _two_ints,
    ),
    "larger": FunctionFamily(
        "two_ints",
        ("larger", "bigger", "max_of_two", "greater", "pick_larger"),
        "returns the larger of the two numbers {p} and {q}",
        "return max({p}, {q})",
        lambda a, b: a if a >= b else b,
        _two_ints,
    ),
    "max_of_list": FunctionFamily(
        "list",
        ("largest", "max_value", "biggest", "maximum", "find_max"),
        "returns the largest number in the non-empty list {p}",
        "return max({p})",
        lambda xs: sorted(xs)[-1],
        _int_list,
    ),
    "min_of_list": FunctionFamily(
        "list",
        ("smallest", "min_value", "lowest", "minimum", "find_min"),
        "returns the smallest number in the non-empty list {p}",
        "return min({p})",
        lambda xs: sorted(xs)[0],
        _int_list,
    ),
    "sum_of_list": FunctionFamily(
        "list",
        ("total", "sum_list", "add_all", "list_sum", "sum_all"),
        "returns the sum of the numbers in the list {p}",
        "return sum({p})",
        _total,
        _int_list,
    ),
    "count_positive": FunctionFamily(
        "list",
        ("count_positive", "positives", "num_positive", "positive_count", "how_many_positive"),
        "returns how many numbers in the list {p} are greater than zero",
        "return len([v for v in {p} if v > 0])",
        lambda xs: sum(x > 0 for x in xs),
        _int_list,
        mixed=True,
    ),
    "first_element": FunctionFamily(
        "list",
        ("first", "head", "first_item", "get_first", "front"),
        "returns the first element of the non-empty list {p}",
        "return {p}[0]",
        lambda xs: next(iter(xs)),
        _int_list,
    ),
    "last_element": FunctionFamily(
        "list",
        ("last", "last_item", "final_element", "get_last", "back"),
        "returns the last element of the non-empty list {p}",
        "return {p}[-1]",
        lambda xs: xs[len(xs) - 1],
        _int_list,
    ),
    "min_and_max": FunctionFamily(
        "list",
        ("min_max", "extremes", "low_high", "bounds", "smallest_largest"),
        "returns a tuple (smallest, largest) of the numbers in the non-empty list {p}",
        "return (min({p}), max({p}))",
        lambda xs: (sorted(xs)[0], sorted(xs)[-1]),
        _int_list,
    ),
    "reverse_string": FunctionFamily(
        "str",
        ("reverse", "reversed_string", "backwards", "flip", "reverse_text"),
        "returns the string {p} reversed",
        "return {p}[::-1]",
        lambda s: "".join(reversed(s)),
        _word,
    ),
    "string_length": FunctionFamily(
        "str",
        ("length", "string_length", "count_chars", "text_length", "char_count"),
        "returns the number of characters in the string {p}",
        "return len({p})",
        lambda s: sum(1 for _ in s),
        _word,
    ),
    "to_upper": FunctionFamily(
        "str",
        ("shout", "to_upper", "upper_case", "make_upper", "all_caps"),
        "returns the string {p} in upper case",
        "return {p}.upper()",
        lambda s: "".join(ch.upper() for ch in s),
        _word,
    ),
    "is_even": FunctionFamily(
        "int",
        ("is_even", "even", "check_even", "even_number", "is_even_number"),
        "returns True if {p} is even and False otherwise",
        "return {p} % 2 == 0",
        lambda n: n - (n // 2) * 2 == 0,
        _int,
        mixed=True,
    ),
    "repeat_n_times": FunctionFamily(
        "str_int",
        ("repeat", "repeat_string", "copies", "repeat_text", "multiply_string"),
        "returns the string {p} repeated {q} times",
        "return {p} * {q}",
        lambda s, n: "".join(s for _ in range(n)),
        _word_and_count,
    ),
}
CODE_INSTRUCTION = "Write a Python function `{signature}` that {spec}."


def _constants(family: FunctionFamily, knobs: dict[str, int]) -> list[dict[str, Any]]:
    if family.constant == "constant":
        return [{"k": k} for k in range(knobs["min_constant"], knobs["max_constant"] + 1)]
    if family.constant == "factor":
        return [{"k": k} for k in range(knobs["min_factor"], knobs["max_factor"] + 1)]
    if family.constant == "letter":
        return [{"c": c} for c in LETTER_CHOICES]
    return [{}]


def _hidden_tests(
    family: FunctionFamily, name: str, const: dict[str, Any], rng: random.Random, count: int
) -> list[dict[str, Any]] | None:
    """``count`` distinct calls with their reference values; None when no draw of them tells
    a right function from a constant one (see ``FunctionFamily.mixed``)."""
    for _ in range(20):
        calls: dict[str, Any] = {}
        for _ in range(count * 20):
            if len(calls) == count:
                break
            args = family.inputs(rng, const)
            call = f"{name}({', '.join(map(repr, args))})"
            calls.setdefault(call, family.reference(*args, **const))
        if len(calls) < count:
            return None
        if family.mixed and len({repr(v) for v in calls.values()}) < 2:
            continue
        # A tuple survives neither YAML nor JSON as a tuple: it travels as a literal.
        return [
            {"call": call, "expected_literal": repr(value)}
            if isinstance(value, tuple)
            else {"call": call, "expected": value}
            for call, value in calls.items()
        ]
    return None


@register_generator("smol_functions")
def smol_functions(
    *,
    data_seed: int,
    eval_size: int,
    n_items: int = 800,
    families: Sequence[str] | None = None,
    min_constant: int = 1,
    max_constant: int = 20,
    min_factor: int = 2,
    max_factor: int = 9,
    n_tests: int = 3,
) -> tuple[list[Record], list[Record]]:
    """Small Python functions from a one-line spec, checked by hidden tests (HumanEval's shape).

    Knobs: ``families`` picks the kinds of function (default: all of
    :data:`FUNCTION_FAMILIES`); ``min_constant``/``max_constant`` bound the number added or
    subtracted, ``min_factor``/``max_factor`` the multiplier, divisor and repeat count;
    ``n_tests`` is the number of hidden tests per item; ``n_items`` caps the pool. Every
    prompt (family × constant × function name × parameter names) is enumerated and the
    families are drawn round-robin, so each is equally common until its prompts run out.
    """
    chosen = list(families) if families is not None else list(FUNCTION_FAMILIES)
    unknown = [f for f in chosen if f not in FUNCTION_FAMILIES]
    if unknown or not chosen:
        raise ValueError(f"families: unknown {unknown}; known: {', '.join(FUNCTION_FAMILIES)}")
    if not (min_constant <= max_constant and 2 <= min_factor <= max_factor and n_tests >= 1):
        raise ValueError(
            "expected min_constant <= max_constant, 2 <= min_factor <= max_factor, n_tests >= 1"
        )
    knobs = {
        "min_constant": min_constant,
        "max_constant": max_constant,
        "min_factor": min_factor,
        "max_factor": max_factor,
    }
    rng = random.Random(data_seed)
    queues: list[tuple[str, list[tuple[dict[str, Any], str, tuple[str, ...]]]]] = []
    for family_name in chosen:
        family = FUNCTION_FAMILIES[family_name]
        prompts = list(
            itertools.product(_constants(family, knobs), family.names, PARAM_NAMES[family.kind])
        )
        rng.shuffle(prompts)
        queues.append((family_name, prompts))
    records: list[Record] = []
    while len(records) < n_items and any(prompts for _, prompts in queues):
        for family_name, prompts in queues:
            if not prompts or len(records) >= n_items:
                continue
            family = FUNCTION_FAMILIES[family_name]
            const, name_format, params = prompts.pop()
            names = dict(zip("pq", params, strict=False))
            name = name_format.format(**const)
            signature = f"{name}({', '.join(params)})"
            tests = _hidden_tests(family, name, const, rng, n_tests)
            if tests is None:
                continue
            body = family.body.format(**const, **names)
            records.append(
                {
                    "instruction": CODE_INSTRUCTION.format(
                        signature=signature, spec=family.spec.format(**const, **names)
                    ),
                    "family": family_name,
                    "tests": tests,
                    "answer": None,
                    "demonstration": f"```python\ndef {signature}:\n    {body}\n```",
                }
            )
    return _split(records, eval_size, rng)


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    answer: str
    group: str


# How each relation of the table is asked. ``{subject}`` is the table's subject;
# ``{a_subject}`` the same with "a"/"an" before it.
FACT_QUESTIONS: dict[str, str] = {
    "capital": "What is the capital of {subject}?",
    "continent": "On which continent is {subject}?",
    "element": "Which chemical element has the symbol {subject}?",
    "animal_class": "Which group of animals does the {subject} belong to?",
    "legs": "How many legs does {a_subject} have?",
    "sides": "How many sides does {a_subject} have?",
    "planet": "Which planet is the {subject} planet from the Sun?",
    "young": "What is a young {subject} called?",
    "opposite": "What is the opposite of the word '{subject}'?",
}


def load_facts() -> list[Fact]:
    """The shipped facts table (``ctbench/tracks/data/smol_facts.tsv``), read through
    ``importlib.resources`` so an installed wheel finds it as well as a checkout."""
    text = (resources.files("ctbench.tracks") / "data" / "smol_facts.tsv").read_text("utf-8")
    rows = csv.DictReader(
        (line for line in io.StringIO(text) if not line.startswith("#")), delimiter="\t"
    )
    return [
        Fact(r["relation"], r["subject"], r["answer"], (r.get("group") or "").strip()) for r in rows
    ]


def _with_article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _closeness(fact: Fact, value: str, groups: dict[str, str]) -> tuple[float, float]:
    """How confusable a distractor is with the fact's answer (lower: more): the same group
    first (a capital on the same continent), then nearby numbers or a shared first letter."""
    same_group = 0.0 if fact.group and groups.get(value) == fact.group else 1.0
    if fact.answer.isdigit() and value.isdigit():
        return same_group, abs(int(value) - int(fact.answer))
    return same_group, 0.0 if value[:1].lower() == fact.answer[:1].lower() else 1.0


def _distractors(
    fact: Fact,
    values: list[str],
    groups: dict[str, str],
    count: int,
    hard: bool,
    rng: random.Random,
) -> list[str]:
    wrong = [v for v in values if v.lower() != fact.answer.lower()]
    if not hard:
        return rng.sample(wrong, count)
    ranked = sorted(wrong, key=lambda v: (*_closeness(fact, v, groups), rng.random()))
    return ranked[:count]


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@register_generator("smol_facts")
def smol_facts(
    *,
    data_seed: int,
    eval_size: int,
    relations: Sequence[str] | None = None,
    n_options: int = 4,
    questions_per_fact: int = 3,
    hard_share: float = 0.0,
    holdout: str = "questions",
) -> tuple[list[Record], list[Record]]:
    """Multiple choice over real facts; distractors come from the same relation.

    Knobs: ``relations`` (default: every relation in the table), ``n_options`` (chance is
    1/n_options), ``questions_per_fact`` (each asks the fact with other distractors in
    another order), ``hard_share`` (the share of questions whose distractors are the most
    confusable values, see :func:`_closeness`) and ``holdout``: ``questions`` splits
    questions at random, so an eval fact may also be asked in training (the tiny track's
    habit: RL can learn facts through the choices); ``facts`` holds whole facts out, so the
    eval asks only what training never showed.
    """
    facts = load_facts()
    known = sorted({f.relation for f in facts})
    chosen = list(relations) if relations is not None else known
    unknown = [r for r in chosen if r not in FACT_QUESTIONS or r not in known]
    if unknown or not chosen:
        raise ValueError(f"relations: unknown {unknown}; known: {', '.join(known)}")
    if not 2 <= n_options <= len(LETTERS) or questions_per_fact < 1:
        raise ValueError("expected 2 <= n_options <= 26 and questions_per_fact >= 1")
    if not 0.0 <= hard_share <= 1.0:
        raise ValueError(f"hard_share: expected a share in [0, 1], got {hard_share}")
    if holdout not in ("questions", "facts"):
        raise ValueError(f"holdout: expected questions or facts, got {holdout!r}")
    facts = [f for f in facts if f.relation in chosen]
    values: dict[str, list[str]] = {}
    groups: dict[str, dict[str, str]] = {}
    for fact in facts:
        if fact.answer not in values.setdefault(fact.relation, []):
            values[fact.relation].append(fact.answer)
        groups.setdefault(fact.relation, {})[fact.answer] = fact.group
    short = [r for r in chosen if len(values[r]) < n_options]
    if short:
        raise ValueError(f"relations {short} have fewer than n_options={n_options} answers")

    rng = random.Random(data_seed)

    def questions(fact: Fact) -> list[Record]:
        out: dict[str, Record] = {}
        for _ in range(questions_per_fact * 10):
            if len(out) == questions_per_fact:
                break
            hard = rng.random() < hard_share
            options = [
                fact.answer,
                *_distractors(
                    fact, values[fact.relation], groups[fact.relation], n_options - 1, hard, rng
                ),
            ]
            rng.shuffle(options)
            question = FACT_QUESTIONS[fact.relation].format(
                subject=fact.subject, a_subject=_with_article(fact.subject)
            )
            options_text = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))
            out.setdefault(
                options_text,
                {
                    "relation": fact.relation,
                    "subject": fact.subject,
                    "question": question,
                    "options": options,
                    "options_text": options_text,
                    # The options inline, for prompts without letters ("A, B, C or D").
                    "options_inline": ", ".join(options[:-1]) + f" or {options[-1]}",
                    "hard": hard,
                    "answer": fact.answer,
                    "demonstration": f"The answer is {fact.answer}.",
                },
            )
        return list(out.values())

    if holdout == "questions":
        return _split([q for fact in facts for q in questions(fact)], eval_size, rng)
    # Whole facts held out: enough eval facts to fill eval_size questions.
    order = list(facts)
    rng.shuffle(order)
    held = -(-eval_size // questions_per_fact)
    if held >= len(order):
        raise ValueError(f"eval_size {eval_size} leaves no facts for training")
    evaluation = [q for fact in order[:held] for q in questions(fact)][:eval_size]
    train = [q for fact in order[held:] for q in questions(fact)]
    rng.shuffle(train)
    return train, evaluation


# --------------------------------------------------------------------------- sentences

# topic as the prompt names it → (where the expert's sentence puts it, words that fit it).
SENTENCE_TOPICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "the sea": ("at the sea", ("wave", "boat", "sand", "shell", "gull", "wind", "fish", "salt")),
    "a garden": (
        "in the garden",
        ("rose", "bee", "spade", "soil", "seed", "fence", "worm", "pond"),
    ),
    "winter": ("in winter", ("snow", "scarf", "ice", "sled", "fire", "frost", "coat", "boots")),
    "a city": (
        "in the city",
        ("bus", "tower", "street", "crowd", "bridge", "taxi", "park", "shop"),
    ),
    "a kitchen": (
        "in the kitchen",
        ("pan", "bread", "knife", "oven", "spoon", "soup", "table", "kettle"),
    ),
    "a forest": ("in the forest", ("tree", "owl", "path", "moss", "fox", "deer", "leaf", "log")),
    "school": ("at school", ("teacher", "desk", "book", "bell", "chalk", "lunch", "map", "pen")),
    "a train ride": (
        "on the train",
        ("window", "ticket", "seat", "bag", "station", "hill", "tunnel", "field"),
    ),
    "the night sky": (
        "in the night sky",
        ("moon", "star", "cloud", "comet", "owl", "planet", "light", "bat"),
    ),
    "a farm": ("on the farm", ("cow", "barn", "hen", "tractor", "hay", "goat", "gate", "egg")),
    "a birthday party": (
        "at the party",
        ("cake", "candle", "gift", "song", "balloon", "hat", "friend", "game"),
    ),
    "the mountains": (
        "in the mountains",
        ("peak", "rock", "goat", "trail", "snow", "lake", "tent", "eagle"),
    ),
    "a rainy day": (
        "on a rainy day",
        ("umbrella", "puddle", "boots", "window", "cat", "book", "tea", "cloud"),
    ),
    "a library": (
        "in the library",
        ("book", "shelf", "lamp", "globe", "page", "chair", "story", "card"),
    ),
    "a football match": (
        "at the match",
        ("ball", "goal", "crowd", "whistle", "team", "grass", "flag", "coach"),
    ),
    "the desert": (
        "in the desert",
        ("camel", "sand", "sun", "cactus", "dune", "lizard", "water", "wind"),
    ),
}
# The expert's forms: the first carries most of the weight, so the demonstrations are
# formulaic and a judge that counts distinct patterns has variety left to reward.
# "the" before every word keeps them grammatical for count and mass nouns alike.
SENTENCE_FORMS: tuple[tuple[str, float], ...] = (
    ("The {w1} and the {w2} are {where}.", 0.8),
    ("I saw the {w1} and the {w2} {where}.", 0.1),
    ("{Where}, the {w1} is near the {w2}.", 0.1),
)


@register_generator("smol_sentences")
def smol_sentences(
    *,
    data_seed: int,
    eval_size: int,
    topics: Sequence[str] | None = None,
    max_words: int = 15,
    demos_per_pair: int = 1,
    in_order_share: float = 0.9,
) -> tuple[list[Record], list[Record]]:
    """One short sentence on a topic using two given words.

    Knobs: ``topics`` (default: all of :data:`SENTENCE_TOPICS`), ``max_words`` (written into
    the prompt as the ``max_words`` field; the judge's own ``max_words`` in the task YAML
    should say the same), ``demos_per_pair`` (expert sentences per training pair; more than
    one repeats the prompt with other demonstrations) and ``in_order_share`` (how often the
    expert uses the words in the prompt's order). Eval pairs are held out as unordered
    pairs of a topic: neither order of an eval pair is trained on.
    """
    chosen = list(topics) if topics is not None else list(SENTENCE_TOPICS)
    unknown = [t for t in chosen if t not in SENTENCE_TOPICS]
    if unknown or not chosen:
        raise ValueError(f"topics: unknown {unknown}; known: {', '.join(SENTENCE_TOPICS)}")
    if max_words < 8 or demos_per_pair < 1:
        raise ValueError("expected max_words >= 8 (the expert's sentences fit) and demos >= 1")
    rng = random.Random(data_seed)
    pairs = [
        (topic, first, second)
        for topic in chosen
        for first, second in itertools.combinations(SENTENCE_TOPICS[topic][1], 2)
    ]
    rng.shuffle(pairs)
    if eval_size >= len(pairs):
        raise ValueError(f"eval_size {eval_size} leaves no training pairs out of {len(pairs)}")
    forms, form_weights = zip(*SENTENCE_FORMS, strict=True)

    def record(topic: str, first: str, second: str) -> Record:
        where = SENTENCE_TOPICS[topic][0]
        w1, w2 = (first, second) if rng.random() < in_order_share else (second, first)
        form = rng.choices(forms, weights=form_weights)[0]
        sentence = form.format(w1=w1, w2=w2, where=where, Where=where[:1].upper() + where[1:])
        return {
            "topic": topic,
            "w1": first,
            "w2": second,
            "max_words": max_words,
            "answer": None,
            "demonstration": sentence,
        }

    def ordered(topic: str, a: str, b: str) -> tuple[str, str, str]:
        return (topic, a, b) if rng.random() < 0.5 else (topic, b, a)

    evaluation = [record(*ordered(*pair)) for pair in pairs[:eval_size]]
    train = [
        record(*prompt)
        for topic, a, b in pairs[eval_size:]
        for prompt in ((topic, a, b), (topic, b, a))
        for _ in range(demos_per_pair)
    ]
    rng.shuffle(train)
    return train, evaluation
