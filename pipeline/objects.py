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
- Transient failures (5xx, throttling, dropped connections) are retried with exponential backoff and
  jitter by the client (5 attempts, unless the standard ``AWS_MAX_ATTEMPTS`` says otherwise); what still
  fails raises :class:`~desra_core.errors.StorageError`.

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from desra_core.errors import AccessDeniedError, ConfigError, MissingObjectError, StorageError
from desra_core.image import atomic_path

if sys.platform == "win32":  # not POSIX (Windows is not a target): local conditional writes are not exclusive
    fcntl = None
else:
    import fcntl

__all__ = ["MAX_KEY_BYTES", "Bucket", "Claim", "Claims", "LocalBucket", "ObjectInfo", "S3Bucket", "botocore_retries",
           "check_key", "is_url", "retry_attempts", "retry_config"]

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


_PLAIN_KEY = re.compile(r"[\x20-\x5b\x5d-\x7e]+")  # printable ASCII but the backslash: most keys, checked at once


def _key_problem(key: str) -> str:
    if _PLAIN_KEY.fullmatch(key) and len(key) <= MAX_KEY_BYTES:
        parts = key.split("/")
        if "" not in parts and "." not in parts and ".." not in parts:
            return ""
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

    def download(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        """The object written to the local file ``path`` (whole or not at all: a temporary file beside it, renamed
        into place); its size and the ETag of the bytes written."""
        data, etag = self.read_versioned(key)
        with atomic_path(Path(path)) as temp:
            Path(temp).write_bytes(data)
        return ObjectInfo(self._key(key), len(data), etag)

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

    def create(self, key: str, data: bytes) -> str | None:
        """:meth:`write_if_absent` that gives the new object's ETag (``None``: an object existed)."""
        return self.info(key).etag if self.write_if_absent(key, data) else None

    def replace_versioned(self, key: str, data: bytes, etag: str) -> str | None:
        """:meth:`replace_if` that gives the new object's ETag (``None``: it changed or is gone)."""
        return self.info(key).etag if self.replace_if(key, data, etag) else None

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
_NO_OBJECT = {"NoSuchKey", "NotFound"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
                    "UnrecognizedClientException"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
_CONFLICT = {"ConditionalRequestConflict"}  # a concurrent conditional write is in flight: try again
_CODE = re.compile(r"<Code>([A-Za-z0-9.]+)</Code>")
_STATUS = re.compile(r"status code: (\d{3})")
_CONNECT = re.compile(r"error sending request|[Cc]onnect|timed out|[Tt]imeout|dns error")


def retry_attempts() -> int:
    """Attempts per request (the first one included, as the AWS SDKs count them): 5, or what the standard
    variable ``AWS_MAX_ATTEMPTS`` says."""
    attempts = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
    try:
        total = int(attempts) if attempts else 5
    except ValueError:
        raise ConfigError(f"expected AWS_MAX_ATTEMPTS as a whole number of attempts, got {attempts!r}") from None
    if total < 1:
        raise ConfigError(f"expected AWS_MAX_ATTEMPTS of at least 1, got {total}")
    return total


def retry_config() -> dict[str, Any]:
    """obstore's retries: exponential backoff with jitter on 5xx, throttling and dropped connections, for
    :func:`retry_attempts` attempts."""
    from datetime import timedelta

    return {"max_retries": retry_attempts() - 1, "retry_timeout": timedelta(seconds=120),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=15),
                        "base": 2}}


def botocore_retries() -> dict[str, Any]:
    """The same retries for a botocore client's ``Config`` (listings, SQS): its ``standard`` mode."""
    return {"retries": {"mode": "standard", "max_attempts": retry_attempts()}}


class _StandardCredentials:
    """A session's credentials (:func:`aws_session`: the AWS SDK's standard chain through botocore, or a
    prefect-aws block's), as obstore's credential provider; the chain's own caching and refreshing apply, and
    obstore asks again a little before the credentials expire."""

    def __init__(self, credentials: Callable[[], Any]) -> None:
        self._credentials = credentials

    def resolve(self) -> Any:
        return self._credentials()

    def __call__(self) -> dict[str, Any]:
        from datetime import UTC, datetime, timedelta

        credentials = self.resolve()
        if credentials is None:
            raise PermissionError("no credentials in the standard chain")
        frozen = credentials.get_frozen_credentials()
        expiry = getattr(credentials, "_expiry_time", None)  # refreshable credentials (roles, SSO) expire
        expires_at = expiry if isinstance(expiry, datetime) else datetime.now(UTC) + timedelta(minutes=30)
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token, "expires_at": expires_at}


