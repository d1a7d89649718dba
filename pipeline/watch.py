"""From a bucket's object-created notifications to ``desra.drop.landed`` events: the bridge's Prefect-free core.

S3 sends a notification for every new object to an SQS queue (the bucket's notification configuration).
:class:`Bridge` consumes that queue, keeps the new objects under one watched ``s3://bucket/prefix``
(:class:`DropWatch`), groups them per drop folder, the key's first component under the prefix
(``s3://drops/in/<drop>/x.png`` belongs to the drop ``s3://drops/in/<drop>``), and once a folder has had no
new object for ``quiet_s`` seconds, or at the latest ``max_wait_s`` after its first (:class:`Debouncer`),
hands one :class:`DropEvent` to its emitter. A burst of uploads thus gives one event, hence one flow run,
not one per object.

Delivery is at least once. A message is deleted from the queue only after the event for every drop folder
it named was emitted; a bridge that dies before that, or whose emitter fails, leaves the message to come
back (after its visibility timeout, or at once when the bridge hands it back), and it gives the event again.
A repeated event is harmless: the run it starts finds every image of the folder that is already known in
the content-addressed store by its bytes, and does no model work for them (it lists and hashes only).

Messages that are no notification of a new object under the watched prefix (S3's ``s3:TestEvent``,
removals, other buckets or prefixes, keys that :func:`~desra.pipeline.objects.check_key` refuses, objects
directly under the prefix rather than in a drop folder) and malformed bodies are reported in one line and
deleted at once: they never stop the loop.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote_plus

from desra.pipeline.objects import Bucket, S3Bucket, aws_session, botocore_retries, check_key
from desra.pipeline.text import inert, visible
from desra_core.errors import AccessDeniedError, ConfigError, StorageError

__all__ = ["EVENT", "RESOURCE_PREFIX", "Bridge", "Created", "Debouncer", "DropEvent", "DropWatch", "Landed",
           "Message", "Notification", "NotificationError", "Queue", "SQSQueue", "drop_event", "parse_notification"]

EVENT = "desra.drop.landed"
RESOURCE_PREFIX = "desra.drop."
"""Every event's resource id starts so (the desra/on-drop trigger matches ``desra.drop.*``); the drop folder's
URL follows: ``desra.drop.s3://drops/in/batch-7``."""
MAX_WAIT_S = 20  # SQS's longest long poll
VISIBILITY_MARGIN_S = 60  # beyond max_wait_s: how long a received message stays hidden before SQS resends it
MAX_VISIBILITY_S = 12 * 3600  # SQS's limit
_BATCH = 10  # SQS's most messages per receive and per delete


# --- notifications --------------------------------------------------------------------------------------------

class NotificationError(ValueError):
    """A message body that is no S3 event notification."""


class Created(NamedTuple):
    """One new object, as a notification names it: bucket, key (URL-decoded, possibly not valid) and event."""

    bucket: str
    key: str
    event: str


class Notification(NamedTuple):
    """What one message says: the new objects, one line per other record, and whether it is S3's test event."""

    created: tuple[Created, ...] = ()
    skipped: tuple[str, ...] = ()
    test: bool = False


def _record(record: object) -> Created | str:
    """A record of a notification: a :class:`Created`, or one line saying why it is not about a new object."""
    if not isinstance(record, dict):
        return f"a record that is not an object ({type(record).__name__})"
    name = record.get("eventName")
    s3 = record.get("s3")
    if not isinstance(name, str) or not isinstance(s3, dict):
        return "a record without eventName or s3"
    name = name.removeprefix("s3:")  # MinIO writes "s3:ObjectCreated:Put", S3 "ObjectCreated:Put"
    bucket, obj = s3.get("bucket"), s3.get("object")
    bucket_name = bucket.get("name") if isinstance(bucket, dict) else None
    key = obj.get("key") if isinstance(obj, dict) else None
    if not isinstance(bucket_name, str) or not isinstance(key, str):
        return f"a {visible(name)} record without s3.bucket.name or s3.object.key"
    if not name.startswith("ObjectCreated:"):
        return f"{visible(name)} of s3://{visible(bucket_name)}/{visible(unquote_plus(key))}"
    # S3 sends the key URL-encoded with spaces as "+"; undecodable bytes stay as surrogates, which check_key refuses
    return Created(bucket_name, unquote_plus(key, errors="surrogateescape"), name)


