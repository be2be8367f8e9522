"""Run untrusted Python (model completions) in a contained child process.

Two isolation levels, chosen by name (``run_python(isolation=...)``):

``"namespaces"`` (the default, and the only one used unless a caller names the other). Where the
machine cannot provide it, ``run_python`` raises ``SandboxUnavailable`` rather than run with less:
* new mount, network, IPC and PID namespaces; as root the program also drops to a fresh
  unprivileged uid chosen per run, and without root it gets a user namespace that maps only the
  caller's own uid (no privileges inside once the program starts);
* the network namespace has only a loopback device, down: nothing, not even 127.0.0.1, is reachable,
  and abstract unix sockets are per namespace;
* every filesystem is remounted read-only (``/sys``, ``/dev`` excepted); fresh tmpfs mounts
  (nosuid, nodev) cover ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run``, so the host's files,
  symlinks and unix sockets there are out of sight, and the working directory is a tmpfs of
  ``workdir_mb`` MiB; all vanish with the namespace;
* the IPC namespace gives SysV shared memory, semaphores and message queues of the run's own,
  destroyed with it; in the PID namespace the program is process 1 under a fresh ``/proc``, so
  it sees no host process (nor their command lines or environments), and when it ends the
  kernel kills all it started, ``setsid`` or not;
* ``PR_SET_NO_NEW_PRIVS`` (setuid binaries do not gain privileges) and a seccomp deny-list
  (``sandbox_seccomp``: no new namespaces, mounts, ptrace, bpf, keyrings, io_uring, ...);
* a memory cgroup per run (``sandbox_cgroup``) where one can be made: ``memory_mb`` then bounds the
  resident memory of all the run's processes together, shared memory and tmpfs pages included.

``"rlimits-only"`` (weaker, for machines without namespaces; the caller must ask for it): the uid
drop (as root), no-new-privs, the seccomp list with ``socket(2)`` denied as well (the only thing
keeping the program off the network and the host's unix sockets here), and the limits below.
The program can read what its uid can read, world-writable directories such as /tmp stay
writable, and without root a ``setsid`` child can outlive the run.

Both: its own session (killed with ``os.killpg`` on timeout and on exit), a wall-clock timeout,
``setrlimit`` limits (address space, CPU seconds, file size, open files, processes, no core
files), an empty environment, a throwaway working directory, and ``python -I -S``. As root, the
uid is fresh per run and the sandbox's alone: ``RLIMIT_NPROC`` then counts only the run's
processes (a fork bomb stops at ``max_processes``), and afterwards ``kill(-1, SIGKILL)`` sent *as*
that uid catches whatever escaped the process group. Without root, ``RLIMIT_NPROC`` counts all of
the user's processes, so it is set to their current number plus ``max_processes`` (best effort).
``SandboxResult.isolation`` lists what applied to each run.

``preexec_fn`` is documented as unsafe with threads (the child could deadlock before ``exec`` on
a lock another thread held at fork); the work done there is kept to syscalls and a few small
steps on values prepared in the parent (the seccomp filter is compiled before the fork), and a
deadlocked child is still killed by the timeout.
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
from tether.rewards import sandbox_cgroup
from tether.rewards.sandbox_seccomp import SeccompProgram, deny_list_program, set_no_new_privs

Status = Literal["ok", "error", "timeout", "memory", "killed"]
Isolation = Literal["namespaces", "rlimits-only"]
ISOLATIONS: tuple[str, ...] = ("namespaces", "rlimits-only")

# mount(2) / clone(2) flags, from <sys/mount.h> and <sched.h>.
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND, _MS_REC = 32, 1024, 2048, 4096, 16384
_MS_PRIVATE, _MS_RELATIME, _MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
_CLONE_NEWPID, _CLONE_NEWNET = 0x20000000, 0x40000000
_PR_SET_PDEATHSIG = 1
_MOUNT_OPTION_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC,
                       "noatime": _MS_NOATIME, "nodiratime": _MS_NODIRATIME,
                       "relatime": _MS_RELATIME, "strictatime": _MS_STRICTATIME}
_KEEP_WRITABLE = ("/proc", "/sys", "/dev")  # kernel interfaces; /dev/shm gets a tmpfs
# Scratch directories every program may expect, each a fresh tmpfs: (path, mode, MiB or None
# for workdir_mb). /run stays empty and root's: it is where host daemons keep their sockets.
_SCRATCH = ((b"/tmp", 0o1777, None), (b"/var/tmp", 0o1777, None), (b"/dev/shm", 0o1777, None),
            (b"/run", 0o755, 1))

_UID_RANGE = (1_000_000, 2_000_000)  # fresh uids for sandboxed runs, far above real users'
_PROGRAM = "main.py"
# MALLOC_ARENA_MAX: glibc reserves 64 MiB of address space per malloc arena, up to 8 per core,
# one per thread that allocates; two keep a ThreadPoolExecutor within the address-space limit.
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "MALLOC_ARENA_MAX": "2"}
_THREAD_STACK_MB = 8  # glibc's default thread stack (RLIMIT_STACK), reserved per thread

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
                if fileno is None:
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


class SandboxUnavailable(SandboxError):
    """The isolation asked for cannot be had on this machine (and weaker was not asked for)."""


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed program ended.

    status: "ok" (exit 0), "error" (non-zero exit), "timeout" (wall clock or CPU limit),
    "memory" (MemoryError / allocation failure under the address-space limit, or killed by the
    memory cgroup), "killed" (ended by a signal it did not ask for). stdout keeps its first
    ``max_output_bytes``; stderr keeps its last, where the traceback is. ``isolation`` lists what
    contained the run (``"userns"`` or ``"uid"``, ``"mountns"``, ``"netns"``, ``"ipcns"``,
    ``"pidns"``, ``"no_new_privs"``, ``"seccomp"``, ``"cgroup"``, ``"rlimits"``) and
    ``isolation_level`` the level it ran under.
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
    isolation_level: str = "namespaces"


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
    isolation: Isolation = "namespaces",
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox and report how it ended.

    Limits: ``timeout_s`` wall clock for the whole run; ``cpu_s`` CPU seconds per process
    (default ``ceil(timeout_s) + 1``, a backstop should this process die); ``memory_mb`` resident
    memory of the whole run where a memory cgroup can be made, and in any case the address space
    per process (plus room reserved for thread stacks and one malloc arena); ``max_processes``
    processes and threads together; ``max_file_size_mb`` per written file; ``workdir_mb`` for the
    working directory and each scratch tmpfs. The program's main process ending ends the run:
    whatever it left running is killed.

    ``isolation``: ``"namespaces"`` raises ``SandboxUnavailable`` where the machine lacks them;
    ``"rlimits-only"`` is the weaker level, run only when asked for by name (see the module doc).

    ``with_report``: the program also gets a pipe, its file descriptor in the global
    ``__report_fd__`` (else None), whose bytes come back in ``SandboxResult.report`` (first
    ``max_output_bytes``); harnesses use it to keep their records apart from the program's output.
    """
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    support = _support()
    namespaces = isolation == "namespaces"
    if namespaces and support.unavailable:
        raise SandboxUnavailable(
            f"the sandbox cannot isolate programs here: {support.unavailable}. Run as root (or "
            "where user namespaces are allowed) with libseccomp installed, or accept weaker "
            "isolation by name: run_python(..., isolation='rlimits-only') "
            "(reward 'code_tests_rlimits_only')")
    root = _running_as_root()
    uid = _fresh_uid() if root else None
    seccomp = deny_list_program(deny_sockets=not namespaces)

    workdir = stdin_file = cgroup = None
    report_read = report_write = None
    process: subprocess.Popen | None = None
    try:
        cgroup = sandbox_cgroup.create(memory_mb) if root else None
        workdir = tempfile.mkdtemp(prefix="tether-sandbox-")
        stdin_file = tempfile.TemporaryFile()
        if with_report:
            report_read, report_write = os.pipe()
        with open(os.path.join(workdir, _PROGRAM), "w", encoding="utf-8") as file:
            file.write(code)
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
        stdin_file.write(stdin.encode("utf-8"))
        stdin_file.seek(0)

        cpu_s = cpu_s if cpu_s is not None else math.ceil(timeout_s) + 1
        plan = _ChildPlan(
            limits=_limits(memory_mb, cpu_s, max_processes, max_file_size_mb, uid),
            uid=uid, seccomp=seccomp, cgroup_procs=cgroup.procs_file if cgroup else None,
            namespace=_NamespacePlan.build(workdir, workdir_mb, uid, code, cpu_s)
            if namespaces else None)
        prelude = _PRELUDE.format(program=_PROGRAM, guard_sockets=not namespaces and not seccomp,
                                  report_fd=report_write)
        start = time.monotonic()
        try:
            process = subprocess.Popen(
                [support.python, "-I", "-S", "-c", prelude], stdin=stdin_file,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
                env={**_ENV, "HOME": workdir}, start_new_session=True,
                preexec_fn=functools.partial(_enter_sandbox, plan),
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
        if stdin_file is not None:
            stdin_file.close()
        for fd in (report_read, report_write):
            if fd is not None:
                os.close(fd)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        out_of_memory = cgroup is not None and cgroup.oom_killed()
        if cgroup is not None:
            cgroup.remove()

    text_err = stderr.text()
    status = "memory" if out_of_memory and returncode != 0 else _status(returncode, timed_out, text_err)
    return SandboxResult(
        status=status, returncode=returncode, stdout=stdout.text(), stderr=text_err,
        wall_s=wall_s, stdout_truncated=stdout.truncated, stderr_truncated=stderr.truncated,
        isolation=_features(root, namespaces, seccomp is not None, cgroup is not None),
        report=report.text(), isolation_level=isolation)


def _features(root: bool, namespaces: bool, seccomp: bool, cgroup: bool) -> tuple[str, ...]:
    """What contains a run, for ``SandboxResult.isolation``."""
    features = ["uid"] if root else []
    if namespaces:
        features += ([] if root else ["userns"]) + ["mountns", "netns", "ipcns", "pidns"]
    features += ["no_new_privs"] + (["seccomp"] if seccomp else []) + (["cgroup"] if cgroup else [])
    features += ["rlimits"] + ([] if namespaces or seccomp else ["socket_guard"])
    return tuple(features)


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
    """(resource, soft, hard) for setrlimit. CPU: SIGXCPU at the soft limit, SIGKILL one later.

    Address space: ``memory_mb`` plus what glibc only reserves, a stack per thread (threads count
    as processes) and one extra malloc arena, so a correct ThreadPoolExecutor program fits.
    """
    if uid is None:
        # Without a uid of its own, RLIMIT_NPROC counts every process of this user.
        max_processes += _count_tasks(os.getuid())
    mib = 1 << 20
    address_space = (memory_mb + 64 + _THREAD_STACK_MB * max_processes) * mib
    return [
        (resource.RLIMIT_AS, address_space, address_space),
        (resource.RLIMIT_CPU, cpu_s, cpu_s + 1),
        (resource.RLIMIT_NPROC, max_processes, max_processes),
        (resource.RLIMIT_FSIZE, max_file_size_mb * mib, max_file_size_mb * mib),
        (resource.RLIMIT_NOFILE, 64, 64),
        (resource.RLIMIT_CORE, 0, 0),
    ]


@dataclass(frozen=True)
class _NamespacePlan:
    """What the child does in its new namespaces; everything computed in the parent."""

    read_only: tuple[tuple[bytes, int], ...]  # (mount point, flags to keep) to remount read-only
    workdir: bytes
    tmpfs_options: bytes
    scratch: tuple[tuple[bytes, bytes], ...]  # (mount point, tmpfs options)
    program: bytes  # the code, written into the tmpfs working directory
    user_namespace: bytes | None  # without root: the uid_map/gid_map line mapping our own ids
    cpu_s: int  # the CPU limit, to tell its kill from others

    @staticmethod
    def build(workdir: str, workdir_mb: int, uid: int | None, code: str, cpu_s: int
              ) -> _NamespacePlan:
        owner = f",uid={uid},gid={uid}" if uid is not None else ""
        scratch = tuple((path, f"size={size or workdir_mb}m,mode={mode:o}".encode())
                        for path, mode, size in _SCRATCH if os.path.isdir(path))
        return _NamespacePlan(
            read_only=_writable_mounts(), workdir=os.fsencode(workdir),
            tmpfs_options=f"size={workdir_mb}m,mode=0700{owner}".encode(), scratch=scratch,
            program=code.encode("utf-8"), cpu_s=cpu_s,
            user_namespace=None if uid is not None or _running_as_root()
            else f"{os.getuid()} {os.getuid()} 1\n{os.getgid()} {os.getgid()} 1\n".encode())


@dataclass(frozen=True)
class _ChildPlan:
    limits: list[tuple[int, int, int]]
    uid: int | None
    seccomp: SeccompProgram | None
    cgroup_procs: bytes | None  # the run's cgroup.procs, which the child joins first
    namespace: _NamespacePlan | None


def _enter_sandbox(plan: _ChildPlan) -> None:
    """preexec_fn: runs in the child after fork (and setsid, chdir), before exec."""
    if plan.cgroup_procs is not None:
        _write_file(plan.cgroup_procs, b"0")  # "0": the writer; its children follow it
    if plan.namespace is not None:
        _enter_namespaces(plan.namespace)  # returns in the program's process, PID 1 there
    for which, soft, hard in plan.limits:
        resource.setrlimit(which, (soft, hard))
    set_no_new_privs()
    if plan.uid is not None:
        _become(plan.uid)
    if plan.namespace is not None:
        # Changing uid clears the parent-death signal, so set it after: should the waiting
        # parent be killed, the program (PID 1) dies, and with it the whole namespace.
        _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))
    if plan.seccomp is not None:
        plan.seccomp.install()


