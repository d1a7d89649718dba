"""A drop in a bucket (``s3://bucket/prefix``): which objects are its images, and each one read once.

A drop in a bucket is listed as a drop folder is (:func:`desra_core.listing.list_image_entries`): the objects
directly under the prefix (not those under deeper "folders", as a folder's listing does not recurse), chosen by
suffix, hidden names (temporary files among them) skipped, a name that cannot name output files refused under a
stand-in stem, a stem that two objects share (``a.png`` and ``a.jpg``) refused for both, and a "folder" named
like an image refused as a directory is. The listing is a few LIST requests (1 000 objects each), never a
request per object; the sizes it gives refuse an object over ``DESRA_MAX_INPUT_MB`` before anything is fetched.

Each usable object is an :class:`ObjectFile`, which reads like :class:`desra_core.folder.FolderFile`: one GET
of the whole object, and the bytes hashed are the bytes decoded. :meth:`ObjectFile.header_size` reads only the
first bytes (one ranged GET), so that an image whose result would be too large (a decompression bomb) is refused
before the whole object is fetched. A failure of one object (deleted after the listing, access denied) is an
:class:`~desra_core.errors.InputImageError` naming its URL: that image fails alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TypeVar

from desra.pipeline.objects import S3Bucket, check_key
from desra_core.errors import AccessDeniedError, ConfigError, InputImageError, MissingObjectError, StorageError
from desra_core.folder import MAX_INPUT_VARIABLE, FileBytes
from desra_core.image import read_header_size
from desra_core.listing import IMAGE_SUFFIXES, safe_stem, stem_problem

__all__ = ["HEADER_BYTES", "ObjectEntry", "ObjectFile", "list_object_entries", "shown_url"]

_T = TypeVar("_T")

HEADER_BYTES: int = 64 * 2**10
"""How much of an object :meth:`ObjectFile.header_size` reads: enough for the size in the header of a PNG,
WebP, BMP and of most JPEGs (one whose EXIF block is larger is then read whole, as a local file is)."""


def shown_url(url: str) -> str:
    """``url`` as printable text: each character that is not printable becomes its ``\\x07``-style escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in url)


@dataclass(frozen=True, slots=True, repr=False)
class ObjectFile:
    """One object of a drop in a bucket, as listed: its ``key`` (relative to the bucket's root, checked by
    :func:`~desra.pipeline.objects.check_key`), its ``size`` and ``etag`` from the listing, and ``shown``, its
    URL. The listed ETag lets a later run recognise content it has read before without reading it
    (:meth:`desra.pipeline.steps.ImageJob.recall`)."""

    bucket: S3Bucket
    key: str
    size: int
    etag: str | None = None

    def __repr__(self) -> str:
        return f"ObjectFile({self.shown!r})"

    @property
    def shown(self) -> str:
        return self.bucket.url_of(self.key)

    def read(self, max_bytes: int | None, error: type[InputImageError] = InputImageError) -> FileBytes:
        """The whole object, in one GET, with the sha256 of exactly those bytes and the ETag that the GET
        answered (:attr:`FileBytes.etag`). An object whose listed size is over ``max_bytes`` is refused without
        a request; the GET asks for at most ``max_bytes`` + 1 bytes, so an object replaced by a larger one after
        the listing is refused too, never held whole.

        Raises:
            InputImageError (or ``error``): too large, gone, access denied or not served; naming the URL.
        """
        if max_bytes is not None and self.size > max_bytes:
            raise error(f"expected an input file of at most {max_bytes / 2**20:g} MiB ({MAX_INPUT_VARIABLE}), got "
                        f"{self.size} bytes (refused before reading)", self.shown)
        if max_bytes is None:
            data, etag = self._fetch(lambda: self.bucket.read_versioned(self.key), error)
        else:
            data, etag = self._fetch(lambda: self.bucket.read_head(self.key, max_bytes + 1), error)
            if len(data) > max_bytes:
                raise error(f"expected an input file of at most {max_bytes / 2**20:g} MiB ({MAX_INPUT_VARIABLE}), "
                            f"got more than {max_bytes} bytes (it changed after it was listed)", self.shown)
        return FileBytes(data, hashlib.sha256(data).hexdigest(), self.shown, etag)

    def header(self, length: int = HEADER_BYTES, error: type[InputImageError] = InputImageError) -> bytes:
        """The first ``length`` bytes of the object (fewer when it is shorter), in one ranged GET.

        Raises:
            InputImageError (or ``error``): gone, access denied or not served; naming the URL.
        """
        return self._fetch(lambda: self.bucket.read_range(self.key, 0, length), error)

    def header_size(self, error: type[InputImageError] = InputImageError) -> tuple[int, int] | None:
        """``(width, height)`` that the object's first :data:`HEADER_BYTES` declare
        (:func:`desra_core.image.read_header_size`), from one ranged GET; ``None`` when they do not say, and
        without a request when the listed object is no larger than them (reading it whole costs the same).

        Raises:
            InputImageError (or ``error``): as :meth:`header`.
        """
        if self.size <= HEADER_BYTES:
            return None
        return read_header_size(self.header(HEADER_BYTES, error))

    def _fetch(self, request: Callable[[], _T], error: type[InputImageError]) -> _T:
        try:
            data = request()
        except MissingObjectError:
            raise error("expected the object that the drop's listing named, got none (deleted since?)",
                        self.shown) from None
        except AccessDeniedError:
            raise error("expected to be allowed to read the object, got access denied", self.shown) from None
        except StorageError as exc:  # e.g. the server kept failing after retries: its message names the URL
            raise error(str(exc), self.shown) from None
        return data


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    """One object of a drop that looks like an image (see :func:`list_object_entries`): ``stem`` as in
    :class:`desra_core.listing.ImageEntry`, ``shown`` its URL (printable), ``file`` what to read (``None``
    when there is a ``problem``: why it cannot be used, "expected …, got … (file: URL)")."""

    stem: str
    shown: str
    file: ObjectFile | None
    problem: str | None = None


