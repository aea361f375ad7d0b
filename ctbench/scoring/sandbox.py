"""Run untrusted, model-written Python in a contained, batched subprocess.

Why this module exists: the ``code`` task's reward *executes* what the policy wrote. That code
is untrusted (it may loop forever, allocate without bound, print megabytes, or try to reach the
network, other processes or the file system), and it is plentiful (a GRPO step scores ~128
samples). So the whole batch runs in ONE child interpreter (one start-up, not 128), and every
program in it is fenced:

* kernel limits in the child: address space (``RLIMIT_AS``), file size (``RLIMIT_FSIZE``), no core
  dumps, and a CPU-seconds cap for the whole batch (``RLIMIT_CPU``);
* per program: a CPU timer (``ITIMER_PROF``: user + system time, so page-fault storms count too),
  a bounded stdout, ``MemoryError`` reported as "memory";
* an audit hook (PEP 578) that refuses network access, process creation, signals, ``ctypes``,
  tracing hooks, reading other processes' ``/proc`` entries, and any file mutation outside the
  child's private temporary working directory; the few process/file calls that raise no audit
  event (``pidfd_open``, ``mkfifo``, ...) are removed from ``os``/``signal`` in the child;
* a parent-side wall-clock watchdog: a stalled or dead child costs only the program it was on; a
  fresh child is started for the rest;
* where ``unshare`` works, the child also runs in fresh user + network (+ PID + mount, with a
  private /proc, where allowed) namespaces: no network at all, and no way to name, signal or
  inspect the training process, even for code that gets past the audit hook.

Audit hooks are a tripwire, not a security boundary (PEP 578 says as much): they stop naive and
accidental escapes and turn them into ``"forbidden: ..."`` failures; the namespaces and rlimits
are the kernel-enforced part. Programs of one batch share an interpreter: builtins, ``sys``
streams/hooks, the recursion limit, timers and the working directory are reset between programs,
and a program that leaves threads running gets the rest of the batch a fresh child, but state of
imported modules carries over, so a deliberately hostile program can still disturb later ones.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import IO, Any, Literal

__all__ = ["ProgramResult", "SandboxLimits", "run_programs"]


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program resource limits; the defaults suit short reward snippets.

    Attributes:
        cpu_seconds: CPU time (user + system) one program may use before it fails with "timeout".
        wall_seconds: wall-clock time the parent waits for one program's answer before killing the
            child (catches programs that sleep, block, or dodge the CPU timer); "timeout".
        memory_bytes: address-space limit of the child process; exceeding it fails with "memory".
        output_bytes: captured stdout (and an expression's repr) beyond this many bytes fails with
            "output limit"; also the size limit for any file a program writes in its work dir.
    """

    cpu_seconds: float = 1.0
    wall_seconds: float = 3.0
    memory_bytes: int = 256 * 2**20
    output_bytes: int = 16 * 1024

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


@dataclass(frozen=True)
class ProgramResult:
    """Outcome of one untrusted program.

    Attributes:
        ok: ran to completion without error and inside every limit.
        value: expression mode: ``repr()`` of the value (None on failure); program mode: None.
        stdout: captured stdout, truncated to ``output_bytes`` ("" when nothing was printed).
        error: None when ok; else a short reason: "timeout", "memory", "output limit",
            "forbidden: <what>", "<ExceptionType>: <msg>" (or just the type), or "crashed".
    """

    ok: bool
    value: str | None
    stdout: str
    error: str | None


_DEFAULT_LIMITS = SandboxLimits()
# How long a fresh child may take to start and install its limits; generous for loaded hosts.
_STARTUP_TIMEOUT_S = 30.0
_READY = b'"ready"'
_RESTART = b'"restart"'


class _Stall(Exception):
    """The child did not answer before the watchdog deadline."""


class _ProtocolError(Exception):
    """The child sent something that is not a well-formed answer line."""


