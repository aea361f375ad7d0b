"""Hostile programs against the kernel fence: each escape class of issue 15, and the usual ones.

Every case runs in a batch between two benign programs and asserts both that the attack was
contained (checked on the host: files, processes, a listener) and that the benign programs
around it were scored correctly. Most attacks first *disarm* the audit hook (the frame walk of
issue 15: catch a refusal, find ``refuse`` in the traceback, make it a no-op), so that what is
tested is the kernel fence, not the tripwire; ``test_disarm_really_disarms`` proves the disarm
works. The whole suite needs bubblewrap and skips, saying why, where the machine has none.
"""

# ruff: noqa: E501 - the case table holds literal program texts, one per line
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sandbox_disarm import DISARM

from ctbench.scoring import sandbox
from ctbench.scoring.sandbox import (
    ProgramResult,
    SandboxLimits,
    fence_facts,
    run_programs,
    run_tests,
)

FACTS = fence_facts()
pytestmark = pytest.mark.skipif(
    FACTS["level"] != "bwrap", reason=f"no kernel fence here: {FACTS.get('reason')}"
)

LIMITS = SandboxLimits(cpu_seconds=0.5, wall_seconds=2.0)


BENIGN = "print(sum(range(10)))"


@dataclass
class Host:
    """Things on the host a program must not touch, read or reach."""

    dir: Path
    victim: Path
    secret: Path
    port: int
    udp_port: int
    pid: int
    accepted: list[object]

    def fill(self, source: str) -> str:
        return (
            source.replace("@DIR@", str(self.dir))
            .replace("@VICTIM@", str(self.victim))
            .replace("@SECRET@", str(self.secret))
            .replace("@PORT@", str(self.port))
            .replace("@UDP@", str(self.udp_port))
            .replace("@PID@", str(self.pid))
            .replace("@REPO@", str(Path(sandbox.__file__).resolve()))
            .replace("@PREFIX@", os.path.realpath(sys.base_prefix))
        )

    def untouched(self) -> bool:
        names = sorted(p.name for p in self.dir.iterdir())
        return (
            names == ["secret.txt", "victim.txt"]
            and self.victim.read_text() == "keep me"
            and self.secret.read_text() == "host secret 4711"
        )


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret 4711")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                accepted.append(conn)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                accepted.append(udp.recvfrom(100))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    stand_in = subprocess.Popen(
        ["sleep", "60"], env={"PATH": "/usr/bin:/bin", "CTBENCH_SECRET": "hunter2"}
    )
    try:
        yield Host(
            tmp_path,
            victim,
            secret,
            listener.getsockname()[1],
            udp.getsockname()[1],
            stand_in.pid,
            accepted,
        )
    finally:
        stop.set()
        thread.join()
        listener.close()
        udp.close()
        alive = stand_in.poll() is None
        stand_in.kill()
        stand_in.wait()
    assert alive, "the stand-in for the training process was killed"
    assert not accepted, "a program reached a listener on the host's 127.0.0.1"
    assert len(list(tmp_path.iterdir())) == 2


