"""A cgroup around each sandbox: one cap on the memory and the processes of the whole
sandbox, which per-process rlimits cannot give.

Why: ``RLIMIT_AS`` bounds each process, not their sum, so a program that forks N children
of 200 MB each holds N × 200 MB; and as root the kernel does not enforce ``RLIMIT_NPROC``,
so nothing but the wall clock bounds how many. A memory cgroup (and a pids cgroup) around
the sandbox bounds both, whatever the program does inside: the kernel's OOM killer acts
within the group, never on the training process.

Where: a child of the cgroup this process is in, where this process may create one (root in
a container with cgroup v1, as on the machines this project is built on; a user systemd has
delegated a cgroup v2 subtree to, with the memory and pids controllers enabled for children).
Elsewhere there is no cap, the sandbox runs as before, and :func:`cgroup_facts` says why;
nothing is written outside the group this process already belongs to.

How the sandbox enters it: bwrap is started through ``/bin/sh``, which writes its own PID
into the group's ``cgroup.procs`` and then ``exec``s bwrap, so every process of the sandbox
is born inside (no window between start and move, and no ``preexec_fn``, which is unsafe in
a process with torch's threads). Each program's process raises its own ``oom_score_adj`` so
that the OOM killer takes it before the supervisor.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DISABLE_ENV",
    "SandboxCgroup",
    "cgroup_facts",
    "create_cgroup",
    "remove_pending_groups",
]

_ROOT = Path("/sys/fs/cgroup")
_COUNTER = itertools.count()
_REASON: list[str] = []  # why there is no cap, once known


@dataclass(frozen=True)
class _Place:
    """Where children may be made, per controller: ``version`` 1 has one folder per
    controller (memory, pids), version 2 one folder for both."""

    version: int
    memory: Path
    pids: Path


class SandboxCgroup:
    """One sandbox's group(s): limits written, entered by the sandbox's first process,
    removed when it is gone."""

    def __init__(self, place: _Place, memory_bytes: int, processes: int) -> None:
        name = f"ctbench-sandbox-{os.getpid()}-{next(_COUNTER)}"
        self.version = place.version
        self.memory_bytes = memory_bytes
        self.processes = processes
        self.dirs: list[Path] = []
        try:
            if place.version == 2:
                group = place.memory / name
                group.mkdir()
                self.dirs.append(group)
                _write(group / "memory.max", memory_bytes)
                with contextlib.suppress(OSError):  # absent without swap accounting
                    _write(group / "memory.swap.max", 0)
                _write(group / "pids.max", processes)
                self.memory_dir = self.pids_dir = group
            else:
                self.memory_dir = place.memory / name
                self.memory_dir.mkdir()
                self.dirs.append(self.memory_dir)
                self.pids_dir = place.pids / name
                self.pids_dir.mkdir()
                self.dirs.append(self.pids_dir)
                _write(self.memory_dir / "memory.limit_in_bytes", memory_bytes)
                with contextlib.suppress(OSError):  # absent without swap accounting
                    _write(self.memory_dir / "memory.memsw.limit_in_bytes", memory_bytes)
                _write(self.pids_dir / "pids.max", processes)
        except OSError:
            self.remove()
            raise

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into the group(s)."""
        script = (
            'n=$1; shift; while [ "$n" -gt 0 ]; do '
            'echo $$ > "$1/cgroup.procs" || exit 125; shift; n=$((n-1)); done; exec "$@"'
        )
        dirs = [str(d) for d in dict.fromkeys([self.memory_dir, self.pids_dir])]
        return ["/bin/sh", "-c", script, "sh", str(len(dirs)), *dirs, *argv]

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in the group so far."""
        try:
            if self.version == 2:
                text = (self.memory_dir / "memory.events").read_text()
            else:
                text = (self.memory_dir / "memory.oom_control").read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        """Remove the group(s). The sandbox was killed, but its PID namespace takes ~10 ms
        to empty: rather than wait for it on every batch, a group still busy is removed at
        the next sandbox's start (or at exit)."""
        _PENDING.extend(self.dirs)
        self.dirs = []
        remove_pending_groups(wait_s=0.0)


