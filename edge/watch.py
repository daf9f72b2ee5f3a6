# Config file watching: tells the supervisor "something under the config paths changed", debounced.
#
# Rules:
# - Directories are watched, never file inodes: editors replace files by rename and Kubernetes ConfigMap
#   mounts swap a `..data` symlink to a fresh `..<timestamp>` directory, so an inode watch would go deaf after
#   the first update.
#     * a config directory is watched recursively; a change below it counts when it is to a file the loader reads
#       (`.yaml`, `.yml`, `.json`), to a directory, or to something gone that could have been a directory (no
#       suffix); never under hidden names (`.x.tmp`, `.git/…`: the loader skips them too, but not the
#       `..`-prefixed ConfigMap entries); watchfiles' DefaultFilter drops editor droppings such as `x~`. So a
#       log or any other file written beside the config never triggers a reload;
#     * a config file is watched through its directory, without subdirectories, and only changes to that
#       file's name or to `..`-prefixed entries (the ConfigMap machinery) count;
#     * a config path that is itself a symlink also gets its link's directory watched, for the link's name.
# - One burst of changes is one notification: watchfiles groups changes until WATCH_STEP_MS pass without a new
#   one, and never for longer than WATCH_DEBOUNCE_MS, so an edit is reported within tens of milliseconds and a
#   stream of edits (one every 100 ms) is reported edit by edit.
# - The watcher only reports. Whether the change makes a valid table is the reload's business; a notification
#   for a file the loader ignores costs one compile that publishes nothing new.
# - task_status.started() is called once the OS watches are installed, so a change made after start() returns
#   is never missed.
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio
import watchfiles

from edge.loader import CONFIG_SUFFIXES

WATCH_DEBOUNCE_MS = 30  # longest a burst of changes is grouped before it is reported
WATCH_STEP_MS = 10  # a burst ends after this long without a new change
WATCH_TIMEOUT_MS = 100  # the watch thread returns this often, so cancellation and start-up are prompt
WATCH_RETRY_S = 1.0  # after the watch itself failed (a watched directory vanished), try again this much later

CONFIGMAP_PREFIX = ".."


@dataclass(frozen=True)
class WatchPlan:
    recursive: tuple[str, ...] = ()  # directories watched with everything below them
    flat: tuple[str, ...] = ()  # directories watched without subdirectories …
    names: dict[str, frozenset[str]] = field(default_factory=dict)  # … for these entry names only

    def is_relevant(self, path: str) -> bool:
        for root in self.recursive:
            if path == root:
                return True
            prefix = root.rstrip(os.sep) + os.sep
            if path.startswith(prefix):
                # Hidden entries are skipped by the loader (editor temp files, .git); `..` ones are ConfigMap's.
                parts = path[len(prefix) :].split(os.sep)
                if any(p.startswith(".") and not p.startswith(CONFIGMAP_PREFIX) for p in parts):
                    return False
                return _loader_reads(path)
        directory, name = os.path.split(path)
        names = self.names.get(directory)
        if names is None:
            return False
        return name in names or name.startswith(CONFIGMAP_PREFIX)


def _loader_reads(path: str) -> bool:
    """Could this path, below a watched directory, be (or have held) something the loader reads?"""
    name = os.path.basename(path)
    if name.startswith(CONFIGMAP_PREFIX) or name.endswith(CONFIG_SUFFIXES):
        return True
    if os.path.isdir(path):
        return True
    return not os.path.lexists(path) and "." not in name  # a directory that went away


def plan_watch(paths: Iterable[str]) -> WatchPlan:
    """Which directories to watch, and how, for these config paths (missing paths are watched via their parent)."""
    recursive: list[str] = []
    names: dict[str, set[str]] = {}

    def watch_name(path: str) -> None:
        directory, name = os.path.split(path)
        names.setdefault(directory or os.curdir, set()).add(name)

    for path in paths:
        path = os.path.abspath(path)
        if os.path.isdir(path):
            recursive.append(path)
            if os.path.islink(path):
                watch_name(path)
        else:
            watch_name(path)
            real = os.path.realpath(path)
            if real != path:
                watch_name(real)
    recursive = _outermost(recursive)
    plan_recursive = tuple(recursive)
    # A flat directory already inside a recursive root needs no watch of its own.
    flat = {d: frozenset(n) for d, n in names.items() if not WatchPlan(recursive=plan_recursive).is_relevant(d)}
    return WatchPlan(recursive=plan_recursive, flat=tuple(sorted(flat)), names=flat)


def _outermost(directories: list[str]) -> list[str]:
    result: list[str] = []
    for directory in sorted(set(directories)):
        if not any(directory.startswith(root.rstrip(os.sep) + os.sep) for root in result):
            result.append(directory)
    return result


def _stderr_log(line: str) -> None:
    print(f"edge: {line}", file=sys.stderr, flush=True)


async def serve_config_watch(
    paths: Iterable[str],
    on_change: Callable[[set[str]], None],
    *,
    debounce_ms: int = WATCH_DEBOUNCE_MS,
    step_ms: int = WATCH_STEP_MS,
    log: Callable[[str], None] = _stderr_log,
    task_status: trio.TaskStatus[WatchPlan] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call on_change(changed paths) once per burst of relevant changes; never returns. Started = watching."""
    plan = plan_watch(paths)
    async with trio.open_nursery() as nursery:
        for roots, recursive in ((plan.recursive, True), (plan.flat, False)):
            if roots:
                await nursery.start(_serve_roots, plan, roots, recursive, on_change, debounce_ms, step_ms, log)
        task_status.started(plan)
        if not (plan.recursive or plan.flat):
            await trio.sleep_forever()


async def _serve_roots(
    plan: WatchPlan,
    roots: tuple[str, ...],
    recursive: bool,
    on_change: Callable[[set[str]], None],
    debounce_ms: int,
    step_ms: int,
    log: Callable[[str], None],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    default_filter = watchfiles.DefaultFilter()

    def relevant(change: watchfiles.Change, path: str) -> bool:
        return plan.is_relevant(path) and default_filter(change, path)

    started = False
    while True:
        existing = [root for root in roots if os.path.isdir(root)]
        if not existing:
            if not started:
                task_status.started()
                started = True
            await trio.sleep(WATCH_RETRY_S)
            continue
        stop = threading.Event()  # read by the watch thread: it returns 'stop' at its next step
        try:
            async for changes in watchfiles.awatch(
                *existing,
                watch_filter=relevant,
                debounce=debounce_ms,
                step=step_ms,
                stop_event=stop,  # type: ignore[arg-type]  # anything with is_set() will do
                rust_timeout=WATCH_TIMEOUT_MS,
                yield_on_timeout=True,
                recursive=recursive,
            ):
                if not started:  # the first yield, even an empty one, proves the OS watches are in place
                    task_status.started()
                    started = True
                if changes:
                    on_change({path for _change, path in changes})
                if len(existing) != len(roots) and any(os.path.isdir(r) for r in roots if r not in existing):
                    break  # a missing directory appeared: watch it too
        except OSError as exc:
            log(f"config watch on {', '.join(existing)} failed: {exc}; retrying in {WATCH_RETRY_S:g} s")
            if not started:
                task_status.started()
                started = True
            await trio.sleep(WATCH_RETRY_S)
        finally:
            stop.set()
