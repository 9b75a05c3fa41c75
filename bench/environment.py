"""The machine, the filesystem under the scratch folder, and every version involved."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path

__all__ = ["machine", "versions"]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def _mount_of(path: Path) -> tuple[str, str, str, str]:
    """(mount point, device, filesystem type, options) of the mount holding ``path``."""
    best = ("?", "?", "?", "?")
    resolved = str(path.resolve())
    for line in _read("/proc/self/mounts").splitlines():
        device, point, fstype, options, *_ = line.split()
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0] if best[0] != "?" else ""):
            best = (point, device, fstype, options)
    return best


def _disk(device: str) -> str:
    """The block device's model and whether it rotates, where sysfs says."""
    name = Path(device).name
    base = Path("/sys/class/block") / name
    if not base.exists():
        return ""
    parent = base.resolve().parent if (base / "partition").exists() else base.resolve()
    rotational = _read(f"{parent}/queue/rotational").strip()
    model = _read(f"{parent}/device/model").strip()
    kind = {"0": "non-rotational", "1": "rotational"}.get(rotational, "")
    return ", ".join(part for part in (model, kind) if part)


def machine(scratch: Path, project: Path) -> dict[str, str]:
    point, device, fstype, options = _mount_of(scratch)
    same = os.stat(scratch).st_dev == os.stat(project).st_dev
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} logical (affinity: {len(os.sched_getaffinity(0))})",
        "memory": _memory(),
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "scratch folder": f"{scratch} ({'same filesystem as the project' if same else 'NOT the project filesystem'})",
        "filesystem": f"{fstype} on {device} mounted at {point} ({options})",
        "disk": _disk(device) or "unknown",
        "load average at start": load,
    }


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        # Only the library's own files decide what was measured (the bench's and the
        # report's are expected to change while a run is prepared).
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "connectome_storage"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{', with uncommitted changes to the library' if dirty else ', library files as committed'}"


def versions(redis_server: str) -> dict[str, str]:
    return {
        "connectome-storage": f"{_version('connectome-storage')} at commit {_git()}",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "orjson": _version("orjson"),
        "aiosqlite": _version("aiosqlite"),
        "SQLite library": sqlite3.sqlite_version,
        "redis-py": _version("redis"),
        "redis-server": redis_server,
        "py-key-value-aio (peer)": _version("py-key-value-aio"),
        "openai-agents (peer)": _version("openai-agents"),
        "diskcache (peer)": _version("diskcache"),
    }
