"""Source confinement: an audio path a source yields must lie under the source's root.

A manifest row, a dataset column or a symlink in a folder can name any file the process may
read (`../../etc/passwd`, `/home/me/.ssh/id_rsa`, `x.wav -> /etc/shadow`). Each path is resolved
first (`..` and every symlink, of the file and of its folders) and compared with the resolved
root; a path outside becomes an `outside_root` reject and the file is never opened. Resolving
reads only directory entries and link targets, never the file's content.

`allow_outside_root: true` on a source turns the check off for users who mean it.
"""

from __future__ import annotations

import os

from dataflux.records import Reject

OUTSIDE_ROOT = "outside_root"


def resolved_root(root: str | os.PathLike[str]) -> str:
    """The root as the check sees it: absolute, symlinks resolved."""
    return os.path.realpath(root)


def is_under(path: str | os.PathLike[str], root: str | tuple[str, ...]) -> bool:
    """Whether `path`, with symlinks resolved, is a root or lies below one (roots already resolved)."""
    real = os.path.realpath(path)
    roots = (root,) if isinstance(root, str) else root
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def outside_root_reject(path: str | os.PathLike[str], root: str | tuple[str, ...], *, source: str, key: str,
                        where: str, allowed: bool = False) -> Reject | None:
    """A Reject naming `path` when it resolves outside `root` (resolved; or any of several) and
    `allowed` is off, else None."""
    if allowed or is_under(path, root):
        return None
    named = root if isinstance(root, str) else " or ".join(root)
    return Reject(source, key, "source", OUTSIDE_ROOT,
                  f"{where}: audio path {os.fspath(path)!r} resolves to {os.path.realpath(path)!r}, outside the "
                  f"source root {named!r}; move the file under the root, or set allow_outside_root: true "
                  f"on the source if you mean it")
