"""Hostile programs against the sandbox: one test per escape found by trying it as an attacker.

Each program tries the escape and prints what happened; the test asserts it did not work. Tests
that need namespaces or root skip with the reason, so a machine without them runs the rest.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid

import pytest

from tether.rewards import sandbox, sandbox_cgroup
from tether.rewards.sandbox import run_python

ROOT = os.geteuid() == 0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _namespaces_missing() -> str | None:
    try:
        return sandbox._support().unavailable
    except sandbox.SandboxError as error:
        return str(error)


needs_namespaces = pytest.mark.skipif(
    bool(_namespaces_missing()), reason=f"no namespaces here: {_namespaces_missing()}")
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (to set the trap up, or to drop to nobody)")
both_levels = pytest.mark.parametrize("isolation", [
    pytest.param("namespaces", marks=needs_namespaces), "rlimits-only"])

LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def _ok(result) -> list[str]:
    assert result.status == "ok", result.stderr
    return result.stdout.splitlines()


# ---------------------------------------------------------------- network


@pytest.fixture
def loopback_servers():
    """An HTTP server and a UDP socket on 127.0.0.1 in this process, and what reached them."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    yield server.server_address[1], udp, requests
    server.shutdown()
    server.server_close()
    udp.close()


@both_levels
def test_loopback_http_and_udp_through_the_raw_socket_module_are_unreachable(loopback_servers,
                                                                            isolation):
    http_port, udp, requests = loopback_servers
    program = f"""
import urllib.request, _socket
try:
    urllib.request.urlopen("http://127.0.0.1:{http_port}/leak", timeout=2)
    print("http reached")
except Exception as error:
    print("http", type(error).__name__)
try:
    raw = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    raw.sendto(b"leak", ("127.0.0.1", {udp.getsockname()[1]}))
    print("udp sent")
except OSError as error:
    print("udp", type(error).__name__, error.errno)
"""
    lines = _ok(run_python(program, isolation=isolation))
    assert lines[0] == "http URLError"
    assert lines[1].startswith("udp ") and "sent" not in lines[1]
    assert requests == []
    with pytest.raises(TimeoutError):
        udp.recvfrom(16)


@both_levels
def test_host_unix_sockets_under_tmp_and_run_are_out_of_reach(isolation):
    paths = [f"/tmp/tether-sock-{uuid.uuid4().hex[:8]}", f"/run/tether-sock-{uuid.uuid4().hex[:8]}"]
    servers = []
    try:
        for path in paths:
            server = socket.socket(socket.AF_UNIX)
            server.bind(path)
            os.chmod(path, 0o777)
            server.listen()
            server.setblocking(False)
            servers.append(server)
        program = f"""
import socket
for path in {paths!r}:
    try:
        socket.socket(socket.AF_UNIX).connect(path)
        print("connected", path)
    except OSError as error:
        print(type(error).__name__)
"""
        lines = _ok(run_python(program, isolation=isolation))
        # namespaces: the host's /tmp and /run are hidden; rlimits-only: socket() is denied
        expected = "FileNotFoundError" if isolation == "namespaces" else "PermissionError"
        assert lines == [expected, expected]
        for server in servers:
            with pytest.raises(BlockingIOError):
                server.accept()
    finally:
        for server, path in zip(servers, paths):
            server.close()
            os.remove(path)


# ---------------------------------------------------------------- files


@needs_namespaces
def test_a_symlink_planted_in_tmp_does_not_outlive_the_run():
    planted = [f"{top}/tether-plant-{uuid.uuid4().hex[:8]}" for top in ("/tmp", "/var/tmp", "/dev/shm")]
    program = f"""
import os
for path in {planted!r}:
    os.symlink("/etc/tether-victim", path)
    print(os.path.islink(path))
"""
    assert _ok(run_python(program)) == ["True"] * 3  # writable inside the run...
    for path in planted:  # ...but a later root write to these paths finds nothing planted
        assert not os.path.lexists(path)


