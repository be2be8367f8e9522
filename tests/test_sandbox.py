"""The code sandbox against hostile programs: each is contained and reported with the right status."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tether.rewards import sandbox, sandbox_cgroup
from tether.rewards.sandbox import processes_of

ROOT = os.geteuid() == 0
NO_NAMESPACES = sandbox._support().unavailable
# The generic tests below run under the strongest level this machine has, so a machine without
# namespaces still runs them; the tests that need namespaces say so and skip.
ISOLATION = "rlimits-only" if NO_NAMESPACES else "namespaces"
needs_namespaces = pytest.mark.skipif(bool(NO_NAMESPACES), reason=f"no namespaces here: {NO_NAMESPACES}")


def run_python(code: str, **limits) -> sandbox.SandboxResult:
    limits.setdefault("isolation", ISOLATION)
    return sandbox.run_python(code, **limits)


def test_stdout_stdin_and_exit_status_are_reported():
    result = run_python("import sys\nprint(input()[::-1])\nprint('err', file=sys.stderr)",
                        stdin="olleh\n")
    assert (result.status, result.returncode) == ("ok", 0)
    assert result.stdout == "hello\n"
    assert result.stderr == "err\n"
    assert not result.stdout_truncated

    failed = run_python("exit(3)")  # exit() exists although `-S` skips site
    assert (failed.status, failed.returncode, failed.stderr) == ("error", 3, "")

    raised = run_python("x = 1\nraise ValueError('bad input')")
    assert raised.status == "error"
    assert 'File "main.py", line 2' in raised.stderr
    assert raised.stderr.rstrip().endswith("ValueError: bad input")


def test_infinite_loop_is_a_timeout():
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=1.0)
    assert result.status == "timeout"
    assert result.returncode == -signal.SIGKILL
    assert 1.0 <= result.wall_s < 2.5
    assert time.monotonic() - start < 3.5


def test_cpu_limit_is_a_timeout_before_the_wall_clock():
    result = run_python("while True:\n    pass", timeout_s=10.0, cpu_s=1)
    assert result.status == "timeout"
    assert result.returncode == -signal.SIGXCPU  # the CPU limit's signal, not our SIGKILL
    assert result.wall_s < 8.0


def test_memory_hog_gets_memory_error():
    result = run_python("hog = bytearray(1024 * 1024 * 1024)", memory_mb=128)
    assert result.status == "memory"
    assert result.stderr.rstrip().endswith("MemoryError")
    assert result.wall_s < 5.0


def test_resident_memory_over_the_limit_is_stopped_by_the_cgroup():
    # 250 MiB in 1 MiB pieces fits the address-space room (memory_mb + thread stacks + an
    # arena) but not memory_mb of resident memory: only the cgroup can stop it.
    hog = "chunks = []\nfor _ in range(250):\n    chunks.append(bytearray(1 << 20))\nprint('250 MiB')"
    result = run_python(hog, memory_mb=128)
    if "cgroup" not in result.isolation:
        assert sandbox_cgroup.create(16) is None  # only skip where none can be made at all
        pytest.skip("no memory cgroup here (needs root and a memory controller)")
    assert (result.status, result.returncode, result.stdout) == ("memory", -signal.SIGKILL, "")


def test_huge_output_is_truncated_to_the_cap():
    result = run_python("import sys\nsys.stdout.write('x' * 20_000_000)\n"
                        "sys.stderr.write('e' * 100_000 + 'END')", max_output_bytes=1000)
    assert result.status == "ok"
    assert result.stdout == "x" * 1000 and result.stdout_truncated
    # stderr keeps its end, where a traceback's message is
    assert len(result.stderr) == 1000 and result.stderr.endswith("eEND")
    assert result.stderr_truncated


def test_environment_is_empty_of_the_parents_secrets(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    result = run_python("import os\nprint(os.environ.get('SECRET_TOKEN'))\n"
                        "print(sorted(os.environ))")
    assert result.stdout.splitlines() == [
        "None", "['HOME', 'LANG', 'LC_ALL', 'MALLOC_ARENA_MAX', 'PATH']"]
    assert "hunter2" not in result.stdout


@pytest.mark.parametrize("isolation", [pytest.param("namespaces", marks=needs_namespaces),
                                       "rlimits-only"])
def test_files_outside_the_working_directory_cannot_be_written(tmp_path, isolation):
    outside_private = tmp_path / "pwned.txt"  # root-owned dir, like the repository
    outside_public = f"/tmp/tether-pwned-{uuid.uuid4().hex}.txt"  # world-writable dir
    program = f"""
import os
print(os.getcwd())
for path in [{str(outside_private)!r}, {outside_public!r}]:
    try:
        open(path, "w").write("pwned")
        print("wrote", path)
    except OSError as error:
        print(type(error).__name__, error.errno)