def run_programs(
    sources: Sequence[str],
    mode: Literal["expression", "program"] = "expression",
    limits: SandboxLimits = _DEFAULT_LIMITS,
    stdin: Sequence[str] | None = None,
) -> list[ProgramResult]:
    """Run every source in a contained child interpreter and return one result per source.

    Why batched: one interpreter start-up per call keeps the reward cheap enough to score a whole
    GRPO step. Why never raising for the programs' behaviour: a reward function must turn any
    misbehaviour (crash, hang, escape attempt) into a failed sample, not into a dead training run.

    Args:
        sources: Python source texts. Expression mode: each is ``eval``-ed and ``value`` is the
            ``repr`` of the result. Program mode: each is ``exec``-ed as ``__main__``; look at
            ``stdout``.
        mode: "expression" or "program".
        limits: per-program limits (see SandboxLimits).
        stdin: optional text per program, seen by program i as ``sys.stdin`` (default: empty).

    Returns:
        Exactly ``len(sources)`` results, in input order.

    Raises:
        ValueError/TypeError: only for caller mistakes (bad mode, non-str sources, stdin length).
        RuntimeError: the child interpreter could not even start (environment problem).
    """
    if mode not in ("expression", "program"):
        raise ValueError(f"mode must be 'expression' or 'program', got {mode!r}")
    if isinstance(sources, (str, bytes)):
        raise TypeError("sources must be a sequence of str, not a single str")
    sources = list(sources)
    for i, src in enumerate(sources):
        if not isinstance(src, str):
            raise TypeError(f"sources[{i}] must be str, got {type(src).__name__}")
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

    results: list[ProgramResult | None] = [None] * len(sources)
    with tempfile.TemporaryDirectory(
        prefix="ctbench-sandbox-", ignore_cleanup_errors=True
    ) as workdir:
        start = 0
        while start < len(sources):
            start = _run_child(sources, mode, limits, stdin_list, start, results, workdir)
    out: list[ProgramResult] = []
    for res in results:
        assert res is not None  # every index is filled before _run_child moves past it
        out.append(res)
    return out


def _failure(reason: str) -> ProgramResult:
    return ProgramResult(ok=False, value=None, stdout="", error=reason)


def _run_child(
    sources: list[str],
    mode: str,
    limits: SandboxLimits,
    stdin: list[str] | None,
    start: int,
    results: list[ProgramResult | None],
    workdir: str,
) -> int:
    """Run ``sources[start:]`` in one fresh child; fill ``results``; return the next index to run.

    Always makes progress: either every remaining program gets a result, or the program the child
    was on is marked failed (or the child asks for a restart after finishing one).
    """
    n = len(sources)
    nonce = secrets.token_hex(8)
    payload = json.dumps(
        {
            "mode": mode,
            "first": start,
            "sources": sources[start:],
            "stdin": None if stdin is None else stdin[start:],
            "cpu_seconds": limits.cpu_seconds,
            "batch_cpu_seconds": math.ceil(limits.cpu_seconds * (n - start)) + 2,
            "memory_bytes": limits.memory_bytes,
            "output_bytes": limits.output_bytes,
            "nonce": nonce,
        }
    ).encode("utf-8", "surrogatepass")
    argv = [*_unshare_prefix(), sys.executable, "-I", "-S", "-B", "-c", _child_source()]
    env = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
    }
    prefix = nonce.encode("ascii") + b" "
    # Answer lines carry a repr and a stdout of <= output_bytes each, JSON-escaped (<= 6x).
    max_line = 16 * limits.output_bytes + 4096

    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errfile,
            cwd=workdir,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            try:
                proc.stdin.write(payload)
                proc.stdin.flush()
            except OSError:
                pass  # the child died early; reported as a start-up failure just below
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            reader = _LineReader(proc.stdout.fileno(), max_line)
            try:
                line = reader.readline(_STARTUP_TIMEOUT_S)
            except (_Stall, _ProtocolError):
                line = None
            if line != prefix + _READY:
                _kill(proc)
                proc.wait()
                raise RuntimeError(
                    "sandbox child failed to start (exit status "
                    f"{proc.returncode}): {_tail(errfile).decode('utf-8', 'replace')}"
                )
            i = start
            while i < n:
                try:
                    line = reader.readline(limits.wall_seconds)
                except _Stall:
                    _kill(proc)
                    results[i] = _failure("timeout")
                    return i + 1
                except _ProtocolError:
                    _kill(proc)
                    results[i] = _failure("crashed")
                    return i + 1
                if line is None:  # EOF: the child died (or closed its answer channel) on i
                    try:
                        reason = _death_reason(proc.wait(limits.wall_seconds), errfile)
                    except subprocess.TimeoutExpired:
                        reason = "crashed"
                    results[i] = _failure(reason)
                    return i + 1
                if line == prefix + _RESTART and i > start:
                    return i
                parsed = _parse_answer(line, prefix, i)
                if parsed is None:
                    _kill(proc)
                    results[i] = _failure("crashed")
                    return i + 1
                results[i] = parsed
                i += 1
            return n
        finally:
            _kill(proc)
            proc.wait()
            proc.stdout.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child and everything in its session (it was started as a session leader)."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            proc.kill()


