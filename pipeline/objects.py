"""Objects in a bucket or a local folder, written whole or not at all, and claims with leases on them.

:meth:`Bucket.at` opens ``s3://bucket/prefix`` (AWS or any S3-compatible server, chosen with the standard
``AWS_ENDPOINT_URL`` variable; credentials only from the environment and the SDK's standard chains, never
from a parameter) or a local folder, with one API. Every key is relative to that root and is checked by
:func:`check_key`, so no key can leave the root.

- :meth:`Bucket.write` makes an object appear complete or not at all (one S3 ``PutObject``; on disk a
  temporary file beside the target, renamed into place).
- :meth:`Bucket.write_if_absent` creates an object only where none exists (S3 ``If-None-Match: *``), and
  :meth:`Bucket.replace_if` replaces one only while its ETag is still the given one (S3 ``If-Match``). On a
  local folder the same conditions are checked and applied under an exclusive ``flock`` on the object's
  folder, which every mutation of this module takes (a local disk; on NFS use a bucket).
- Transient failures (5xx, throttling, dropped connections) are retried with exponential backoff by the
  SDK (its ``standard`` retry mode, 5 attempts, unless ``AWS_RETRY_MODE``/``AWS_MAX_ATTEMPTS`` say
  otherwise); what still fails raises :class:`~desra_core.errors.StorageError`.

Every failure a user can cause raises a :class:`~desra_core.errors.StorageError` whose one-sentence message
names the URL (never a credential): a missing bucket or folder, missing or refused credentials, access
denied, a missing object (:class:`~desra_core.errors.MissingObjectError`). A bad key raises
:class:`~desra_core.errors.ConfigError`.

:class:`Claims` gives one worker at a time the right to compute a named entry, across machines that share
nothing but the bucket: a claim is a small JSON object ``{"owner", "expires"}`` created with
:meth:`Bucket.write_if_absent`; its holder renews it before ``expires``; once the lease has run out (the
holder died) another worker takes it over with :meth:`Bucket.replace_if` on the ETag it read, so of several
takers exactly one wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from desra_core.errors import AccessDeniedError, ConfigError, MissingObjectError, StorageError
from desra_core.image import atomic_path

if sys.platform == "win32":  # not POSIX (Windows is not a target): local conditional writes are not exclusive
    fcntl = None
else:
    import fcntl

__all__ = ["MAX_KEY_BYTES", "Bucket", "Claim", "Claims", "LocalBucket", "ObjectInfo", "S3Bucket", "check_key",
           "is_url", "retry_config"]

MAX_KEY_BYTES = 1024  # S3's limit on a key, the root prefix included
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp")  # desra_core.image.atomic_path's temporary files
_T = TypeVar("_T")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(value: object) -> bool:
    """Whether ``value`` names an object-store location (``s3://…``, or another ``scheme://``, which
    :meth:`Bucket.at` refuses with its reason) rather than a local path; ``file://…`` counts as a local path."""
    return isinstance(value, str) and _URL.match(value) is not None and not value.startswith("file://")


class ObjectInfo(NamedTuple):
    """One object: its key (relative to the bucket's root), size in bytes and ETag (unquoted)."""

    key: str
    size: int
    etag: str


def check_key(key: object, *, where: str = "", allow_empty: bool = False) -> str:
    """``key`` if it is a safe object key, else :class:`ConfigError` naming it.

    A key is ``/``-separated components of printable UTF-8 text: no empty, ``.`` or ``..`` component (so no
    leading, trailing or doubled ``/``), no backslash, no control or other non-printable character, no
    undecodable byte, at most :data:`MAX_KEY_BYTES` bytes. ``bytes`` are accepted when they are UTF-8.
    ``allow_empty`` accepts ``""`` (the root itself, for listing).
    """
    suffix = f" (bucket: {where})" if where else ""
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"expected an object key in UTF-8, got {key!r}{suffix}") from None
    if not isinstance(key, str):
        raise ConfigError(f"expected an object key as text, got {type(key).__name__} {key!r}{suffix}")
    if key == "" and allow_empty:
        return key
    problem = _key_problem(key)
    if problem:
        raise ConfigError(f"expected an object key of printable /-separated components, got {key!r} ({problem})"
                          f"{suffix}")
    return key