CREDENTIALS_BLOCK_VARIABLE = "DESRA_AWS_CREDENTIALS_BLOCK"  # a prefect-aws AwsCredentials block's name


class AwsSession(NamedTuple):
    """Where a worker's S3 and SQS requests get their credentials, region and endpoint (:func:`aws_session`)."""

    credentials: Callable[[], Any]  # → botocore credentials (refreshed by their own chain), or None
    region: str | None  # None: none configured
    endpoint: str | None  # None: the service's own
    client: Callable[..., Any]  # (service, region_name=, endpoint_url=, config=) → a botocore client
    source: str  # where the credentials come from, for messages


def aws_session(service: str, where: str) -> AwsSession:
    """The worker's AWS session for ``service`` (``"s3"``, ``"sqs"``), on behalf of ``where`` (a URL, for errors).

    By default: the SDK's standard chain through botocore, the region from ``AWS_REGION``/``AWS_DEFAULT_REGION``
    or the shared config, the endpoint from ``AWS_ENDPOINT_URL_<SERVICE>`` or ``AWS_ENDPOINT_URL``. With
    ``DESRA_AWS_CREDENTIALS_BLOCK`` set in the worker's environment, from the prefect-aws ``AwsCredentials`` block
    of that name on the worker's Prefect API instead (keys, profile or assumed role, region, and its
    ``aws_client_parameters.endpoint_url`` when it has one): the credentials of teams that keep them in Prefect.
    Either way they are the operator's, never a run's parameter, and no message carries them."""
    endpoint = os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    name = os.environ.get(CREDENTIALS_BLOCK_VARIABLE, "").strip()
    if not name:
        try:
            import botocore.session
        except ImportError:
            raise ConfigError(f"expected the s3 extra for {where} (pip install 'desra[s3]'), got no botocore") from None
        session = botocore.session.get_session()
        return AwsSession(session.get_credentials, region or session.get_config_variable("region"), endpoint,
                          session.create_client, "the environment or the standard AWS chain")
    try:
        from prefect_aws import AwsCredentials
    except ImportError:
        raise ConfigError(f"expected prefect-aws for the credentials block {name!r} ({CREDENTIALS_BLOCK_VARIABLE}) "
                          f"of {where} (pip install 'desra[aws-block]'), got none installed") from None
    try:
        load: Any = AwsCredentials.load  # Prefect's dispatcher takes _sync (its stubs do not say so): a plain call
        block: Any = load(name, _sync=True)
    except (ValueError, KeyError) as exc:  # Prefect: no block document of that name (or of another type)
        raise ConfigError(f"expected an AwsCredentials block named {name!r} ({CREDENTIALS_BLOCK_VARIABLE}) on the "
                          f"Prefect API for {where}, got none ({type(exc).__name__})") from None
    except Exception as exc:  # the API unreachable or refusing: its message may hold a URL with credentials
        raise StorageError(f"expected to read the credentials block {name!r} ({CREDENTIALS_BLOCK_VARIABLE}) for "
                           f"{where} from the Prefect API, got {type(exc).__name__}", url=where) from None
    try:
        boto = block.get_boto3_session()  # with a role to assume, an STS request
    except Exception as exc:
        raise StorageError(f"expected the credentials block {name!r} ({CREDENTIALS_BLOCK_VARIABLE}) to give a session "
                           f"for {where}, got {type(exc).__name__}", url=where) from None
    given = getattr(getattr(block, "aws_client_parameters", None), "endpoint_url", None)
    return AwsSession(boto.get_credentials, block.region_name or region or boto.region_name,
                      str(given) if given else endpoint, boto.client, f"the credentials block {name!r}")


