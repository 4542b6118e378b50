"""One writer per catalog: an OS file lock next to the catalog, held for a run's whole life.

DuckDB already lets one process at a time *open* the catalog for writing, but a run opens it only
for milliseconds per commit; between commits another run could process the same draft and write
over its files. The writer lock closes that gap: a run holds `fcntl.flock` on `<catalog>.lock`
from its start to its end. The kernel drops the lock when the process dies (SIGKILL included), so
a crashed run never leaves a stale lock behind, and the next run knows that any run the catalog
still calls `running` is dead.

The lock file also says who holds it (pid, run id, start time, host) so a refused run can name
its holder. Readers (stats, versions, sql, verify, report) never take the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from dataflux.storage.catalog import CatalogError


class CatalogBusy(CatalogError):
    """Another process holds the catalog's writer lock."""


def lock_path(catalog_path: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(catalog_path) + ".lock")


def _key(catalog_path: str | os.PathLike[str]) -> str:
    return os.path.realpath(lock_path(catalog_path))


# Locks this process holds: lock-file path -> (run id, open file). A run's flow may ask again for
# the lock its caller already took for the same run id; a different run id in this process is refused
# like any other process would be (flock conflicts between two open files of one process too).
_HELD: dict[str, tuple[str, object]] = {}
_HELD_GUARD = threading.Lock()


def describe_holder(catalog_path: str | os.PathLike[str]) -> str:
    """Who holds the writer lock, from what the holder wrote into the lock file."""
    try:
        info = json.loads(lock_path(catalog_path).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a process that has not said who it is yet"
    alive = _pid_alive(int(info.get("pid", 0)))
    return (f"pid {info.get('pid')} on {info.get('host', '?')} (run {info.get('run_id', '?')}, started "
            f"{info.get('started_at', '?')}{'' if alive else ', process gone: a child it started still holds the lock'})")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_lock_held(catalog_path: str | os.PathLike[str]) -> bool:
    """Whether some process (this one included) holds the catalog's writer lock right now."""
    path = lock_path(catalog_path)
    if _key(catalog_path) in _HELD:
        return True
    if not path.exists():
        return False
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _try_lock(f) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _say_who(f, run_id: str) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    f.seek(0)
    f.truncate()
    f.write(json.dumps(info).encode())
    f.flush()


@contextmanager
def writer_lock(catalog_path: str | os.PathLike[str], run_id: str, *, wait: bool = False,
                timeout_s: float | None = None, notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the catalog's writer lock for the `with` block.

    Refuses with `CatalogBusy` (naming the holder) when another run holds it, or with `wait=True`
    polls until it is free, telling `notify` once, and gives up after `timeout_s` (None: no limit).
    Re-entering with the run id that already holds it in this process is a no-op.
    """
    key = _key(catalog_path)
    with _HELD_GUARD:
        held = _HELD.get(key)
    if held is not None and held[0] == run_id:
        yield
        return
    path = lock_path(catalog_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+b")
    try:
        _acquire(f, catalog_path, wait=wait, timeout_s=timeout_s, notify=notify)
        _say_who(f, run_id)
        with _HELD_GUARD:
            _HELD[key] = (run_id, f)
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()


def _acquire(f, catalog_path, *, wait: bool, timeout_s: float | None, notify) -> None:
    if _try_lock(f):
        return
    holder = describe_holder(catalog_path)
    if not wait:
        raise CatalogBusy(f"{catalog_path}: another run is writing this catalog: {holder}. Wait for it to finish "
                          "(rerun with --wait), or stop it; reading commands (stats, versions, sql, verify) "
                          "work meanwhile")
    if notify is not None:
        notify(f"waiting for the run writing {catalog_path} to finish: {holder}")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = 0.05
    while not _try_lock(f):
        if deadline is not None and time.monotonic() > deadline:
            raise CatalogBusy(f"{catalog_path}: still locked after waiting {timeout_s:g} s by "
                              f"{describe_holder(catalog_path)}; try again later or raise --wait-timeout")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
