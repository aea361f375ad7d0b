"""Answer extraction: the declared rule that pulls a gradable answer out of free text.

A real model answers in sentences ("Adding them gives 19, so the answer is 19."), not in
the bare token a tiny-track reward compares. A task therefore declares *how* its answer is
written, and one of these pure functions extracts it. Each returns ``None`` when the text
holds no answer in that form; the scorer gives such a completion 0 and counts it as a
*format failure*, so a result can tell "answered wrongly" from "never answered".

The rules follow the conventions of the public evaluations they come from: the last number
(GSM8K-style free answers, lm-eval's ``flexible-extract``), ``\\boxed{...}`` (MATH, with
nested braces), the text after ``####`` (GSM8K's reference format), a choice letter or the
option's own text (multiple choice), and a fenced code block (HumanEval-style code tasks).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

# A number as people write it: an optional sign, thousands separated by commas or not, an
# optional decimal part. The sign counts only where it cannot be a minus between two
# operands ("3-5" is not the number -5).
_NUMBER = re.compile(r"(?<![\w.,])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")


def normalize_number(text: str) -> str | None:
    """A number's canonical spelling (``"1,234.50"`` → ``"1234.5"``, ``"-0"`` → ``"0"``),
    so that equal numbers compare equal as strings; None if ``text`` is not a number."""
    try:
        value = Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def last_number(text: str) -> str | None:
    """The last number in the text, normalised (see :func:`normalize_number`).

    Why the last: a model reasons first and answers last ("12 + 7: 12 plus 7 is 19")."""
    matches = _NUMBER.findall(text)
    return normalize_number(matches[-1]) if matches else None


def boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}``, nested braces included
    (``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``); None when there is none, it is empty or
    it is never closed (a completion cut off mid-answer)."""
    found: str | None = None
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth = 1
        for index in range(match.end(), len(text)):
            char = text[index]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    content = text[match.end() : index].strip()
                    found = content or None
                    break
    return found


def after_hashes(text: str) -> str | None:
    """The rest of the line after the last ``####`` (GSM8K's answer marker), stripped of
    spaces and a closing period; None when there is no marker or nothing follows it."""
    if "####" not in text:
        return None
    line = text.rsplit("####", 1)[1].split("\n", 1)[0]
    answer = line.strip().rstrip(".").strip()
    return answer or None


def _letters(count: int) -> str:
    if not 1 <= count <= 26:
        raise ValueError(f"expected 1 to 26 options, got {count}")
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:count]


def choice(text: str, options: Sequence[str]) -> str | None:
    """The chosen option's letter (``"A"`` for ``options[0]``), from a letter or the text.

    In order, the first rule that finds something decides:

    1. the whole answer is a letter (``"B"``, ``"(b)"``, ``"B."``);
    2. an explicit statement: ``answer is B``, ``Answer: (B)``, ``the correct option is
       C``; the last one counts;
    3. one line starts with a letter and a bracket or period (``"B) Paris"``; several such
       lines with different letters are the options listed back: no answer);
    4. the text names exactly one option (case-insensitive, whole words; a longer option
       such as "dark red" is matched before "red" inside it).

    A bare capital elsewhere in a sentence is not a choice ("A cat is ..."); an answer that
    names two options or none is None: ambiguous counts as no answer.
    """
    letters = _letters(len(options))
    stripped = text.strip()
    alone = re.fullmatch(r"\(?([A-Za-z])\)?[.:)]?", stripped)
    if alone and alone.group(1).upper() in letters:
        return alone.group(1).upper()
    # A lowercase letter counts only in brackets: "the answer is a cat" names no option.
    said = [
        (bracketed or bare).upper()
        for bracketed, bare in re.findall(
            r"\b(?i:answer|correct option|correct choice)\s*(?:is|:)?\s*:?\s*"
            r"(?:\(([A-Za-z])\)|([A-Z])(?!\w))",
            text,
        )
    ]
    said = [s for s in said if s in letters]
    if said:
        return said[-1]
    leads = {
        lead.group(1)
        for line in stripped.splitlines()
        if (lead := re.match(r"\s*\(?([A-Z])[).:]\s", line + " ")) and lead.group(1) in letters
    }
    if len(leads) == 1:
        return leads.pop()
    if len(leads) > 1:
        return None  # the options listed back, none chosen
    remaining = text.lower()
    named: set[int] = set()
    for index in sorted(range(len(options)), key=lambda i: -len(options[i])):
        option = options[index].strip().lower()
        if not option:
            continue
        pattern = rf"(?<!\w){re.escape(option)}(?!\w)"
        if re.search(pattern, remaining):
            named.add(index)
            remaining = re.sub(pattern, " ", remaining)
    if len(named) == 1:
        return letters[named.pop()]
    return None


def choice_index(letter: str | None) -> int | None:
    """The option index of a letter from :func:`choice` (``"C"`` → 2)."""
    return None if letter is None else ord(letter) - ord("A")


_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[ \t]*\n(.*?)```", re.DOTALL)


def _blocks(text: str, language: str) -> tuple[list[str], list[str]]:
    """Bodies of the complete fenced blocks tagged ``language`` (``python`` also accepts
    ``py``/``python3``) and of those with no tag, in order."""
    wanted = {language.lower()} | ({"py", "python3"} if language.lower() == "python" else set())
    tagged: list[str] = []
    untagged: list[str] = []
    for tag, body in _FENCE.findall(text):
        if tag.lower() in wanted:
            tagged.append(body)
        elif not tag:
            untagged.append(body)
    return tagged, untagged


def code_block(text: str, language: str = "python") -> str | None:
    """The last complete fenced code block in ``language`` (``python`` also accepts ``py``),
    else the last complete block with no language tag; None when there is neither, the
    block is empty, or the fence is never closed (the program was cut off).

    Why the last: a model often shows an example first and its final program last."""
    for bodies in _blocks(text, language):
        if bodies and bodies[-1].strip():
            return bodies[-1].strip("\n").rstrip() + "\n"
    return None


_DEF = re.compile(r"^\s*(?:async\s+)?def\s+\w+\s*\(", re.MULTILINE)


def function_block(text: str, language: str = "python") -> str | None:
    """The last complete code block (ranked as :func:`code_block` ranks them) that defines
    a function; None when no block does.

    Why not simply the last block: asked for a function, a chat model often writes it and
    then an "Example usage" block of calls and prints (SmolLM2-135M-Instruct does, see the
    README's smol band); graded alone, that block defines nothing and fails every hidden
    test. Hidden tests call a function, so the program to grade is a block that defines one."""
    for bodies in _blocks(text, language):
        defining = [body for body in bodies if _DEF.search(body)]
        if defining:
            return defining[-1].strip("\n").rstrip() + "\n"
    return None


# The rules a task may declare by name (``answer: {rule: last_number}``); each takes the
# completion text and the keyword arguments the rule needs (``options`` for ``choice``).
ANSWER_RULES: dict[str, Callable[..., str | None]] = {
    "last_number": last_number,
    "boxed": boxed,
    "after_hashes": after_hashes,
    "choice": choice,
    "code_block": code_block,
    "function_block": function_block,
}


def extract_answer(rule: str, text: str, **kwargs: Any) -> str | None:
    """Apply the named rule; an unknown name is a programming error here (task files are
    validated against :data:`ANSWER_RULES` when they are parsed)."""
    return ANSWER_RULES[rule](text, **kwargs)
