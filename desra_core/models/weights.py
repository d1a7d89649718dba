"""Known official SR weights: the table (data), the cache folder, and verified downloads.

The table lives in ``desra_core/data/known_weights.json`` (name → URL, sha256, scale, role, architecture);
:data:`KNOWN_WEIGHTS` is the default and every function takes ``table=`` so callers can pass their own.
A download streams into a hidden ``.part`` file beside its target, is checked against the pinned sha256
(and the Content-Length), and only then is ``os.replace``-d onto the final name: a failure of any kind
leaves no file under that name. A verified file gets a ``<file>.sha256`` sidecar (digest, size, mtime) so
that later calls check it without hashing it again. Nothing here prints or logs; pass ``progress=`` for
progress reports.

Environment: ``DESRA_CACHE`` (cache root), ``DESRA_OFFLINE=1`` (never download),
``DESRA_ALLOW_UNVERIFIED=1`` (accept entries whose sha256 is unknown, recording the computed one).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ConfigError, ModelLoadError
from ..image import atomic_write_bytes

__all__ = ["KNOWN_WEIGHTS", "KnownWeights", "cache_dir", "load_table", "resolve_weights"]

Progress = Callable[[int, int | None], None]

_TABLE_FILE = Path(__file__).resolve().parents[1] / "data" / "known_weights.json"
_WEIGHT_SUFFIXES = (".pth", ".safetensors", ".pt", ".ckpt")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
_USER_AGENT = "desra/0.1 (weights download; Python urllib)"


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownWeights:
    """One official weights file. ``sha256`` is None when no trustworthy digest is known."""

    name: str
    url: str
    sha256: str | None
    scale: int
    role: Literal["mse", "gan"]
    architecture: str
    file: str
    note: str

    def __post_init__(self) -> None:
        if not self.name or any(sep in self.name for sep in "/\\") or self.name.endswith(_WEIGHT_SUFFIXES):
            raise ConfigError(f"expected a plain weights name, got {self.name!r}")
        if not self.url.startswith(("https://", "http://")):
            raise ConfigError(f"expected an http(s) URL for {self.name!r}, got {self.url!r}")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ConfigError(f"expected 64 lower-case hex digits or null as sha256 of {self.name!r}, "
                              f"got {self.sha256!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise ConfigError(f"expected a positive integer scale for {self.name!r}, got {self.scale!r}")
        if self.role not in ("mse", "gan"):
            raise ConfigError(f"expected role 'mse' or 'gan' for {self.name!r}, got {self.role!r}")
        if not self.file or Path(self.file).name != self.file or self.file.startswith("."):
            raise ConfigError(f"expected a plain, visible file name for {self.name!r}, got {self.file!r}")


def load_table(path: str | os.PathLike[str] = _TABLE_FILE) -> dict[str, KnownWeights]:
    """Read a weights table (a JSON list of :class:`KnownWeights` fields), keyed by name.

    Raises:
        ConfigError: unreadable file, unknown or missing fields, invalid values, or a repeated name.
    """
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
        table = {}
        for fields in entries:
            entry = KnownWeights(**fields)
            if entry.name in table:
                raise ConfigError(f"expected unique names, got {entry.name!r} twice (file: {path})")
            table[entry.name] = entry
    except (OSError, ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"expected a JSON list of weights entries, got {exc} (file: {path})") from exc
    return table


KNOWN_WEIGHTS: dict[str, KnownWeights] = load_table()
"""The shipped table of official x4 weights (see ``desra_core/data/known_weights.json``)."""


def _file_kind(path: Path) -> str:
    """What a path that exists but is not a regular file is, in words ("a directory", "a FIFO", …)."""
    import stat

    mode = path.stat().st_mode
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))
    return next((word for test, word in kinds if test(mode)), "something that is not a regular file")


def cache_dir() -> Path:
    """Where downloads go: ``$DESRA_CACHE/weights``, else ``$XDG_CACHE_HOME/desra/weights``, else
    ``~/.cache/desra/weights``. The folder is not created here."""
    root = os.environ.get("DESRA_CACHE")
    if root:
        return Path(root).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "desra" / "weights"


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _write_sidecar(target: Path, digest: str) -> None:
    """Remember that ``target`` as it is now has ``digest``; best effort (a read-only cache still works)."""
    with contextlib.suppress(OSError):
        st = target.stat()
        record = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        atomic_write_bytes(_sidecar(target), (json.dumps(record) + "\n").encode())


def _read_sidecar(target: Path) -> tuple[str | None, bool]:
    """The digest the sidecar records (None if absent or unreadable) and whether it still describes the
    file (same size and mtime)."""
    try:
        record = json.loads(_sidecar(target).read_text(encoding="utf-8"))
        digest, st = str(record["sha256"]), target.stat()
        return digest, record["size"] == st.st_size and record["mtime_ns"] == st.st_mtime_ns
    except (OSError, ValueError, TypeError, KeyError):
        return None, False


def _check_cached(entry: KnownWeights, target: Path) -> None:
    """Verify a cached file against the table, or (entry without sha256) against its recorded digest."""
    recorded, current = _read_sidecar(target)
    expected = entry.sha256 if entry.sha256 is not None else recorded
    if current and recorded == expected:
        return
    actual = _hash_file(target)
    if expected is not None and actual != expected:
        raise ModelLoadError(f"expected sha256 {expected} for the cached {entry.name!r}, got {actual}: the file "
                             f"changed or is damaged; delete it so that it is downloaded again (file: {target})")
    _write_sidecar(target, actual)


def _manual(entry: KnownWeights, target: Path, reason: str) -> str:
    return (f"expected to download {entry.file} from {entry.url}, got {reason}. Download it by hand and place it "
            f"at exactly {target} (or set DESRA_CACHE to another cache root; the file then belongs in "
            f"$DESRA_CACHE/weights/{entry.file}) (file: {target})")


def _fetch(url: str, temp: Path, timeout: float, progress: Progress | None) -> str:
    """Stream ``url`` into the new file ``temp``; the sha256 of what arrived."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest, done = hashlib.sha256(), 0
    with urllib.request.urlopen(request, timeout=timeout) as response, open(temp, "xb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if progress is not None:
            progress(0, total)
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        if total is not None and done != total:
            raise ConnectionError(f"the connection ended after {done} of {total} bytes")
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _download(entry: KnownWeights, target: Path, timeout: float, progress: Progress | None) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"expected a writable cache folder, got {exc.strerror or exc} "
                             f"(file: {target.parent})") from exc
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        try:
            actual = _fetch(entry.url, temp, timeout, progress)
        except urllib.error.HTTPError as exc:
            raise ModelLoadError(_manual(entry, target, f"HTTP error {exc.code} {exc.reason}")) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            text = (f"no answer within {timeout} s" if isinstance(reason, TimeoutError)
                    else f"a network error ({type(reason).__name__}: {reason})")
            raise ModelLoadError(_manual(entry, target, text)) from exc
        if entry.sha256 is not None and actual != entry.sha256:
            raise ModelLoadError(f"expected sha256 {entry.sha256} for {entry.url}, got {actual}; the download was "
                                 f"discarded (file: {target})")
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    _write_sidecar(target, actual)


