"""Strict reading of YAML mappings: unknown keys and wrong types are errors naming file and key.

Why hand-written rather than a schema library: the specs are small, and the one thing that
matters is the message a user sees ("tasks/math.yaml: reward.kind: expected one of ...,
got 'exakt'"), which this gives in a dozen lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ctbench.errors import UserError


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read: {exc.strerror}", where=str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"malformed YAML{line}: {problem}", where=str(path)) from exc
    if not isinstance(data, dict):
        raise UserError("expected a YAML mapping at the top level", where=str(path))
    return data


class Fields:
    """Typed access to one mapping of a spec file; every error names the file and key path."""

    def __init__(self, data: Any, *, path: Path | str, prefix: str = "") -> None:
        self.path = str(path)
        self.prefix = prefix
        if not isinstance(data, dict):
            raise self.error("", f"expected a mapping, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> UserError:
        where = f"{self.path}: {self.prefix}{key}".rstrip(".: ")
        return UserError(message, where=where)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, choices=None):
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.error(key, "required key is missing")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a YAML `true` where a number belongs is a mistake.
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int):
            ok = True
            value = float(value)
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise self.error(key, f"expected {names}, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"expected one of {', '.join(map(str, choices))}; got {value!r}")
        return value

    def positive(self, key: str, kind: type, default: Any = ...):
        value = self.get(key, kind, default)
        if value is not None and value <= 0:
            raise self.error(key, f"expected a positive number, got {value!r}")
        return value

    def sub(self, key: str, default: Any = ...) -> Fields:
        value = self.get(key, dict, {} if default is ... else default)
        return Fields(value, path=self.path, prefix=f"{self.prefix}{key}.")

    def finish(self) -> None:
        """Reject keys nobody asked for: a typo must not be silently ignored."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            allowed = ", ".join(sorted(self.used))
            raise self.error(unknown[0], f"unknown key (allowed here: {allowed})")