def _parse_answer(line: bytes, prefix: bytes, index: int) -> ProgramResult | None:
    """Decode one answer line ``<nonce> [index, ok, value, stdout, error]``; None if malformed."""
    if not line.startswith(prefix):
        return None
    try:
        item = json.loads(line[len(prefix) :])
    except ValueError:
        return None
    if not (isinstance(item, list) and len(item) == 5 and item[0] == index):
        return None
    _, ok, value, stdout, error = item
    if not (
        isinstance(ok, bool)
        and (value is None or isinstance(value, str))
        and isinstance(stdout, str)
        and (error is None or isinstance(error, str))
        and ok == (error is None)
    ):
        return None
    return ProgramResult(ok=ok, value=value, stdout=stdout, error=error)


def _tail(errfile: IO[bytes], size: int = 4096) -> bytes:
    """Last ``size`` bytes the child wrote to its stderr (for diagnostics)."""
    try:
        errfile.flush()
        end = errfile.seek(0, os.SEEK_END)
        errfile.seek(max(0, end - size))
        return errfile.read()
    except OSError:
        return b""


def _death_reason(returncode: int, errfile: IO[bytes]) -> str:
    """Best guess why the child died mid-program, as a ProgramResult error string."""
    # RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL at the hard one; behind the `sh`
    # of the namespace wrapper a signal death shows up as exit status 128 + signal.
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return "timeout"
    tail = _tail(errfile).lower()
    if b"memoryerror" in tail or b"out of memory" in tail or b"cannot allocate memory" in tail:
        return "memory"
    return "crashed"


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


# Namespace set-ups to try, strongest first. With a PID namespace and its own /proc the child
# cannot even name (let alone signal or inspect) the training process; `sh` stays PID 1 there so
# that the interpreter is an ordinary process (a namespace's init ignores default-action signals).
_SH_WRAPPER = ("/bin/sh", "-c", '"$@"; exit $?', "sh")
_UNSHARE_VARIANTS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("-rnpm", "--fork", "--kill-child", "--mount-proc"), _SH_WRAPPER),
    (("-rnp", "--fork", "--kill-child"), _SH_WRAPPER),
    (("-rn",), ()),
)


