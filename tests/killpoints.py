"""Run the ctbench CLI and SIGKILL it at a chosen point of a run (no clean-up runs).

``python tests/killpoints.py POINT N ctbench-args...`` kills the process at the N-th time
the run reaches POINT:

- ``evaluation``: before the N-th task evaluation (a row of R half done);
- ``samples``: before the N-th samples file of a row is written;
- ``checkpoint-state``: before the N-th state.json write, i.e. after an item's checkpoint
  was renamed into place and before the state names it;
- ``result-cleanup``: after result.json is written, before checkpoints/ is removed;
- ``merge``: after mergekit wrote the N-th merged model, before the run loads it.

Everything else is the real program; the hooks only decide when the process dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import ctbench.runs.run as run_module


def killed_at(point: str, nth: int, args: list[str], cwd: Path) -> None:
    """Run ``ctbench ARGS`` and SIGKILL it at the ``nth`` arrival at ``point``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, __file__, point, str(nth), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, f"not killed at {point} #{nth}: {proc.stderr[-2000:]}"


def run_files(run_dir: Path) -> dict[str, bytes | None]:
    """Every file a finished run folder holds (samples with their bytes)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes() if p.parent.name == "samples" else None
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() or not any(p.iterdir())
    }


def main() -> None:
    point, nth, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    reached = 0

    def arrive() -> None:
        nonlocal reached
        reached += 1
        if reached == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    if point == "evaluation":
        evaluate_task = run_module.Evaluator.evaluate_task

        def evaluate(self: Any, *a: Any, **k: Any) -> Any:
            arrive()
            return evaluate_task(self, *a, **k)

        run_module.Evaluator.evaluate_task = evaluate  # type: ignore[method-assign]
    elif point == "samples":
        write_jsonl = run_module.write_jsonl_atomic

        def write_samples(path: Any, rows: Any) -> None:
            arrive()
            write_jsonl(path, rows)

        run_module.write_jsonl_atomic = write_samples
    elif point in ("checkpoint-state", "result-cleanup"):
        write_json = run_module.write_json_atomic

        def write(path: Any, data: Any) -> None:
            if point == "checkpoint-state" and path.name == "state.json":
                arrive()
            write_json(path, data)
            if point == "result-cleanup" and path.name == "result.json":
                arrive()

        run_module.write_json_atomic = write
    elif point == "merge":
        merge = run_module.merge_checkpoints

        def merge_then_die(*a: Any, **k: Any) -> Any:
            config = merge(*a, **k)
            arrive()
            return config

        run_module.merge_checkpoints = merge_then_die
    else:
        raise SystemExit(f"unknown kill point {point!r}")
    from ctbench.cli import main as cli_main

    sys.argv = ["ctbench", *args]
    cli_main()


if __name__ == "__main__":
    main()