def parse_notification(body: str | bytes) -> Notification:
    """The notification in one SQS message body: S3's own JSON (``{"Records": [...]}``), the same wrapped by SNS
    (``{"Type": "Notification", "Message": "..."}``), or S3's ``s3:TestEvent``; :class:`NotificationError`
    for anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotificationError(f"expected an S3 event notification in JSON, got a body that is not JSON ({exc})"
                                ) from None
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        try:  # S3 → SNS → SQS without raw delivery: the notification is the SNS message's text
            doc = json.loads(doc["Message"])
        except ValueError as exc:
            raise NotificationError(f"expected an S3 event notification in an SNS message, got no JSON ({exc})"
                                    ) from None
    if not isinstance(doc, dict):
        raise NotificationError(f"expected an S3 event notification (a JSON object), got {type(doc).__name__}")
    if doc.get("Event") == "s3:TestEvent":
        return Notification(test=True)
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        keys = ", ".join(visible(k) for k in list(doc)[:5])
        raise NotificationError(f"expected an S3 event notification with Records, got an object with keys [{keys}]")
    parsed = [_record(r) for r in records]
    return Notification(tuple(p for p in parsed if isinstance(p, Created)),
                        tuple(p for p in parsed if isinstance(p, str)))


class DropWatch:
    """Which new objects start work: those in a drop folder directly under ``s3://bucket/prefix``.

    ``output_url`` (the runs' output root) must not lie under the watched prefix: desra's own outputs would
    then start runs in a loop.
    """

    def __init__(self, drop_url: str, output_url: str | None = None) -> None:
        bucket = Bucket.at(drop_url)
        if not isinstance(bucket, S3Bucket):
            raise ConfigError(f"expected an s3://bucket/prefix URL to watch (the bucket sends the notifications), "
                              f"got {drop_url!r}")
        self.bucket, self.prefix, self.url = bucket.name, bucket.prefix, bucket.url
        if output_url and output_url.startswith("s3://"):
            out = Bucket.at(output_url)
            if isinstance(out, S3Bucket) and out.name == self.bucket and f"{out.prefix}".startswith(self.prefix):
                raise ConfigError(f"expected the output root outside the watched drops {self.url}, got "
                                  f"{out.url} (desra's own outputs would start runs in a loop)")

    def folder_of(self, created: Created) -> tuple[str | None, str]:
        """The drop folder's URL that ``created`` belongs to and ``""``, or ``None`` and why it is ignored."""
        where = visible(f"s3://{created.bucket}/{created.key}")
        if created.bucket != self.bucket or not created.key.startswith(self.prefix):
            return None, f"{where} lies outside {self.url}"
        relative = created.key[len(self.prefix):]
        try:
            check_key(relative, where=self.url)
        except ConfigError as exc:
            return None, f"a key that cannot be a drop's image: {exc}"
        drop, sep, _ = relative.partition("/")
        if not sep:
            return None, f"{where} lies directly under {self.url}, not in a drop folder"
        return f"{self.url}/{drop}", ""


# --- debouncing -------------------------------------------------------------------------------------------------

class Landed(NamedTuple):
    """A drop folder that has gone quiet: its URL, how many objects arrived, the tokens (message ids) of the
    notifications that named it, and when (on the debouncer's clock) the first and the last arrived."""

    folder: str
    objects: int
    tokens: tuple[str, ...]
    first: float
    last: float


@dataclass
class _Pending:
    first: float
    last: float
    keys: set[str] = field(default_factory=set)
    tokens: dict[str, None] = field(default_factory=dict)  # ordered set


class Debouncer:
    """New objects grouped per drop folder, each folder released once it has had ``quiet_s`` seconds without a
    new notification, or ``max_wait_s`` after its first, whichever comes first. ``clock`` gives seconds
    (``time.monotonic`` unless a test gives another). A notification already pending (a token seen before:
    SQS delivered the message again) does not restart the quiet period."""

    def __init__(self, quiet_s: float, max_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(quiet_s) and quiet_s >= 0):
            raise ConfigError(f"expected a quiet period of 0 s or more, got {quiet_s!r}")
        if not (math.isfinite(max_wait_s) and max_wait_s >= quiet_s and max_wait_s > 0):
            raise ConfigError(f"expected a longest wait above 0 s and at least the quiet period ({quiet_s} s), "
                              f"got {max_wait_s!r}")
        self.quiet_s, self.max_wait_s, self.clock = quiet_s, max_wait_s, clock
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, folder: str, key: str, token: str) -> None:
        """Object ``key`` arrived in ``folder``, named by the notification ``token``."""
        now = self.clock()
        pending = self._pending.setdefault(folder, _Pending(first=now, last=now))
        pending.keys.add(key)
        if token not in pending.tokens:
            pending.tokens[token] = None
            pending.last = now

    def _due(self, pending: _Pending) -> float:
        return min(pending.last + self.quiet_s, pending.first + self.max_wait_s)

    def next_due(self) -> float | None:
        """When the next folder is due (on the clock), or ``None`` when nothing is pending."""
        return min((self._due(p) for p in self._pending.values()), default=None)

    def _landed(self, folder: str, pending: _Pending) -> Landed:
        return Landed(folder, len(pending.keys), tuple(pending.tokens), pending.first, pending.last)

    def release(self) -> list[Landed]:
        """The folders that are due now, in the order their first objects arrived; they are no longer pending."""
        now = self.clock()
        due = sorted((p.first, f) for f, p in self._pending.items() if now >= self._due(p))
        return [self._landed(f, self._pending.pop(f)) for _, f in due]

    def forget(self) -> list[Landed]:
        """Every pending folder, due or not (a bridge that stops hands their messages back)."""
        landed = [self._landed(f, p) for f, p in sorted(self._pending.items(), key=lambda item: item[1].first)]
        self._pending.clear()
        return landed