@functools.cache
def _unshare_prefix() -> tuple[str, ...]:
    """Command prefix that runs the child in fresh namespaces, or ``()`` where none work.

    Tries user+network+PID+mount namespaces (private /proc), then user+network+PID, then
    user+network (``unshare -rn``). Probed once per process (each probe is a process start)
    and cached; the audit hook in the child works the same with or without namespaces.
    """
    exe = shutil.which("unshare")
    if exe is None or not os.path.exists(_SH_WRAPPER[0]):
        return ()
    for flags, wrapper in _UNSHARE_VARIANTS:
        try:
            probe = subprocess.run(
                [exe, *flags, *wrapper, "true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return (exe, *flags, *wrapper)
    return ()


@functools.cache
def _child_source() -> str:
    """Source text handed to the child with ``-c``: ``_child_main`` plus a call to it."""
    # The future import keeps the annotations below from being evaluated in the child, where
    # typing names are not imported.
    source = inspect.getsource(_child_main)
    return f"from __future__ import annotations\n{source}\n_child_main()\n"


def _child_main() -> None:  # pragma: no cover - runs only inside the sandbox child
    """Body of the sandbox child interpreter (shipped by source, run as ``python -I -S -B -c``).

    Self-contained on purpose: it uses only the standard library and names defined inside it,
    because it runs in a bare interpreter that cannot import this package. Everything it needs
    after untrusted code has started running is bound to a local first, so that programs which
    monkeypatch modules cannot easily forge or break the answers of later programs.

    Protocol: reads one JSON job from stdin; writes ``<nonce> "ready"`` once its limits and audit
    hook are in place, then ``<nonce> [index, ok, value, stdout, error]`` per program (flushed),
    and ``<nonce> "restart"`` (then exits) when a program left threads running behind it.
    """
    # Only C-level modules beyond what -S preloads (os aside): `json` and `signal` would drag in
    # re/enum/functools, a third of the child's start-up time, for nothing.
    import _io
    import _json
    import _thread
    import builtins
    import gc
    import os
    import resource
    import sys
    import time

    _signal = __import__("_signal")  # the C half of `signal`, without its enum import
    json_str = _json.encode_basestring_ascii

    class JsonOptions:  # what _json's scanner reads from json.JSONDecoder
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = None

    chunks: list[bytes] = []
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    scan = _json.make_scanner(JsonOptions())  # type: ignore[arg-type]
    job = scan(b"".join(chunks).decode("utf-8", "surrogatepass"), 0)[0]
    del chunks
    expression = job["mode"] == "expression"
    first = job["first"]
    sources = job["sources"]
    stdins = job["stdin"]
    cpu_seconds = float(job["cpu_seconds"])
    output_bytes = int(job["output_bytes"])
    memory_bytes = int(job["memory_bytes"])
    batch_cpu = int(job["batch_cpu_seconds"])
    line_prefix = job["nonce"] + " "
    root = os.path.realpath(os.getcwd())
    root_slash = root.rstrip("/") + "/"

    # The answer channel moves to a private fd; fds 0 and 1 become /dev/null so that a stray
    # os.write(1, ...) from a program can neither corrupt nor forge answer lines.
    proto = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)

    def set_limit(which: int, value: int) -> None:
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))

    set_limit(resource.RLIMIT_AS, memory_bytes)
    set_limit(resource.RLIMIT_FSIZE, output_bytes)
    set_limit(resource.RLIMIT_CORE, 0)
    hard_cpu = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard_cpu == resource.RLIM_INFINITY or hard_cpu > batch_cpu + 1:
        resource.setrlimit(resource.RLIMIT_CPU, (batch_cpu, batch_cpu + 1))
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # oversized writes fail with EFBIG instead

    # Calls that reach other processes or create files but raise no audit event: removed, so a
    # program cannot use them by name (a tripwire; the PID namespace is the real fence).
    posix = sys.modules["posix"]
    stripped = (
        "pidfd_open",
        "sched_setaffinity",
        "sched_setparam",
        "sched_setscheduler",
        "setpriority",
        "mkfifo",
        "mknod",
    )
    for name in stripped:
        for module in (os, posix):
            if hasattr(module, name):
                delattr(module, name)
        if name in os.__all__:
            os.__all__.remove(name)  # or `from os import *` would fail
    if hasattr(_signal, "pidfd_send_signal"):
        del _signal.pidfd_send_signal

    class CpuTimeout(BaseException):
        """Raised by the CPU timer; a BaseException so `except Exception` cannot swallow it."""

    class OutputLimit(BaseException):
        """Raised when a program prints more than output_bytes."""

    class Forbidden(PermissionError):
        """Raised by the audit hook; the violation is also recorded, so catching it is futile."""

    armed = [False]  # the CPU timer only raises while a program runs
    timed_out = [False]
    violation: list[str | None] = [None]

    # ---- audit hook --------------------------------------------------------------------------
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    network = (
        "urllib.Request",
        "http.client.connect",
        "http.client.send",
        "ftplib.connect",
        "smtplib.connect",
        "poplib.connect",
        "imaplib.open",
        "nntplib.connect",
        "telnetlib.Telnet.open",
        "webbrowser.open",
    )
    refused = {name: "network" for name in network}
    for name in (
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "pty.spawn",
        "os.startfile",
    ):
        refused[name] = "process creation"
    for name in ("os.kill", "os.killpg", "signal.pthread_kill"):
        refused[name] = "sending signals"
    for name in ("resource.setrlimit", "resource.prlimit"):
        refused[name] = "changing resource limits"
    for name in ("sys.settrace", "sys.setprofile", "sys.addaudithook"):
        refused[name] = "tracing/audit hooks"
    for name in ("gc.get_objects", "gc.get_referrers", "gc.get_referents"):
        refused[name] = "heap introspection"
    for name in ("sqlite3.enable_load_extension", "sqlite3.load_extension"):
        refused[name] = "loading native code"
    refused_imports = {
        "_posixsubprocess": "process creation",
        "ctypes": "ctypes",
        "_ctypes": "ctypes",
        "faulthandler": "faulthandler",
        "_posixshmem": "shared memory outside the sandbox directory",
        "_multiprocessing": "shared memory outside the sandbox directory",
        "_xxsubinterpreters": "subinterpreters",
        "_xxinterpchannels": "subinterpreters",
    }
    # event -> ((path arg index, dir_fd arg index or -1), ...) for events that mutate the FS
    mutators = {
        "os.remove": ((0, 1),),
        "os.rmdir": ((0, 1),),
        "os.mkdir": ((0, 2),),
        "os.rename": ((0, 2), (1, 3)),
        "os.link": ((0, 2), (1, 3)),
        "os.symlink": ((1, 2),),
        "os.chmod": ((0, 2),),
        "os.chown": ((0, 3),),
        "os.utime": ((0, 3),),
        "os.truncate": ((0, -1),),
        "os.chflags": ((0, -1),),
        "os.lchflags": ((0, -1),),
        "os.setxattr": ((0, -1),),
        "os.removexattr": ((0, -1),),
        "shutil.rmtree": ((0, -1),),
        "shutil.copyfile": ((1, -1),),
        "shutil.copymode": ((1, -1),),
        "shutil.copystat": ((1, -1),),
        "shutil.copytree": ((1, -1),),
        "shutil.move": ((0, -1), (1, -1)),
    }

    def install_audit_hook() -> None:
        # Everything the hook relies on, builtins included, is bound as a default argument: a
        # program can rebind module attributes (os.path.realpath, os.lstat) and builtins (len,
        # type) for its own code, but not for the hook's.
        def fd_path(
            fd: int, readlink: Callable[[str], str] = os.readlink, OSError_: Any = OSError
        ) -> str | None:
            try:
                target = readlink(f"/proc/self/fd/{fd:d}")
            except OSError_:
                return None
            return target if target.startswith("/") else None

        def realpath(
            path: str,
            lstat: Callable[[str], os.stat_result] = os.lstat,
            readlink: Callable[[str], str] = os.readlink,
            errors: tuple[type[BaseException], ...] = (OSError, ValueError),
        ) -> str | None:
            # Like os.path.realpath, but immune to monkeypatching; None on a symlink loop.
            pending = path.split("/")
            pending.reverse()
            parts: list[str] = []
            hops = 0
            while pending:
                part = pending.pop()
                if part == "" or part == ".":
                    continue
                if part == "..":
                    if parts:
                        parts.pop()
                    continue
                candidate = "/" + "/".join([*parts, part])
                try:
                    mode = lstat(candidate).st_mode
                except errors:
                    parts.append(part)
                    continue
                if mode & 0o170000 == 0o120000:  # symlink
                    hops += 1
                    if hops > 40:
                        return None
                    try:
                        target = readlink(candidate)
                    except errors:
                        return None
                    if target.startswith("/"):
                        parts = []
                    more = target.split("/")
                    more.reverse()
                    pending.extend(more)
                else:
                    parts.append(part)
            return "/" + "/".join(parts)

        def resolve(
            path: Any,
            dir_fd: Any,
            getcwd: Callable[[], str] = os.getcwd,
            fd_path: Callable[[int], str | None] = fd_path,
            realpath: Callable[[str], str | None] = realpath,
            type_: Any = type,
            str_: Any = str,
            bytes_: Any = bytes,
            int_: Any = int,
        ) -> str | None:
            kind = type_(path)
            if kind is int_:
                return fd_path(path)
            if kind is bytes_:
                path = path.decode("utf-8", "surrogateescape")
            elif kind is not str_:
                return None  # a PathLike could answer differently when asked twice
            if not path.startswith("/"):
                if type_(dir_fd) is int_ and dir_fd >= 0:
                    base = fd_path(dir_fd)
                    if base is None:
                        return None
                else:
                    base = getcwd()
                path = base + "/" + path
            return realpath(path)

        def shown(
            path: object, type_: Any = type, plain: Any = (str, bytes, int), repr_: Any = repr
        ) -> str:
            """How a path appears in an error, without calling into the program's objects."""
            if type_(path) in plain:
                text: str = repr_(path)
                return text[:200]
            name: str = type_.__dict__["__name__"].__get__(type_(path))
            return "<" + name[:50] + ">"

        def refuse(
            what: str, violation: list[str | None] = violation, Forbidden: Any = Forbidden
        ) -> None:
            if violation[0] is None:
                violation[0] = what
            raise Forbidden("forbidden: " + what)

        def hook(
            event: str,
            args: tuple[Any, ...],
            refused: dict[str, str] = refused,
            refused_imports: dict[str, str] = refused_imports,
            mutators: dict[str, tuple[tuple[int, int], ...]] = mutators,
            write_flags: int = write_flags,
            root: str = root,
            root_slash: str = root_slash,
            own_pid: str = str(os.getpid()),  # evaluated once, in the child, on purpose
            resolve: Callable[[object, object], str | None] = resolve,
            refuse: Callable[[str], None] = refuse,
            shown: Callable[[object], str] = shown,
            type_: Any = type,
            len_: Any = len,
            str_: Any = str,
            bytes_: Any = bytes,
            int_: Any = int,
        ) -> None:
            if type_(event) is not str_:
                return
            what = refused.get(event)
            if what is not None:
                refuse(what + " (" + event + ")")
            if event.startswith("socket."):
                refuse("network (" + event + ")")
            if event.startswith("ctypes."):
                refuse("ctypes (" + event + ")")
            if event == "import":
                name: Any = args[0] if args else None
                if type_(name) is str_:
                    what = refused_imports.get(name)
                    if what is None and name.startswith(("_test", "_xx")):
                        what = "test/internal module"
                    if what is not None:
                        refuse(what + " (import " + name + ")")
                return
            if event == "open":
                if len_(args) < 3:
                    return
                path, mode, flags = args[0], args[1], args[2]
                writing = type_(flags) is int_ and flags & write_flags
                if type_(mode) is str_ and ("w" in mode or "a" in mode or "x" in mode):
                    writing = True
                if type_(mode) is str_ and "+" in mode:
                    writing = True
                if not writing:
                    if type_(path) is int_:
                        return
                    target = resolve(path, None)
                    if target is not None and target.startswith("/proc/"):
                        entry = target[6:].split("/", 1)[0]
                        if entry.isdigit() and entry != own_pid:
                            refuse("reading another process's /proc entry")
                    return
                if mode is None and type_(path) in (str_, bytes_):
                    # os.open(): its dir_fd is not part of the event, so a relative path
                    # cannot be checked; absolute paths are resolved normally.
                    start = path[:1]
                    if start != "/" and start != b"/":
                        refuse("os.open for writing needs an absolute path")
                target = resolve(path, None)
                if target is None or not (target == root or target.startswith(root_slash)):
                    refuse("write outside the sandbox directory (" + shown(path) + ")")
                return
            if event == "sqlite3.connect":
                database: Any = args[0] if args else None
                if type_(database) is bytes_:
                    database = database.decode("utf-8", "surrogateescape")
                if database == "" or database == ":memory:":
                    return
                target = None
                if type_(database) is str_ and not database.startswith("file:"):
                    target = resolve(database, None)
                if target is None or not target.startswith(root_slash):
                    refuse("sqlite3 database outside the sandbox directory")
                return
            spec = mutators.get(event)
            if spec is None:
                return
            for path_i, dir_fd_i in spec:
                if path_i >= len_(args):
                    continue
                dir_fd = args[dir_fd_i] if 0 <= dir_fd_i < len_(args) else None
                target = resolve(args[path_i], dir_fd)
                if target is None or not (target == root or target.startswith(root_slash)):
                    shown_path = shown(args[path_i])
                    refuse(f"changing files outside the sandbox directory ({event} {shown_path})")

        sys.addaudithook(hook)

    # ---- per-program plumbing ------------------------------------------------------------------
    StringIO = _io.StringIO
    BytesIO = _io.BytesIO
    TextIOWrapper = _io.TextIOWrapper
    setitimer = _signal.setitimer
    ITIMER_PROF = _signal.ITIMER_PROF
    ITIMER_REAL = _signal.ITIMER_REAL
    ITIMER_VIRTUAL = _signal.ITIMER_VIRTUAL
    set_handler = _signal.signal
    SIGPROF = _signal.SIGPROF
    write = os.write
    chdir = os.chdir
    scandir = os.scandir
    stat = os.stat
    unlink = os.unlink
    rmdir = os.rmdir
    exit_now = os._exit
    thread_count = _thread._count
    gc_collect = gc.collect
    gc_enable = gc.enable
    gc_callbacks = gc.callbacks
    perf_counter = time.perf_counter
    try:  # -S skips site, which is where exit() and quit() come from; programs use them
        import _sitebuiltins

        builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
        builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    except ImportError:
        pass
    builtins_dict = builtins.__dict__
    builtins_snapshot = dict(builtins_dict)
    recursion_limit = sys.getrecursionlimit()
    set_recursion_limit = sys.setrecursionlimit
    int_digits = sys.get_int_max_str_digits()
    set_int_digits = sys.set_int_max_str_digits
    hooks = (sys.__excepthook__, sys.__displayhook__, sys.__unraisablehook__)
    compile_ = compile
    eval_ = eval
    exec_ = exec
    repr_ = repr
    str_ = str
    type_ = type
    isinstance_ = isinstance
    len_ = len
    # Exception classes too: `except` looks its class up when an exception passes by, by which
    # time a program may have replaced the builtin.
    SystemExit_ = SystemExit
    BaseException_ = BaseException
    MemoryError_ = MemoryError
    neutral_in = StringIO()
    # C-level objects only (their types cannot be patched); opened before the audit hook exists.
    neutral_out = open(os.devnull, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
    sys_ = sys

    def make_streams() -> tuple[Any, Any, Any, list[Any]]:
        """Fresh stdout/stderr per program. Their class is new each time, so a program that
        patches type(sys.stdout) cannot reach into later programs."""
        captured = BytesIO()
        state: list[Any] = [0, False]  # bytes accepted, overflowed

        class Sink(_io._RawIOBase):  # the C base: io.RawIOBase is a patchable Python class
            def writable(self) -> bool:
                return True

            def write(self, data: Any) -> int:
                data = bytes(data)
                if self is not capture[0]:
                    return len_(data)  # stderr: discarded
                room = output_bytes - state[0]
                if len_(data) > room:
                    if room > 0:
                        captured.write(data[:room])
                        state[0] = output_bytes
                    state[1] = True
                    raise OutputLimit("output limit")
                state[0] += len_(data)
                captured.write(data)
                return len_(data)

        capture = [Sink()]
        raw_out: Any = capture[0]  # a raw (unbuffered) sink; TextIOWrapper accepts it
        raw_err: Any = Sink()
        out = TextIOWrapper(raw_out, encoding="utf-8", errors="surrogateescape", write_through=True)
        err = TextIOWrapper(raw_err, encoding="utf-8", errors="replace", write_through=True)
        return out, err, captured, state

    def dir_stamp(path: str) -> tuple[int, int, int] | None:
        try:
            st = stat(path)
        except OSError:
            return None
        return st.st_ctime_ns, st.st_mtime_ns, st.st_nlink

    def wipe(path: str) -> None:
        """Empty the work dir between programs (best effort) so files don't leak across."""
        try:
            entries = list(scandir(path))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    wipe(entry.path)
                    rmdir(entry.path)
                else:
                    unlink(entry.path)
            except OSError:
                pass

    def describe(exc: BaseException) -> str:
        name = type_(exc).__name__
        try:
            message = str_(exc)
        except BaseException_:
            message = ""
        if not isinstance_(name, str_):
            name = "Exception"
        name = name[:200]
        return name + ": " + message[:500] if message else name

    def classify(exc: BaseException) -> str:
        if isinstance_(exc, CpuTimeout):
            return "timeout"
        if isinstance_(exc, OutputLimit):
            return "output limit"
        if isinstance_(exc, MemoryError_):
            return "memory"
        return describe(exc)

    def on_cpu_timer(signum: int, frame: FrameType | None) -> None:
        if armed[0]:
            timed_out[0] = True
            raise CpuTimeout("cpu time limit")

    def reset_interpreter() -> None:
        """Undo what a program may have changed in state shared with later programs."""
        builtins_dict.update(builtins_snapshot)
        if len_(builtins_dict) != len_(builtins_snapshot):
            builtins_dict.clear()
            builtins_dict.update(builtins_snapshot)
        sys_.stdin = neutral_in
        sys_.stdout = neutral_out
        sys_.stderr = neutral_out
        sys_.excepthook, sys_.displayhook, sys_.unraisablehook = hooks
        set_recursion_limit(recursion_limit)
        set_int_digits(int_digits)
        del gc_callbacks[:]
        gc_enable()

    def run_one(k: int) -> tuple[bool, str | None, str, str | None]:
        """Run program k; returns (ok, value, stdout, error). May raise only from a late timer."""
        src = sources[k]
        text_in = "" if stdins is None else stdins[k]
        out, err, captured, out_state = make_streams()
        sys_.stdout = out
        sys_.stderr = err
        sys_.stdin = TextIOWrapper(
            BytesIO(text_in.encode("utf-8", "surrogatepass")),
            encoding="utf-8",
            errors="surrogatepass",
        )
        chdir(root)
        set_handler(SIGPROF, on_cpu_timer)
        timed_out[0] = False
        violation[0] = None
        namespace = {"__builtins__": builtins, "__name__": "__main__"}
        value: str | None = None
        error: str | None = None
        code: CodeType | None = None
        started = perf_counter()
        armed[0] = True
        setitimer(ITIMER_PROF, cpu_seconds, 0.05)
        try:
            try:
                code = compile_(src, "<program>", "eval" if expression else "exec", 0, True)
                if expression:
                    value = repr_(eval_(code, namespace, {}))
                else:
                    exec_(code, namespace)
            except SystemExit_ as exc:
                if expression or exc.code not in (None, 0):
                    error = describe(exc)
            except BaseException_ as exc:
                error = classify(exc)
            # Clean-up can run the program's own code (__del__, finalizers), so it happens
            # while the CPU timer is still armed and is charged to this program.
            namespace.clear()
            code = out = err = None
            reset_interpreter()
            gc_collect(1)
            if perf_counter() - started > 0.02:
                gc_collect()
            if dir_stamp(root) != clean_stamp[0]:  # entries were created or removed
                wipe(root)
                clean_stamp[0] = dir_stamp(root)
        except BaseException_ as exc:
            armed[0] = False
            if error is None:
                error = classify(exc)
            reset_interpreter()  # in case the timer cut the first reset short
        armed[0] = False
        setitimer(ITIMER_PROF, 0, 0)
        setitimer(ITIMER_REAL, 0, 0)
        setitimer(ITIMER_VIRTUAL, 0, 0)

        stdout = captured.getvalue().decode("utf-8", "replace")
        if violation[0] is not None:
            error = "forbidden: " + violation[0]
        elif timed_out[0]:
            error = "timeout"
        elif out_state[1] or (
            value is not None and len_(value.encode("utf-8", "surrogatepass")) > output_bytes
        ):
            error = "output limit"
        if error is not None:
            value = None
        return error is None, value, stdout, error

    def send(text: str) -> None:
        data = text.encode("ascii")
        view = memoryview(data)
        while view:
            view = view[write(proto, view) :]

    def answer(index: int, ok: bool, value: str | None, stdout: str, error: str | None) -> None:
        value_json = "null" if value is None else json_str(value)
        error_json = "null" if error is None else json_str(error)
        ok_json = "true" if ok else "false"
        send(f"{line_prefix}[{index:d},{ok_json},{value_json},{json_str(stdout)},{error_json}]\n")

    clean_stamp = [dir_stamp(root)]
    install_audit_hook()
    send(line_prefix + '"ready"\n')
    for k in range(len_(sources)):
        try:
            result = run_one(k)
        except BaseException_:  # a timer signal that landed in our own bookkeeping
            armed[0] = False
            setitimer(ITIMER_PROF, 0, 0)
            result = (False, None, "", "timeout" if timed_out[0] else "crashed")
        answer(first + k, *result)
        if thread_count() > 0:
            # Threads outliving their program would run inside later programs; start afresh.
            send(line_prefix + '"restart"\n')
            exit_now(0)
    exit_now(0)
