"""A memory cgroup per sandboxed run: a limit on resident memory, not on address space.

``RLIMIT_AS`` counts address space that is only reserved (glibc keeps 64 MiB per malloc arena and
8 MiB per thread stack), so it fails correct multithreaded programs long before they use the
memory, and it does not see SysV shared memory or tmpfs pages at all. A cgroup's limit counts the
pages a run really uses, shared memory and tmpfs files included, for all its processes together.

cgroup v2 (``memory.max``) where this process may create cgroups with the memory controller, else
the v1 memory hierarchy (``memory.limit_in_bytes``); None where neither can be used (not root,
no memory controller, a read-only cgroupfs). Swap is set to 0 where the kernel offers the knob,
so the limit cannot be sidestepped by swapping.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass

_GROUP = "tether-sandbox"


@dataclass(frozen=True)
class MemoryCgroup:
    path: str
    version: int  # 1 or 2

    @property
    def procs_file(self) -> bytes:
        """The child writes b"0" here (itself) before it starts the program."""
        return os.fsencode(os.path.join(self.path, "cgroup.procs"))

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this run for going over the limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(self.path, name)) as file:
                counts = dict(line.split() for line in file if line.strip())
        except (OSError, ValueError):
            return False
        return int(counts.get("oom_kill", 0)) > 0

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (they may take a moment to be reaped)."""
        for _ in range(200):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.005)


def create(limit_mb: int) -> MemoryCgroup | None:
    """A fresh cgroup limited to ``limit_mb`` MiB of memory, or None where none can be made."""
    for version, parent in ((2, _v2_parent()), (1, _v1_parent())):
        if parent is None:
            continue
        path = os.path.join(parent, f"run-{secrets.token_hex(6)}")
        try:
            os.mkdir(path)
        except OSError:
            continue
        try:
            if version == 2:
                _write(path, "memory.max", str(limit_mb << 20))
                _write(path, "memory.swap.max", "0", required=False)
            else:
                _write(path, "memory.limit_in_bytes", str(limit_mb << 20))
                _write(path, "memory.memsw.limit_in_bytes", str(limit_mb << 20), required=False)
            return MemoryCgroup(path, version)
        except OSError:
            MemoryCgroup(path, version).remove()
    return None


def _write(directory: str, name: str, value: str, required: bool = True) -> None:
    try:
        with open(os.path.join(directory, name), "w") as file:
            file.write(value)
    except OSError:
        if required:
            raise


def _mounts(fstype: str) -> list[tuple[str, set[str]]]:
    """(mount point, super options) of this mount namespace's filesystems of ``fstype``."""
    found = []
    with open("/proc/self/mountinfo") as file:
        for line in file:
            before, _, after = line.partition(" - ")
            kind, _source, super_options = after.split()[:3]
            if kind == fstype:
                found.append((before.split()[4], set(super_options.split(","))))
    return found


def _own_cgroup(controller: str | None) -> str | None:
    """This process's cgroup path in the v1 hierarchy of ``controller`` (None: the v2 one)."""
    with open("/proc/self/cgroup") as file:
        for line in file:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if (controller is None and controllers == "") or controller in controllers.split(","):
                return path
    return None


def _v2_parent() -> str | None:
    """``<cgroup2 root>/tether-sandbox`` with the memory controller on for its children.

    Only at the root of the hierarchy: below it, a cgroup holding processes (ours) may not hand
    controllers to children ("no internal processes"), and the root is exempt.
    """
    mounts = _mounts("cgroup2")
    if not mounts or _own_cgroup(None) is None:
        return None
    root = mounts[0][0]
    try:
        with open(os.path.join(root, "cgroup.controllers")) as file:
            if "memory" not in file.read().split():
                return None
        _write(root, "cgroup.subtree_control", "+memory")
        parent = os.path.join(root, _GROUP)
        os.makedirs(parent, exist_ok=True)
        _write(parent, "cgroup.subtree_control", "+memory")
    except OSError:
        return None
    return parent


def _v1_parent() -> str | None:
    """A directory below this process's own memory cgroup in the v1 hierarchy."""
    mounts = [point for point, options in _mounts("cgroup") if "memory" in options]
    own = _own_cgroup("memory")
    if not mounts or own is None:
        return None
    parent = os.path.join(mounts[0], own.lstrip("/"), _GROUP)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError:
        return None
    return parent
