"""The sandbox's seccomp deny-list: syscalls a program under test never needs.

The filter is compiled once, in the parent, by libseccomp (through the ``pyseccomp`` binding), into
a classic BPF program; the child only hands those bytes to ``prctl(PR_SET_SECCOMP)`` after fork,
which is one syscall and safe there. Everything not listed is allowed: this closes the kernel
interfaces that would undo the namespaces and limits (new namespaces, mounts, tracing, keyrings,
eBPF, io_uring, which seccomp cannot see into), not everything a program could misuse.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import tempfile

logger = logging.getLogger(__name__)

_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2

# Each answers EPERM. The namespace and mount calls would let a program build its own mounts
# (a tmpfs past the limits) or leave the sandbox's namespaces.
DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog", "vhangup",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "iopl", "ioperm", "personality",
)
# clone(2) with any of these flags makes a namespace, so it is denied like unshare:
# NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                         0x20000000, 0x40000000)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompProgram:
    """A compiled filter, kept in memory that a forked child still has."""

    def __init__(self, bpf: bytes):
        self._buffer = ctypes.create_string_buffer(bpf, len(bpf))
        self._fprog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buffer))

    def install(self) -> None:
        """In the child, after ``set_no_new_privs``: from here on the deny-list applies to this
        process and everything it starts."""
        _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(self._fprog))


def set_no_new_privs() -> None:
    """No exec may gain privileges again (setuid binaries, file capabilities)."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0)


@functools.cache
def deny_list_program(*, deny_sockets: bool = False) -> SeccompProgram | None:
    """The deny-list compiled for this machine, or None where libseccomp is missing.

    ``deny_sockets``: ``socket(2)`` fails too (``socketpair`` still works), for runs without a
    network namespace, where it is what keeps the program off the network and off the host's
    unix sockets; a patched ``socket`` module would not stop code that calls ``_socket``.
    """
    try:
        import pyseccomp as seccomp
    except Exception as error:  # ImportError, or OSError/AttributeError loading libseccomp
        logger.warning("no seccomp filter for the sandbox (pyseccomp/libseccomp: %s)", error)
        return None
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED:
        try:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (ValueError, RuntimeError, OSError):
            pass  # a syscall this kernel's architecture or libseccomp does not know
    for flag in CLONE_NAMESPACE_FLAGS:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, out of seccomp's sight: say it does not exist, and
    # glibc falls back to clone, whose flags the rules above see.
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    if deny_sockets:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "socket")
    with tempfile.TemporaryFile() as file:
        rules.export_bpf(file)
        file.seek(0)
        return SeccompProgram(file.read())


def _prctl(option: int, arg2: int, arg3: int) -> None:
    if _libc.prctl(option, arg2, arg3, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}): {os.strerror(code)}")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
