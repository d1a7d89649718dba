"""Temporary files that a killed writer left in an output root, and the rule that removes them safely.

Every write under an output root goes through a hidden temporary file beside its target that is renamed
into place (``.<name>.<8 hex digits>.tmp<suffix>`` from :func:`desra_core.image.atomic_path`,
``.<name>.<pid>.tmp`` from the fine-tuning checkpoints). A process killed mid-write (SIGKILL, a dead
machine) leaves its temporary file behind; nothing ever reads one, but nothing else would remove it either.

The rule: every process that writes under an output root first calls :func:`attend`, which takes a shared
POSIX lock on ``<root>/.desra/locks/active.lock`` and keeps it until the process exits (the kernel drops it
when the process dies, also by SIGKILL; POSIX locks work across machines on NFS, like the store's claims).
The first time a process attends a root, it asks for the lock exclusively, without waiting: granted means
that no other living process is working there, so every temporary file of desra's naming under the root
belongs to a dead writer and is removed, before this process writes anything itself; then the lock is
turned back into a shared one. When another process holds the lock, only temporary files untouched for
:data:`STALE_AFTER` seconds are removed (no writer holds one open that long between its writes).

The walk lists the whole root once per process (about a second per million files), nothing per image.
"""

import os
import re
import sys
import threading
import time
from pathlib import Path

if sys.platform == "win32":  # not POSIX (Windows is not a target): nothing is swept there
    fcntl = None
else:
    import fcntl

__all__ = ["LOCK_NAME", "STALE_AFTER", "TEMP_NAME", "attend", "sweep"]

LOCK_NAME = Path(".desra") / "locks" / "active.lock"
STALE_AFTER = 24 * 3600.0
# atomic_path's ".<name>.<8 hex>.tmp<suffix>" and the checkpoints' ".<name>.<pid>.tmp"
TEMP_NAME = re.compile(r"\..+\.(?:[0-9a-f]{8}|[0-9]+)\.tmp(?:\.[A-Za-z0-9]+)?")

_HELD: dict[Path, int] = {}  # resolved root → the descriptor that holds this process's lock (never closed:
_GUARD = threading.Lock()    # closing any descriptor of the file would drop the process's POSIX locks)


def sweep(root: str | os.PathLike[str], *, older_than: float | None = None) -> list[Path]:
    """Remove the temporary files of desra's naming under ``root`` (``.desra/locks`` is skipped); with
    ``older_than`` (seconds), only those not modified for that long. Returns what was removed.

    Only for a caller that knows their writers are dead: :func:`attend` decides that."""
    removed = []
    now = time.time()
    locks = Path(root) / ".desra" / "locks"
    for folder, dirs, files in os.walk(root):
        if Path(folder) == locks:
            dirs.clear()
            continue
        for name in files:
            if not TEMP_NAME.fullmatch(name):
                continue
            path = Path(folder) / name
            try:
                if older_than is not None and now - path.stat().st_mtime < older_than:
                    continue
                path.unlink()
            except FileNotFoundError:  # renamed into place or removed meanwhile
                continue
            removed.append(path)
    return removed


def attend(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Record that this process works in ``output_dir`` (which must exist) until it exits; the first time,
    remove the temporary files that dead writers left there (see the module docstring). Returns them.

    Raises:
        OSError: the lock file cannot be created or locked.
    """
    if fcntl is None:
        return []
    root = Path(os.path.realpath(output_dir))
    with _GUARD:
        if root in _HELD:
            return []
        lock = root / LOCK_NAME
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except OSError:  # EAGAIN/EACCES: another process works here
                alone = False
            removed = sweep(root, older_than=None if alone else STALE_AFTER)
            fcntl.lockf(fd, fcntl.LOCK_SH)  # a conversion: atomic for POSIX locks
        except BaseException:
            os.close(fd)
            raise
        _HELD[root] = fd
    return removed