def _enter_namespaces(plan: _NamespacePlan) -> None:
    flags = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWPID
    if plan.user_namespace is not None:
        flags |= _CLONE_NEWUSER
    _check(_libc.unshare(flags))
    if plan.user_namespace is not None:
        # Map only our own uid and gid: the program keeps no privileges once it execs, while
        # this setup keeps the namespace's capabilities until then.
        uid_line, gid_line = plan.user_namespace.splitlines(keepends=True)
        _write_file(b"/proc/self/setgroups", b"deny")
        _write_file(b"/proc/self/uid_map", uid_line)
        _write_file(b"/proc/self/gid_map", gid_line)
    # Private first, so nothing below propagates back to the host's mounts.
    _check(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None))
    for mount_point, keep in plan.read_only:
        # Read-only and nosuid (setuid bits ignored even without no-new-privs). Best effort per
        # mount: one that refuses stays as it was, still guarded by the uid.
        _libc.mount(None, mount_point, None,
                    _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | keep, None)
    for mount_point, options in plan.scratch:
        _check(_libc.mount(b"tmpfs", mount_point, b"tmpfs", _MS_NOSUID | _MS_NODEV, options))
    os.makedirs(plan.workdir, exist_ok=True)  # the old one may be under a scratch tmpfs now
    _check(_libc.mount(b"tmpfs", plan.workdir, b"tmpfs", _MS_NOSUID | _MS_NODEV,
                       plan.tmpfs_options))
    os.chdir(plan.workdir)
    fd = os.open(_PROGRAM, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, plan.program)
    os.close(fd)
    # A new PID namespace applies to children only: fork. The child, PID 1 there, goes on to
    # exec the program; this process waits outside the namespace and ends the same way, so
    # Popen sees the program's own status. When PID 1 ends, the kernel kills all it left.
    program = os.fork()
    if program != 0:
        _relay_status(program, plan.cpu_s)
    # A /proc of the namespace's own, showing only the run's processes.
    _check(_libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None))


