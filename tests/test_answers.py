"""Answer extraction rules on hand-made completions, including the no-answer case of each."""

from __future__ import annotations

import pytest

from ctbench.tracks.answers import (
    ANSWER_RULES,
    after_hashes,
    boxed,
    choice,
    choice_index,
    code_block,
    extract_answer,
    function_block,
    last_number,
    normalize_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12 + 7 = 19", "19"),
        ("Adding 12 and 7 gives 19. So the answer is 19.", "19"),
        ("The total is 1,234 apples.", "1234"),
        ("It costs $3.50.", "3.5"),
        ("The temperature fell to -4 degrees.", "-4"),
        ("Pages 3-5 are missing", "5"),  # a range's dash is not a minus sign
        ("12.0", "12"),
        ("The list is 1,2, and 3", "3"),
    ],
)
def test_last_number(text: str, expected: str) -> None:
    assert last_number(text) == expected


@pytest.mark.parametrize("text", ["", "I do not know.", "twelve plus seven is nineteen"])
def test_last_number_none(text: str) -> None:
    assert last_number(text) is None


def test_normalize_number_makes_equal_numbers_equal_strings() -> None:
    assert normalize_number("1,000") == normalize_number("1000.00") == "1000"
    assert normalize_number("-0") == "0"
    assert normalize_number("0.250") == "0.25"
    assert normalize_number("abc") is None
    assert normalize_number("nan") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"So the answer is \boxed{19}.", "19"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"First \boxed{3}, then corrected: \boxed{ 4 }", "4"),
        (r"\boxed{\{a, b\}} and a cut-off \boxed{5", r"\{a, b\}"),
        (r"\boxed {x^{2}+1}", "x^{2}+1"),
    ],
)
def test_boxed(text: str, expected: str) -> None:
    assert boxed(text) == expected


@pytest.mark.parametrize("text", ["19", r"\boxed{}", r"the answer is \boxed{12", "boxed{3}"])
def test_boxed_none(text: str) -> None:
    assert boxed(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("#### 72.\nThanks for asking", "72"),
        ("step #### 1\nthen #### 2", "2"),
        ("####   Paris  ", "Paris"),
    ],
)
def test_after_hashes(text: str, expected: str) -> None:
    assert after_hashes(text) == expected


@pytest.mark.parametrize("text", ["The answer is 72.", "72 ####", "####\nnext line", "### 72"])
def test_after_hashes_none(text: str) -> None:
    assert after_hashes(text) is None


OPTIONS = ["Paris", "London", "Rome", "Madrid"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        (" (c) ", "C"),
        ("D.", "D"),
        ("The answer is B.", "B"),
        ("Answer: (a)", "A"),
        ("I first thought A, but the correct option is C", "C"),
        ("B) London\nBecause it is in England.", "B"),
        ("The capital of France is Paris.", "A"),
        ("It's rome, of course", "C"),
        ("A cat sat on a mat in Madrid.", "D"),  # a sentence's "A" is not a choice
    ],
)
def test_choice(text: str, expected: str) -> None:
    assert choice(text, OPTIONS) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I am not sure.",
        "Either Paris or London.",  # two options named: ambiguous
        "The answer is E",  # no fifth option
        "the answer is a city",
        "A) Paris\nB) London\nC) Rome\nD) Madrid",  # the options listed back
    ],
)
def test_choice_none(text: str) -> None:
    assert choice(text, OPTIONS) is None


def test_choice_prefers_the_longer_option_containing_a_shorter_one() -> None:
    options = ["red", "dark red", "navy", "pink"]
    assert choice("It is dark red.", options) == "B"
    assert choice("Plain red.", options) == "A"
    assert choice_index(choice("navy", options)) == 2
    assert choice_index(None) is None


def test_choice_rejects_impossible_option_counts() -> None:
    with pytest.raises(ValueError, match="1 to 26"):
        choice("A", [])


FUNCTION = "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Here it is:\n```python\n{FUNCTION}```\nDone.", FUNCTION),
        (f"```py\n{FUNCTION}```", FUNCTION),
        (f"```\n{FUNCTION}```", FUNCTION),
        (f"Example:\n```python\nprint(1)\n```\nFinal:\n```python\n{FUNCTION}```", FUNCTION),
        (f"```python\n{FUNCTION}```\nOutput:\n```text\n3\n```", FUNCTION),
        (f"```bash\nls\n```\n```\n{FUNCTION}```", FUNCTION),
    ],
)
def test_code_block(text: str, expected: str) -> None:
    assert code_block(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        FUNCTION,  # no fence
        "```python\ndef add(a, b):\n    return a",  # cut off before the closing fence
        "```python\n\n```",  # empty
        "```bash\nls -l\n```",  # another language only
    ],
)
def test_code_block_none(text: str) -> None:
    assert code_block(text) is None


def test_extract_answer_dispatches_by_rule_name() -> None:
    assert set(ANSWER_RULES) == {
        "last_number",
        "boxed",
        "after_hashes",
        "choice",
        "code_block",
        "function_block",
    }
    assert extract_answer("last_number", "so 4") == "4"
    assert extract_answer("choice", "B", options=OPTIONS) == "B"
    assert extract_answer("boxed", "none here") is None


FUNCTION = "def larger(a, b):\n    return max(a, b)\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The function, then an example-usage block: the function is graded, not the prints.
        (f"```python\n{FUNCTION}```\nExample:\n```python\nprint(larger(1, 2))\n```", FUNCTION),
        # Two defining blocks: the last one (a corrected version).
        (f"```python\ndef larger(a, b):\n    return a\n```\nFixed:\n```py\n{FUNCTION}```",
         FUNCTION),
        # A tagged block without a def loses to an untagged one with a def.
        (f"```python\nx = 1\n```\n```\n{FUNCTION}```", FUNCTION),
        ("```python\n    async def fetch(x):\n        return x\n```",
         "    async def fetch(x):\n        return x\n"),
    ],
)  # fmt: skip
def test_function_block(text: str, expected: str) -> None:
    assert function_block(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "```python\nprint(larger(1, 2))\n```",  # calls, defines nothing
        f"```python\n{FUNCTION}",  # never closed: cut off
        "def larger(a, b): return a",  # no fence at all
        "the word define( is not a def",
    ],
)
def test_function_block_none(text: str) -> None:
    assert function_block(text) is None