@needs_namespaces
def test_other_users_world_readable_files_under_tmp_are_out_of_sight():
    answers = f"/tmp/tether-answer-key-{uuid.uuid4().hex[:8]}.json"
    with open(answers, "w") as file:
        file.write('{"q1": 42}')
    os.chmod(answers, 0o644)
    try:
        program = f"""
try:
    print(open({answers!r}).read())
except OSError as error:
    print(type(error).__name__)
"""
        assert _ok(run_python(program)) == ["FileNotFoundError"]
    finally:
        os.remove(answers)


@needs_root
@both_levels
def test_setuid_binaries_gain_no_privileges(isolation):
    # A setuid-root copy of `id` where the sandbox's uid can run it: not under /tmp, /var/tmp,
    # /dev/shm or /run, which the namespaces hide (nor in the checkout, which may sit under /tmp):
    # without no-new-privs it would report euid 0.
    directory = tempfile.mkdtemp(prefix="tether-setuid-trap-", dir="/var/lib")
    os.chmod(directory, 0o755)
    try:
        trap = os.path.join(directory, "id")
        shutil.copy("/usr/bin/id", trap)
        os.chmod(trap, 0o4755)
        program = f"""
import os, subprocess
print(open("/proc/self/status").read().split("NoNewPrivs:")[1].split()[0])
print(subprocess.run([{trap!r}, "-u"], capture_output=True, text=True).stdout.strip())
print(bool(os.statvfs({trap!r}).f_flag & os.ST_NOSUID))
"""
        no_new_privs, euid, nosuid = _ok(run_python(program, isolation=isolation))
        assert no_new_privs == "1"
        assert euid != "0"
        # with namespaces the remounts are nosuid too: a second lock on the same door
        assert nosuid == str(isolation == "namespaces")
    finally:
        shutil.rmtree(directory)


# ---------------------------------------------------------------- processes and /proc


@needs_namespaces
def test_proc_shows_no_host_command_lines():
    secret = f"postgresql://app:hunter2-{uuid.uuid4().hex[:8]}@db/prod"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", secret])
    try:
        program = f"""
import os
pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
seen = []
for pid in pids:
    try:
        seen.append(open(f"/proc/{{pid}}/cmdline", "rb").read())
    except OSError:
        pass
print(len(pids))
print(any({secret.encode()!r} in cmdline for cmdline in seen))
"""
        count, found = _ok(run_python(program))
        assert found == "False"
        assert count == "1"  # the program alone, PID 1 of its namespace
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------- SysV IPC


_SHM = LIBC + """
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
def make_shm(key, size):
    shmid = libc.shmget(key, size, 0o1000 | 0o666)  # IPC_CREAT
    if shmid < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    address = libc.shmat(shmid, None, 0)
    ctypes.memset(address, 1, size)  # touch every page
"""


def _host_sysv_keys(kind: str) -> set[int]:
    with open(f"/proc/sysvipc/{kind}") as file:
        next(file)
        return {int(line.split()[0]) for line in file}


def _remove_sysv(kind: str, key: int) -> None:
    if key in _host_sysv_keys(kind):  # what the old sandbox left behind
        subprocess.run(["ipcrm", "-M" if kind == "shm" else "-Q", str(key)], check=False)


@needs_namespaces
def test_sysv_shared_memory_does_not_outlive_the_run():
    keys = [0x7E7E0000 + int.from_bytes(os.urandom(2), "little") * 4 + i for i in range(3)]
    try:
        program = _SHM + "".join(f"make_shm({key}, 10 << 20)\n" for key in keys) + "print('made')"
        assert _ok(run_python(program)) == ["made"]
        assert not set(keys) & _host_sysv_keys("shm")
    finally:
        for key in keys:
            _remove_sysv("shm", key)


def _memory_cgroups_available() -> bool:
    cgroup = sandbox_cgroup.create(16) if ROOT else None
    if cgroup is not None:
        cgroup.remove()
    return cgroup is not None