# --- the queue and the loop -------------------------------------------------------------------------------------

class Message(NamedTuple):
    """One received SQS message: its id, the receipt handle of this delivery and its body."""

    id: str
    receipt: str
    body: str


class Queue(Protocol):
    """What the bridge needs of a queue (:class:`SQSQueue`; tests may give a fake)."""

    url: str

    def receive(self, *, wait_s: int, visibility_s: int) -> list[Message]:
        """Up to 10 messages, waiting up to ``wait_s`` seconds for one; hidden from others for ``visibility_s``."""
        ...

    def delete(self, receipts: Sequence[str]) -> int:
        """Delete the messages; how many could not be deleted (they come back later)."""
        ...

    def release(self, receipts: Sequence[str]) -> None:
        """Make the messages visible again now, for another try."""
        ...


class DropEvent(NamedTuple):
    """The event to emit for one drop folder: name, resource (``prefect.resource.id`` and a name) and payload."""

    event: str
    resource: dict[str, str]
    payload: dict[str, Any]


def drop_event(folder: str, output_dir: str, objects: int = 0) -> DropEvent:
    """The ``desra.drop.landed`` event for ``folder``: resource id ``desra.drop.<folder URL>`` (what the
    desra/on-drop trigger matches), payload ``{"folder", "output_dir", "objects"}`` (the trigger reads the first
    two; ``objects`` says how many new objects the burst held)."""
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    return DropEvent(EVENT, {"prefect.resource.id": f"{RESOURCE_PREFIX}{folder}", "prefect.resource.name": name},
                     {"folder": folder, "output_dir": output_dir, "objects": objects})