def _key_problem(key: str) -> str:
    try:
        encoded = key.encode("utf-8")  # lone surrogates (undecodable bytes of a file name) fail here
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if not key:
        return "empty"
    if len(encoded) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes"
    if "\\" in key:
        return "a backslash"
    if any(not ch.isprintable() or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in key):
        return "a control or non-printable character"
    for part in key.split("/"):
        if part in ("", ".", ".."):
            return f"a {part!r} component" if part else "an empty component"
    return ""


def _etag(value: str) -> str:
    """An ETag without its quotes (S3 sends ``"…"``; both spellings are accepted everywhere)."""
    return value.strip().strip('"')


class Bucket(ABC):
    """Objects under one root (``s3://bucket/prefix`` or a folder), addressed by keys relative to it."""

    url: str

    @staticmethod
    def at(url: str | os.PathLike[str]) -> Bucket:
        """The bucket behind ``url``: ``s3://bucket[/prefix]``, ``file:///folder`` or a folder path."""
        text = os.fspath(url)
        if text.startswith("s3://"):
            return S3Bucket(text)
        if "://" in text and not text.startswith("file://"):
            scheme = text.split("://", 1)[0]
            raise ConfigError(f"expected an s3:// URL or a local folder, got the scheme {scheme!r} ({text!r})")
        return LocalBucket(text.removeprefix("file://") or "/")

    def url_of(self, key: str) -> str:
        """The URL of one object (for messages and records)."""
        return f"{self.url.rstrip('/')}/{check_key(key, where=self.url)}"

    def _key(self, key: object) -> str:
        return check_key(key, where=self.url)

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The whole object."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The whole object and the ETag of exactly those bytes (one GET), for :meth:`replace_if`."""

    @abstractmethod
    def read_range(self, key: str, start: int, length: int) -> bytes:
        """At most ``length`` bytes from ``start`` (fewer at the end of the object), fetching only those."""

    @abstractmethod
    def read_head(self, key: str, length: int) -> tuple[bytes, str]:
        """At most the first ``length`` bytes (one GET) and the ETag of the object they were read from: what a
        reader records as "this content", so that an object replaced between a listing and the read is seen."""

    @abstractmethod
    def info(self, key: str) -> ObjectInfo:
        """Size and ETag of one object, without reading it."""

    def size(self, key: str) -> int:
        """The object's size in bytes."""
        return self.info(key).size

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        try:
            self.info(key)
        except MissingObjectError:
            return False
        return True

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under the folder ``prefix`` (whole components: ``a`` lists ``a/x``, not ``ab``), by key."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> str:
        """Create or replace the object with ``data``, whole or not at all; its new ETag."""

    @abstractmethod
    def write_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object only where none exists; whether this call created it."""

    @abstractmethod
    def replace_if(self, key: str, data: bytes, etag: str) -> bool:
        """Replace the object only while its ETag is ``etag``; ``False`` when it changed or is gone."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object (nothing happens when it is absent)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    @abstractmethod
    def check_readable(self) -> None:
        """Prove, with one cheap request, that the root can be listed (an admission's check of an input folder
        given as a URL); an empty root passes. Raises StorageError naming the URL (AccessDeniedError: denied)."""


def _check_range(start: int, length: int) -> None:
    if isinstance(start, bool) or isinstance(length, bool) or not isinstance(start, int) \
            or not isinstance(length, int) or start < 0 or length < 0:
        raise ConfigError(f"expected a byte range with start >= 0 and length >= 0, got start={start!r}, "
                          f"length={length!r}")


# --- S3 ----------------------------------------------------------------------------------------------------

