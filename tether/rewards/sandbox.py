"""Run untrusted Python (model completions) in a contained child process.

What contains the child, in order of strength (``SandboxResult.isolation`` says which applied):

* always: its own session/process group (killed with ``os.killpg`` on timeout and on exit), a
  wall-clock timeout, ``setrlimit`` limits (address space, CPU seconds, file size, open files,
  process count, no core files), an empty environment (PATH/LANG/HOME only), a throwaway working
  directory, and ``python -I -S`` (no user site, no ``PYTHON*`` variables, no ``site``);
* ``"uid"`` (when we run as root): the child drops to a fresh unprivileged uid, unused by any
  process, chosen per run. Root ignores ``RLIMIT_NPROC``, but that uid does not, and because the
  uid is the sandbox's alone the limit counts only its processes: a fork bomb stops at
  ``max_processes``. Afterwards every process of that uid is killed with ``kill(-1, SIGKILL)``
  sent *as* that uid, which also catches children that escaped the group with ``setsid``. The uid
  cannot write to root's files (the repository, ``/root``);
* ``"netns"`` + ``"mountns"`` (root and a kernel that allows it, probed once): the child enters new
  network and mount namespaces before dropping the uid. The network namespace has only a
  loopback device, down, so nothing (not even 127.0.0.1) can be reached. In the mount namespace
  every filesystem is remounted read-only (``/proc``, ``/sys``, ``/dev`` excepted) and the working
  directory is a fresh tmpfs of ``workdir_mb`` MiB, so the program can write nowhere else and
  cannot fill the disk; the tmpfs vanishes with the namespace;
* without the namespaces the working directory is on disk (only each file's size is bounded)
  and world-writable directories such as /tmp stay writable to the uid;
* ``"socket_guard"`` (fallback when there is no network namespace): the prelude replaces
  ``socket.socket`` so that creating an internet socket raises ``PermissionError``. Code that
  reaches ``_socket`` directly can get around it; it stops honest mistakes, not an adversary.

Without root there is no uid drop: ``RLIMIT_NPROC`` then counts all of the user's processes, so
it is set to the user's current count plus ``max_processes`` (racy, best effort), and children
that call ``setsid`` can outlive the run. Run rewards as root in a container for real containment.

``preexec_fn`` is documented as unsafe with threads (the child could deadlock before ``exec`` on
a lock another thread held at fork); the work done there is kept to syscalls on values prepared
in the parent, and a deadlocked child is still killed by the timeout.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

from tether.errors import TetherError

Status = Literal["ok", "error", "timeout", "memory", "killed"]

# mount(2) / clone(2) flags, from <sys/mount.h> and <sched.h>.
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND, _MS_REC = 32, 1024, 2048, 4096, 16384
_MS_PRIVATE, _MS_RELATIME, _MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_MOUNT_OPTION_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC,
                       "noatime": _MS_NOATIME, "nodiratime": _MS_NODIRATIME,
                       "relatime": _MS_RELATIME, "strictatime": _MS_STRICTATIME}
_KEEP_WRITABLE = ("/proc", "/sys", "/dev")  # kernel interfaces; /dev/shm is a mount of its own

_UID_RANGE = (1_000_000, 2_000_000)  # fresh uids for sandboxed runs, far above real users'
_PROGRAM = "main.py"
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

# Runs before the user's program, as `python -I -S -c PRELUDE`. `-S` skips `site`, which is what
# defines exit()/quit(); completions use them, so give them back. The program is compiled under
# its own file name so tracebacks point at its lines.
_PRELUDE = """\
import sys
def _tether_start(guard_sockets):
    import builtins
    builtins.exit = builtins.quit = sys.exit
    if guard_sockets:
        import socket
        class NoNetworkSocket(socket.socket):
            def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
                if fileno is None and family in (-1, socket.AF_INET, socket.AF_INET6):
                    raise PermissionError("network access is disabled in the tether sandbox")
                super().__init__(family, type, proto, fileno)
        socket.socket = NoNetworkSocket
    sys.argv = [{program!r}]
    with open({program!r}, "rb") as file:
        return compile(file.read(), {program!r}, "exec")
