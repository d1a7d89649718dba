"""A content-addressed store of step outputs under the run's output root.

A step's output lives at ``<root>/.desra/store/<step>/<key[:2]>/<key><suffix>``, where ``key`` is the
sha256 of everything the output depends on: the input files' digests, the model files' digests, the
step's configuration and its code version. A key that exists is a finished result (files are written
atomically, so a crash never leaves a half-written entry under a key); re-running an unchanged drop
finds every key and does no model work, and changing one input re-runs exactly what depends on it.

Two runs on one output root coordinate through claims: :meth:`Store.claim` holds an exclusive
``flock`` on ``<root>/.desra/locks/<step>/<key>.lock`` while one of them computes an entry, so the
other waits for it (or, non-blocking, defers that entry and comes back to it later) instead of
computing it twice. The kernel drops the lock when its holder dies, so a killed run leaves no stale
claim. Lock files are empty and are never deleted (deleting one while another process waits on it
would let two holders in).
"""

import contextlib
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from desra_core.image import atomic_write_bytes

if sys.platform == "win32":  # not POSIX (Windows is not a target): claims do not exclude anything there
    fcntl = None
else:
    import fcntl

__all__ = ["Store", "file_sha256", "step_key"]

def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read from one open of it. Nothing is remembered: a file rewritten with the same
    size and mtime gets its new digest. (Drop images are hashed from the very bytes that are decoded,
    :meth:`desra_core.folder.Folder.read`, not here.)"""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def step_key(step: str, version: str, **inputs: Any) -> str:
    """The store key of a step: sha256 of its name, code version and JSON-serialisable inputs."""
    blob = json.dumps({"step": step, "version": version, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Store:
    """Content-addressed outputs under ``root/.desra/store``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.base = self.root / ".desra" / "store"
        self.locks = self.root / ".desra" / "locks"

    def path(self, step: str, key: str, suffix: str) -> Path:
        return self.base / step / key[:2] / f"{key}{suffix}"

    def has(self, step: str, key: str, suffix: str) -> bool:
        return self.path(step, key, suffix).is_file()

    def write_json(self, step: str, key: str, record: Mapping[str, Any]) -> Path:
        target = self.path(step, key, ".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, json.dumps(record, sort_keys=True, default=str).encode())
        return target

    def read_json(self, step: str, key: str) -> dict[str, Any] | None:
        path = self.path(step, key, ".json")
        if not path.is_file():
            return None
        record: dict[str, Any] = json.loads(path.read_text())
        return record

    def lock_path(self, step: str, key: str) -> Path:
        """The lock file behind :meth:`claim` (``<root>/.desra/locks/<step>/<key>.lock``)."""
        if not step or not key or any(sep in step + key for sep in ("/", "\\", "\0")) or ".." in (step, key):
            raise ValueError(f"expected a step and key without path separators, got {step!r}, {key!r}")
        return self.locks / step / f"{key}.lock"

    @contextlib.contextmanager
    def claim(self, step: str, key: str, *, blocking: bool) -> Iterator[bool]:
        """Hold the exclusive claim on one entry for the ``with`` block; yields whether it is held.

        ``blocking=True`` waits until no other holder is left and always yields ``True``;
        ``blocking=False`` yields ``False`` at once when another process (or another ``claim`` in this
        process) holds it, so the caller can defer the entry and claim it, blocking, later. A holder
        should check :meth:`has` again after getting the claim: the previous holder may have finished
        the entry. The claim ends with the block, or when the holding process dies.
        """
        path = self.lock_path(step, key)
        if fcntl is None:
            warnings.warn("fcntl is not available: store claims do not exclude other runs on this platform",
                          RuntimeWarning, stacklevel=3)
            yield True
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                held = False
            if not held:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