@needs_namespaces
@pytest.mark.skipif(not _memory_cgroups_available(),
                    reason="no memory cgroup here (needs root and a memory controller)")
def test_sysv_shared_memory_counts_against_the_memory_limit():
    key = 0x7E7F0000 + int.from_bytes(os.urandom(2), "little")
    try:
        result = run_python(_SHM + f"make_shm({key}, 150 << 20)\nprint('touched 150 MiB')",
                            memory_mb=64)
        assert "cgroup" in result.isolation
        assert result.status == "memory"
        assert "touched" not in result.stdout
    finally:
        _remove_sysv("shm", key)


@needs_namespaces
def test_message_queues_do_not_carry_across_runs():
    key = 0x7E7D0000 + int.from_bytes(os.urandom(2), "little")
    queue = LIBC + """
class Message(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 32)]
"""
    sender = queue + f"""
qid = libc.msgget({key}, 0o1000 | 0o666)
message = Message(1, b"the answer is 42")
print(libc.msgsnd(qid, ctypes.byref(message), 32, 0))
"""
    receiver = queue + f"""
qid = libc.msgget({key}, 0o666)
if qid < 0:
    print("no queue", ctypes.get_errno())
else:
    message = Message()
    libc.msgrcv(qid, ctypes.byref(message), 32, 0, 0o4000)  # IPC_NOWAIT
    print("received", message.mtext)
"""
    try:
        assert _ok(run_python(sender)) == ["0"]
        assert _ok(run_python(receiver)) == ["no queue 2"]  # ENOENT: the queue died with the run
    finally:
        _remove_sysv("msg", key)


# ---------------------------------------------------------------- namespaces and mounts


@both_levels
def test_new_namespaces_and_mounts_are_denied(isolation):
    program = LIBC + """
import errno
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
for name, call in [
        ("unshare user", lambda: libc.unshare(CLONE_NEWUSER)),
        ("unshare user+mount", lambda: libc.unshare(CLONE_NEWUSER | CLONE_NEWNS)),
        ("mount tmpfs", lambda: libc.mount(b"tmpfs", b".", b"tmpfs", 0, b"size=200m")),
        ("clone3", lambda: libc.syscall(435, None, 0))]:
    result = call()
    print(name, result, errno.errorcode.get(ctypes.get_errno()) if result != 0 else "")
import os
pid = os.fork()  # plain fork (clone without namespace flags) still works
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
    lines = _ok(run_python(program, isolation=isolation))
    assert lines == ["unshare user -1 EPERM", "unshare user+mount -1 EPERM",
                     "mount tmpfs -1 EPERM", "clone3 -1 ENOSYS", "fork 7"]


@both_levels
def test_a_correct_multithreaded_solution_passes_at_the_default_limits(isolation):
    program = """
from concurrent.futures import ThreadPoolExecutor
def work(n):
    return sum(i * i for i in range(n))
with ThreadPoolExecutor(8) as pool:
    print(sum(pool.map(work, [20_000] * 32)))
"""
    assert _ok(run_python(program, isolation=isolation)) == [str(32 * sum(i * i for i in range(20_000)))]


# ---------------------------------------------------------------- the parent, as root and as nobody


_PARENT_PROGRAM = """
import os, signal, sys
found = []
for entry in os.listdir("/proc"):
    for name in ("environ", "cmdline"):
        try:
            if b"hunter2" in open(f"/proc/{entry}/{name}", "rb").read():
                found.append(f"{entry}/{name}")
        except OSError:
            pass
print("secrets seen:", found)
try:
    os.kill(PARENT_PID, signal.SIGUSR1)
    print("signalled")
except OSError as error:
    print(type(error).__name__)
if os.fork() == 0:
    os.setsid()
    os.execv("/bin/sleep", ["MARKER", "30"])