_tether_code = _tether_start({guard_sockets})
del _tether_start
__file__ = {program!r}
__report_fd__ = {report_fd}
exec(_tether_code)
"""


class SandboxError(TetherError):
    """The sandbox itself could not start (no usable interpreter, setup failed)."""


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed program ended.

    status: "ok" (exit 0), "error" (non-zero exit), "timeout" (wall clock or CPU limit),
    "memory" (MemoryError / allocation failure under the address-space limit), "killed" (ended by
    a signal it did not ask for). stdout keeps its first ``max_output_bytes``; stderr keeps its
    last, where the traceback is.
    """

    status: Status
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: tuple[str, ...] = ()
    report: str = ""


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 5.0,
    memory_mb: int = 256,
    max_processes: int = 16,
    max_file_size_mb: int = 1,
    cpu_s: int | None = None,
    workdir_mb: int = 32,
    max_output_bytes: int = 64 * 1024,
    with_report: bool = False,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox and report how it ended.

    Limits: ``timeout_s`` wall clock for the whole run; ``cpu_s`` CPU seconds per process
    (default ``ceil(timeout_s) + 1``, a backstop should this process die); ``memory_mb`` address
    space per process; ``max_processes`` processes and threads together; ``max_file_size_mb`` per
    written file; ``workdir_mb`` for the working directory (with the mount namespace). The
    program's main process ending ends the run: whatever it left running is killed.

    ``with_report``: the program also gets a pipe, its file descriptor in the global
    ``__report_fd__`` (else None), whose bytes come back in ``SandboxResult.report`` (first
    ``max_output_bytes``); harnesses use it to keep their records apart from the program's output.
    """
    python, namespaces = _support()
    uid = _fresh_uid() if _running_as_root() else None
    isolation = (("uid",) if uid is not None else ()) + (("mountns", "netns") if namespaces else ())
    if not namespaces:
        isolation += ("socket_guard",)

    workdir = tempfile.mkdtemp(prefix="tether-sandbox-")
    stdin_file = tempfile.TemporaryFile()
    report_read, report_write = os.pipe() if with_report else (None, None)
    process: subprocess.Popen | None = None
    try:
        with open(os.path.join(workdir, _PROGRAM), "w", encoding="utf-8") as file:
            file.write(code)
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
        stdin_file.write(stdin.encode("utf-8"))
        stdin_file.seek(0)

        limits = _limits(memory_mb, cpu_s if cpu_s is not None else math.ceil(timeout_s) + 1,
                         max_processes, max_file_size_mb, uid)
        preexec = functools.partial(
            _enter_sandbox, limits=limits, uid=uid,
            namespace=_NamespacePlan.build(workdir, workdir_mb, uid, code) if namespaces else None)
        prelude = _PRELUDE.format(program=_PROGRAM, guard_sockets=not namespaces,
                                  report_fd=report_write)
        start = time.monotonic()
        try:
            process = subprocess.Popen(
                [python, "-I", "-S", "-c", prelude], stdin=stdin_file, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=workdir, env={**_ENV, "HOME": workdir},
                start_new_session=True, preexec_fn=preexec,
                pass_fds=(report_write,) if with_report else ())
        except (OSError, subprocess.SubprocessError) as error:
            raise SandboxError(f"could not start the sandboxed program: {error}") from error
        if with_report:
            os.close(report_write)  # the child holds the only write end now: EOF when it ends
            report_write = None
        stdout, stderr, report, timed_out = _collect(process, uid, start + timeout_s,
                                                     max_output_bytes, report_read)
        returncode = process.wait()
        wall_s = time.monotonic() - start
    finally:
        if process is not None:
            _kill_all(process.pid, uid)
            if process.poll() is None:
                process.wait()
        stdin_file.close()
        for fd in (report_read, report_write):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)

    text_err = stderr.text()
    return SandboxResult(
        status=_status(returncode, timed_out, text_err), returncode=returncode,
        stdout=stdout.text(), stderr=text_err, wall_s=wall_s,
        stdout_truncated=stdout.truncated, stderr_truncated=stderr.truncated, isolation=isolation,
        report=report.text())


# ---------------------------------------------------------------- output and status


class _Capped:
    """Bytes of one pipe, at most ``cap`` kept: the first ones, or the last ones."""

    def __init__(self, cap: int, keep_end: bool):
        self.cap, self.keep_end = cap, keep_end
        self.data = bytearray()
        self.seen = 0

    def add(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.keep_end:
            self.data += chunk
            del self.data[:-self.cap]
        elif len(self.data) < self.cap:
            self.data += chunk[: self.cap - len(self.data)]

    @property
    def truncated(self) -> bool:
        return self.seen > len(self.data)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _collect(process: subprocess.Popen, uid: int | None, deadline: float, cap: int,
             report_fd: int | None) -> tuple[_Capped, _Capped, _Capped, bool]:
    """Read stdout/stderr (and the report pipe) until all close, keeping at most ``cap`` bytes
    of each.

    Ends early on the deadline (→ timed out), and once the main process has exited (what it
    left behind is killed, so the pipes close even if a grandchild holds them).
    """
    stdout, stderr = _Capped(cap, keep_end=False), _Capped(cap, keep_end=True)
    report = _Capped(cap, keep_end=False)
    sinks = {process.stdout.fileno(): stdout, process.stderr.fileno(): stderr}
    if report_fd is not None:
        sinks[report_fd] = report
    timed_out = False
    cleaned_up = False
    with selectors.DefaultSelector() as selector:
        for fd in sinks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            if not cleaned_up and process.poll() is not None:
                _kill_all(process.pid, uid)
                cleaned_up = True
                deadline = min(deadline, time.monotonic() + 1.0)  # left-over bytes in the pipes
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = not cleaned_up
                _kill_all(process.pid, uid)
                break
            for key, _ in selector.select(min(remaining, 0.05)):
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    sinks[key.fd].add(chunk)
                else:
                    selector.unregister(key.fd)
    process.stdout.close()
    process.stderr.close()
    return stdout, stderr, report, timed_out


def _status(returncode: int, timed_out: bool, stderr: str) -> Status:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "ok"
    tail = stderr.strip().splitlines()[-1:] or [""]
    if tail[0].startswith("MemoryError") or "Cannot allocate memory" in stderr:
        return "memory"
    return "killed" if returncode < 0 else "error"


# ---------------------------------------------------------------- the child's setup


def _limits(memory_mb: int, cpu_s: int, max_processes: int, max_file_size_mb: int,
            uid: int | None) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for setrlimit. CPU: SIGXCPU at the soft limit, SIGKILL one later."""
    if uid is None:
        # Without a uid of its own, RLIMIT_NPROC counts every process of this user.
        max_processes += _count_tasks(os.getuid())
    mib = 1 << 20
    return [
        (resource.RLIMIT_AS, memory_mb * mib, memory_mb * mib),
        (resource.RLIMIT_CPU, cpu_s, cpu_s + 1),
        (resource.RLIMIT_NPROC, max_processes, max_processes),
        (resource.RLIMIT_FSIZE, max_file_size_mb * mib, max_file_size_mb * mib),
        (resource.RLIMIT_NOFILE, 64, 64),
        (resource.RLIMIT_CORE, 0, 0),
    ]


