"""How a command ends when something goes wrong: one line on stderr, and the details in a log file.

A user error (a bad config, a missing or unreadable file, a full disk, an unknown version, a refused
query: `USER_ERRORS`) ends the command with exit status 2; anything else is a fault of ours and ends
it with 1. Either way stderr gets one line, `dataflux <command>: error: <what> (details: <log>)`,
with long values cut, and the full traceback goes to `<home>/logs/dataflux-<command>-<time>-<pid>.log`.
Prefect's own error records (a failed task run prints its traceback, once per partition) go to that
file too, not to the console; its warnings still show.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

from dataflux.home import dataflux_home
from dataflux.storage.catalog import CatalogError
from dataflux.storage.shards import ShardError
from dataflux.yaml_io import cut

USER_ERRORS = (ValueError, LookupError, OSError, CatalogError, ShardError, duckdb.Error)
MAX_MESSAGE = 600  # characters of the one line; a 100 MB bad value is cut to this


def log_path(command: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return dataflux_home() / "logs" / f"dataflux-{command}-{stamp}-{os.getpid()}.log"


def one_line(exc: BaseException) -> str:
    """The exception's message on one line, cut to MAX_MESSAGE characters (a KeyError's key without quotes)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = "".join(line + ("" if i == len(lines) - 1 else " " if line.endswith(":") else "; ")
                   for i, line in enumerate(lines)) or type(exc).__name__
    return cut(text, MAX_MESSAGE)


class _PrefectErrorsToFile(logging.Filter):
    """On a console handler: drop Prefect's error records (they carry a traceback per failed task run);
    the log file's handler keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith("prefect"))


def divert_prefect_errors(path: Path) -> logging.Handler | None:
    """Once Prefect has configured logging (it does on import): its error records to `path` (created on the
    first record), not to the console. Returns the file handler, or None when the home is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, delay=True, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    for console in root.handlers:
        if console is not handler and isinstance(console, logging.StreamHandler) \
                and not isinstance(console, logging.FileHandler):
            console.addFilter(_PrefectErrorsToFile())
    return handler


def write_traceback(path: Path, command: str, exc: BaseException) -> str:
    """Append the traceback to `path`; returns how the one line names it (or why it could not be written)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(f"dataflux {command}: {type(exc).__name__}\n")
            f.write("".join(traceback.format_exception(exc)))
        return f"details: {path}"
    except OSError as err:
        return f"no log written: {cut(str(err), 120)}"


def report(command: str, exc: BaseException, path: Path) -> int:
    """Print the one line for `exc`, write its traceback to `path`; returns the exit status (2 or 1)."""
    where = write_traceback(path, command, exc)
    if isinstance(exc, USER_ERRORS):
        print(f"dataflux {command}: error: {one_line(exc)} ({where})", file=sys.stderr)
        return 2
    print(f"dataflux {command}: internal error: {type(exc).__name__}: {one_line(exc)} ({where}; please report "
          "it with that file)", file=sys.stderr)
    return 1


@contextmanager
def prefect_logs_to(path: Path) -> Iterator[None]:
    """For a command that imports Prefect: its error records go to `path` while the command runs."""
    import prefect  # noqa: F401  (configures logging; the command imports it next anyway)

    handler = divert_prefect_errors(path)
    try:
        yield
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