def list_object_entries(bucket: S3Bucket) -> dict[str, ObjectEntry]:
    """Objects directly under the bucket's root that look like images, by stem, sorted; the rules (and the
    messages) of :func:`desra_core.listing.list_image_entries`, with the object's URL as its file:

    * a name whose suffix is not an image's (any case), or that is hidden (a single leading ``.``), is skipped;
    * a name that :func:`~desra_core.listing.stem_problem` refuses gets a :func:`safe_stem` stand-in
      (``~2``… when taken) and that problem; a name that is a safe stem but not a key that
      :func:`~desra.pipeline.objects.check_key` accepts (e.g. a non-printable character) keeps its stem and
      gets that problem;
    * two names with one stem are both refused, the second under a stand-in;
    * a "folder" (a common prefix) named like an image is refused, as a directory is in a folder.

    Raises:
        StorageError: the bucket cannot be listed (missing, credentials refused, access denied…), naming it.
    """
    objects, folders = bucket.list_level()
    listed: list[tuple[str, int | None, str | None]] = [*objects, *((name, None, None) for name in folders)]
    names = sorted(listed, key=lambda entry: entry[0])
    found: dict[str, ObjectEntry] = {}
    renamed: list[tuple[str, str, str]] = []  # (stem, shown, problem): entries with a bad name get stems last
    for name, size, etag in names:
        path = PurePosixPath(name)
        if (name.startswith(".") and not name.startswith("..")) or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        shown = shown_url(f"{bucket.url}/{name}")
        problem = stem_problem(path.stem)
        if problem is not None:
            renamed.append((path.stem, shown, f"expected a file name usable for output files and reports, got "
                                              f"{problem}; rename the file (file: {shown})"))
            continue
        if path.stem in found:  # outputs are named by stem: neither object can be used, and both are reported
            first = found[path.stem]
            clash = (f"expected one image per stem, got '{first.shown.rsplit('/', 1)[-1]}' and '{path.name}'; "
                     "rename one of them (both refused)")
            found[path.stem] = ObjectEntry(first.stem, first.shown, None, f"{clash} (file: {first.shown})")
            renamed.append((path.stem, shown, f"{clash} (file: {shown})"))
            continue
        found[path.stem] = _entry(bucket, path.stem, name, size, etag, shown)
    for bad_stem, shown, problem in renamed:
        base = stem = safe_stem(bad_stem)
        n = 1
        while stem in found:
            n += 1
            stem = f"{base}~{n}"
        found[stem] = ObjectEntry(stem, shown, None, problem)
    return dict(sorted(found.items()))


def _entry(bucket: S3Bucket, stem: str, name: str, size: int | None, etag: str | None, shown: str) -> ObjectEntry:
    """The entry of a name whose stem is safe: usable, unless it is a folder or not a key that can be read."""
    if size is None:
        return ObjectEntry(stem, shown, None, f"expected an image file, got a folder of objects (file: {shown}/)")
    try:
        key = check_key(name)
    except ConfigError as exc:
        return ObjectEntry(stem, shown, None, f"{exc} (file: {shown})")
    return ObjectEntry(stem, shown, ObjectFile(bucket, key, size, etag))
