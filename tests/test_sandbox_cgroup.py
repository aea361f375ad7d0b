"""The sandbox's cgroup cap: memory and processes of the whole sandbox, beyond what
per-process rlimits bound. Hostile programs disarm the audit hook first (as in
``test_sandbox_hostile``), so that what holds them is the kernel. Needs bubblewrap and a
cgroup this process may create children in; skips, saying why, elsewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_disarm import DISARM

from ctbench.scoring.sandbox import SandboxLimits, fence_facts, run_programs
from ctbench.scoring.sandbox_cgroup import cgroup_facts, remove_pending_groups

FACTS = fence_facts()
CAP = cgroup_facts()
needs_cap = pytest.mark.skipif(
    FACTS["level"] != "bwrap" or CAP["cgroup"] is None,
    reason=f"no kernel fence or no cgroup cap here: {FACTS.get('reason') or CAP.get('reason')}",
)


# Six processes of 200 MB each: every one under its 256 MB RLIMIT_AS, 1.2 GB together.
SPREAD_OUT = """
import time
kids = []
for _ in range(6):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        block = bytearray(b'\\x01') * (200 * 2**20)
        os.write(w, b'1')
        time.sleep(30)
        os._exit(0)
    os.close(w)
    kids.append((pid, r))
held = sum(1 for _, r in kids if os.read(r, 1) == b'1')
killed = 0
for pid, _ in kids:
    done, status = os.waitpid(pid, os.WNOHANG)
    killed += bool(done) and os.WIFSIGNALED(status)
print('held', held, 'killed', killed)
"""

FORK_MANY = """
import time
kids = 0
try:
    for _ in range(300):
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        kids += 1
except OSError:
    pass
print('forked', kids)
"""

CAPPED = SandboxLimits(
    cpu_seconds=2.0, wall_seconds=8.0, total_memory_bytes=512 * 2**20, total_processes=48
)


def test_limits_refuse_a_cap_below_one_program_or_too_few_processes() -> None:
    with pytest.raises(ValueError, match="total_memory_bytes"):
        SandboxLimits(memory_bytes=256 * 2**20, total_memory_bytes=256 * 2**20)
    with pytest.raises(ValueError, match="total_processes"):
        SandboxLimits(total_processes=4)


def test_the_fence_facts_say_whether_a_cap_is_set_and_why_not() -> None:
    cap = fence_facts()["cap"]
    assert cap["cgroup"] in (1, 2) or cap["reason"]


@needs_cap
def test_memory_spread_over_processes_is_capped_for_the_whole_sandbox() -> None:
    hostile, benign = run_programs(
        [DISARM + SPREAD_OUT, "print(6 * 7)"], mode="program", limits=CAPPED
    )
    # Uncapped, all six would hold their 200 MB (1.2 GB); at 512 MB the kernel kills some.
    found = re.search(r"held (\d) killed (\d)", hostile.stdout)
    if found is not None:
        held, killed = map(int, found.groups())
        assert held < 6 or killed > 0, hostile
    else:  # the program itself was killed at the cap, and it says so
        assert hostile.error == "memory", hostile
    assert benign.ok and benign.stdout == "42\n"


@needs_cap
def test_processes_are_capped_for_root_too() -> None:
    (result,) = run_programs([DISARM + FORK_MANY], mode="program", limits=CAPPED)
    found = re.search(r"forked (\d+)", result.stdout)
    assert found is not None, result
    # bwrap's two processes, the supervisor and the program come first.
    assert int(found.group(1)) < CAPPED.total_processes


@needs_cap
def test_each_sandbox_group_is_removed_once_its_processes_are_gone() -> None:
    parent = Path(str(CAP["memory_parent"]))
    ours = f"ctbench-sandbox-{os.getpid()}-*"
    for _ in range(3):
        run_programs(["print(1)", DISARM + FORK_MANY], mode="program", limits=CAPPED)
    # A group whose PID namespace was still emptying waits for the next sandbox's start:
    # never more than the last one is left.
    assert len(list(parent.glob(ours))) <= 1
    remove_pending_groups(wait_s=2.0)  # as at exit
    assert list(parent.glob(ours)) == []


@needs_cap
def test_groups_left_by_a_killed_process_are_removed_by_the_next_one() -> None:
    parent = Path(str(CAP["memory_parent"]))
    script = (
        "import os\n"
        "from ctbench.scoring.sandbox import run_programs\n"
        "from ctbench.scoring import sandbox_cgroup\n"
        "run_programs(['print(1)'], mode='program')\n"
        "sandbox_cgroup._PENDING.clear()\n"
        "group = sandbox_cgroup.create_cgroup(2**30, 64)\n"
        "print(os.getpid(), flush=True)\n"
        "os._exit(0)  # no atexit: as if killed\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    pid = done.stdout.split()[-1]
    assert list(parent.glob(f"ctbench-sandbox-{pid}-*")), "the killed process left no group"
    fresh = subprocess.run(
        [sys.executable, "-c", "from ctbench.scoring import sandbox_cgroup as c; c.cgroup_facts()"],
        check=True,
    )
    assert fresh.returncode == 0
    assert list(parent.glob(f"ctbench-sandbox-{pid}-*")) == []