def resolve_weights(name_or_path: str | os.PathLike[str], *, table: Mapping[str, KnownWeights] = KNOWN_WEIGHTS,
                    cache: str | os.PathLike[str] | None = None, offline: bool | None = None, timeout: float = 60,
                    progress: Progress | None = None) -> Path:
    """The local file for a weights name from ``table``, or a path given by the caller.

    An existing file is returned as is, unchecked. A known name gives ``<cache>/<entry.file>``: a cached
    copy is verified (once; a sidecar remembers it), otherwise the file is downloaded and verified.

    Args:
        name_or_path: a key of ``table`` or a path to a weights file.
        table: the weights table (default :data:`KNOWN_WEIGHTS`).
        cache: folder for downloads (default :func:`cache_dir`).
        offline: never download; default ``os.environ["DESRA_OFFLINE"] == "1"``.
        timeout: seconds to wait on the network at each step.
        progress: called as ``progress(bytes_done, total_or_None)`` while downloading.

    Raises:
        ModelLoadError: a missing path, an unknown name, a download that is impossible (offline, network
            error: the message says what to fetch and where to put it) or fails its checksum, a cached
            file whose hash is wrong, or an entry without sha256 while DESRA_ALLOW_UNVERIFIED is not 1.
        ConfigError: ``timeout`` is not positive.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ConfigError(f"expected a positive timeout in seconds, got {timeout!r}")
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or text not in table:
        path = Path(text).expanduser()
        if path.is_file():
            return path
        if path.exists():  # never open a device, FIFO or socket: reading one may block or never end
            raise ModelLoadError(f"expected a regular model file, got {_file_kind(path)} (file: {path})")
        if isinstance(name_or_path, os.PathLike) or any(s in text for s in "/\\") or text.endswith(_WEIGHT_SUFFIXES):
            raise ModelLoadError(f"expected a model file, got a missing path (file: {path})")
        raise ModelLoadError(f"expected a model file or one of the known weights ({', '.join(sorted(table))}), "
                             f"got {text!r}")
    entry = table[text]
    target = (Path(cache) if cache is not None else cache_dir()) / entry.file
    unverified_ok = os.environ.get("DESRA_ALLOW_UNVERIFIED") == "1"
    if entry.sha256 is None and not unverified_ok:
        raise ModelLoadError(f"expected a pinned sha256 for {entry.name!r}, got none in the table; set "
                             f"DESRA_ALLOW_UNVERIFIED=1 to use {entry.url} anyway (its hash is then recorded), or "
                             f"pass the path of a file you trust (file: {target})")
    if target.is_file():
        _check_cached(entry, target)
        return target
    if offline is None:
        offline = os.environ.get("DESRA_OFFLINE") == "1"
    if offline:
        raise ModelLoadError(_manual(entry, target, "offline mode (DESRA_OFFLINE=1 or offline=True)"))
    _download(entry, target, timeout, progress)
    return target