@dataclass(frozen=True)
class _NamespacePlan:
    """What the child does in its new mount namespace; everything computed in the parent."""

    read_only: tuple[tuple[bytes, int], ...]  # (mount point, flags to keep) to remount read-only
    workdir: bytes
    tmpfs_options: bytes
    program: bytes  # the code, rewritten into the tmpfs that hides the on-disk copy
    uid: int | None

    @staticmethod
    def build(workdir: str, workdir_mb: int, uid: int | None, code: str) -> _NamespacePlan:
        owner = f",uid={uid},gid={uid}" if uid is not None else ""
        return _NamespacePlan(
            read_only=_writable_mounts(), workdir=os.fsencode(workdir),
            tmpfs_options=f"size={workdir_mb}m,mode=0700{owner}".encode(),
            program=code.encode("utf-8"), uid=uid)


def _enter_sandbox(*, limits, uid: int | None, namespace: _NamespacePlan | None) -> None:
    """preexec_fn: runs in the child after fork (and setsid, chdir), before exec."""
    if namespace is not None:
        _enter_namespaces(namespace)
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))
    if uid is not None:
        _become(uid)


def _enter_namespaces(plan: _NamespacePlan) -> None:
    _check(_libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET))
    # Private first, so nothing below propagates back to the host's mounts.
    _check(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None))
    for mount_point, keep in plan.read_only:
        # Best effort per mount: one that refuses stays writable, still guarded by the uid.
        _libc.mount(None, mount_point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | keep, None)
    _check(_libc.mount(b"tmpfs", plan.workdir, b"tmpfs", _MS_NOSUID | _MS_NODEV,
                       plan.tmpfs_options))
    os.chdir(plan.workdir)  # the old cwd is the directory under the tmpfs
    fd = os.open(_PROGRAM, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, plan.program)
    os.close(fd)


