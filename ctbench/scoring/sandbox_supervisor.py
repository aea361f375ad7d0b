"""The sandbox supervisor: runs *inside* the bubblewrap fence, one per batch.

This file is never imported by ctbench. ``sandbox.py`` reads its text and starts it with
``python -I -S -B -c``, because the fenced interpreter cannot see this package (the
repository is not bound into the sandbox). So it is self-contained on purpose: only the
standard library, and only names defined here.
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING`: importing typing would cost the fenced interpreter
# start-up time for names only a type checker reads.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def supervisor_main() -> None:  # pragma: no cover - runs only inside the sandbox
    """Body of the sandbox supervisor (shipped by source, run as ``python -I -S -B -c``).

    Self-contained on purpose: it uses only the standard library and names defined inside it,
    because it runs in a bare interpreter that cannot import this package.

    Protocol: reads one JSON job from stdin; writes ``["ready", facts]`` once it is set up, then
    ``[k, verdict, message]`` per program, where ``verdict`` is the supervisor's own reason for a
    failure ("timeout", "memory", "output limit", "crashed") or null, and ``message`` is the text
    the program's child sent on its private pipe (``[ok, value, stdout, error, calls]``), which
    the harness validates. Each program runs in a forked child; after it, every other process in
    the sandbox is killed and the work dir wiped, so nothing carries over.
    """
    # Only C-level modules beyond what -S preloads (os aside): `json` and `signal` would drag in
    # re/enum/functools, a third of the start-up time, for nothing.
    import _io
    import _json
    import builtins
    import gc
    import os
    import resource
    import select
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

    # The host passes the job's and the answers' pipe fds as arguments (see the host's
    # _launch_and_collect); fds 0-2 are /dev/null and an error file.
    job_fd, answer_fd = int(sys.argv[1]), int(sys.argv[2])
    chunks: list[bytes] = []
    while True:
        chunk = os.read(job_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    scan = _json.make_scanner(JsonOptions())  # type: ignore[arg-type]
    job = scan(b"".join(chunks).decode("utf-8", "surrogatepass"), 0)[0]
    del chunks
    mode = job["mode"]
    expression = mode == "expression"
    sources = job["sources"]
    stdins = job["stdin"]
    all_calls = job["calls"]
    cpu_seconds = float(job["cpu_seconds"])
    wall_seconds = float(job["wall_seconds"])
    output_bytes = int(job["output_bytes"])
    memory_bytes = int(job["memory_bytes"])
    processes = int(job["processes"])
    max_message = 16 * output_bytes + 65536
    root = os.path.realpath(job["root"])
    root_slash = root.rstrip("/") + "/"
    me = os.getpid()
    try:
        own_pid_namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        own_pid_namespace = ""
    # kill(-1) reaches every process this one may signal: only ever used where the sandbox
    # provably has its own PID namespace, never on the host.
    fenced = bool(
        job["fenced"]
        and own_pid_namespace
        and own_pid_namespace != job["host_pid_namespace"]
        and me <= 3
    )

    # The answer channel moves to the lowest free fd; fds 0, 1 and 2 become /dev/null.
    os.close(job_fd)
    proto = os.dup(answer_fd)
    os.close(answer_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)

    # Non-dumpable: a child (same user) can then not open /proc/<supervisor>/fd/<proto> to write
    # forged lines, nor read this process's memory. ctypes is dropped again before any child.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
        dumpable = int(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE
        del ctypes
    except (ImportError, OSError, AttributeError):
        dumpable = -1
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]

    def set_limit(which: int, value: int) -> None:
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))

    set_limit(resource.RLIMIT_CORE, 0)
    for name in job["preload"]:
        try:  # noqa: SIM105 - contextlib is not imported in the sandbox
            __import__(name)
        except ImportError:
            pass

    try:  # -S skips site, which is where exit() and quit() come from; programs use them
        import _sitebuiltins

        builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
        builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    except ImportError:
        pass

    # Calls that reach other processes or create files but raise no audit event: removed, so a
    # program cannot use them by name (a tripwire; the PID namespace is the real fence).
    posix = sys.modules["posix"]
    pidfd_open = getattr(os, "pidfd_open", None)  # the supervisor's own copy
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

    def send(text: str) -> None:
        data = text.encode("ascii")
        view = memoryview(data)
        while view:
            view = view[os.write(proto, view) :]

    def dumps(x: Any) -> str:
        """JSON of plain None/bool/int/str/list/dict (the supervisor's own data only)."""
        if x is None:
            return "null"
        if x is True:
            return "true"
        if x is False:
            return "false"
        if type(x) is int:
            return str(x)
        if type(x) is str:
            return json_str(x)
        if type(x) is list:
            return "[" + ",".join(dumps(v) for v in x) + "]"
        if type(x) is dict:
            return "{" + ",".join(json_str(str(a)) + ":" + dumps(b) for a, b in x.items()) + "}"
        raise TypeError("cannot encode " + type(x).__name__)

    # ---- facts (the probe only) ----------------------------------------------------------------
    facts: dict[str, Any] | None = None
    if job["facts_paths"] is not None:
        import _socket

        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                caps = int(fh.read().split("CapEff:")[1].split()[0], 16)
        except (OSError, IndexError, ValueError):
            caps = -1
        try:
            with open("/proc/self/uid_map", encoding="ascii") as fh:
                outer_uid = int(fh.read().split()[1])
        except (OSError, IndexError, ValueError):
            outer_uid = -1
        try:
            with open("/ctbench-probe", "w"):
                pass
            root_read_only = False
        except OSError:
            root_read_only = True
        facts = {
            "pid": me,
            "new_pid_namespace": bool(own_pid_namespace)
            and own_pid_namespace != job["host_pid_namespace"],
            "interfaces": sorted(name for _, name in _socket.if_nameindex()),
            "host_paths_visible": [os.path.exists(p) for p in job["facts_paths"]],
            "capabilities": caps,
            "root_read_only": root_read_only,
            "uid": os.getuid(),
            "outer_uid": outer_uid,
            # The kernel exempts uid 0 (outside the user namespace) from RLIMIT_NPROC.
            "process_limit_enforced": outer_uid not in (0, -1),
            "non_dumpable": dumpable == 0,
            "visible_top_level": sorted(os.listdir("/")),
        }
    send('["ready",' + ("null" if facts is None else dumps(facts)) + "]\n")

    def dir_stamp(path: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_ctime_ns, st.st_mtime_ns, st.st_nlink

    def wipe(path: str) -> None:
        """Empty a directory without following symlinks (best effort). Every folder is made
        the owner's again first: a program may have shut one (chmod 0) to leave files behind
        or to make the next program's chdir fail; the owner may always chmod it back."""
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    os.chmod(entry.path, 0o700)
                    wipe(entry.path)
                    os.rmdir(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass

    scratch = [root]
    if fenced:
        scratch += ["/tmp", "/dev/shm"]
    stamps = {path: dir_stamp(path) for path in scratch}
    modes = {path: os.stat(path).st_mode & 0o7777 for path in scratch}

    def clean_scratch() -> None:
        for path in scratch:
            if dir_stamp(path) != stamps[path]:  # a chmod changes ctime: caught here
                try:  # noqa: SIM105 - no contextlib in the bare supervisor (start-up time)
                    os.chmod(path, modes[path])
                except OSError:
                    pass
                wipe(path)
                if path == "/tmp" and not os.path.isdir(root):
                    os.mkdir(root)
        for path in scratch:
            stamps[path] = dir_stamp(path)

    def sweep() -> None:
        """Kill every process in the sandbox but this one and PID 1 (bwrap's reaper)."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                os.kill(-1, 9)
            except OSError:
                return  # ESRCH: nothing left, not even a zombie
            while True:
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    break
            alive = 0
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) in (1, me):
                    continue
                try:
                    with open("/proc/" + entry + "/stat", "rb") as fh:
                        state = fh.read().rsplit(b")", 1)[1].split()[0]
                except (OSError, IndexError):
                    continue
                alive += 1  # zombies too: wait until PID 1 has reaped them
                if state != b"Z":
                    try:  # noqa: SIM105 - contextlib is not imported in the sandbox
                        os.kill(int(entry), 9)
                    except OSError:
                        pass
            if not alive or time.monotonic() > deadline:
                return
            time.sleep(0.0005)

    poll = select.poll
    POLLIN = select.POLLIN | select.POLLHUP | select.POLLERR

    def prepare(k: int) -> tuple[Any, list[Any]] | str:
        """Compile program k (and its test calls) here, before the fork, or say why not.

        Why here: compiling in a freshly forked child costs ~1.5 ms of page faults, more than
        everything else a child does; compiling runs none of the program's code, and the
        compiler bounds constant folding, so a hostile text can at worst stall this supervisor,
        which the harness's watchdog then replaces.
        """
        try:
            code = compile(sources[k], "<program>", "eval" if expression else "exec", 0, True)
        except BaseException as exc:  # SyntaxError, MemoryError, RecursionError, ...
            return describe(exc)
        compiled_calls: list[Any] = []
        for call in [] if all_calls is None else all_calls[k]:
            try:
                compiled_calls.append(compile(call, "<test>", "eval", 0, True))
            except BaseException as exc:  # a broken test is the task's fault: report it
                compiled_calls.append(describe(exc))
        return code, compiled_calls

    def supervise(k: int) -> tuple[str | None, str | None]:
        """Fork program k's child, collect its message within the wall clock, clean up."""
        compiled = prepare(k)
        if type(compiled) is str:  # did not compile: no process needed
            error_json = json_str(compiled)
            calls_json = "null" if all_calls is None else "[]"
            return None, "[false,null," + '""' + "," + error_json + "," + calls_json + "]"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                os.close(r)
                child(k, w, compiled)
            finally:
                os._exit(70)
        os.close(w)
        deadline = time.monotonic() + wall_seconds
        data = bytearray()
        need = -1
        reason: str | None = None
        watcher = poll()
        watcher.register(r, POLLIN)
        while need < 0 or len(data) < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "timeout"
                break
            if not watcher.poll(max(1, int(remaining * 1000) + 1)):
                continue
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            data += chunk
            if need < 0:
                nl = data.find(b"\n")
                if nl >= 0:
                    try:
                        need = nl + 1 + int(data[:nl])
                    except ValueError:
                        need = -2
                        break
                elif len(data) > 32:
                    need = -2
                    break
            if len(data) > max_message + 32:
                reason = "output limit"
                break
        os.close(r)
        status = None
        if reason is None:
            # The child exits right after its message; a child that lingers is killed.
            remaining = deadline - time.monotonic()
            pidfd = -1
            if pidfd_open is not None and remaining > 0:
                try:  # a kernel without pidfd_open (before 5.3): poll waitpid instead
                    pidfd = pidfd_open(pid)
                except OSError:
                    pidfd = -1
            if pidfd >= 0:
                exited = poll()
                exited.register(pidfd, POLLIN)
                if exited.poll(max(1, int(remaining * 1000) + 1)):
                    status = os.waitpid(pid, 0)[1]
                os.close(pidfd)
            else:
                while time.monotonic() < deadline:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        break
                    time.sleep(0.0002)
                else:
                    status = None
        if status is None:
            try:  # noqa: SIM105 - contextlib is not imported in the sandbox
                os.kill(pid, 9)
            except OSError:
                pass
            status = os.waitpid(pid, 0)[1]
        if fenced:
            sweep()
        else:
            try:  # noqa: SIM105 - contextlib is not imported in the sandbox
                os.killpg(pid, 9)  # what the child started in its own process group
            except OSError:
                pass
        clean_scratch()
        if reason is not None:
            return reason, None
        if need >= 0 and len(data) >= need:
            nl = data.find(b"\n")
            return None, data[nl + 1 : need].decode("utf-8", "replace")
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (_signal.SIGXCPU, _signal.SIGKILL):
            return "timeout", None
        return "crashed", None

    class CpuTimeout(BaseException):
        """Raised by the CPU timer; a BaseException so `except Exception` cannot swallow it."""

    class OutputLimit(BaseException):
        """Raised when a program prints more than output_bytes."""

    class Forbidden(PermissionError):
        """Raised by the audit hook; the violation is also recorded, so catching it is
        futile."""

    class Unserializable(Exception):
        """The value is not made of plain built-in types."""

    armed = [False]
    own_pid_cell = [""]
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

    def make_audit_hook() -> Callable[[str, tuple[Any, ...]], None]:
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
            own_pid: list[str] = own_pid_cell,  # set in each child
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
                        if entry.isdigit() and entry != own_pid[0]:
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

        return hook

    # ---- streams, values, running ----------------------------------------------------------
    captured = _io.BytesIO()
    out_state = [0, False]  # bytes accepted, overflowed
    len_ = len
    type_ = type
    str_ = str
    isinstance_ = isinstance
    BaseException_ = BaseException
    SystemExit_ = SystemExit
    MemoryError_ = MemoryError
    eval_ = eval
    exec_ = exec
    write = os.write
    setitimer = _signal.setitimer

    class Sink(_io._RawIOBase):  # the C base: io.RawIOBase is a patchable Python class
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            data = bytes(data)
            if self is not stdout_sink:
                return len_(data)  # stderr: discarded
            room = output_bytes - out_state[0]
            if len_(data) > room:
                if room > 0:
                    captured.write(data[:room])
                    out_state[0] = output_bytes
                out_state[1] = True
                raise OutputLimit("output limit")
            out_state[0] += len_(data)
            captured.write(data)
            return len_(data)

    stdout_sink = Sink()
    program_stdout = _io.TextIOWrapper(
        stdout_sink, encoding="utf-8", errors="surrogateescape", write_through=True
    )
    program_stderr = _io.TextIOWrapper(
        Sink(), encoding="utf-8", errors="replace", write_through=True
    )

    int_, float_, complex_, bool_ = int, float, complex, bool
    bytes_, list_, tuple_, dict_ = bytes, list, tuple, dict
    set_, frozenset_ = set, frozenset
    float_hex = float.hex
    bytes_hex = bytes.hex
    type_name = type.__dict__["__name__"].__get__

    def enc(x: Any, depth: int = 0) -> Any:
        """A plain value as tagged JSON; exact types only (subclasses could lie)."""
        if depth > 100:
            raise Unserializable("nested too deeply")
        t = type_(x)
        if x is None or t is bool_:
            return x
        if t is int_:
            return ["i", str_(x)]
        if t is float_:
            return ["f", float_hex(x)]
        if t is complex_:
            return ["c", float_hex(x.real), float_hex(x.imag)]
        if t is str_:
            return ["s", x]
        if t is bytes_:
            return ["y", bytes_hex(x)]
        if t is list_ or t is tuple_ or t is set_ or t is frozenset_:
            tag = "l" if t is list_ else "t" if t is tuple_ else "S" if t is set_ else "F"
            return [tag, [enc(v, depth + 1) for v in x]]
        if t is dict_:
            return ["d", [["t", [enc(a, depth + 2), enc(b, depth + 2)]] for a, b in x.items()]]
        raise Unserializable("not a plain value: " + str_(type_name(t))[:100])

    def describe(exc: BaseException) -> str:
        name = type_name(type_(exc))
        try:
            message = str_(exc)
        except BaseException_:
            message = ""
        if not isinstance_(name, str_):
            name = "Exception"
        if not isinstance_(message, str_):
            message = ""
        name = name[:200]
        return name + ": " + message[:500] if message else name

    def classify(exc: BaseException) -> str:
        if isinstance_(exc, CpuTimeout):
            return "timeout"
        if isinstance_(exc, OutputLimit):
            return "output limit"
        if isinstance_(exc, MemoryError_):
            return "memory"
        if isinstance_(exc, Unserializable):
            return str_(exc.args[0])
        return describe(exc)

    def on_cpu_timer(signum: int, frame: Any) -> None:
        if armed[0]:
            timed_out[0] = True
            raise CpuTimeout("cpu time limit")

    audit_hook = make_audit_hook()

    def child(k: int, w: int, compiled: tuple[Any, list[Any]]) -> None:
        """Program k's process: limits, streams, tripwire, run, send plain values, exit."""
        if w != 3:
            os.dup2(w, 3)
            os.close(w)
        for fd in inherited_fds:  # the supervisor's answer channel included
            if fd > 3:
                try:  # noqa: SIM105 - contextlib is not imported in the sandbox
                    os.close(fd)
                except OSError:
                    pass
        if not fenced:
            os.setpgid(0, 0)
        try:  # first in line for the OOM killer at a cgroup cap, before the supervisor
            adj = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(adj, b"1000")
            os.close(adj)
        except OSError:
            pass
        set_limit(resource.RLIMIT_AS, memory_bytes)
        set_limit(resource.RLIMIT_FSIZE, output_bytes)
        hard_cpu = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = int(cpu_seconds) + 2
        if hard_cpu == resource.RLIM_INFINITY or hard_cpu > soft + 1:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
        if fenced:  # outside a user namespace this would count all of the user's processes
            set_limit(resource.RLIMIT_NPROC, processes)
        _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # oversized writes fail with EFBIG
        os.chdir(root)

        text_in = "" if stdins is None else stdins[k]

        sys.stdin = _io.TextIOWrapper(
            _io.BytesIO(text_in.encode("utf-8", "surrogatepass")),
            encoding="utf-8",
            errors="surrogatepass",
        )

        code, compiled_calls = compiled

        _signal.signal(_signal.SIGPROF, on_cpu_timer)
        own_pid_cell[0] = str(os.getpid())
        sys.stdout, sys.stderr = program_stdout, program_stderr
        sys.addaudithook(audit_hook)
        namespace = {"__builtins__": builtins, "__name__": "__main__"}
        value: Any = None
        error: str | None = None
        results: list[Any] | None = None if all_calls is None else []
        armed[0] = True
        setitimer(_signal.ITIMER_PROF, cpu_seconds, 0.05)
        try:
            try:
                if expression:
                    value = enc(eval_(code, namespace))
                else:
                    exec_(code, namespace)
            except SystemExit_ as exc:
                if expression or exc.code not in (None, 0):
                    error = describe(exc)
            except BaseException_ as exc:
                error = classify(exc)
            if error is None and results is not None:
                for compiled in compiled_calls:
                    if type_(compiled) is str_:
                        results.append([None, compiled])
                        continue
                    try:
                        results.append([enc(eval_(compiled, namespace)), None])
                    except (CpuTimeout, OutputLimit, MemoryError_) as exc:
                        error = classify(exc)
                        break
                    except BaseException_ as exc:
                        results.append([None, classify(exc)])
        except BaseException_ as exc:  # a late timer signal
            if error is None:
                error = classify(exc)
        armed[0] = False
        setitimer(_signal.ITIMER_PROF, 0, 0)

        if violation[0] is not None:
            error = "forbidden: " + violation[0]
        elif timed_out[0]:
            error = "timeout"
        elif out_state[1]:
            error = "output limit"
        stdout = captured.getvalue().decode("utf-8", "replace")
        if error is not None:
            value, results = None, (None if results is None else [])
        parts = [
            "true" if error is None else "false",
            dumps(value),
            json_str(stdout),
            "null" if error is None else json_str(error),
            dumps(results),
        ]
        body = ("[" + ",".join(parts) + "]").encode("ascii")
        if len_(body) > max_message:
            stdout = ""
            body = '[false,null,"","output limit",' + ("null" if results is None else "[]") + "]"
            body = body.encode("ascii")
        message = str_(len_(body)).encode("ascii") + b"\n" + body
        view = memoryview(message)
        while view:
            view = view[write(3, view) :]
        os._exit(0)

    if os.path.isdir("/proc/self/fd"):
        inherited_fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    else:
        inherited_fds = list(range(4, 1024))
    gc.collect()
    gc.freeze()  # forked children then do not touch (and copy) the supervisor's pages
    for k in range(len(sources)):
        try:
            reason, message = supervise(k)
        except OSError:
            reason, message = "crashed", None
        send(
            "["
            + str(k)
            + ","
            + ("null" if reason is None else json_str(reason))
            + ","
            + ("null" if message is None else json_str(message))
            + "]\n"
        )
    os._exit(0)


if __name__ == "__main__":
    supervisor_main()
