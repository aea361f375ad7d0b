"""Speed of the code sandbox: programs per second for the two batch shapes rewards use.

Why: the code reward scores every GRPO step (~128 samples), so the fence must stay cheap. The
issue's goal is a 128-expression batch no worse than 2x the old single-interpreter sandbox
(50-65 ms on a quiet 2-core machine). Prints one JSON object: per shape and fence level the
median wall seconds of a batch over ``--repeats`` runs and programs per second, plus the fence
facts measured inside the sandbox. Run: ``python benchmarks/sandbox.py [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from ctbench.scoring.sandbox import (
    UNSAFE_ENV,
    SandboxLimits,
    fence_facts,
    run_programs,
    run_tests,
    sandbox_level,
)
from ctbench.scoring.sandbox_cgroup import DISABLE_ENV, cgroup_facts

# MBPP-sized functions (5-15 lines, loops, built-ins, a stdlib import); {k} varies each copy.
TEMPLATES: list[tuple[str, list[str]]] = [
    (
        "def f(n):\n    total = 0\n    for i in range(1, n + 1):\n        if i % {k} == 0:\n"
        "            total += i * i\n    return total",
        ["f(10)", "f(50)", "f(100)"],
    ),
    (
        "import re\ndef f(s):\n    words = re.findall(r'[a-z]+', s.lower())\n"
        "    return sorted(set(w for w in words if len(w) > {k} % 4))",
        ["f('The quick brown fox')", "f('a bb ccc dddd')", "f('Hello, hello world')"],
    ),
    (
        "def f(xs):\n    best = []\n    for x in xs:\n        if not best or x >= best[-1]:\n"
        "            best.append(x)\n    return best[:{k} + 3]",
        ["f([3, 1, 4, 1, 5, 9, 2, 6])", "f([])", "f(list(range(20)))"],
    ),
    (
        "from collections import Counter\ndef f(s):\n    c = Counter(s)\n"
        "    return tuple(sorted(k for k, v in c.items() if v > {k} % 3))",
        ["f('mississippi')", "f('abcabcabc')", "f('')"],
    ),
    (
        "def f(n):\n    a, b = 0, 1\n    for _ in range(n + {k} % 5):\n        a, b = b, a + b\n"
        "    return a",
        ["f(5)", "f(10)", "f(30)"],
    ),
    (
        "import math\ndef f(a, b):\n    g = math.gcd(a, b)\n    return (g, a * b // g + {k} * 0)",
        ["f(12, 18)", "f(7, 5)", "f(100, 75)"],
    ),
    (
        "def f(m):\n    n = len(m)\n"
        "    return [[m[j][i] for j in range(n)] for i in range(n)][::{k} % 2 + 1]",
        ["f([[1, 2], [3, 4]])", "f([[1]])", "f([[1, 2, 3], [4, 5, 6], [7, 8, 9]])"],
    ),
    (
        "def f(s):\n    out = {{}}\n    for i, ch in enumerate(s):\n"
        "        out.setdefault(ch, []).append(i + {k})\n"
        "    return out",
        ["f('abca')", "f('zz')", "f('')"],
    ),
]


def _expected(source: str, calls: list[str]) -> list[Any]:
    """Expected values, computed here by running the trusted reference source directly."""
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return [eval(call, namespace) for call in calls]


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    rng = random.Random(0)
    expressions = []
    for _ in range(128):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        expressions.append(f"{a}+{b}" if rng.random() < 0.8 else f"{a}-{b}")
    sources, calls, expected = [], [], []
    for i in range(128):
        template, template_calls = TEMPLATES[i % len(TEMPLATES)]
        source = template.format(k=i % 7 + 1)
        sources.append(source)
        calls.append(template_calls)
        expected.append(_expected(source, template_calls))
    limits = SandboxLimits()

    start = time.perf_counter()
    level = sandbox_level()
    probe_s = time.perf_counter() - start
    # Rows: the fence as a run uses it (with the cgroup cap where this machine allows one),
    # the same without the cap (what the cap costs), and the unfenced supervisor.
    rows_to_run = [("none", "none", True)]
    if level == "bwrap":
        rows_to_run = [("bwrap", "bwrap", True), ("bwrap-uncapped", "bwrap", False), *rows_to_run]
    os.environ.setdefault(UNSAFE_ENV, "1")  # for the unfenced comparison row only
    rows: dict[str, Any] = {}
    for row_name, fence, capped in rows_to_run:
        if capped:
            os.environ.pop(DISABLE_ENV, None)
        else:
            os.environ[DISABLE_ENV] = "0"
        expr_results = run_programs(expressions, limits=limits, fence=fence)
        assert all(r.ok for r in expr_results), [r for r in expr_results if not r.ok][:3]
        test_results = run_tests(sources, calls, expected, limits, fence=fence)
        assert all(r.ok for r in test_results), [r for r in test_results if not r.ok][:3]
        expr_s = _median_seconds(
            lambda f=fence: run_programs(expressions, limits=limits, fence=f), args.repeats
        )
        func_s = _median_seconds(
            lambda f=fence: run_tests(sources, calls, expected, limits, fence=f), args.repeats
        )
        one_s = _median_seconds(
            lambda f=fence: run_programs(["4+2"], limits=limits, fence=f), args.repeats
        )
        rows[row_name] = {
            "cgroup_cap": cgroup_facts()["cgroup"],
            "expressions_128": {
                "batch_s": round(expr_s, 4),
                "programs_per_s": round(128 / expr_s, 1),
            },
            "functions_128x3_tests": {
                "batch_s": round(func_s, 4),
                "programs_per_s": round(128 / func_s, 1),
                "tests_per_s": round(384 / func_s, 1),
            },
            "one_expression_batch_s": round(one_s, 4),
            "per_program_ms_expressions": round((expr_s - one_s) / 127 * 1000, 3),
        }
    os.environ.pop(DISABLE_ENV, None)
    print(
        json.dumps(
            {
                "level": level,
                "probe_s": round(probe_s, 3),
                "repeats": args.repeats,
                "results": rows,
                "baseline_old_sandbox_expressions_128_s": "0.050-0.065 (issue 15, quiet machine)",
                "fence_facts": fence_facts(),
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