def _become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _writable_mounts() -> tuple[tuple[bytes, int], ...]:
    """Mount points of this mount namespace that are writable now, with the flags they carry."""
    found: dict[bytes, int] = {}
    with open("/proc/self/mountinfo", "rb") as file:
        for line in file:
            fields = line.split()
            mount_point = fields[4].decode("unicode_escape").encode("latin-1")  # "\040" → " "
            options = fields[5].decode().split(",")
            if "ro" in options or _kernel_interface(os.fsdecode(mount_point)):
                continue
            found[mount_point] = sum(_MOUNT_OPTION_FLAGS.get(option, 0) for option in options)
    return tuple(found.items())


def _kernel_interface(path: str) -> bool:
    if path == "/dev/shm" or path.startswith("/dev/shm/"):
        return False  # shared memory is storage, not an interface
    return any(path == top or path.startswith(top + "/") for top in _KEEP_WRITABLE)


# ---------------------------------------------------------------- killing what is left


def _kill_all(pgid: int, uid: int | None) -> None:
    """SIGKILL the run's process group and, with a uid of its own, every process of that uid."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid``: ``kill(-1)`` sent by a helper that has become ``uid``.

    kill(-1) reaches every process the caller may signal, in one kernel pass that a concurrent
    fork cannot slip past (the kernel restarts a fork that races a group signal), so fork bombs
    and ``setsid`` escapees all get it; a /proc scan could not keep up. It reports success
    whenever any process exists at all, so completion is checked by looking at /proc afterwards.
    """
    for _ in range(100):
        pid = os.fork()
        if pid == 0:  # only syscalls between fork and _exit: safe with threads in the parent
            try:
                _become(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        if not processes_of(uid):
            return
        time.sleep(0.005)  # killed processes take a moment to become zombies


def _count_tasks(uid: int) -> int:
    """Processes and threads of ``uid`` now (what RLIMIT_NPROC counts)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                pass
    return count


def processes_of(uid: int) -> list[int]:
    """Live (non-zombie) pids owned by ``uid``; for tests and diagnostics."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/stat", "rb") as file:
                state = file.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in (b"Z", b"X"):
            pids.append(int(entry))
    return pids


# ---------------------------------------------------------------- what this machine supports


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _fresh_uid() -> int:
    """A uid in ``_UID_RANGE`` that no process has now."""
    while True:
        uid = _UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0])
        if not processes_of(uid):
            return uid


@functools.cache
def _support() -> tuple[str, bool]:
    """(interpreter, namespaces usable), probed once per process.

    As root the interpreter must be runnable by an unprivileged uid; a virtualenv under /root is
    not, so fall back to a system python (the program gets the standard library only).
    """
    if not _running_as_root():
        return sys.executable, False
    uid = _fresh_uid()
    candidates = [sys.executable, "/usr/local/bin/python3", "/usr/bin/python3", shutil.which("python3")]
    python = next((c for c in candidates if c and _probe(c, uid, namespace=False)), None)
    if python is None:
        raise SandboxError(f"no python that an unprivileged user can run among {candidates}; "
                           "install one outside /root (e.g. /usr/bin/python3)")
    return python, _libc is not None and _probe(python, uid, namespace=True)


def _probe(python: str, uid: int, namespace: bool) -> bool:
    if not os.path.exists(python):
        return False
    workdir = tempfile.mkdtemp(prefix="tether-sandbox-probe-")
    try:
        os.chown(workdir, uid, uid)
        plan = _NamespacePlan.build(workdir, 1, uid, "") if namespace else None
        result = subprocess.run(
            [python, "-I", "-S", "-c", "import encodings"], cwd=workdir, env=_ENV,
            capture_output=True, timeout=30, start_new_session=True,
            preexec_fn=functools.partial(_enter_sandbox, limits=[], uid=uid, namespace=plan))
        return result.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        _kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)


def _load_libc():
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "unshare"):  # not Linux: no namespaces
        return None
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]
    return libc


_libc = _load_libc()  # loaded in the parent: dlopen after fork is one of the unsafe things
