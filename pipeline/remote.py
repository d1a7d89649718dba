"""An output root in a bucket: each worker works in a local root of its own, and the bucket is what they share.

A run whose ``output_dir`` is a URL (``s3://bucket/prefix``) keeps the layout of a local output root in the
bucket (``masks/``, ``pseudo_gt/``, ``sr/…``, ``labels/``, ``reports/``, ``runs/``, ``report.html``), written
object by object, each complete or not at all. On the worker it works in :func:`work_root`, a folder of its
own under desra's cache that acts as the bucket's read-through cache: the steps write and read files there
as they do for a local output root, and :class:`~desra.pipeline.store.Store` and
:func:`~desra.pipeline.report.publish_image` carry what other workers need into the bucket:

* **published outputs** are uploaded under their names, then the image's publication record
  (``.desra/published/<stem>.json``, the store keys they came from) last, so a lister never sees a record
  before the outputs it stands for;
* **store entries are references, not copies**: an entry that is published (every image entry is) is kept
  in the bucket as a small JSON reference (``.desra/store/<step>/<key[:2]>/<key><suffix>.ref``: the published
  object's key and the sha256 of its bytes), so the bucket holds each output's bytes once. A worker that
  needs an entry reads the reference and then the object, and takes it only when its bytes still have that
  digest (the object may since have been published from other keys): otherwise the entry counts as absent and
  is computed again. Detection records (``.json``) are stored whole;
* **claims** are leased objects under ``.desra/claims/`` (:class:`~desra.pipeline.objects.Claims`), renewed
  while their holder works, taken over by another worker once a dead holder's lease has run out.

Nothing in this module lists a bucket or reads an image: it maps an output URL to its bucket and its
local root, names this process as a claim owner, and fetches model files given as URLs (:func:`model_copy`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import uuid
from pathlib import Path

from desra.pipeline.objects import Bucket, is_url
from desra_core.errors import ConfigError
from desra_core.models.weights import cache_dir

__all__ = ["CACHE_VARIABLE", "bucket_of", "model_copy", "model_origin", "owner", "read_through_limit", "trim",
           "work_root"]

CACHE_VARIABLE = "DESRA_OUTPUT_CACHE_MB"  # the bound on each worker's local copy of a bucket output root
_DEFAULT_CACHE_MB = 20_000
_OWNER: dict[int, str] = {}


def work_root(output_dir: str) -> str:
    """The local folder a run works in for ``output_dir``: the folder itself, or for a URL this worker's
    read-through copy of it (``outputs/<sha256 of the URL>`` beside the weights cache, e.g.
    ``~/.cache/desra/outputs/…``; the same URL always maps to the same folder, two URLs never share one)."""
    if not is_url(output_dir):
        return output_dir
    digest = hashlib.sha256(output_dir.rstrip("/").encode()).hexdigest()[:32]
    return str(cache_dir().parent / "outputs" / digest)


def bucket_of(output_dir: str) -> Bucket | None:
    """The bucket behind an output URL (``None`` for a local folder).

    Raises:
        ConfigError: a scheme desra cannot write to.
    """
    return Bucket.at(output_dir.rstrip("/")) if is_url(output_dir) else None


def owner() -> str:
    """This process's name as a claim holder: host, process id and a random part (a process id can come back
    on another boot, or in another container on the same host)."""
    pid = os.getpid()
    if pid not in _OWNER:  # after a fork the child gets a name of its own
        _OWNER[pid] = f"{socket.gethostname()[:64]}-{pid}-{uuid.uuid4().hex[:12]}"
    return _OWNER[pid]


def read_through_limit(environ: dict[str, str] | None = None) -> int:
    """The most bytes a worker keeps in its local copy of one bucket output root (``DESRA_OUTPUT_CACHE_MB``).

    Raises:
        ConfigError: a value that is not a whole number of megabytes, at least 1.
    """
    value = (os.environ if environ is None else environ).get(CACHE_VARIABLE, "").strip()
    if not value:
        return _DEFAULT_CACHE_MB * 1_000_000
    try:
        mb = int(value)
    except ValueError:
        mb = 0
    if mb < 1:
        raise ConfigError(f"expected {CACHE_VARIABLE} to be a whole number of megabytes, at least 1, got {value!r}")
    return mb * 1_000_000


def trim(root: str | os.PathLike[str], limit: int) -> int:
    """Remove the least recently written files of a local copy (store entries and published files; nothing
    under ``.desra/claims`` or the leftovers' lock) until it holds at most ``limit`` bytes; returns the bytes
    removed. Everything removed is in the bucket, so a later run reads it again when it needs it."""
    base = Path(root)
    files = []
    for folder in (base / ".desra" / "store", base / ".desra" / "published", base / ".desra" / "review",
                   base / "masks", base / "pseudo_gt", base / "sr", base / "labels", base / "reports",
                   base / "report-files"):
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            try:
                info = path.lstat()
            except OSError:
                continue
            if path.is_file() and not path.is_symlink():
                files.append((info.st_mtime, info.st_size, path))
    total = sum(size for _, size, _ in files)
    removed = 0
    for _, size, path in sorted(files):
        if total - removed <= limit:
            break
        try:
            path.unlink()
            removed += size
        except FileNotFoundError:
            continue
    return removed


_ETAG_NAME = re.compile(r"[A-Za-z0-9-]{1,80}")
_ORIGINS: dict[str, str] = {}  # local copy -> the URL it was fetched from, in this process


def model_origin(path: str | None) -> str | None:
    """The URL that :func:`model_copy` fetched ``path`` from in this process (what reports name: one model is one
    URL on every worker, wherever each keeps its copy), else ``path`` itself."""
    return _ORIGINS.get(path, path) if path is not None else None


def model_copy(url: str) -> str:
    """The local copy of a model file given as a URL (``s3://bucket/models/x.safetensors``), for the loaders,
    which read files: ``models/<sha256 of the URL>/<ETag>/<file name>`` beside the weights cache. A copy that is
    there is used after one HEAD request; otherwise (first use, or the object was replaced: a new ETag) the
    object is streamed into place, whole or not at all. Two workers fetching at once each write their own
    temporary file and the last rename wins with the same bytes.

    Raises:
        ConfigError: a URL that names no file in a bucket.
        StorageError: the object cannot be read (missing, access denied…), naming the URL.
    """
    text = url.rstrip("/")
    scheme, _, rest = text.partition("://")
    parent, _, name = text.rpartition("/")
    if not rest or "/" not in rest or not name:
        raise ConfigError(f"expected a model file's URL as {scheme or 's3'}://bucket/path/file, got {url!r}")
    bucket = Bucket.at(parent)
    folder = cache_dir().parent / "models" / hashlib.sha256(text.encode()).hexdigest()[:32]

    def place(etag: str) -> Path:
        label = etag if _ETAG_NAME.fullmatch(etag) else hashlib.sha256(etag.encode()).hexdigest()[:32]
        return folder / label / name

    info = bucket.info(name)
    target = place(info.etag)
    if target.is_file() and target.stat().st_size == info.size:
        _ORIGINS[str(target)] = text
        return str(target)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{uuid.uuid4().hex[:12]}.{name}"
    try:
        got = bucket.download(name, staging)  # its ETag is that of the bytes read, whatever HEAD said
        target = place(got.etag)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
    finally:
        with contextlib.suppress(OSError):
            staging.unlink(missing_ok=True)
    _ORIGINS[str(target)] = text
    return str(target)
