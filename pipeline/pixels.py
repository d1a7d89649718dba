"""Store images kept in memory between the steps of one worker process.

Within one image, the steps of :class:`desra.pipeline.steps.ImageJob` hand each other arrays in memory; what
is reached by path instead (a store entry a later step or run reads back, a published file the review
page reads) would be decoded again from the PNG just encoded: for small images that is most of the cost
of orchestration.
:func:`write_image` writes a store image and keeps its pixels; :func:`read_pixels` and
:func:`read_mask` return them while they are cached, else read the file.

Entries are found by the file's identity (device and inode), so a hard link of a store file finds its
pixels too; a published copy (``sr/gan/<stem>.png``) finds them once :func:`alias` has named it. A
cached entry is trusted only while the file still has
the size and modification time it had when it was written, so a file replaced or removed on disk is read
again (or fails as it would without the cache). Arrays handed out are read-only. The cache holds at most
``DESRA_PIXEL_CACHE_MB`` megabytes (default 1024; ``0`` turns it off), least recently used first out.
"""

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from desra_core import image as io

__all__ = ["alias", "clear", "read_mask", "read_pixels", "write_image", "write_mask"]


class _Cache:
    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[int, int, str], tuple[tuple[int, int], np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._refs: dict[int, int] = {}  # id(array) → entries holding it: an array's bytes count once
        self._lock = threading.Lock()

    @staticmethod
    def budget() -> int:
        return int(float(os.environ.get("DESRA_PIXEL_CACHE_MB", "1024")) * 2**20)

    def put(self, path: Path, kind: str, array: np.ndarray) -> None:
        budget = self.budget()
        if array.nbytes > budget:
            return
        st = os.stat(path)
        frozen = array.copy()
        frozen.flags.writeable = False
        with self._lock:
            self._add((st.st_dev, st.st_ino, kind), (st.st_size, st.st_mtime_ns), frozen, budget)

    def _add(self, key: tuple[int, int, str], stamp: tuple[int, int], array: np.ndarray, budget: int) -> None:
        self._drop(key)
        self._entries[key] = (stamp, array)
        self._refs[id(array)] = self._refs.get(id(array), 0) + 1
        if self._refs[id(array)] == 1:
            self._bytes += array.nbytes
        while self._bytes > budget:
            self._drop(next(iter(self._entries)))

    def alias(self, source: Path, copy: Path) -> None:
        """Let ``copy`` (a byte-for-byte copy of ``source``) share ``source``'s cached arrays."""
        try:
            src, dst = os.stat(source), os.stat(copy)
        except OSError:
            return
        if src.st_size != dst.st_size:
            return
        with self._lock:
            for kind in ("rgb", "mask"):
                entry = self._entries.get((src.st_dev, src.st_ino, kind))
                if entry is not None and entry[0] == (src.st_size, src.st_mtime_ns):
                    self._add((dst.st_dev, dst.st_ino, kind), (dst.st_size, dst.st_mtime_ns), entry[1],
                              self.budget())

    def get(self, path: Path, kind: str) -> np.ndarray | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, kind)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] != (st.st_size, st.st_mtime_ns):
                self._drop(key)
                return None
            self._entries.move_to_end(key)
        return entry[1]

    def _drop(self, key: tuple[int, int, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._refs[id(entry[1])] -= 1
            if not self._refs[id(entry[1])]:
                del self._refs[id(entry[1])]
                self._bytes -= entry[1].nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._refs.clear()
            self._bytes = 0


_CACHE = _Cache()


def write_image(path: str | Path, pixels: np.ndarray) -> None:
    """:func:`desra_core.image.write_image` for RGB ``uint8``/``uint16`` pixels, which stay cached."""
    io.write_image(path, pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype in (np.uint8, np.uint16):
        _CACHE.put(Path(path), "rgb", pixels)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a ``bool (H, W)`` mask as a 0/255 PNG; it stays cached."""
    io.write_image(path, mask)
    _CACHE.put(Path(path), "mask", np.asarray(mask, dtype=bool))


def read_pixels(path: str | Path) -> np.ndarray:
    """RGB ``uint8``/``uint16`` pixels of a store image (``read_image(path).pixels``), read-only."""
    cached = _CACHE.get(Path(path), "rgb")
    return cached if cached is not None else io.read_image(path).pixels


def read_mask(path: str | Path) -> np.ndarray:
    """``bool (H, W)`` mask (:func:`desra_core.image.read_mask`), read-only when cached."""
    cached = _CACHE.get(Path(path), "mask")
    return cached if cached is not None else io.read_mask(path)


def alias(source: str | Path, copy: str | Path) -> None:
    """``copy`` was just copied from the store file ``source``: serve its pixels from ``source``'s cached
    arrays too (one array, counted once against the budget). Nothing happens when ``source`` is not
    cached or either file has changed since."""
    _CACHE.alias(Path(source), Path(copy))


def clear() -> None:
    """Forget every cached image (tests; a worker that wants its memory back)."""
    _CACHE.clear()
