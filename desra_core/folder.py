"""A folder opened once, and its files read through that descriptor: one open, one read, one hash per file.

Whoever can write a drop can swap a file for a symbolic link, or rewrite its bytes, between two opens of
it. So a drop is opened once (:class:`Folder`: a directory descriptor, whose real path is read from the
descriptor itself), its entries are listed and opened relative to that descriptor, and each file is opened
once, without following a link (``O_NOFOLLOW``), checked with ``fstat`` (a regular file, at most
``max_bytes``) and read whole: the bytes that are hashed (:attr:`FileBytes.sha256`) are the bytes that
are decoded. ``DESRA_MAX_INPUT_MB`` bounds what one read may hold (:func:`max_input_bytes`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import InputImageError
from .limits import positive_setting

__all__ = ["DEFAULT_MAX_INPUT_MB", "MAX_INPUT_VARIABLE", "FileBytes", "Folder", "FolderFile", "file_kind",
           "max_input_bytes", "read_bounded"]

MAX_INPUT_VARIABLE = "DESRA_MAX_INPUT_MB"
DEFAULT_MAX_INPUT_MB: float = 64.0
"""Default limit on the size of one input file (a drop image or a label map), in MiB, checked with
``fstat`` before anything is read. An input's x4 result is limited to 80 megapixels
(``DESRA_MAX_OUTPUT_MPIX``), i.e. an input of 5 megapixels: 30 MB even as an uncompressed 16-bit RGB TIFF."""

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# A FIFO opened for reading would block until a writer comes: open without waiting, then fstat refuses it.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def max_input_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The size limit of one input file in bytes: ``DESRA_MAX_INPUT_MB`` (MiB) from ``environ`` (default:
    this process's environment) when set and not empty, else :data:`DEFAULT_MAX_INPUT_MB`.

    Raises:
        ConfigError: a value that is not a positive number.
    """
    mib = positive_setting(MAX_INPUT_VARIABLE, "MiB", environ)
    return max(1, int((DEFAULT_MAX_INPUT_MB if mib is None else mib) * 2**20))


