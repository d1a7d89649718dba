"""A content-addressed store of step outputs under the run's output root.

A step's output lives at ``<root>/.desra/store/<step>/<key[:2]>/<key><suffix>``, where ``key`` is the
sha256 of everything the output depends on: the input files' digests, the model files' digests, the
step's configuration and its code version. A key that exists is a finished result (files are written
atomically, so a crash never leaves a half-written entry under a key); re-running an unchanged drop
finds every key and does no model work, and changing one input re-runs exactly what depends on it.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from desra_core.image import atomic_path, atomic_write_bytes

__all__ = ["Store", "file_sha256", "step_key"]

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    p = Path(path)
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def step_key(step: str, version: str, **inputs: Any) -> str:
    """The store key of a step: sha256 of its name, code version and JSON-serialisable inputs."""
    blob = json.dumps({"step": step, "version": version, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Store:
    """Content-addressed outputs under ``root/.desra/store``."""

    def __init__(self, root: str | Path) -> None:
        self.base = Path(root) / ".desra" / "store"

    def path(self, step: str, key: str, suffix: str) -> Path:
        return self.base / step / key[:2] / f"{key}{suffix}"

    def has(self, step: str, key: str, suffix: str) -> bool:
        return self.path(step, key, suffix).is_file()

    def atomic(self, step: str, key: str, suffix: str):
        """Context manager yielding a temporary path that becomes the entry on success."""
        target = self.path(step, key, suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_path(target)

    def write_json(self, step: str, key: str, record: dict) -> Path:
        target = self.path(step, key, ".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, json.dumps(record, sort_keys=True, default=str).encode())
        return target

    def read_json(self, step: str, key: str) -> dict | None:
        path = self.path(step, key, ".json")
        if not path.is_file():
            return None
        return json.loads(path.read_text())