_NO_BUCKET = {"NoSuchBucket"}
_NO_OBJECT = {"NoSuchKey", "404", "NotFound"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
                    "UnrecognizedClientException"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
_PRECONDITION = {"PreconditionFailed", "412"}
_CONFLICT = {"ConditionalRequestConflict", "409"}  # a concurrent conditional write is in flight: try again


def retry_config() -> dict[str, Any]:
    """The SDK's retries: its standard mode (exponential backoff with jitter on 5xx, throttling and dropped
    connections), unless the standard variables AWS_RETRY_MODE / AWS_MAX_ATTEMPTS choose otherwise."""
    if os.environ.get("AWS_RETRY_MODE") or os.environ.get("AWS_MAX_ATTEMPTS"):
        return {}
    return {"retries": {"mode": "standard", "max_attempts": 5}}


class S3Bucket(Bucket):
    """``s3://bucket/prefix`` through s3fs's client (the ``s3`` extra: ``pip install 'desra[s3]'``)."""

    def __init__(self, url: str) -> None:
        if not url.startswith("s3://"):
            raise ConfigError(f"expected an s3://bucket/prefix URL, got {url!r}")
        name, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/")
        if not _BUCKET_NAME.fullmatch(name) or ".." in name:
            raise ConfigError(f"expected an S3 bucket name (3 to 63 of a-z, 0-9, '.', '-'), got {name!r} ({url!r})")
        if prefix:
            check_key(prefix, where=f"s3://{name}")
        self.name = name
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{name}/{prefix}".rstrip("/")
        self._fs: Any = None
        self._fs_lock = threading.Lock()

    # The client is made on first use, so that a Bucket can be made (and pickled) before the environment that
    # holds the credentials is set; s3fs's instance cache is skipped, so that credentials are never shared
    # between buckets made under different environments.
    def _filesystem(self) -> Any:
        with self._fs_lock:
            if self._fs is None:
                try:
                    import s3fs  # the optional `s3` extra
                except ImportError:
                    raise ConfigError(f"expected the s3 extra for {self.url} (pip install 'desra[s3]'), "
                                      "got no s3fs") from None
                self._fs = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs=retry_config())
            return self._fs

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in ("_fs", "_fs_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _fs=None, _fs_lock=threading.Lock())

    def _run(self, make: Callable[[Any], Awaitable[_T]], key: str, *, answers: frozenset[str] = frozenset()) -> _T:
        """Run one request (``make(client)``) on s3fs's event loop, mapping its failures to desra's errors;
        a ``ClientError`` whose code is in ``answers`` is the caller's to handle and propagates as it is."""
        from fsspec.asyn import sync

        fs = self._filesystem()

        async def call() -> _T:
            await fs.set_session()
            client = await fs.get_s3()
            return await make(client)

        try:
            result: _T = sync(fs.loop, call)
            return result
        except Exception as exc:
            error = self._error(exc, key)
            if error is exc or self._code(exc) in answers:
                raise
            raise error from exc

    def _full(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _error(self, exc: Exception, key: str) -> Exception:
        """The desra error for one failed request (``exc`` itself when it is no error of the store's)."""
        from botocore import exceptions as boto

        where = f"{self.url}/{key}" if key else self.url
        if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            return StorageError(f"expected credentials for {where} in the environment or the standard AWS "
                                "chain, got none", url=where)
        if isinstance(exc, boto.EndpointConnectionError | boto.ConnectTimeoutError | boto.ReadTimeoutError
                      | boto.ConnectionClosedError):
            return StorageError(f"expected to reach the S3 endpoint for {where}, got no answer after retries "
                                f"({type(exc).__name__})", url=where)
        if not isinstance(exc, boto.ClientError):
            return exc
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NO_BUCKET:
            return StorageError(f"expected an existing bucket for {where}, got no bucket {self.name!r}", url=where)
        if code in _BAD_CREDENTIALS:
            return StorageError(f"expected valid credentials for {where}, got credentials that the server "
                                f"refused ({code})", url=where)
        if code in _DENIED:
            return AccessDeniedError(f"expected access to {where}, got access denied", url=where)
        if code in _NO_OBJECT or (status == 404 and key):
            return MissingObjectError(f"expected an object at {where}, got none", url=where)
        return StorageError(f"expected {where} to be served, got {code or status or 'an error'} after retries",
                            url=where)

    @staticmethod
    def _code(exc: BaseException) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        key = self._key(key)

        async def get(client: Any) -> tuple[bytes, str]:
            response = await client.get_object(Bucket=self.name, Key=self._full(key))
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data, _etag(response["ETag"])

        return self._run(get, key)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        key = self._key(key)
        _check_range(start, length)
        if length == 0:
            self.info(key)  # a missing object is still an error
            return b""

        async def get(client: Any) -> bytes:
            response = await client.get_object(Bucket=self.name, Key=self._full(key),
                                               Range=f"bytes={start}-{start + length - 1}")
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data

        try:
            return self._run(get, key, answers=frozenset({"InvalidRange"}))
        except Exception as exc:
            if self._code(exc) == "InvalidRange":  # start at or past the end (only for an existing object)
                return b""
            raise

    def read_head(self, key: str, length: int) -> tuple[bytes, str]:
        key = self._key(key)
        _check_range(0, length)
        if length == 0:
            return b"", self.info(key).etag

        async def get(client: Any) -> tuple[bytes, str]:
            response = await client.get_object(Bucket=self.name, Key=self._full(key), Range=f"bytes=0-{length - 1}")
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data, _etag(response["ETag"])  # a ranged GET answers with the whole object's ETag

        try:
            return self._run(get, key, answers=frozenset({"InvalidRange"}))
        except Exception as exc:
            if self._code(exc) == "InvalidRange":  # an empty object
                return b"", self.info(key).etag
            raise

    def list_level(self) -> tuple[list[tuple[str, int, str]], list[str]]:
        """``([(name, size, etag)], [folder name])``: the objects and the "folders" directly under the root, as
        LIST requests with a ``/`` delimiter give them (1 000 names each). Unlike :meth:`list`, names that
        :func:`check_key` refuses are kept, for the caller to report; they are names, not keys to request."""

        async def walk(client: Any) -> tuple[list[tuple[str, int, str]], list[str]]:
            objects: list[tuple[str, int, str]] = []
            folders: list[str] = []
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.name, Prefix=self.prefix, Delimiter="/"):
                for item in page.get("Contents", []):
                    name = str(item["Key"])[len(self.prefix):]
                    if name:  # not the root's own "folder" marker
                        objects.append((name, int(item["Size"]), _etag(str(item.get("ETag", "")))))
                for common in page.get("CommonPrefixes", []):
                    name = str(common["Prefix"])[len(self.prefix):].rstrip("/")
                    if name:
                        folders.append(name)
            return objects, folders

        return self._run(walk, "")

    def info(self, key: str) -> ObjectInfo:
        key = self._key(key)

        async def head(client: Any) -> ObjectInfo:
            response = await client.head_object(Bucket=self.name, Key=self._full(key))
            return ObjectInfo(key, int(response["ContentLength"]), _etag(response["ETag"]))

        async def head_bucket(client: Any) -> None:
            await client.head_bucket(Bucket=self.name)

        try:
            return self._run(head, key)
        except MissingObjectError as missing:
            # A HEAD answer has no body, so a missing bucket is a bare 404 too: tell the two apart.
            try:
                self._run(head_bucket, key, answers=frozenset({"404", "NoSuchBucket"}))
            except Exception as exc:
                if self._code(exc) in ("404", "NoSuchBucket"):
                    where = f"{self.url}/{key}"
                    raise StorageError(f"expected an existing bucket for {where}, got no bucket {self.name!r}",
                                       url=where) from exc
                raise
            raise missing

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = check_key(prefix.rstrip("/"), where=self.url, allow_empty=True)
        under = self._full(f"{prefix}/") if prefix else self.prefix

        async def walk(client: Any) -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.name, Prefix=under):
                for item in page.get("Contents", []):
                    key = str(item["Key"])[len(self.prefix):]
                    if not _key_problem(key):  # objects that other tools wrote with unsafe keys are not seen
                        found.append(ObjectInfo(key, int(item["Size"]), _etag(item["ETag"])))
            return sorted(found)

        return self._run(walk, prefix)

    def write(self, key: str, data: bytes) -> str:
        key = self._key(key)

        async def put(client: Any) -> str:
            response = await client.put_object(Bucket=self.name, Key=self._full(key), Body=bytes(data))
            return _etag(response["ETag"])

        return self._run(put, key)

    def _conditional_put(self, key: str, data: bytes, condition: dict[str, str]) -> bool:
        async def put(client: Any) -> bool:
            await client.put_object(Bucket=self.name, Key=self._full(key), Body=bytes(data), **condition)
            return True

        # 409 ConditionalRequestConflict: another conditional write to the key was in flight; S3 asks to
        # retry, and the retry sees the winner's object (then 412) or none (then this write goes through).
        answers = frozenset(_PRECONDITION | _CONFLICT | (_NO_OBJECT if "IfMatch" in condition else set()))
        for attempt in range(6):
            try:
                return self._run(put, key, answers=answers)
            except StorageError:
                raise
            except Exception as exc:
                code = self._code(exc)
                if code in _PRECONDITION or code in _NO_OBJECT:
                    return False  # the object exists (If-None-Match), or changed or is gone (If-Match)
                if code not in _CONFLICT:
                    raise
            time.sleep(min(0.05 * 2**attempt, 1.0))
        raise StorageError(f"expected a conditional write to {self.url}/{key} to be decided, got conflicts "
                           "after retries", url=f"{self.url}/{key}")

    def write_if_absent(self, key: str, data: bytes) -> bool:
        return self._conditional_put(self._key(key), data, {"IfNoneMatch": "*"})

    def replace_if(self, key: str, data: bytes, etag: str) -> bool:
        return self._conditional_put(self._key(key), data, {"IfMatch": f'"{_etag(etag)}"'})

    def delete(self, key: str) -> None:
        key = self._key(key)

        async def remove(client: Any) -> None:
            await client.delete_object(Bucket=self.name, Key=self._full(key))

        self._run(remove, key)

    def check_readable(self) -> None:
        """One ``ListObjectsV2`` of at most one key under the prefix: the bucket exists, the credentials are
        accepted and may list there."""
        async def probe(client: Any) -> None:
            await client.list_objects_v2(Bucket=self.name, Prefix=self.prefix, MaxKeys=1)

        self._run(probe, "")


