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

With a bucket (``remote``: the output root is a URL, see :mod:`desra.pipeline.remote`) the local root is
this worker's read-through copy: :meth:`Store.has` and :meth:`Store.read_json` fetch an entry that another
worker stored, detection records are written to the bucket too, image entries are referenced there once
published (:meth:`Store.refer`), and claims are leased objects in the bucket instead of ``flock`` files,
renewed while held and taken over by another worker when their holder died.
"""

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from desra.pipeline.objects import Bucket, Claims
from desra_core.errors import ConfigError, MissingObjectError, StorageError
from desra_core.image import atomic_write_bytes

if sys.platform == "win32":  # not POSIX (Windows is not a target): claims do not exclude anything there
    fcntl = None
else:
    import fcntl

__all__ = ["LEASE_VARIABLE", "Store", "claim_lease", "file_sha256", "step_key"]

LEASE_VARIABLE = "DESRA_CLAIM_LEASE_S"  # how long a bucket claim outlives a holder that stopped renewing it
_DEFAULT_LEASE_S = 60.0


def claim_lease(environ: Mapping[str, str] | None = None) -> float:
    """The lease of a claim in a bucket, in seconds (``DESRA_CLAIM_LEASE_S``, default 60): a worker killed while
    it held a claim delays that entry by at most this long.

    Raises:
        ConfigError: not a number of seconds between 1 and 3600.
    """
    value = (os.environ if environ is None else environ).get(LEASE_VARIABLE, "").strip()
    if not value:
        return _DEFAULT_LEASE_S
    try:
        lease = float(value)
    except ValueError:
        lease = -1.0
    if not 1.0 <= lease <= 3600.0:
        raise ConfigError(f"expected {LEASE_VARIABLE} to be seconds between 1 and 3600, got {value!r}")
    return lease

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
    """Content-addressed outputs under ``root/.desra/store``; with ``remote``, shared through that bucket
    (the output root's URL), ``root`` being this worker's copy of it, and claims leased for ``owner``."""

    def __init__(self, root: str | Path, remote: Bucket | None = None, *, owner: str | None = None) -> None:
        self.root = Path(root)
        self.base = self.root / ".desra" / "store"
        self.locks = self.root / ".desra" / "locks"
        self.remote = remote
        self.owner = owner
        self.first = False  # the last claim in a bucket was the first ever taken on its entry

    def path(self, step: str, key: str, suffix: str) -> Path:
        return self.base / step / key[:2] / f"{key}{suffix}"

    @staticmethod
    def remote_key(step: str, key: str, suffix: str) -> str:
        """The entry's key in the bucket (an image entry's reference adds ``.ref``)."""
        return f".desra/store/{step}/{key[:2]}/{key}{suffix}"

    def has(self, step: str, key: str, suffix: str) -> bool:
        """Whether the entry exists: in this worker's copy, or in the bucket (then fetched into the copy)."""
        return self.path(step, key, suffix).is_file() or self._fetch(step, key, suffix)

    def has_after_claim(self, step: str, key: str, suffix: str, *, first: bool | None = None) -> bool:
        """:meth:`has`, for a holder that has just taken the entry's claim: without asking the bucket when that
        claim was the first ever taken on the entry (every writer claims before computing, so nobody has).
        ``first``: that, when the caller knows it otherwise (default: :attr:`first`)."""
        first = self.first if first is None else first
        return self.path(step, key, suffix).is_file() or (not first and self._fetch(step, key, suffix))

    def _fetch(self, step: str, key: str, suffix: str) -> bool:
        """Copy an entry from the bucket into the local root; ``False`` when the bucket has none, or its
        reference names an object whose bytes have changed since (published again from other keys)."""
        if self.remote is None:
            return False
        name = self.remote_key(step, key, suffix)
        try:
            if suffix == ".json":
                data = self.remote.read(name)
            else:
                ref = json.loads(self.remote.read(name + ".ref"))
                data = self.remote.read(str(ref["object"]))
                if hashlib.sha256(data).hexdigest() != ref["sha256"]:
                    return False
        except MissingObjectError:
            return False
        except (ValueError, KeyError, TypeError):  # not a reference of this module: as good as absent
            return False
        atomic_write_bytes(self.path(step, key, suffix), data)
        return True

    def refer(self, step: str, key: str, suffix: str, obj: str, sha256: str) -> None:
        """Record in the bucket that the entry's bytes are the published object ``obj`` (its digest
        ``sha256``), so they are stored once; nothing without a bucket."""
        if self.remote is not None:
            self.remote.write(self.remote_key(step, key, suffix) + ".ref",
                              json.dumps({"object": obj, "sha256": sha256}, sort_keys=True).encode())

    def write_json(self, step: str, key: str, record: Mapping[str, Any]) -> Path:
        target = self.path(step, key, ".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(record, sort_keys=True, default=str).encode()
        atomic_write_bytes(target, data)
        if self.remote is not None:
            self.remote.write(self.remote_key(step, key, ".json"), data)
        return target

    def read_json(self, step: str, key: str) -> dict[str, Any] | None:
        path = self.path(step, key, ".json")
        if not path.is_file() and not self._fetch(step, key, ".json"):
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
        if self.remote is not None:
            with self._bucket_claim(step, key, blocking=blocking) as held:
                yield held
            return
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

    @contextlib.contextmanager
    def _bucket_claim(self, step: str, key: str, *, blocking: bool) -> Iterator[bool]:
        """:meth:`claim` through the bucket: a leased claim object, renewed by a thread while the block runs;
        a blocking claim polls until the holder releases it or its lease runs out."""
        assert self.remote is not None
        self.lock_path(step, key)  # the same check of step and key
        if self.owner is None:
            raise ConfigError("expected a claim owner for a store in a bucket, got none")
        lease = claim_lease()
        claims = Claims(self.remote, ".desra/claims", self.owner, lease)
        name = f"{step}/{key}"
        self.first = claims.create(name)
        while not self.first and not claims.claim(name):
            if not blocking:
                yield False
                return
            time.sleep(min(1.0, lease / 10))
        stop = threading.Event()

        def keep() -> None:
            while not stop.wait(lease / 3):
                try:
                    if not claims.renew(name):
                        return
                except StorageError:  # the next renewal tries again; the lease covers two misses
                    continue

        renewer = threading.Thread(target=keep, name=f"desra-claim-{key[:8]}", daemon=True)
        renewer.start()
        try:
            yield True
        finally:
            stop.set()
            renewer.join()
            with contextlib.suppress(StorageError):  # unreleased, the claim ends with its lease
                claims.release(name)