open("inside.txt", "w").write("fine")
print(open("inside.txt").read())
"""
    result = run_python(program, isolation=isolation)
    assert result.status == "ok", result.stderr
    lines = result.stdout.splitlines()
    workdir = lines[0]
    assert lines[-1] == "fine"  # the working directory itself is writable
    assert not outside_private.exists()
    if "mountns" in result.isolation:  # the host's /tmp, where tmp_path is, is out of sight
        assert lines[1] == f"FileNotFoundError {errno.ENOENT}"
    elif ROOT:  # the sandbox's uid may not even enter a root-owned 0700 directory
        assert lines[1] == f"PermissionError {errno.EACCES}"
    if "mountns" in result.isolation:  # /tmp is a tmpfs of the run's own, gone with it
        assert lines[2] == f"wrote {outside_public}"
        assert not os.path.exists(outside_public)
    else:  # without a mount namespace, world-writable directories stay writable
        assert lines[2] == f"wrote {outside_public}"
        os.remove(outside_public)
    assert not os.path.exists(workdir)  # the throwaway directory is gone


def test_file_size_limit():
    result = run_python("open('big', 'wb').write(b'x' * (2 * 1024 * 1024))", max_file_size_mb=1)
    assert result.status == "error"
    assert "File too large" in result.stderr


@pytest.fixture
def listening_socket():
    """A real server on 127.0.0.1 in this process, so a connection would have somewhere to go."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    yield server
    server.close()


def _connect_program(port: int) -> str:
    return f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1)
    print("connected")
except OSError as error:
    print(type(error).__name__, error.errno)
"""


@needs_namespaces
def test_network_is_unreachable(listening_socket):
    port = listening_socket.getsockname()[1]
    result = run_python(_connect_program(port))
    assert result.status == "ok", result.stderr
    with pytest.raises(BlockingIOError):
        listening_socket.accept()  # nobody connected
    assert "netns" in result.isolation  # a namespace whose loopback is down
    assert result.stdout == f"OSError {errno.ENETUNREACH}\n"


def test_rlimits_only_denies_sockets_with_seccomp(listening_socket):
    port = listening_socket.getsockname()[1]
    program = _connect_program(port) + """
import _socket
try:
    _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 9))
    print("sent")
except OSError as error:
    print(type(error).__name__, error.errno)
"""
    result = run_python(program, isolation="rlimits-only")
    assert result.isolation_level == "rlimits-only" and "netns" not in result.isolation
    assert "seccomp" in result.isolation and "socket_guard" not in result.isolation
    assert result.stdout == f"PermissionError {errno.EPERM}\n" * 2
    with pytest.raises(BlockingIOError):
        listening_socket.accept()
    # Unix socket pairs (multiprocessing uses them) still work.
    pair = run_python("import socket\na, b = socket.socketpair()\na.send(b'ok')\nprint(b.recv(2))",
                      isolation="rlimits-only")
    assert pair.stdout == "b'ok'\n"


needs_own_uid = pytest.mark.skipif(
    not ROOT, reason="fork bombs are only contained by a uid of the sandbox's own (needs root)")


@needs_own_uid
def test_children_that_escape_the_process_group_are_killed():
    program = """
import os, sys, time
print(os.getuid(), flush=True)
if os.fork() == 0:
    os.setsid()  # out of the sandbox's process group
    time.sleep(60)
"""
    result = run_python(program, timeout_s=5.0)
    uid = int(result.stdout.split()[0])
    assert result.status == "ok"
    assert result.wall_s < 2.0  # did not wait for the child holding stdout open
    assert processes_of(uid) == []


@needs_own_uid
def test_fork_bomb_is_contained_and_cleaned_up():
    # First a bounded fork loop: proves the process cap holds before an unbounded bomb runs.
    bounded = """
import os, time
count = 0
for _ in range(50):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        count += 1
    except OSError:
        break
print(count)
"""
    capped = run_python(bounded, max_processes=8, timeout_s=5.0)
    assert capped.status == "ok", capped.stderr
    assert int(capped.stdout) == 7  # 8 processes in all, the parent included

    bomb = """
import os
print(os.getuid(), flush=True)
while True:
    try:
        if os.fork() == 0:
            os.setsid()
    except OSError:
        pass
