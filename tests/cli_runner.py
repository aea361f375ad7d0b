"""Running ``ctbench`` in the test's own process, as a user's shell would, capturing its
output. A subprocess pays the import of torch and transformers again on every call (about
10 s on a 2-core CI machine), so only the tests whose point is a real process (SIGKILL and
resume, a plugin that must not be imported yet, the Hub switched off before import) start
one; the rest run here. An exception that escapes the CLI fails the test with its traceback,
which is what a "no traceback" check on a subprocess's stderr asked for."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctbench import cli as ctbench_cli


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``ctbench ARGS``: (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["ctbench", *args]
    try:
        ctbench_cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@dataclass(frozen=True)
class Outcome:
    """What a finished ``ctbench`` command left: the fields of ``CompletedProcess`` that the
    tests read."""

    returncode: int
    stdout: str
    stderr: str


def invoke(*args: str, cwd: Path, columns: int = 200) -> Outcome:
    """``ctbench ARGS`` run from ``cwd`` in this process (relative paths resolve there, and a
    rich table gets ``columns`` characters, as ``COLUMNS`` gives a subprocess)."""
    out, err = io.StringIO(), io.StringIO()
    argv, here, columns_before = sys.argv, os.getcwd(), os.environ.get("COLUMNS")
    sys.argv = ["ctbench", *args]
    os.environ["COLUMNS"] = str(columns)
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                ctbench_cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(here)
        if columns_before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns_before
    return Outcome(code, out.getvalue(), err.getvalue())


def one_line(text: str) -> str:
    """A message as one line (click and rich may wrap a long error)."""
    return " ".join(text.split())