class S3Bucket(Bucket):
    """``s3://bucket/prefix`` through obstore's S3 client (the ``s3`` extra: ``pip install 'desra[s3]'``):
    each request is made and signed in compiled code, which costs a tenth of the CPU that the Python SDKs
    spend per request (``benchmarks/scale_out.py``); credentials come from botocore's standard chain, or a
    prefect-aws block (:func:`aws_session`)."""

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
        self._client: Any = None
        self._lister: Any = None
        self._session: AwsSession | None = None
        self._client_lock = threading.Lock()

    # The client is made on first use, so that a Bucket can be made (and pickled) before the environment that
    # holds the credentials and the endpoint is set; each Bucket has its own, so that credentials are never
    # shared between buckets made under different environments.
    def _store(self, key: str) -> Any:
        with self._client_lock:
            if self._client is None:
                try:
                    from obstore.store import S3Store  # the optional `s3` extra
                except ImportError:
                    raise ConfigError(f"expected the s3 extra for {self.url} (pip install 'desra[s3]'), "
                                      "got no obstore or botocore") from None
                where = f"{self.url}/{key}" if key else self.url
                session = aws_session("s3", where)
                credentials = _StandardCredentials(session.credentials)
                if credentials.resolve() is None:
                    raise StorageError(f"expected credentials for {where} in {session.source}, got none", url=where)
                region, endpoint = session.region or "us-east-1", session.endpoint
                self._session = session._replace(region=region)
                options: dict[str, Any] = {"region": region}
                if endpoint:
                    options["endpoint"] = endpoint
                http = bool(endpoint and endpoint.startswith("http:"))  # a server on loopback, MinIO in compose
                make: Any = S3Store  # its config types are TypedDicts that plain dicts stand for here
                self._client = make(self.name, config=options, credential_provider=credentials,
                                    client_options={"allow_http": http}, retry_config=retry_config())
            return self._client

    # A listing that obstore refuses, and an admission's probe, go through botocore's client (made then, once
    # per bucket: making it costs about 80 ms of CPU). obstore refuses a whole listing page when one key in it
    # is not a path it accepts (a control character, a "." component), and a drop may hold such names, which
    # the caller reports one by one; and it cannot ask for a page of one key.
    def _listing_client(self, key: str) -> Any:
        self._store(key)  # the same checks of the extra and the credentials
        with self._client_lock:
            if self._lister is None:
                import botocore.config

                session = self._session
                assert session is not None  # made with the client
                self._lister = session.client(
                    "s3", region_name=session.region, endpoint_url=session.endpoint,
                    config=botocore.config.Config(**botocore_retries()))
            return self._lister

    def _pages(self, key: str, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        """The pages of ``ListObjectsV2`` under ``prefix`` (whole keys), as botocore gives them."""
        options = {"Bucket": self.name, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
        try:
            yield from self._listing_client(key).get_paginator("list_objects_v2").paginate(**options)
        except (StorageError, ConfigError):
            raise
        except Exception as exc:
            raise self._error(exc, key) from None

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()
                if key not in ("_client", "_lister", "_client_lock", "_session")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _client=None, _lister=None, _client_lock=threading.Lock(), _session=None)

    def _run(self, request: Callable[[Any], _T], key: str) -> _T:
        """Run one request (``request(store)``), mapping its failures to desra's errors (which never carry the
        client's own message: it can hold request details, never shown)."""
        store = self._store(key)
        try:
            return request(store)
        except Exception as exc:
            raise self._error(exc, key) from None

    def _full(self, key: str) -> str:
        return f"{self.prefix}{key}"

    @staticmethod
    def _code(exc: BaseException) -> str:
        """The S3 error code of a failed request (``NoSuchKey``, ``PreconditionFailed``…), else its HTTP status
        as text, else ``""``."""
        response = getattr(exc, "response", None)  # botocore's ClientError (listings)
        if isinstance(response, dict):
            error = response.get("Error", {})
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            return str(error.get("Code") or status or "")
        text = str(exc)
        code = _CODE.search(text)
        if code:
            return code.group(1)
        status = _STATUS.search(text)
        return status.group(1) if status else ""

    def _error(self, exc: Exception, key: str) -> Exception:
        """The desra error for one failed request."""
        if isinstance(exc, (StorageError, ConfigError)):
            return exc
        where = f"{self.url}/{key}" if key else self.url
        text = str(exc)
        code = self._code(exc)
        if "no credentials in the standard chain" in text:
            return StorageError(f"expected credentials for {where} in the environment or the standard AWS "
                                "chain, got none", url=where)
        if code in _NO_BUCKET:
            return StorageError(f"expected an existing bucket for {where}, got no bucket {self.name!r}", url=where)
        if code in _BAD_CREDENTIALS:
            return StorageError(f"expected valid credentials for {where}, got credentials that the server "
                                f"refused ({code})", url=where)
        if code in _DENIED or (code == "403" and key):
            return AccessDeniedError(f"expected access to {where}, got access denied", url=where)
        if code in _NO_OBJECT or (code == "404" and key):
            return MissingObjectError(f"expected an object at {where}, got none", url=where)
        if not code and _CONNECT.search(text):
            return StorageError(f"expected to reach the S3 endpoint for {where}, got no answer after retries",
                                url=where)
        return StorageError(f"expected {where} to be served, got {code or type(exc).__name__} after retries",
                            url=where)

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        import obstore

        key = self._key(key)

        def get(store: Any) -> tuple[bytes, str]:
            result = obstore.get(store, self._full(key))
            return bytes(result.bytes()), _etag(result.meta["e_tag"] or "")

        return self._run(get, key)

    def download(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        """Streamed (10 MB at a time), so that a model file of any size never sits in memory whole."""
        import obstore

        key = self._key(key)

        def get(store: Any) -> ObjectInfo:
            result = obstore.get(store, self._full(key))
            size = 0
            with atomic_path(Path(path)) as temp, open(temp, "wb") as out:
                for chunk in result.stream():
                    out.write(chunk)
                    size += len(chunk)
                if size != int(result.meta["size"]):
                    raise StorageError(f"expected {result.meta['size']} bytes from {self.url}/{key}, got {size}",
                                       url=f"{self.url}/{key}")
            return ObjectInfo(key, size, _etag(result.meta["e_tag"] or ""))

        return self._run(get, key)

    def _ranged(self, key: str, start: int, length: int) -> tuple[bytes, str] | None:
        """One ranged GET: the bytes and the whole object's ETag, or ``None`` when ``start`` is at or past the
        end of an existing object (416)."""
        import obstore

        def get(store: Any) -> tuple[bytes, str] | None:
            try:
                result = obstore.get(store, self._full(key), options={"range": (start, start + length)})
            except Exception as exc:
                if self._code(exc) == "InvalidRange":
                    return None
                raise
            return bytes(result.bytes()), _etag(result.meta["e_tag"] or "")

        return self._run(get, key)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        key = self._key(key)
        _check_range(start, length)
        if length == 0:
            self.info(key)  # a missing object is still an error
            return b""
        found = self._ranged(key, start, length)
        return b"" if found is None else found[0]

    def read_head(self, key: str, length: int) -> tuple[bytes, str]:
        key = self._key(key)
        _check_range(0, length)
        if length == 0:
            return b"", self.info(key).etag
        found = self._ranged(key, 0, length)
        return (b"", self.info(key).etag) if found is None else found  # None: an empty object

    def _listed(self, key: str, under: str, *, delimited: bool) -> tuple[list[tuple[str, int, str]], list[str]]:
        """The objects under the folder ``under`` (a full key without its ``/``; ``""``: the whole bucket) as
        ``(full key, size, ETag)``; with ``delimited``, only those directly under it, and its "folders" (full
        keys, without the ``/``). LIST requests of 1 000 names each, through obstore; through botocore when
        obstore refuses a name on the page (a control character, a ``.`` component): a drop may hold such
        names, which the caller reports one by one."""
        import obstore
        from obstore.exceptions import InvalidPathError

        def fast(store: Any) -> tuple[list[tuple[str, int, str]], list[str]] | None:
            try:
                if delimited:
                    level = obstore.list_with_delimiter(store, under or None)
                    items, folders = level["objects"], [str(name) for name in level["common_prefixes"]]
                else:
                    items = [item for chunk in obstore.list(store, under or None, chunk_size=1000) for item in chunk]
                    folders = []
            except InvalidPathError:
                return None
            return [(str(i["path"]), int(i["size"]), _etag(i["e_tag"] or "")) for i in items], folders

        found = self._run(fast, key)
        if found is not None:
            return found
        objects: list[tuple[str, int, str]] = []
        folders: list[str] = []
        for page in self._pages(key, f"{under}/" if under else "", "/" if delimited else None):
            objects.extend((str(item["Key"]), int(item["Size"]), _etag(str(item.get("ETag", ""))))
                           for item in page.get("Contents", []))
            folders.extend(str(common["Prefix"]).rstrip("/") for common in page.get("CommonPrefixes", []))
        return objects, folders

    def list_level(self) -> tuple[list[tuple[str, int, str]], list[str]]:
        """``([(name, size, etag)], [folder name])``: the objects and the "folders" directly under the root, as
        LIST requests with a ``/`` delimiter give them (1 000 names each). Unlike :meth:`list`, names that
        :func:`check_key` refuses are kept, for the caller to report; they are names, not keys to request."""
        objects, folders = self._listed("", self.prefix.rstrip("/"), delimited=True)
        start = len(self.prefix)
        return ([(full[start:], size, etag) for full, size, etag in objects if full[start:]],  # not the root's
                [name[start:] for name in folders if name[start:]])  # own "folder" marker

    def info(self, key: str) -> ObjectInfo:
        import obstore

        key = self._key(key)

        def head(store: Any) -> ObjectInfo:
            meta = obstore.head(store, self._full(key))
            return ObjectInfo(key, int(meta["size"]), _etag(meta["e_tag"] or ""))

        try:
            return self._run(head, key)
        except MissingObjectError:
            # A HEAD answer has no body, so a missing bucket is a bare 404 too: a GET's answer tells them apart
            # (NoSuchBucket raises here; NoSuchKey is the missing object).
            self._ranged(key, 0, 1)
            raise

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = check_key(prefix.rstrip("/"), where=self.url, allow_empty=True)
        under = self._full(prefix) if prefix else self.prefix.rstrip("/")
        objects, _ = self._listed(prefix, under, delimited=False)
        start = len(self.prefix)
        return sorted(ObjectInfo(full[start:], size, etag) for full, size, etag in objects
                      if not _key_problem(full[start:]))  # objects that other tools wrote with unsafe keys are not seen

    def write(self, key: str, data: bytes) -> str:
        import obstore

        key = self._key(key)

        def put(store: Any) -> str:
            return _etag(obstore.put(store, self._full(key), bytes(data), use_multipart=False)["e_tag"] or "")

        return self._run(put, key)

    def _conditional_put(self, key: str, data: bytes, mode: Any) -> str | None:
        """The new ETag when the write went through; ``None`` when its condition did not hold."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        def put(store: Any) -> str | bool | None:
            try:
                result = obstore.put(store, self._full(key), bytes(data), mode=mode, use_multipart=False)
            except (AlreadyExistsError, PreconditionError) as exc:
                if self._code(exc) in _CONFLICT or self._code(exc) == "409":
                    return False  # undecided: try again
                return None  # the object exists (create), or changed or is gone (update)
            except Exception as exc:
                if self._code(exc) in _CONFLICT or self._code(exc) == "409":
                    return False
                raise
            return _etag(result["e_tag"] or "")

        # 409 ConditionalRequestConflict: another conditional write to the key was in flight; S3 asks to
        # retry, and the retry sees the winner's object (then 412) or none (then this write goes through).
        for attempt in range(6):
            outcome = self._run(put, key)
            if outcome is not False:
                return outcome if isinstance(outcome, str) else None
            time.sleep(min(0.05 * 2**attempt, 1.0))
        raise StorageError(f"expected a conditional write to {self.url}/{key} to be decided, got conflicts "
                           "after retries", url=f"{self.url}/{key}")

    def write_if_absent(self, key: str, data: bytes) -> bool:
        return self.create(key, data) is not None

    def create(self, key: str, data: bytes) -> str | None:
        """:meth:`write_if_absent` that gives the new object's ETag, ``None`` when one existed."""
        return self._conditional_put(self._key(key), data, "create")

    def replace_if(self, key: str, data: bytes, etag: str) -> bool:
        return self.replace_versioned(key, data, etag) is not None

    def replace_versioned(self, key: str, data: bytes, etag: str) -> str | None:
        """:meth:`replace_if` that gives the new object's ETag, ``None`` when it changed or is gone."""
        return self._conditional_put(self._key(key), data, {"e_tag": f'"{_etag(etag)}"'})

    def delete(self, key: str) -> None:
        import obstore

        key = self._key(key)
        self._run(lambda store: obstore.delete(store, self._full(key)), key)

    def check_readable(self) -> None:
        """One ``ListObjectsV2`` of at most one key under the prefix (through botocore: obstore cannot ask for
        fewer than a page of 1 000): the bucket exists, the credentials are accepted and may list there."""
        options = {"Bucket": self.name, "Prefix": self.prefix, "MaxKeys": 1}
        try:
            self._listing_client("").list_objects_v2(**options)
        except (StorageError, ConfigError):
            raise
        except Exception as exc:
            raise self._error(exc, "") from None


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
        self._written: dict[str, str] = {}  # key -> ETag of the claim object this owner last wrote there

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

    def _wrote(self, key: str, etag: str | None) -> bool:
        if etag is None:
            self._written.pop(key, None)
            return False
        self._written[key] = etag
        return True

    def _update(self, key: str, expires: float | None = None) -> bool | None:
        """Rewrite this owner's claim at ``key`` with ``If-Match`` on the ETag of what it last wrote there (no
        read): ``True`` when done, ``None`` when it wrote nothing there yet or the object changed since (then
        the caller reads it)."""
        etag = self._written.get(key)
        if etag is None:
            return None
        return self._wrote(key, self.bucket.replace_versioned(key, self._record(expires), etag)) or None

    def create(self, name: str) -> bool:
        """Take the claim on ``name`` only where no claim on it was ever taken (claim objects are never deleted):
        ``True`` when this call created it. One request; :meth:`claim` does the rest."""
        key = self._key(name)
        return self._wrote(key, self.bucket.create(key, self._record()))

    def claim(self, name: str) -> bool:
        """Take the claim on ``name``: ``True`` when this owner holds it now (taken, taken over, or renewed)."""
        key = self._key(name)
        for _ in range(8):  # a released-and-deleted claim between our reads: look again
            if self._wrote(key, self.bucket.create(key, self._record())):
                return True
            current = self._read(key)
            if current is None:
                continue
            claim, etag = current
            if claim is not None and claim.owner != self.owner and claim.expires > self.clock():
                return False  # held, and the lease runs
            return self._wrote(key, self.bucket.replace_versioned(key, self._record(), etag))
        return False

    def renew(self, name: str) -> bool:
        """Extend this owner's lease on ``name`` by ``lease_s`` from now; ``False`` when it is not held by it
        (never taken, released, or taken over by another after the lease ran out)."""
        key = self._key(name)
        if self._update(key):
            return True  # one request: nobody wrote the claim since this owner did
        current = self._read(key)
        if current is None or current[0] is None or current[0].owner != self.owner:
            return False
        return self._wrote(key, self.bucket.replace_versioned(key, self._record(), current[1]))

    def release(self, name: str) -> bool:
        """Give up this owner's claim on ``name``; ``False`` (and nothing changes) when another holds it.

        The claim object is not deleted but marked expired with ``If-Match``, so a release can never remove a
        claim that another worker took over in the meantime.
        """
        key = self._key(name)
        released = self._update(key, expires=0.0)  # one request while nobody wrote the claim since this owner
        if not released:
            current = self._read(key)
            if current is None or current[0] is None or current[0].owner != self.owner:
                return False
            released = self.bucket.replace_if(key, self._record(expires=0.0), current[1])
        self._written.pop(key, None)
        return released

    def holder(self, name: str) -> str | None:
        """Who holds ``name`` now (its lease still running), or ``None``."""
        current = self._read(self._key(name))
        if current is None or current[0] is None or current[0].expires <= self.clock():
            return None
        return current[0].owner

    def __repr__(self) -> str:
        return f"Claims({self.bucket!r}, {self.prefix!r}, owner={self.owner!r}, lease_s={self.lease_s})"