"""
    start = time.monotonic()
    result = run_python(bomb, max_processes=8, timeout_s=1.5)
    # Contained either way: the time limit, or (first, on a busy machine) the run's memory cgroup.
    assert result.status in ("timeout", "memory"), result.status
    assert time.monotonic() - start < 5.0
    assert processes_of(int(result.stdout.split()[0])) == []
    # the machine is still healthy: the next program runs at once
    after = run_python("print(6 * 7)")
    assert (after.status, after.stdout) == ("ok", "42\n") and after.wall_s < 2.0


def test_runs_from_a_worker_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(run_python("print('from a thread')")))
    worker.start()
    worker.join()
    assert results[0].stdout == "from a thread\n"


@pytest.mark.skipif(not ROOT, reason="the isolation a root run must get")
def test_root_runs_drop_to_a_fresh_uid():
    first, second = run_python("import os; print(os.getuid())"), run_python("import os; print(os.getuid())")
    assert "uid" in first.isolation
    assert int(first.stdout) >= sandbox._UID_RANGE[0]
    assert first.stdout != second.stdout


def test_without_root_the_limits_and_seccomp_still_apply(monkeypatch):
    # The non-root rlimits-only path, exercised here by pretending: no uid drop, no namespaces.
    monkeypatch.setattr(sandbox, "_running_as_root", lambda: False)
    monkeypatch.setattr(sandbox, "_support",
                        lambda: sandbox._Support(sandbox.sys.executable, "simulated"))
    result = run_python("import resource\nprint(resource.getrlimit(resource.RLIMIT_FSIZE))\n"
                        "import socket\nsocket.socket()", max_file_size_mb=2,
                        isolation="rlimits-only")
    assert result.isolation == ("no_new_privs", "seccomp", "rlimits")
    assert result.stdout == f"({2 * 1024 * 1024}, {2 * 1024 * 1024})\n"
    assert result.status == "error" and "PermissionError: [Errno 1]" in result.stderr


# ---------------------------------------------------------------- failing closed


def test_without_namespaces_run_python_refuses_unless_weaker_isolation_is_named(monkeypatch):
    # Simulated: the probe reports the namespaces level unavailable.
    python = sandbox._support().python
    monkeypatch.setattr(sandbox, "_support", lambda: sandbox._Support(python, "simulated: no unshare"))
    with pytest.raises(sandbox.SandboxUnavailable,
                       match="simulated: no unshare.*isolation='rlimits-only'"):
        sandbox.run_python("print('should not run')")
    weaker = run_python("print('ran')", isolation="rlimits-only")
    assert (weaker.stdout, weaker.isolation_level) == ("ran\n", "rlimits-only")
    assert not {"mountns", "netns", "pidns"} & set(weaker.isolation)
    with pytest.raises(ValueError, match="isolation must be one of"):
        run_python("print(1)", isolation="none")


@pytest.mark.skipif(not ROOT or not shutil.which("setpriv"),
                    reason="needs root and setpriv to drop CAP_SYS_ADMIN for real")
def test_root_without_cap_sys_admin_fails_closed_for_real(tmp_path):
    # As in a default container: root, but no CAP_SYS_ADMIN, so no namespaces can be made.
    script = """
from tether.rewards.sandbox import SandboxUnavailable, run_python
try:
    run_python("print(1)")
    print("ran with namespaces")
except SandboxUnavailable as error:
    print("refused:", "rlimits-only" in str(error))
result = run_python("print(6 * 7)", isolation="rlimits-only")
print(result.stdout.strip(), result.isolation_level, ",".join(result.isolation))
"""
    done = subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", sys.executable, "-c",
         script], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert done.returncode == 0, done.stderr
    refused, ran = done.stdout.splitlines()
    assert refused == "refused: True"
    answer, level, features = ran.split()
    assert (answer, level) == ("42", "rlimits-only")
    assert features.startswith("uid,no_new_privs,seccomp,") and "netns" not in features


def test_cgroup_v2_run_directories_get_memory_max_and_no_swap(tmp_path, monkeypatch):
    # This machine's memory controller may sit on v1; the v2 bookkeeping is checked on a
    # directory laid out like a cgroup2 root (the kernel's part cannot be faked here).
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(sandbox_cgroup, "_mounts",
                        lambda kind: [(str(tmp_path), {"rw"})] if kind == "cgroup2" else [])
    monkeypatch.setattr(sandbox_cgroup, "_own_cgroup", lambda controller: "/user.slice")
    real_mkdir = os.mkdir

    def mkdir_with_knobs(path, *args):  # the kernel creates a cgroup's files with the directory
        real_mkdir(path, *args)
        for name in ("cgroup.subtree_control", "cgroup.procs", "memory.max", "memory.swap.max"):
            open(os.path.join(path, name), "w").close()

    monkeypatch.setattr(sandbox_cgroup.os, "mkdir", mkdir_with_knobs)
    cgroup = sandbox_cgroup.create(256)
    assert cgroup is not None and cgroup.version == 2
    assert os.path.dirname(cgroup.path) == str(tmp_path / "tether-sandbox")
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory"
    assert open(os.path.join(cgroup.path, "memory.max")).read() == str(256 << 20)
    assert open(os.path.join(cgroup.path, "memory.swap.max")).read() == "0"
    assert cgroup.procs_file == os.fsencode(os.path.join(cgroup.path, "cgroup.procs"))
    with open(os.path.join(cgroup.path, "memory.events"), "w") as events:
        events.write("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroup.oom_killed()

    (tmp_path / "cgroup.controllers").write_text("cpu io pids\n")  # no memory controller
    monkeypatch.setattr(sandbox_cgroup, "_v1_parent", lambda: None)
    assert sandbox_cgroup.create(256) is None