def _shown(path: str | os.PathLike[str] | bytes) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def file_kind(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device or other special file"


@dataclass(frozen=True, slots=True)
class FileBytes:
    """A file's whole content as read once: ``data``, its ``sha256`` (hex) and ``shown`` (printable path);
    ``etag``: for an object in a bucket, the ETag of exactly those bytes (the GET's answer)."""

    data: bytes
    sha256: str
    shown: str
    etag: str | None = None


def _too_big(max_bytes: int, got: str) -> str:
    return f"expected an input file of at most {max_bytes / 2**20:g} MiB ({MAX_INPUT_VARIABLE}), got {got}"


def read_bounded(fd: int, shown: str, max_bytes: int | None,
                 error: type[InputImageError] = InputImageError) -> bytes:
    """Read an open file descriptor whole, after checking with ``fstat`` that it is a regular file of at
    most ``max_bytes`` bytes (``None``: no limit); never holds more than ``max_bytes`` + 1 bytes, even
    when the file grows while it is read. Does not close ``fd``.

    Raises:
        InputImageError (or ``error``): not a regular file, or too large; naming ``shown``.
        OSError: reading failed.
    """
    st = os.fstat(fd)
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise error(f"expected a regular image file, got {kind}", shown)
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(_too_big(max_bytes, f"{st.st_size} bytes (refused before reading)"), shown)
    chunks, total = [], 0
    want = st.st_size + 1  # one read for a file that does not change; more while it grows
    while True:  # read to the end: the size from fstat is a hint, the limit is the rule
        if max_bytes is not None:
            want = min(want, max_bytes + 1 - total)
        block = os.read(fd, max(want, 1))
        if not block:
            break
        chunks.append(block)
        total += len(block)
        if max_bytes is not None and total > max_bytes:
            raise error(_too_big(max_bytes, f"more than {max_bytes} bytes (it grew while read)"), shown)
        want = 1 << 20
    return b"".join(chunks)


class Folder:
    """A folder opened once: a directory descriptor, used for every later listing and open.

    ``path`` is the folder as given (``str``), ``shown`` its printable form, ``real`` where the descriptor
    is now (read from ``/proc/self/fd`` where there is one, so a check on it is a check on the opened
    folder, not on a path that may since lead elsewhere). A swap of the folder's path for a link after
    the open changes nothing here. Close it (or use it as a context manager); it also closes when
    garbage-collected.

    Raises:
        InputImageError: the folder is missing, not a folder or unreadable.
    """

    def __init__(self, path: str | os.PathLike[str] | bytes | os.PathLike[bytes]) -> None:
        self.path = os.fsdecode(path)
        self.shown = _shown(self.path)
        self.fd = -1
        try:
            fd = os.open(self.path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        except FileNotFoundError:
            raise InputImageError("expected an existing folder of images, got a path that does not exist",
                                  self.shown) from None
        except NotADirectoryError:
            raise InputImageError("expected a folder of images, got a file", self.shown) from None
        except OSError as exc:
            raise InputImageError(f"expected a readable folder, got {exc.strerror or exc}", self.shown) from None
        if not stat.S_ISDIR(os.fstat(fd).st_mode):  # without O_DIRECTORY (not POSIX) the open may succeed
            os.close(fd)
            raise InputImageError("expected a folder of images, got a file", self.shown)
        self.fd = fd

    @property
    def real(self) -> Path:
        """Where the opened folder is now: its absolute path without links."""
        proc = f"/proc/self/fd/{self.fd}"
        try:
            target = os.readlink(proc)
        except OSError:  # no /proc: the path, resolved, when it still names this very folder
            resolved = os.path.realpath(self.path)
            st, here = os.stat(resolved), os.fstat(self.fd)
            if (st.st_dev, st.st_ino) != (here.st_dev, here.st_ino):
                raise InputImageError("expected the folder to stay where it was opened, got another folder at "
                                      "its path", self.shown) from None
            return Path(resolved)
        return Path(target)

    def names(self) -> list[str]:
        """The names of the folder's entries (``os.fsdecode`` of each), sorted; ``.`` and ``..`` excluded."""
        try:
            # A descriptor of its own (the same folder, opened anew through this one): a listing's position
            # is per descriptor, and two threads may list one folder at once.
            fd = os.open(".", os.O_RDONLY | _DIRECTORY | _CLOEXEC, dir_fd=self.fd)
            try:
                with os.scandir(fd) as it:
                    return sorted(os.fsdecode(e.name) for e in it)
            finally:
                os.close(fd)
        except OSError as exc:
            raise InputImageError(f"expected a readable folder, got {exc.strerror or exc}", self.shown) from None

    def lstat(self, name: str) -> os.stat_result:
        """``lstat`` of an entry, relative to the descriptor (a link is not followed)."""
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def file(self, name: str) -> FolderFile:
        return FolderFile(self, name)

    def read(self, name: str, *, max_bytes: int | None,
             error: type[InputImageError] = InputImageError) -> FileBytes:
        """The entry ``name``, opened once relative to the descriptor without following a link, checked with
        ``fstat`` (a regular file of at most ``max_bytes``) and read whole (see :func:`read_bounded`).

        Raises:
            InputImageError (or ``error``): a link, not a regular file, too large, missing or unreadable;
                naming the file.
        """
        shown = _shown(os.path.join(self.path, name))
        if "/" in name or name in ("", ".", ".."):
            raise error(f"expected the name of an entry of the folder, got {_shown(name)!r}", shown)
        try:
            fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK, dir_fd=self.fd)
        except OSError as exc:
            raise error(f"expected a readable image file, got {self._reason(name, exc)}", shown) from None
        try:
            data = read_bounded(fd, shown, max_bytes, error)
        except OSError as exc:
            raise error(f"expected a readable image file, got {exc.strerror or exc}", shown) from None
        finally:
            os.close(fd)
        return FileBytes(data, hashlib.sha256(data).hexdigest(), shown)

    def _reason(self, name: str, exc: OSError) -> str:
        try:
            if stat.S_ISLNK(self.lstat(name).st_mode):
                return "a symbolic link (links are not followed: copy the file into the folder)"
        except OSError:
            pass
        return {FileNotFoundError: "a file that no longer exists", PermissionError: "permission denied",
                IsADirectoryError: "a directory"}.get(type(exc), exc.strerror or str(exc))

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"Folder({self.shown!r}, fd={self.fd})"


@dataclass(frozen=True, slots=True, repr=False)
class FolderFile:
    """One entry of an opened :class:`Folder`, by name; :meth:`read` opens and reads it (once per call).
    ``name`` may hold surrogate escapes (open it, never print it): its ``repr`` shows :attr:`shown`."""

    folder: Folder
    name: str

    def __repr__(self) -> str:
        return f"FolderFile({self.shown!r})"

    @property
    def shown(self) -> str:
        return _shown(os.path.join(self.folder.path, self.name))

    def read(self, max_bytes: int | None, error: type[InputImageError] = InputImageError) -> FileBytes:
        return self.folder.read(self.name, max_bytes=max_bytes, error=error)