def _ignore(line: str) -> None:
    pass


class Bridge:
    """The loop: receive notifications from ``queue``, debounce them per drop folder of ``watch``, emit one
    :class:`DropEvent` per quiet folder with ``emit`` (which raises when the event was not delivered), and only
    then delete the folder's messages.

    :meth:`step` does one round (receive or wait, then release what is due) and returns the events it emitted;
    :meth:`run` repeats it until ``stop`` is set, then hands the messages of folders not yet quiet back to the
    queue. ``say`` and ``warn`` get one line each (what was emitted or ignored; what went wrong).
    """

    def __init__(self, queue: Queue, watch: DropWatch, output_dir: str, emit: Callable[[DropEvent], None], *,
                 quiet_s: float = 10.0, max_wait_s: float = 120.0, poll_s: int = MAX_WAIT_S,
                 clock: Callable[[], float] = time.monotonic, stop: threading.Event | None = None,
                 say: Callable[[str], None] = _ignore, warn: Callable[[str], None] = _ignore) -> None:
        if not 1 <= poll_s <= MAX_WAIT_S:
            raise ConfigError(f"expected a long poll of 1 to {MAX_WAIT_S} s, got {poll_s!r}")
        self.queue, self.watch, self.output_dir, self.emit = queue, watch, output_dir, emit
        self.debouncer = Debouncer(quiet_s, max_wait_s, clock)
        self.poll_s, self.clock, self.say, self.warn = poll_s, clock, say, warn
        self.stop = stop if stop is not None else threading.Event()
        self.visibility_s = min(MAX_VISIBILITY_S, math.ceil(max_wait_s) + VISIBILITY_MARGIN_S)
        self._receipts: dict[str, str] = {}  # message id → receipt handle of its latest delivery, while pending
        self._open: dict[str, int] = {}  # message id → drop folders of it not yet emitted
        self._backlog = False  # the last receive returned messages: more may wait in the queue

    # How long the next receive may wait: no wait while the queue still had messages (a backlog is read before any
    # folder counts as quiet), else until the next folder is due (at most poll_s); None: sleep that long instead
    # (due in under a second, below SQS's whole-second waits) or not at all (due already).
    def _wait(self) -> tuple[int | None, float]:
        if self._backlog:
            return 0, 0.0
        due = self.debouncer.next_due()
        if due is None:
            return self.poll_s, 0.0
        left = due - self.clock()
        if left < 1:
            return None, max(left, 0.0)
        return min(self.poll_s, int(left)), 0.0

    def step(self) -> list[DropEvent]:
        """One round: receive (or sleep until a folder is due), then emit and delete what is due."""
        wait, sleep = self._wait()
        if wait is None:
            if sleep > 0:
                self.stop.wait(sleep)
        else:
            messages = self.queue.receive(wait_s=wait, visibility_s=self.visibility_s)
            self._backlog = bool(messages)
            self._take(messages)
        return self._release()

    def _take(self, messages: Sequence[Message]) -> None:
        done: list[str] = []
        for message in messages:
            if message.id in self._open:  # delivered again while its folder waits: keep the newest receipt
                self._receipts[message.id] = message.receipt
                continue
            try:
                notification = parse_notification(message.body)
            except NotificationError as exc:
                self.warn(f"deleted message {inert(message.id)}: {inert(exc)}")
                done.append(message.receipt)
                continue
            if notification.test:
                self.say(f"deleted S3's test event (message {inert(message.id)})")
                done.append(message.receipt)
                continue
            folders: dict[str, list[str]] = {}
            for created in notification.created:
                folder, why = self.watch.folder_of(created)
                if folder is None:
                    self.say(f"ignored {inert(why)}")
                else:
                    folders.setdefault(folder, []).append(created.key)
            for line in notification.skipped:
                self.say(f"ignored {inert(line)}")
            if not folders:
                done.append(message.receipt)
                continue
            self._open[message.id] = len(folders)
            self._receipts[message.id] = message.receipt
            for folder, keys in folders.items():
                for key in keys:
                    self.debouncer.add(folder, key, message.id)
        self._delete(done)

    def _release(self) -> list[DropEvent]:
        emitted: list[DropEvent] = []
        for landed in self.debouncer.release():
            event = drop_event(landed.folder, self.output_dir, landed.objects)
            try:
                self.emit(event)
            except Exception as exc:  # not delivered (the Prefect API is away): the messages come back for a retry
                receipts = [r for r in (self._forget(t) for t in landed.tokens) if r]
                self.warn(f"could not emit {EVENT} for {inert(landed.folder)} ({type(exc).__name__}: {inert(exc)}); "
                          f"its {len(receipts)} message(s) go back to the queue for another try")
                self._hand_back(receipts)
                continue
            emitted.append(event)
            self.say(f"emitted {EVENT} for {inert(landed.folder)} ({landed.objects} new object(s))")
            done = []
            for token in landed.tokens:
                if token in self._open:
                    self._open[token] -= 1
                    if self._open[token] <= 0:
                        done.append(self._forget(token))
            self._delete([r for r in done if r])
        return emitted

    def _forget(self, token: str) -> str:
        self._open.pop(token, None)
        return self._receipts.pop(token, "")

    def _delete(self, receipts: Sequence[str]) -> None:
        if not receipts:
            return
        try:
            failed = self.queue.delete(receipts)
        except StorageError as exc:
            failed = len(receipts)
            self.warn(f"could not delete {failed} message(s): {inert(exc)}")
        if failed:
            self.warn(f"{failed} message(s) were not deleted and will come back: their drop gets one more event, "
                      "which does no model work for images already done")

    def _hand_back(self, receipts: Sequence[str]) -> None:
        if not receipts:
            return
        try:
            self.queue.release(receipts)
        except StorageError as exc:  # they come back after their visibility timeout instead
            self.warn(f"could not hand {len(receipts)} message(s) back at once ({inert(exc)}); they come back "
                      f"within {self.visibility_s} s")

    def run(self) -> None:
        """:meth:`step` until ``stop`` is set; a queue that fails is retried with growing pauses (up to 60 s)."""
        pause = 1.0
        try:
            while not self.stop.is_set():
                try:
                    self.step()
                    pause = 1.0
                except StorageError as exc:
                    self.warn(f"{inert(exc)}; trying again in {pause:.0f} s")
                    self.stop.wait(pause)
                    pause = min(pause * 2, 60.0)
        finally:
            self.close()

    def close(self) -> None:
        """Hand the messages of folders not yet emitted back to the queue (another bridge, or this one started
        again, emits their events)."""
        pending = self.debouncer.forget()
        receipts = [r for r in (self._forget(t) for landed in pending for t in landed.tokens) if r]
        receipts += list(self._receipts.values())
        self._receipts.clear()
        self._open.clear()
        if receipts:
            self.say(f"stopping: {len(receipts)} message(s) of {len(pending)} drop folder(s) not yet quiet go back "
                     "to the queue")
            self._hand_back(receipts)


