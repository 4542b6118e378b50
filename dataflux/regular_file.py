"""Only regular files are opened: a FIFO, socket or device is named and refused, never read.

Opening a FIFO blocks until a writer appears (a run that hangs and ignores SIGTERM), and
`/dev/zero` or `/dev/urandom` never reach end of file (a read that runs until memory is gone).
Every path that comes from a user's data (a manifest, a row's audio file, a folder listing, the
config) is `stat`-ed first; only a regular file, after symlinks, goes on.
"""

from __future__ import annotations

import os
import stat

NOT_REGULAR = "not_regular_file"  # the reject reason

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def file_kind(mode: int) -> str:
    """What a `st_mode` is, in words (`a FIFO (named pipe)`, `a regular file`, ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def not_regular(path: str | os.PathLike[str]) -> str | None:
    """Why `path` must not be opened (`... is a FIFO (named pipe), not a regular file`), or None when
    it is a regular file. A path that does not exist is None too: opening it reports that itself."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:  # an embedded NUL byte
        return f"{os.fspath(path)!r} holds a NUL byte, which no file name can"
    if stat.S_ISREG(mode):
        return None
    return f"{os.fspath(path)} is {file_kind(mode)}, not a regular file"


def require_regular(path: str | os.PathLike[str], *, what: str) -> None:
    """Raise ValueError naming `what` (e.g. `source 'x': manifest`) unless `path` is a regular file."""
    problem = not_regular(path)
    if problem is not None:
        raise ValueError(f"{what}: {problem}; point it at a regular file")
