"""Running ``ctbench`` in the test's own process, as a user's shell would, but with capsys
capturing its output (a subprocess would pay the import of torch again on every call)."""

from __future__ import annotations

import sys

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


def one_line(text: str) -> str:
    """A message as one line (click and rich may wrap a long error)."""
    return " ".join(text.split())