# --- a local folder ----------------------------------------------------------------------------------------

class LocalBucket(Bucket):
    """A folder with the same API (for local runs, and so that callers' tests can run on either kind)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*key.split("/"))
        if not self.root.is_dir():
            raise StorageError(f"expected an existing folder for {self.url}/{key}, got none", url=self.url)
        # The key's components are checked; a symbolic link inside the folder must not lead out of it either.
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise ConfigError(f"expected the object key {key!r} to stay inside {self.url}, got a path that "
                              f"leads out of it")
        return path

    def _fail(self, exc: OSError, key: str) -> Exception:
        where = f"{self.url}/{key}"
        if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
            return MissingObjectError(f"expected an object at {where}, got none", url=where)
        if isinstance(exc, PermissionError):
            return AccessDeniedError(f"expected access to {where}, got access denied", url=where)
        return StorageError(f"expected {where} to be readable and writable, got {type(exc).__name__} "
                            f"(errno {exc.errno})", url=where)

    @contextlib.contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        """Exclusive ``flock`` on the object's folder: the mutations of this module there, one at a time."""
        if fcntl is None:
            yield
            return
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _folder(self, path: Path, key: str) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail(exc, key) from exc
        return path.parent

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        key = self._key(key)
        try:
            data = self._path(key).read_bytes()
        except OSError as exc:
            raise self._fail(exc, key) from exc
        return data, hashlib.md5(data, usedforsecurity=False).hexdigest()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        key = self._key(key)
        _check_range(start, length)
        try:
            with open(self._path(key), "rb") as fh:
                fh.seek(start)
                return fh.read(length)
        except OSError as exc:
            raise self._fail(exc, key) from exc

    def read_head(self, key: str, length: int) -> tuple[bytes, str]:
        key = self._key(key)
        _check_range(0, length)
        digest = hashlib.md5(usedforsecurity=False)
        try:  # one open file: the digest is of the file whose first bytes were read (objects are replaced by rename)
            with open(self._path(key), "rb") as fh:
                data = fh.read(length)
                digest.update(data)
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise self._fail(exc, key) from exc
        return data, digest.hexdigest()

    def info(self, key: str) -> ObjectInfo:
        key = self._key(key)
        path = self._path(key)
        if not path.is_file():
            raise self._fail(FileNotFoundError(), key)
        return ObjectInfo(key, path.stat().st_size, self._md5(path, key))

    def _md5(self, path: Path, key: str) -> str:
        digest = hashlib.md5(usedforsecurity=False)  # S3's ETag of a single PUT: the MD5 of the bytes
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise self._fail(exc, key) from exc
        return digest.hexdigest()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = check_key(prefix.rstrip("/"), where=self.url, allow_empty=True)
        top = self._path(prefix) if prefix else self.root
        if not self.root.is_dir():
            raise StorageError(f"expected an existing folder for {self.url}, got none", url=self.url)
        found: list[ObjectInfo] = []
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            for name in files:
                path = Path(folder, name)
                key = path.relative_to(self.root).as_posix()
                if _TEMP_NAME.match(name) or _key_problem(key) or not path.is_file() or path.is_symlink():
                    continue  # a write in progress, or a file that no key can name
                try:
                    size = path.stat().st_size
                    etag = self._md5(path, key)
                except (OSError, MissingObjectError):
                    continue  # removed while listing
                found.append(ObjectInfo(key, size, etag))
        return sorted(found)

    def _put(self, path: Path, data: bytes) -> str:
        with atomic_path(path) as temp, open(temp, "wb") as fh:
            fh.write(data)
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def write(self, key: str, data: bytes) -> str:
        key = self._key(key)
        path = self._path(key)
        try:
            with self._locked(self._folder(path, key)):
                return self._put(path, bytes(data))
        except OSError as exc:
            raise self._fail(exc, key) from exc

    def write_if_absent(self, key: str, data: bytes) -> bool:
        key = self._key(key)
        path = self._path(key)
        try:
            with self._locked(self._folder(path, key)):
                if os.path.lexists(path):
                    return False
                self._put(path, bytes(data))
                return True
        except OSError as exc:
            raise self._fail(exc, key) from exc

    def replace_if(self, key: str, data: bytes, etag: str) -> bool:
        key = self._key(key)
        path = self._path(key)
        try:
            with self._locked(self._folder(path, key)):
                if not path.is_file() or self._md5(path, key) != _etag(etag):
                    return False
                self._put(path, bytes(data))
                return True
        except OSError as exc:
            raise self._fail(exc, key) from exc

    def delete(self, key: str) -> None:
        key = self._key(key)
        path = self._path(key)
        if not path.parent.is_dir():
            return
        try:
            with self._locked(path.parent):
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._fail(exc, key) from exc

    def check_readable(self) -> None:
        """The folder exists and can be listed."""
        try:
            with os.scandir(self.root) as entries:
                next(entries, None)
        except (FileNotFoundError, NotADirectoryError):
            raise StorageError(f"expected an existing folder for {self.url}, got none", url=self.url) from None
        except PermissionError:
            raise AccessDeniedError(f"expected access to {self.url}, got access denied", url=self.url) from None
        except OSError as exc:
            raise StorageError(f"expected {self.url} to be readable, got {type(exc).__name__} (errno {exc.errno})",
                               url=self.url) from None