_PENDING: list[Path] = []  # groups whose processes were still leaving when removed


def remove_pending_groups(wait_s: float) -> None:
    """Remove every pending group that is empty by now (within ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    for group in list(_PENDING):
        while True:
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                break  # still busy: stays pending
            _PENDING.remove(group)
            break


atexit.register(remove_pending_groups, 2.0)


def _write(path: Path, value: int) -> None:
    path.write_text(f"{value}\n")


def _own_groups() -> dict[str, str]:
    """This process's cgroup path per controller (``""`` for the v2 unified hierarchy)."""
    groups: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                groups[controller] = path
    return groups


def _probe(place: _Place) -> str | None:
    """Make and remove a child group with both caps; None when that works, else why not."""
    try:
        group = SandboxCgroup(place, 64 * 2**20, 16)
    except OSError as exc:
        return f"cannot create a capped cgroup under {place.memory}: {exc.strerror or exc}"
    group.remove()
    return None


@functools.cache
def _place() -> _Place | None:
    """Where this process may make capped child groups, or None (reason in ``_REASON``)."""
    own = _own_groups()
    if (_ROOT / "cgroup.controllers").exists():  # cgroup v2 alone
        base = _ROOT / own.get("", "/").lstrip("/")
        controllers = set()
        with contextlib.suppress(OSError):
            controllers = set((base / "cgroup.subtree_control").read_text().split())
        if not {"memory", "pids"} <= controllers:
            _REASON.append(
                f"the memory and pids controllers are not enabled for children of {base} "
                "(cgroup v2: a delegated subtree is needed, e.g. systemd-run --user --scope -p "
                "Delegate=yes)"
            )
            return None
        place = _Place(2, base, base)
    elif "memory" in own and "pids" in own:  # cgroup v1 (or hybrid, v1 controllers)
        place = _Place(
            1,
            _ROOT / "memory" / own["memory"].lstrip("/"),
            _ROOT / "pids" / own["pids"].lstrip("/"),
        )
    else:
        _REASON.append("no memory and pids cgroup controllers for this process")
        return None
    failure = _probe(place)
    if failure is not None:
        _REASON.append(failure)
        return None
    _remove_stale(place)
    return place


def _remove_stale(place: _Place) -> None:
    """Remove the groups of ctbench processes that are gone (killed before they could remove
    their own): each holds kernel memory while it exists. A group is named after its
    process, so one whose process is alive is never touched here."""
    for parent in {place.memory, place.pids}:
        for group in parent.glob("ctbench-sandbox-*-*"):
            owner = group.name.split("-")[2]
            if not owner.isdigit() or int(owner) == os.getpid():
                continue
            try:
                os.kill(int(owner), 0)
                continue  # alive (or not ours to signal): its owner removes it
            except ProcessLookupError:
                pass
            except OSError:
                continue
            with contextlib.suppress(OSError):
                group.rmdir()


DISABLE_ENV = "CTBENCH_SANDBOX_CGROUP"  # "0": no cap (to compare, or where a cap misbehaves)


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV) == "0"


def create_cgroup(memory_bytes: int, processes: int) -> SandboxCgroup | None:
    """A capped group for one sandbox, or None where this machine allows none."""
    if _disabled():
        return None
    place = _place()
    if place is None:
        return None
    remove_pending_groups(wait_s=0.0)
    try:
        return SandboxCgroup(place, memory_bytes, processes)
    except OSError:
        return None


def cgroup_facts() -> dict[str, object]:
    """Whether sandboxes run under a cgroup cap here, which cgroup version, or why not."""
    if _disabled():
        return {"cgroup": None, "reason": f"{DISABLE_ENV}=0"}
    place = _place()
    if place is None:
        return {"cgroup": None, "reason": _REASON[-1] if _REASON else "unknown"}
    return {"cgroup": place.version, "memory_parent": str(place.memory)}
