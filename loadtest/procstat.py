# Process accounting from /proc, for CPU-per-request and memory figures.
#
# /proc/<pid>/stat: "pid (comm) state ppid ... utime stime ... starttime ...". comm may hold spaces and
# parentheses, so fields are counted after the LAST ')': index 0 = state (field 3), 1 = ppid (4),
# 11 = utime (14), 12 = stime (15), 19 = starttime (22). utime/stime are in clock ticks (SC_CLK_TCK),
# summed over all threads of the process. A process is identified by (pid, starttime) so that a
# recycled PID is never mistaken for the process measured before.
# A process tree is found through /proc/<pid>/task/<tid>/children when the kernel has it
# (CONFIG_PROC_CHILDREN), otherwise by one scan of every /proc/<pid>/stat for parent links.
# CPU used by a process that exits inside the measured window is lost (its ticks go to the parent's
# cutime only when reaped); the runner flags windows where the tree changed.
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    starttime: int
    cpu_ticks: int  # utime + stime
    sys_ticks: int = 0  # stime alone: time in the kernel (system calls, and the network stack they run)


def parse_stat(text: str) -> ProcStat:
    pid_text, _, rest = text.partition(" (")
    fields = rest.rpartition(")")[2].split()
    return ProcStat(
        pid=int(pid_text),
        ppid=int(fields[1]),
        starttime=int(fields[19]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        sys_ticks=int(fields[12]),
    )


def read_stat(pid: int) -> ProcStat | None:
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def _children_from_task_files(pid: int) -> list[int] | None:
    task_dir = PROC / str(pid) / "task"
    children: list[int] = []
    try:
        tasks = list(task_dir.iterdir())
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            children.extend(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:
            if task.exists():
                return None  # the kernel has no children files: scan instead
    return children


def _parent_links() -> dict[int, list[int]]:
    links: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                links.setdefault(stat.ppid, []).append(stat.pid)
    return links


def process_tree(root: int) -> list[int]:
    """root and all its live descendants, root first."""
    if read_stat(root) is None:
        return []
    tree = [root]
    links: dict[int, list[int]] | None = None
    i = 0
    while i < len(tree):
        pid = tree[i]
        children = None if links is not None else _children_from_task_files(pid)
        if children is None:
            if links is None:
                links = _parent_links()
            children = links.get(pid, [])
        tree.extend(sorted(c for c in children if c not in tree))
        i += 1
    return tree


def cpu_snapshot(pids: list[int], kernel_only: bool = False) -> dict[tuple[int, int], int]:
    """{(pid, starttime): cpu ticks (user + system, or system alone)} for the given processes still alive."""
    snapshot = {}
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            snapshot[(stat.pid, stat.starttime)] = stat.sys_ticks if kernel_only else stat.cpu_ticks
    return snapshot


def cpu_delta_s(before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]) -> float:
    """CPU seconds used between two snapshots; a process born in between counts from zero."""
    ticks = sum(t - before.get(key, 0) for key, t in after.items())
    return ticks / CLOCK_TICKS_PER_S


def rss_kib(pid: int) -> int | None:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return 0  # a zombie or kernel thread has no VmRSS line


def describe(pid: int) -> str:
    """The command line, up to 200 characters."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200]