def _relay_status(program: int, cpu_s: int) -> None:
    """Outside the PID namespace: wait for the program, then end as it ended.

    PID 1 ignores signals it has no handler for, the CPU limit's SIGXCPU included, so there the
    limit ends a program with the SIGKILL one second later; reported as SIGXCPU as elsewhere.
    """
    os.closerange(0, os.sysconf("SC_OPEN_MAX"))  # subprocess's exec-error pipe too: Popen
    _, status, usage = os.wait4(program, 0)      # must not wait for the whole run
    if os.WIFSIGNALED(status):
        signal_number = os.WTERMSIG(status)
        if signal_number == signal.SIGKILL and usage.ru_utime + usage.ru_stime >= cpu_s:
            signal_number = signal.SIGXCPU
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _libc.signal(signal_number, None)  # SIG_DFL
        os.kill(os.getpid(), signal_number)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _write_file(path: bytes, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
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


@dataclass(frozen=True)
class _Support:
    python: str
    unavailable: str | None  # why the "namespaces" level cannot run here; None when it can


@functools.cache
def _support() -> _Support:
    """The interpreter to run, and whether the namespaces level works; probed once per process.

    As root the interpreter must be runnable by an unprivileged uid; a virtualenv under /root is
    not, so fall back to a system python (the program gets the standard library only).
    """
    uid = _fresh_uid() if _running_as_root() else None
    candidates = [sys.executable, "/usr/local/bin/python3", "/usr/bin/python3", shutil.which("python3")]
    if uid is None:
        python = sys.executable
    else:
        python = next((c for c in candidates if c and _probe(c, uid, namespace=False)), None)
        if python is None:
            raise SandboxError(f"no python that an unprivileged user can run among {candidates}; "
                               "install one outside /root (e.g. /usr/bin/python3)")
    if deny_list_program() is None:
        return _Support(python, "libseccomp (pyseccomp) is not available for the seccomp filter")
    if _libc is None or not _probe(python, uid, namespace=True):
        who = "as root" if uid is not None else "in a user namespace without root"
        return _Support(python, "new mount, network, IPC and PID namespaces cannot be made "
                                f"{who} (unshare/mount refused, e.g. a container without "
                                "CAP_SYS_ADMIN or with user namespaces disabled)")
    return _Support(python, None)


def _probe(python: str, uid: int | None, namespace: bool) -> bool:
    if not os.path.exists(python):
        return False
    workdir = tempfile.mkdtemp(prefix="tether-sandbox-probe-")
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        plan = _ChildPlan(limits=[], uid=uid, seccomp=None, cgroup_procs=None,
                          namespace=_NamespacePlan.build(workdir, 1, uid, "", 30) if namespace else None)
        result = subprocess.run(
            [python, "-I", "-S", "-c", "import encodings"], cwd=workdir, env=_ENV,
            capture_output=True, timeout=30, start_new_session=True,
            preexec_fn=functools.partial(_enter_sandbox, plan))
        return result.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if uid is not None:
            _kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)


def _load_libc():
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "unshare"):  # not Linux: no namespaces
        return None
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return libc


_libc = _load_libc()  # loaded in the parent: dlopen after fork is one of the unsafe things