# --- SQS --------------------------------------------------------------------------------------------------------

_QUEUE_URL = re.compile(r"https?://[^\s/]+/[^\s]+")
_REGION_IN_URL = re.compile(r"https?://sqs[.-]([a-z0-9-]+)\.amazonaws\.com(\.cn)?/")
_NO_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_BAD_CREDENTIALS = {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
                    "ExpiredToken", "InvalidAccessKeyId", "IncompleteSignature", "MissingAuthenticationToken"}
_DENIED = {"AccessDenied", "AccessDeniedException", "KMS.AccessDeniedException"}


class SQSQueue:
    """An SQS queue through botocore (installed with the ``s3`` extra): the endpoint comes from the standard
    ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_SQS``) variable, the credentials and region from the environment
    and the SDK's standard chains (the region falls back to the one in an AWS queue URL). Failures raise
    :class:`~desra_core.errors.StorageError` naming the queue's URL, never a credential."""

    def __init__(self, url: str) -> None:
        if not _QUEUE_URL.fullmatch(url):
            raise ConfigError(f"expected an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>), "
                              f"got {url!r}")
        self.url = url
        self._client: Any = None
        self._lock = threading.Lock()

    def _sqs(self) -> Any:
        with self._lock:
            if self._client is None:
                session = aws_session("sqs", self.url)
                config = importlib.import_module("botocore.config")
                match = _REGION_IN_URL.match(self.url)
                region = session.region or (match.group(1) if match else "us-east-1")
                self._client = session.client("sqs", region_name=region, endpoint_url=session.endpoint,
                                              config=config.Config(**botocore_retries()))
            return self._client

    def _error(self, exc: Exception, action: str) -> Exception:
        from botocore import exceptions as boto

        if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            return StorageError(f"expected credentials for the SQS queue {self.url} in the environment or the "
                                "standard AWS chain, got none", url=self.url)
        if isinstance(exc, boto.EndpointConnectionError | boto.ConnectTimeoutError | boto.ReadTimeoutError
                      | boto.ConnectionClosedError):
            return StorageError(f"expected to reach the SQS queue {self.url} to {action}, got no answer after "
                                f"retries ({type(exc).__name__})", url=self.url)
        if not isinstance(exc, boto.ClientError):
            return exc
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NO_QUEUE:
            return StorageError(f"expected an SQS queue at {self.url}, got none", url=self.url)
        if code in _BAD_CREDENTIALS:
            return StorageError(f"expected valid credentials for the SQS queue {self.url}, got credentials that "
                                f"the server refused ({code})", url=self.url)
        if code in _DENIED:
            return AccessDeniedError(f"expected access to {action} on the SQS queue {self.url}, got access denied",
                                     url=self.url)
        return StorageError(f"expected the SQS queue {self.url} to {action}, got {code or 'an error'} after retries",
                            url=self.url)

    def _call(self, action: str, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._sqs(), operation)(QueueUrl=self.url, **kwargs)
        except Exception as exc:
            error = self._error(exc, action)
            if error is exc:
                raise
            raise error from exc

    def arn(self) -> str:
        """The queue's ARN (checks that the queue exists and may be read with these credentials)."""
        answer = self._call("be read", "get_queue_attributes", AttributeNames=["QueueArn"])
        return str(answer.get("Attributes", {}).get("QueueArn", ""))

    def counts(self) -> tuple[int, int]:
        """Messages waiting and messages received but not yet deleted (SQS's approximate counts)."""
        answer = self._call("be read", "get_queue_attributes", AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        attributes = answer.get("Attributes", {})
        return (int(attributes.get("ApproximateNumberOfMessages", 0)),
                int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)))

    def receive(self, *, wait_s: int, visibility_s: int) -> list[Message]:
        answer = self._call("receive messages", "receive_message", MaxNumberOfMessages=_BATCH,
                            WaitTimeSeconds=wait_s, VisibilityTimeout=visibility_s)
        return [Message(str(m.get("MessageId", "")), str(m["ReceiptHandle"]), str(m.get("Body", "")))
                for m in answer.get("Messages", []) if m.get("ReceiptHandle")]

    def _batches(self, receipts: Sequence[str]) -> list[list[dict[str, Any]]]:
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        return [entries[i:i + _BATCH] for i in range(0, len(entries), _BATCH)]

    def delete(self, receipts: Sequence[str]) -> int:
        failed = 0
        for batch in self._batches(receipts):
            answer = self._call("delete messages", "delete_message_batch", Entries=batch)
            failed += len(answer.get("Failed", []))
        return failed

    def release(self, receipts: Sequence[str]) -> None:
        for batch in self._batches(receipts):
            entries = [dict(entry, VisibilityTimeout=0) for entry in batch]
            self._call("hand messages back", "change_message_visibility_batch", Entries=entries)