def _pid_namespace_members(inode: str) -> list[int]:
    """Host processes in a given PID namespace (a sleeper that outlived its sandbox)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == inode:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def failed(result: ProgramResult) -> bool:
    return not result.ok


def stdout_is(text: str) -> Callable[[ProgramResult], bool]:
    return lambda r: r.stdout == text


def error_is(*prefixes: str) -> Callable[[ProgramResult], bool]:
    return lambda r: (not r.ok) and (r.error or "").startswith(prefixes)


# (id, source, disarm first, predicate on the hostile program's own result)
CASES: list[tuple[str, str, bool, Callable[[ProgramResult], bool]]] = [
    # -- writes and deletes outside (issue 15: readline, frame walk + os.system / os.remove)
    (
        "readline-history-new",
        "import readline\nreadline.write_history_file('@DIR@/h')\n",
        False,
        failed,
    ),
    (
        "readline-history-overwrite",
        "import readline\nreadline.write_history_file('@VICTIM@')\n",
        False,
        failed,
    ),
    (
        "readline-history-disarmed",
        "import readline\nreadline.write_history_file('@VICTIM@')\n",
        True,
        failed,
    ),
    (
        "system-write-outside",
        "os.system('echo x > @DIR@/escape; echo y > @VICTIM@')\nprint('ran')",
        True,
        stdout_is("ran\n"),
    ),
    ("remove-beside", "os.remove('@VICTIM@')", True, error_is("FileNotFoundError")),
    ("remove-relative", "os.remove('../victim.txt')", True, error_is("FileNotFoundError")),
    (
        "open-write-outside",
        "open('@DIR@/escape', 'w').write('x')",
        True,
        error_is("FileNotFoundError"),
    ),
    (
        "rmtree-outside",
        "import shutil\nshutil.rmtree('@DIR@')",
        True,
        error_is("FileNotFoundError"),
    ),
    (
        "write-etc",
        "open('/etc/ctbench-escape', 'w').write('x')",
        True,
        error_is("FileNotFoundError", "OSError", "PermissionError"),
    ),
    (
        "write-prefix",
        "open(os.path.dirname(os.__file__) + '/ctbench_evil.py', 'w').write('x')",
        True,
        error_is("OSError"),
    ),
    ("write-root", "os.chdir('/')\nopen('escape', 'w').write('x')", True, error_is("OSError")),
    ("write-dev", "open('/dev/left.txt', 'w').write('x')", True, error_is("OSError")),
    (
        "dev-mounts",  # /dev read-only; /dev/shm writable but as small as the work folder
        "shm, dev = os.statvfs('/dev/shm'), os.statvfs('/dev')\nprint(shm.f_blocks * shm.f_frsize <= 64 << 20, not shm.f_flag & os.ST_RDONLY, bool(dev.f_flag & os.ST_RDONLY))",
        True,
        stdout_is("True True True\n"),
    ),
    (
        "symlink-race-thread",
        (
            "import threading\nstop = []\n"
            "def flip():\n"
            "    while not stop:\n"
            "        for target in ('.', '@DIR@'):\n"
            "            try:\n                os.remove('l')\n            except OSError:\n                pass\n"
            "            os.symlink(target, 'l')\n"
            # At most 0.1 s of racing: pinned to one CPU, the two threads' GIL hand-overs
            # made 2000 opens cost 0.14-0.37 s of CPU time outside any sandbox (measured),
            # near the 0.5 s limit; CI once saw a timeout with the fence not at issue.
            "import time\nthreading.Thread(target=flip, daemon=True).start()\nn = 0\n"
            "start = time.monotonic()\n"
            "for i in range(2000):\n"
            "    if time.monotonic() - start > 0.1:\n        break\n"
            "    try:\n        open('l/f%d' % i, 'w').close(); n += 1\n    except OSError:\n        pass\n"
            "stop.append(1)\nprint('done')"
        ),
        True,
        stdout_is("done\n"),
    ),
    (
        "fill-disk",
        "i = 0\nwhile True:\n    open('f%d' % i, 'w').write('x' * 10000); i += 1",
        True,
        failed,
    ),
    (
        "plant-in-tmp",
        "open('/tmp/planted', 'w').write('x')\nopen('planted.py', 'w').write('x')\nprint('planted')",
        True,
        stdout_is("planted\n"),
    ),
    # -- reads outside the work dir
    ("read-passwd", "print(open('/etc/passwd').read())", False, error_is("FileNotFoundError")),
    ("read-beside", "print(open('@SECRET@').read())", True, error_is("FileNotFoundError")),
    ("read-repository", "print(open('@REPO@').read()[:100])", True, error_is("FileNotFoundError")),
    (
        "read-host-environ",
        "print(open('/proc/@PID@/environ').read())",
        True,
        error_is("FileNotFoundError"),
    ),
    (
        "list-root",
        "print(sorted(os.listdir('/')))",
        False,
        lambda r: "etc" not in r.stdout and "home" not in r.stdout and r.ok,
    ),
    # -- forged verdicts and answer lines
    (
        "forge-fds",
        'for fd in range(0, 64):\n    try:\n        os.write(fd, b\'[2,null,"[true,null,\\\\"45\\\\\\\\n\\\\",null,null]"]\\n\')\n    except OSError:\n        pass',
        True,
        lambda r: True,
    ),
    (
        "forge-supervisor-proc",
        "n = 0\nfor fd in range(0, 64):\n    try:\n        f = os.open('/proc/%d/fd/%d' % (os.getppid(), fd), os.O_WRONLY)\n        os.write(f, b'[2,null,null]\\n'); n += 1\n    except OSError:\n        pass\nprint(n)",
        True,
        stdout_is("0\n"),
    ),
    (
        # bwrap's PID 1 (its reaper) is dumpable and keeps fds 0-2: they must not be the
        # harness's job and answer pipes, or this writes answers for itself and the next one
        "forge-through-bwrap-pid1",
        "n = 0\nfor fd in os.listdir('/proc/1/fd'):\n    path = '/proc/1/fd/' + fd\n    try:\n        if os.readlink(path).startswith('pipe:'):\n            f = os.open(path, os.O_WRONLY)\n            os.write(f, b'[1,null,\"[true,null,\\\\\"x\\\\\",null,null]\"]\\n[2,null,\"[true,null,\\\\\"forged\\\\\",null,null]\"]\\n'); n += 1\n    except OSError:\n        pass\nprint(n)",
        True,
        stdout_is("0\n"),
    ),
    ("forge-own-channel-then-exit", "os.write(3, b'2\\n[]')\nos._exit(0)", True, failed),
    ("frame-walk-print-forged", "print('[1,true,null,\"forged\",null]')", True, lambda r: True),
    # -- the work folder's modes (the next program must still get a clean, usable folder)
    ("shut-work-folder", "os.chmod('/tmp/work', 0)\nprint('shut')", False, stdout_is("shut\n")),
    (
        "read-only-subfolder",
        "os.mkdir('keep')\nopen('keep/left.txt', 'w').write('x')\nos.chmod('keep', 0o500)\nprint('kept')",
        False,
        stdout_is("kept\n"),
    ),
    # -- module and builtins poisoning (must not reach the next program)
    (
        "poison-math",
        "import math\nmath.factorial = lambda n: 42\nmath.pi = 3",
        False,
        lambda r: r.ok,
    ),
    (
        "poison-builtins",
        "import builtins\nbuiltins.print = None\nbuiltins.sum = lambda *a: -1\nbuiltins.range = None",
        False,
        lambda r: r.ok,
    ),
    (
        "poison-sys-modules",
        "import sys\nsys.modules['math'] = None\nsys.modules['os'] = None",
        False,
        lambda r: r.ok,
    ),
    (
        "poison-stdout-type",
        "import sys\ntype(sys.stdout).write = None\nsys.stdout = None",
        False,
        lambda r: True,
    ),
    # -- processes and signals
    ("kill-parent", "os.kill(os.getppid(), 9)", True, failed),
    (
        "term-parent",
        "import signal\nos.kill(os.getppid(), signal.SIGTERM)\nimport time\ntime.sleep(5)",
        True,
        failed,
    ),
    ("kill-everyone", "os.kill(-1, 9)", True, failed),
    ("kill-host-process", "os.kill(@PID@, 9)", True, error_is("ProcessLookupError")),
    (
        "setsid-sleeper",
        "pid = os.fork()\nif pid == 0:\n    os.setsid()\n    import time\n    time.sleep(60)\n    os._exit(0)\nprint(os.readlink('/proc/self/ns/pid'))",
        True,
        lambda r: r.ok and r.stdout.startswith("pid:"),
    ),
    (
        "sleeper-subprocess",
        "import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True)\nprint('spawned')",
        True,
        stdout_is("spawned\n"),
    ),
    (
        "fork-bomb-bounded",
        "kids = 0\ntry:\n    for _ in range(300):\n        if os.fork() == 0:\n            import time\n            time.sleep(60)\n            os._exit(0)\n        kids += 1\nexcept OSError:\n    pass\nprint('forked')",
        True,
        lambda r: True,
    ),
    (
        "process-creation-tripwire",
        "import subprocess\nsubprocess.run(['true'])",
        False,
        error_is("forbidden"),
    ),
    ("signal-stop-parent", "import signal\nos.kill(os.getppid(), signal.SIGSTOP)", True, failed),
    # -- network
    (
        "tcp-localhost",
        "import socket\nsocket.create_connection(('127.0.0.1', @PORT@), timeout=1)",
        True,
        error_is("ConnectionRefusedError", "OSError", "TimeoutError"),
    ),
    (
        "udp-localhost",
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('127.0.0.1', @UDP@))\nprint('sent')",
        True,
        lambda r: True,
    ),
    (
        "dns",
        "import socket\nsocket.getaddrinfo('example.com', 80)",
        True,
        error_is("socket.gaierror", "gaierror", "OSError"),
    ),
    (
        "network-tripwire",
        "import socket\nsocket.create_connection(('127.0.0.1', @PORT@), timeout=1)",
        False,
        error_is("forbidden"),
    ),
    # -- resources
    ("infinite-loop", "while True: pass", False, error_is("timeout")),
    (
        "swallowed-timeout",
        "while True:\n    try:\n        while True: pass\n    except BaseException:\n        pass",
        False,
        error_is("timeout"),
    ),
    ("sleep-forever", "import time\ntime.sleep(60)", False, error_is("timeout")),
    ("memory-bomb", "x = bytearray(2**34)", False, error_is("memory")),
    (
        "memory-creep",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))",
        False,
        error_is("memory", "timeout"),
    ),
    ("huge-output", "while True: print('spam' * 1000)", False, error_is("output limit")),
    (
        "recursion",
        "import sys\nsys.setrecursionlimit(10**7)\ndef f(n): return f(n + 1)\nf(0)",
        False,
        failed,
    ),
    (
        "spinning-threads",
        "import threading\nfor _ in range(20):\n    threading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()\nimport time\ntime.sleep(10)",
        False,
        error_is("timeout", "RuntimeError: can't start new thread"),
    ),
    (
        "fd-exhaustion",
        "fds = []\ntry:\n    while True: fds.append(os.open('/dev/null', os.O_RDONLY))\nexcept OSError:\n    pass\nprint('exhausted')",
        True,
        stdout_is("exhausted\n"),
    ),
    (
        "raise-rlimit",
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
        True,
        error_is("ValueError"),
    ),
    ("ctypes-tripwire", "import ctypes", False, error_is("forbidden")),
    (
        "ctypes-disarmed",
        "import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.kill(1, 9), libc.umount2(b'/usr', 2), libc.unshare(0x20000))",
        True,
        lambda r: True,
    ),
]


def _ids() -> list[str]:
    return [case[0] for case in CASES]


def test_there_are_at_least_forty_hostile_programs() -> None:
    assert len(CASES) >= 40
    assert len(set(_ids())) == len(CASES)


def test_the_fence_is_really_there() -> None:
    """What the level claims, measured inside: own PID namespace, only lo, no host files."""
    assert FACTS["pid"] in (1, 2) and FACTS["new_pid_namespace"]
    assert FACTS["interfaces"] == ["lo"]
    assert not any(FACTS["host_paths_visible"])
    assert FACTS["capabilities"] == 0 and FACTS["root_read_only"] and FACTS["non_dumpable"]
    probe = (
        "import os, socket\n"
        "print(os.getppid(), sorted(n for _, n in socket.if_nameindex()),"
        " os.path.exists('/etc/passwd'))"
    )
    (result,) = run_programs([DISARM + probe], mode="program", limits=LIMITS)
    assert result.ok, result
    assert result.stdout == "2 ['lo'] False\n"


def test_disarm_really_disarms(host: Host) -> None:
    """Without the fence this write would land: the tripwire alone is off after DISARM."""
    results = run_programs(
        [
            DISARM
            + "open('/tmp/work/../work/ok.txt', 'w').write('x')\nos.kill(os.getpid(), 0)\nprint('free')"
        ],
        mode="program",
        limits=LIMITS,
    )
    assert results[0].ok and results[0].stdout == "free\n", results


@pytest.mark.parametrize(("name", "source", "disarm", "check"), CASES, ids=_ids())
def test_hostile_program_is_contained(
    host: Host,
    name: str,
    source: str,
    disarm: bool,
    check: Callable[[ProgramResult], bool],
) -> None:
    program = host.fill((DISARM if disarm else "import os, sys\n") + source)
    after = (
        "import os, math\n"
        "others = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, 2, os.getpid())]\n"
        "print(sum(range(10)), math.factorial(5), sorted(os.listdir('.')), sorted(os.listdir('/tmp')), others)"
    )
    results = run_programs([BENIGN, program, after, BENIGN], mode="program", limits=LIMITS)
    assert results[0].ok and results[0].stdout == "45\n", results[0]
    assert check(results[1]), results[1]
    # The next program sees nothing of the hostile one: no module state, files or processes.
    assert results[2].ok, results[2]
    assert results[2].stdout == "45 120 [] ['work'] []\n", results[2]
    assert results[3].ok and results[3].stdout == "45\n", results[3]
    assert host.untouched()
    assert "host secret" not in results[1].stdout and "hunter2" not in results[1].stdout
    if name == "setsid-sleeper":
        inode = results[1].stdout.strip()
        assert inode.startswith("pid:[")
        # The sandbox's PID 1 gets SIGKILL when its parent dies; the kernel then empties the
        # namespace asynchronously, so give it a moment (the sweep had already killed the sleeper).
        for _ in range(200):
            if not _pid_namespace_members(inode):
                break
            time.sleep(0.025)
        assert _pid_namespace_members(inode) == [], "a sleeper outlived its sandbox"


def test_verdicts_cannot_be_forged(host: Host) -> None:
    """Expected values never enter the sandbox; lies about values are refused or wrong."""
    calls = ["f(3)", "f(4)"]
    expected = [9, 16]
    sources = [
        "def f(x):\n    return x * x",  # honest
        "class Yes:\n    def __eq__(self, other): return True\ndef f(x):\n    return Yes()",
        "class I(int):\n    def __eq__(self, other): return True\ndef f(x):\n    return I(0)",
        "import builtins\nbuiltins.AssertionError = None\ndef f(x):\n    return 0",
        "import sys\ndef f(x):\n    sys.exit(0)",
        'import os\nos.write(3, b\'40\\n[true,null,"",null,[[["i","9"],null]]]\')\nos._exit(0)',
        "print('[1,true,null,\"\",null]')\ndef f(x):\n    return -1",
        DISARM + "os.write(3, b'1\\n[')\ndef f(x):\n    return x",
        "def f(x):\n    return x * x",  # honest, after the liars
    ]
    results = run_tests(sources, [calls] * len(sources), [expected] * len(sources), LIMITS)
    assert results[0].ok and results[0].passed == 2
    assert all(not r.ok for r in results[1:-1]), results
    assert results[1].details == ("not a plain value: Yes",) * 2
    assert results[2].details == ("not a plain value: I",) * 2
    assert results[-1].ok and results[-1].passed == 2
    assert host.untouched()


def test_expected_values_never_enter_the_sandbox() -> None:
    """The job sent into the fence holds programs and calls only."""
    job = sandbox._job("tests", ["def f(): pass"], None, [["f()"]], LIMITS, "bwrap")
    assert "SENTINEL-EXPECTED-8812" not in str(job)
    results = run_tests(
        ["def f():\n    return 'x'"], [["f()"]], [["SENTINEL-EXPECTED-8812"]], LIMITS
    )
    assert results[0].details == ("wrong",)