"""

# Runs run_python in a separate process as nobody and reports as JSON; argv[1] is the program.
_AS_NOBODY = """
import json, os, signal, sys
from tether.rewards.sandbox import run_python
received = []
signal.signal(signal.SIGUSR1, lambda *args: received.append(1))
result = run_python(sys.argv[1].replace("PARENT_PID", str(os.getpid())))
print(json.dumps({"status": result.status, "stdout": result.stdout, "stderr": result.stderr,
                  "isolation": result.isolation, "signals": len(received)}))
"""


# The sandbox needs only the standard library and pyseccomp (one file), so nobody gets these files
# and nothing else: a checkout or virtualenv that nobody may not read (a clone into `mktemp -d`,
# mode 0700) still works.
_SANDBOX_FILES = ["tether/__init__.py", "tether/errors.py", "tether/rewards/sandbox.py",
                  "tether/rewards/sandbox_seccomp.py", "tether/rewards/sandbox_cgroup.py"]


def _sandbox_copy_nobody_can_read() -> str:
    """A world-readable folder holding the real sandbox modules (``tether.rewards``'s own
    ``__init__`` is left empty: it imports rewards that need third-party packages)."""
    folder = tempfile.mkdtemp(prefix="tether-sandbox-")
    for name in _SANDBOX_FILES:
        os.makedirs(os.path.join(folder, os.path.dirname(name)), mode=0o755, exist_ok=True)
        shutil.copyfile(os.path.join(REPO, name), os.path.join(folder, name))
    open(os.path.join(folder, "tether/rewards/__init__.py"), "w").close()
    try:
        import pyseccomp  # noqa: PLC0415 (only this test needs its file)
    except ImportError:
        pass  # the run below then reports SandboxUnavailable and the test skips, as without it
    else:
        shutil.copyfile(pyseccomp.__file__, os.path.join(folder, "pyseccomp.py"))
    for directory, _, files in os.walk(folder):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    return folder


def _as_nobody(program: str) -> dict:
    """Run ``program`` through ``run_python`` from a process of the unprivileged user nobody
    (system python, with a world-readable copy of the sandbox modules on its path)."""
    python = "/usr/bin/python3"
    if not (ROOT and shutil.which("setpriv") and os.path.exists(python)):
        pytest.skip("needs root, setpriv and /usr/bin/python3 to run as nobody")
    folder = _sandbox_copy_nobody_can_read()
    try:
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
             _AS_NOBODY, program], cwd="/", capture_output=True, text=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": folder,
                 "DATABASE_URL": "postgres://u:hunter2@db"})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if done.returncode != 0 and "SandboxUnavailable" in done.stderr:
        pytest.skip(f"no user namespaces for nobody here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _as_root(program: str, monkeypatch) -> dict:
    if not ROOT:
        pytest.skip("the root variant runs as root")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:hunter2@db")
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *args: received.append(1))
    try:
        result = run_python(program.replace("PARENT_PID", str(os.getpid())))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    return {"status": result.status, "stdout": result.stdout, "stderr": result.stderr,
            "isolation": list(result.isolation), "signals": len(received)}


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                found.append(int(entry))
        except OSError:
            pass
    return found


@needs_namespaces
@pytest.mark.parametrize("user", ["root", "nobody"])
def test_the_program_cannot_read_signal_or_outlive_its_parent(user, monkeypatch):
    marker = f"tether-escapee-{uuid.uuid4().hex[:8]}"
    program = _PARENT_PROGRAM.replace("MARKER", marker)
    outcome = _as_nobody(program) if user == "nobody" else _as_root(program, monkeypatch)
    assert outcome["status"] == "ok", outcome["stderr"]
    assert {"mountns", "netns", "ipcns", "pidns"} <= set(outcome["isolation"])
    assert ("userns" if user == "nobody" else "uid") in outcome["isolation"]
    assert outcome["stdout"].splitlines() == ["secrets seen: []", "ProcessLookupError"]
    assert outcome["signals"] == 0
    assert _processes_with(marker) == []  # the setsid child died with the run