# --- claims ------------------------------------------------------------------------------------------------

class Claim(NamedTuple):
    """What a claim object says: who holds it, until when (seconds since the epoch)."""

    owner: str
    expires: float


class Claims:
    """Leased claims on names, kept as objects under ``prefix`` of a bucket.

    ``claim(name)`` is ``True`` for exactly one of any number of concurrent callers (on any machine): a free
    name is created with ``If-None-Match: *``; a name whose lease has run out (its holder died or gave up)
    is taken over with ``If-Match`` on the ETag that was read, so two takers cannot both win. The holder
    keeps it with :meth:`renew` (well before ``lease_s`` runs out) and gives it up with :meth:`release`.
    Leases compare the callers' clocks, so machines should keep them in sync (NTP) to well under ``lease_s``.
    """

    def __init__(self, bucket: Bucket, prefix: str, owner: str, lease_s: float,
                 *, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(owner, str) or not owner or _key_problem(owner.replace("/", "_")):
            raise ConfigError(f"expected a claim owner as a non-empty printable name, got {owner!r}")
        if not math.isfinite(lease_s) or lease_s <= 0:
            raise ConfigError(f"expected a lease of more than 0 seconds, got {lease_s!r}")
        self.bucket = bucket
        self.prefix = check_key(prefix.rstrip("/"), where=bucket.url, allow_empty=True)
        self.owner = owner
        self.lease_s = float(lease_s)
        self.clock = clock

    def _key(self, name: str) -> str:
        key = check_key(name, where=self.bucket.url)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _record(self, expires: float | None = None) -> bytes:
        if expires is None:
            expires = self.clock() + self.lease_s
        return json.dumps({"owner": self.owner, "expires": expires}, sort_keys=True).encode()

    def _read(self, key: str) -> tuple[Claim | None, str] | None:
        """The claim at ``key`` and its ETag (``None`` as the claim when unreadable), or ``None`` when absent."""
        try:
            data, etag = self.bucket.read_versioned(key)
        except MissingObjectError:
            return None
        try:
            record = json.loads(data)
            claim = Claim(str(record["owner"]), float(record["expires"]))
        except (ValueError, TypeError, KeyError):
            return None, etag  # not a claim of this module: treated as expired, so it can be taken over
        return claim, etag

    def create(self, name: str) -> bool:
        """Take the claim on ``name`` only where no claim on it was ever taken (claim objects are never deleted):
        ``True`` when this call created it. One request; :meth:`claim` does the rest."""
        return self.bucket.write_if_absent(self._key(name), self._record())

    def claim(self, name: str) -> bool:
        """Take the claim on ``name``: ``True`` when this owner holds it now (taken, taken over, or renewed)."""
        key = self._key(name)
        for _ in range(8):  # a released-and-deleted claim between our reads: look again
            if self.bucket.write_if_absent(key, self._record()):
                return True
            current = self._read(key)
            if current is None:
                continue
            claim, etag = current
            if claim is not None and claim.owner != self.owner and claim.expires > self.clock():
                return False  # held, and the lease runs
            return self.bucket.replace_if(key, self._record(), etag)
        return False

    def renew(self, name: str) -> bool:
        """Extend this owner's lease on ``name`` by ``lease_s`` from now; ``False`` when it is not held by it
        (never taken, released, or taken over by another after the lease ran out)."""
        key = self._key(name)
        current = self._read(key)
        if current is None or current[0] is None or current[0].owner != self.owner:
            return False
        return self.bucket.replace_if(key, self._record(), current[1])

    def release(self, name: str) -> bool:
        """Give up this owner's claim on ``name``; ``False`` (and nothing changes) when another holds it.

        The claim object is not deleted but marked expired with ``If-Match``, so a release can never remove a
        claim that another worker took over in the meantime.
        """
        key = self._key(name)
        current = self._read(key)
        if current is None or current[0] is None or current[0].owner != self.owner:
            return False
        return self.bucket.replace_if(key, self._record(expires=0.0), current[1])

    def holder(self, name: str) -> str | None:
        """Who holds ``name`` now (its lease still running), or ``None``."""
        current = self._read(self._key(name))
        if current is None or current[0] is None or current[0].expires <= self.clock():
            return None
        return current[0].owner

    def __repr__(self) -> str:
        return f"Claims({self.bucket!r}, {self.prefix!r}, owner={self.owner!r}, lease_s={self.lease_s})"
