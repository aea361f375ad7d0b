"""Row transforms: fields computed from a dataset record, declared in the task YAML.

A real dataset rarely holds its fields in the form a task needs: GSM8K's ``answer`` is a
whole solution ending ``#### 72``, ARC's options sit in ``choices: {text, label}`` with the
answer as a label, MBPP's tests are ``assert`` statements. Rather than a Python adapter per
dataset, a task's ``source.transforms`` maps each new field to one small, pure operation on
one value of the record::

    source:
      dataset: openai/gsm8k
      transforms:
        final: {from: answer, after: "####"}            # "... #### 1,234" -> "1234"
        options: {from: choices.text}                    # a nested path, copied
        tests: {from: test_list, tests_from_asserts: true}

Each spec has ``from:`` (a field path: ``a.b`` reads a key of a mapping, ``a.0`` an item of
a list) and at most one operation (none copies the value). Transforms run in the order
written, after ``source.columns``, and each reads the record as the ones above it left it.
A value an operation cannot take (no marker, not a list, an unknown label) is an error
naming the dataset, split, row and field; a record an operation *rejects* by design (an
MBPP assert that is not ``call == literal``, a story over the word limit) is dropped and
counted (:class:`DropRecord`).

Specs are validated when the task file is parsed (:func:`parse_transforms`), so a typo is
an error naming the file and key before any data is read.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ctbench.common.yamlspec import Fields


class _RecordSignal(Exception):
    """Raised on one record; :func:`apply_transforms` sets ``transform`` to the one that
    raised it, so the loader can name the field."""

    transform: Transform | None = None


class DropRecord(_RecordSignal):
    """The record cannot make an item (by the operation's own rule): skip it and count it."""


class TransformFailed(_RecordSignal):
    """The value is not what the operation takes; the message says what it found."""


# --------------------------------------------------------------------------- field paths


def read_path(record: dict[str, Any], path: str) -> Any:
    """The value at ``path`` (``choices.text``, ``test_list.0``); a key that itself holds a
    dot is read whole first. Raises :class:`TransformFailed` naming the missing step."""
    if path in record:
        return record[path]
    value: Any = record
    walked: list[str] = []
    for step in path.split("."):
        if isinstance(value, dict):
            if step not in value:
                keys = ", ".join(sorted(map(str, value))) or "none"
                where = ".".join(walked) or "the record"
                raise TransformFailed(f"no field {step!r} in {where} (fields: {keys})")
            value = value[step]
        elif isinstance(value, (list, tuple)):
            if not step.lstrip("-").isdigit() or not -len(value) <= int(step) < len(value):
                raise TransformFailed(
                    f"{'.'.join(walked)} is a list of {len(value)}; no item {step!r}"
                )
            value = value[int(step)]
        else:
            raise TransformFailed(
                f"{'.'.join(walked) or 'the record'} is a {type(value).__name__}, "
                f"not a mapping or list, so it has no {step!r}"
            )
        walked.append(step)
    return value


# --------------------------------------------------------------------------- operations


def _text(value: Any, op: str) -> str:
    if not isinstance(value, str):
        raise TransformFailed(f"{op} takes text, got {type(value).__name__}")
    return value


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def after(value: Any, marker: str) -> str:
    """The text after the last ``marker``, stripped, with thousands commas removed from
    numbers (``"... #### 1,234"`` → ``"1234"``): GSM8K's final answer."""
    text = _text(value, "after")
    if marker not in text:
        raise TransformFailed(f"no {marker!r} in the value ({text[-60:]!r})")
    answer = _THOUSANDS.sub("", text.rsplit(marker, 1)[1]).strip()
    if not answer:
        raise TransformFailed(f"nothing follows the last {marker!r}")
    return answer


def replace(value: Any, arg: dict[str, str]) -> str:
    """``re.sub(pattern, with, value)``: GSM8K's calculator notes ``<<48/2=24>>`` removed."""
    return re.sub(arg["pattern"], arg["with"], _text(value, "replace"))


def format_value(value: Any, template: str) -> str:
    """``template`` with ``{value}`` filled in (``"```python\\n{value}\\n```"``)."""
    return template.format(value=value)


def _labelled(value: Any, op: str) -> tuple[list[str], list[str]]:
    if not (isinstance(value, dict) and "text" in value and "label" in value):
        raise TransformFailed(f"{op} takes a mapping of text and label lists (ARC's choices)")
    texts, labels = value["text"], value["label"]
    if not (isinstance(texts, list) and isinstance(labels, list)) or len(texts) != len(labels):
        raise TransformFailed(f"{op}: text and label must be lists of one length")
    return [str(t) for t in texts], [str(label) for label in labels]


def _answer_index(value: Any, key: str, record: dict[str, Any], op: str) -> tuple[list[str], int]:
    texts, labels = _labelled(value, op)
    wanted = str(read_path(record, key)).strip()
    if wanted not in labels:
        raise TransformFailed(f"answer label {wanted!r} is not one of the labels {labels}")
    return texts, labels.index(wanted)


def option_text(value: Any, key: str, record: dict[str, Any]) -> str:
    """The text of the option whose label is the record's ``key`` field (ARC: ``choices``
    with labels ``A``–``E`` or ``1``–``5`` and ``answerKey``) → the answer as option text."""
    texts, index = _answer_index(value, key, record, "option_text")
    return texts[index]


def option_letter(value: Any, key: str, record: dict[str, Any]) -> str:
    """The letter (``A`` for the first option) of the option whose label is the record's
    ``key`` field: a numeric label ``3`` becomes ``C``, as :func:`lettered` shows it."""
    _, index = _answer_index(value, key, record, "option_letter")
    return string.ascii_uppercase[index]


def lettered(value: Any, template: str) -> str:
    """A list of options as lines ``A. first`` ``B. second`` … (``template`` with
    ``{letter}`` and ``{text}``): numeric labels are shown as letters, as the ``choice``
    answer rule reads them."""
    if not isinstance(value, (list, tuple)) or not value:
        raise TransformFailed("lettered takes a non-empty list of options")
    if len(value) > 26:
        raise TransformFailed(f"lettered takes at most 26 options, got {len(value)}")
    letters = string.ascii_uppercase
    return "\n".join(template.format(letter=letters[i], text=t) for i, t in enumerate(value))


def max_words(value: Any, limit: int) -> str:
    """The text itself when it has at most ``limit`` words; a longer one drops the record."""
    text = _text(value, "max_words")
    count = len(text.split())
    if count > limit:
        raise DropRecord(f"{count} words > {limit}")
    return text


def assert_to_test(source: str) -> dict[str, str] | None:
    """``assert f(x) == <literal>`` (either side order) → ``{call, expected_literal}``;
    None for anything else (``math.isclose(...)``, ``set(a) == set(b)``, ``is``, ``!=``,
    two comparisons, a literal on neither side or on both)."""
    try:
        tree = ast.parse(source.strip())
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    test = tree.body[0].test
    if not (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and len(test.comparators) == 1
    ):
        return None
    left, right = test.left, test.comparators[0]
    left_literal, right_literal = _is_literal(left), _is_literal(right)
    if left_literal == right_literal:
        return None
    call, expected = (left, right) if right_literal else (right, left)
    return {"call": ast.unparse(call), "expected_literal": ast.unparse(expected)}


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def tests_from_asserts(value: Any, _arg: bool) -> list[dict[str, str]]:
    """MBPP's ``test_list`` → hidden tests ``[{call, expected_literal}]`` for the code
    reward's ``mode: tests``. All or nothing: a record with one assert that does not
    convert is dropped (grading on a subset of its tests would pass wrong programs)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TransformFailed("tests_from_asserts takes a list of assert statements")
    if not value:
        raise DropRecord("no asserts")
    tests = []
    for source in value:
        test = assert_to_test(source)
        if test is None:
            raise DropRecord(f"not `call == literal`: {source.strip()[:80]}")
        tests.append(test)
    return tests


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Operation:
    """One operation: how its YAML argument is checked (returns it normalised, or raises
    ValueError with what was expected) and what it computes."""

    check: Callable[[Any], Any]
    apply: Callable[..., Any]
    needs_record: bool = False  # the operation reads another field of the record too


def _nonempty_text(arg: Any) -> str:
    if not isinstance(arg, str) or not arg:
        raise ValueError(f"expected a non-empty string, got {arg!r}")
    return arg


def _check_replace(arg: Any) -> dict[str, str]:
    if not isinstance(arg, dict):
        raise ValueError(f"expected a mapping {{pattern: REGEX, with: TEXT}}, got {arg!r}")
    unknown = sorted(set(arg) - {"pattern", "with"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (allowed here: pattern, with)")
    pattern, with_ = arg.get("pattern"), arg.get("with", "")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern: expected a regular expression, got {pattern!r}")
    if not isinstance(with_, str):
        raise ValueError(f"with: expected a string, got {with_!r}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"pattern: not a valid regular expression: {exc}") from exc
    return {"pattern": pattern, "with": with_}


def _check_template(*allowed: str) -> Callable[[Any], str]:
    def check(arg: Any) -> str:
        template = _nonempty_text(arg)
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from exc
        unknown = used - set(allowed)
        if unknown:
            names = ", ".join("{" + a + "}" for a in allowed)
            raise ValueError(f"a template may use only {names}; got {{{sorted(unknown)[0]}}}")
        return template

    return check


def _check_true(arg: Any) -> bool:
    if arg is not True:
        raise ValueError(f"expected true, got {arg!r}")
    return True


def _check_limit(arg: Any) -> int:
    if isinstance(arg, bool) or not isinstance(arg, int) or arg <= 0:
        raise ValueError(f"expected a positive whole number, got {arg!r}")
    return arg


OPERATIONS: dict[str, Operation] = {
    "after": Operation(_nonempty_text, after),
    "replace": Operation(_check_replace, replace),
    "format": Operation(_check_template("value"), format_value),
    "option_text": Operation(_nonempty_text, option_text, needs_record=True),
    "option_letter": Operation(_nonempty_text, option_letter, needs_record=True),
    "lettered": Operation(_check_template("letter", "text"), lettered),
    "max_words": Operation(_check_limit, max_words),
    "tests_from_asserts": Operation(_check_true, tests_from_asserts),
}


@dataclass(frozen=True)
class Transform:
    """``target`` ← ``operation(record[source], arg)``."""

    target: str
    source: str
    operation: str | None = None
    arg: Any = None

    def apply(self, record: dict[str, Any]) -> Any:
        value = read_path(record, self.source)
        if self.operation is None:
            return value
        op = OPERATIONS[self.operation]
        if op.needs_record:
            return op.apply(value, self.arg, record)
        return op.apply(value, self.arg)


def parse_transforms(fields: Fields) -> tuple[Transform, ...]:
    """The ``source.transforms`` mapping, strictly: every error names the file and key path
    (``source.transforms.final.after: expected a non-empty string``)."""
    transforms = []
    for target in list(fields.data):
        if not isinstance(target, str) or not target.isidentifier():
            raise fields.error(str(target), "expected a field name (letters, digits, _)")
        spec = fields.sub(target)
        source = spec.get("from", str)
        if not source.strip() or any(not part for part in source.split(".")):
            raise spec.error("from", f"expected a field path like a or a.b or a.0, got {source!r}")
        present = [name for name in OPERATIONS if name in spec.data]
        if len(present) > 1:
            raise spec.error(present[1], f"one operation per field; {present[0]} is already set")
        operation = present[0] if present else None
        arg = None
        if operation is not None:
            spec.used.add(operation)
            try:
                arg = OPERATIONS[operation].check(spec.data[operation])
            except ValueError as exc:
                raise spec.error(operation, str(exc)) from exc
        unknown = sorted(set(map(str, spec.data)) - spec.used)
        if unknown:
            raise spec.error(
                unknown[0], f"unknown key (allowed here: from and one of {', '.join(OPERATIONS)})"
            )
        transforms.append(Transform(target=target, source=source, operation=operation, arg=arg))
    fields.finish()
    return tuple(transforms)


def apply_transforms(transforms: tuple[Transform, ...], record: dict[str, Any]) -> dict[str, Any]:
    """A new record with every transform applied in order; raises :class:`DropRecord` or
    :class:`TransformFailed` with ``transform`` set to the one that raised."""
    out = dict(record)
    for transform in transforms:
        try:
            out[transform.target] = transform.apply(out)
        except _RecordSignal as exc:
            exc.transform = transform
            raise
    return out
