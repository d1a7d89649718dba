"""The bridge from S3 object-created notifications (through SQS) to debounced ``desra.drop.landed`` events:
the parser, the debouncer (with a fake clock), the loop against a fake queue, and the whole path against moto's
real S3 and SQS server on loopback, whose bucket notifications go to the queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from desra.cli import main
from desra.pipeline.watch import (
    EVENT,
    Bridge,
    Created,
    Debouncer,
    DropEvent,
    DropWatch,
    Message,
    NotificationError,
    SQSQueue,
    drop_event,
    parse_notification,
)
from desra_core.errors import ConfigError, StorageError

from .conftest import SECRET, RecordingMotoServer

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def s3_body(bucket: str, *keys: str, event: str = "ObjectCreated:Put") -> str:
    """A notification as S3 writes it to SQS (keys URL-encoded with '+' for spaces)."""
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-12-07T12:00:00.000Z", "eventName": event,
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "desra",
               "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(key), "size": 3, "eTag": "abc"}}} for key in keys]})


TEST_EVENT = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-12-07T12:00:00.000Z",
                         "Bucket": "drops"})


# --- parsing -----------------------------------------------------------------------------------------------------

def test_parse_an_object_created_notification_decodes_the_key() -> None:
    note = parse_notification(s3_body("drops", "in/batch 1/a+b é.png"))
    assert note.created == (Created("drops", "in/batch 1/a+b é.png", "ObjectCreated:Put"),)
    assert not note.test and note.skipped == ()


def test_parse_the_test_event_removals_and_sns_wrapping() -> None:
    assert parse_notification(TEST_EVENT).test
    removed = parse_notification(s3_body("drops", "in/b/x.png", event="ObjectRemoved:Delete"))
    assert removed.created == () and removed.skipped == ("ObjectRemoved:Delete of s3://drops/in/b/x.png",)
    wrapped = json.dumps({"Type": "Notification", "Message": s3_body("drops", "in/b/x.png")})
    assert parse_notification(wrapped).created == (Created("drops", "in/b/x.png", "ObjectCreated:Put"),)
    minio = json.loads(s3_body("drops", "in/b/y.png", event="s3:ObjectCreated:Put"))  # MinIO's spelling
    assert parse_notification(json.dumps(minio)).created[0].event == "ObjectCreated:Put"


@pytest.mark.parametrize("body", ["", "not json", b"\xff\xfe", "[1, 2]", "42", "{}", '{"Records": []}',
                                  '{"Records": "x"}', '{"Type": "Notification", "Message": "nope"}'])
def test_malformed_bodies_raise_notification_error(body: str | bytes) -> None:
    with pytest.raises(NotificationError, match="expected an S3 event notification"):
        parse_notification(body)


def test_a_malformed_record_is_skipped_not_the_message() -> None:
    doc = json.loads(s3_body("drops", "in/b/x.png"))
    doc["Records"].append({"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}})
    doc["Records"].append(7)
    note = parse_notification(json.dumps(doc))
    assert [c.key for c in note.created] == ["in/b/x.png"] and len(note.skipped) == 2


# --- which objects count -----------------------------------------------------------------------------------------

def test_drop_folder_is_the_first_component_under_the_prefix() -> None:
    watch = DropWatch("s3://drops/in")
    assert watch.folder_of(Created("drops", "in/batch-7/x.png", "ObjectCreated:Put")) == ("s3://drops/in/batch-7", "")
    assert watch.folder_of(Created("drops", "in/batch-7/sub/y.png", "ObjectCreated:Put"))[0] == "s3://drops/in/batch-7"
    assert DropWatch("s3://drops").folder_of(Created("drops", "a/x.png", "ObjectCreated:Put"))[0] == "s3://drops/a"


@pytest.mark.parametrize("bucket, key, why", [
    ("other", "in/b/x.png", "outside"),  # another bucket
    ("drops", "inbox/b/x.png", "outside"),  # another prefix that only starts like it
    ("drops", "out/b/x.png", "outside"),
    ("drops", "in/x.png", "not in a drop folder"),  # directly under the prefix
    ("drops", "in/b/../../x.png", "'..'"),  # keys that check_key refuses
    ("drops", "in/b//x.png", "empty component"),
    ("drops", "in/b/", "empty component"),  # a console "folder" marker
    ("drops", "in/b/x\nfake.png", "non-printable"),
    ("drops", "in/b/\udcff.png", "UTF-8"),  # an undecodable byte (%FF)
])
def test_objects_elsewhere_and_bad_keys_are_ignored(bucket: str, key: str, why: str) -> None:
    folder, reason = DropWatch("s3://drops/in").folder_of(Created(bucket, key, "ObjectCreated:Put"))
    assert folder is None and why in reason and "\n" not in reason


def test_an_undecodable_key_from_a_notification_is_ignored() -> None:
    doc = json.loads(s3_body("drops", "x"))
    doc["Records"][0]["s3"]["object"]["key"] = "in/b/%FF.png"  # by hand: %FF is no UTF-8
    (created,) = parse_notification(json.dumps(doc)).created
    folder, why = DropWatch("s3://drops/in").folder_of(created)
    assert folder is None and "UTF-8" in why


def test_watch_needs_a_bucket_and_refuses_outputs_under_the_drops(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        DropWatch(str(tmp_path))
    with pytest.raises(ConfigError, match="loop"):
        DropWatch("s3://drops/in", "s3://drops/in/results")
    with pytest.raises(ConfigError, match="loop"):
        DropWatch("s3://drops", "s3://drops/results")
    DropWatch("s3://drops/in", "s3://drops/inbox-results")  # another prefix that only starts like it
    DropWatch("s3://drops/in", "s3://results/in")
    DropWatch("s3://drops/in", "/data/desra")


def test_drop_event_has_the_on_drop_shape() -> None:
    event = drop_event("s3://drops/in/batch-7", "s3://results/desra", 20)
    assert event.event == EVENT == "desra.drop.landed"
    assert event.resource["prefect.resource.id"] == "desra.drop.s3://drops/in/batch-7"
    assert event.resource["prefect.resource.id"].startswith("desra.drop.")  # what desra/on-drop's trigger matches
    assert event.payload == {"folder": "s3://drops/in/batch-7", "output_dir": "s3://results/desra", "objects": 20}


def test_drop_event_starts_the_on_drop_deployment_with_its_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """deployments/prefect.yaml's desra/on-drop trigger matches the event, and its parameters render, as the server
    renders them, to the event's folder and output root."""
    import jinja2.sandbox
    import yaml
    from prefect.events.schemas.events import Resource, ResourceSpecification
    from prefect.utilities.templating import apply_values

    deployments = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
    (trigger,) = next(d for d in deployments if d["name"] == "on-drop")["triggers"]
    event = drop_event("s3://drops/in/batch-7", "s3://results/desra", 20)
    assert event.event in trigger["expect"]
    assert ResourceSpecification(trigger["match"]).matches(Resource(event.resource))
    monkeypatch.setenv("DESRA_OUTPUT_DIR", "/registered/out")
    params = apply_values(trigger["parameters"], dict(os.environ), remove_notset=False)
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.ChainableUndefined)
    rendered = {k: env.from_string(v).render(event={"event": event.event, "payload": event.payload})
                for k, v in params.items()}
    assert rendered == {"input_dir": "s3://drops/in/batch-7", "output_dir": "s3://results/desra"}


# --- debouncing ------------------------------------------------------------------------------------------------

def test_a_burst_of_20_objects_gives_one_record() -> None:
    clock = Clock()
    debouncer = Debouncer(quiet_s=10, max_wait_s=120, clock=clock)
    for i in range(20):
        debouncer.add("s3://drops/in/a", f"in/a/{i}.png", f"m{i}")
        clock.now += 0.5
        assert debouncer.release() == []
    clock.now += 9.4
    assert debouncer.release() == []
    clock.now += 0.2
    (landed,) = debouncer.release()
    assert landed.folder == "s3://drops/in/a" and landed.objects == 20
    assert landed.tokens == tuple(f"m{i}" for i in range(20))
    assert len(debouncer) == 0 and debouncer.release() == [] and debouncer.next_due() is None


def test_two_folders_give_two_records() -> None:
    clock = Clock()
    debouncer = Debouncer(quiet_s=10, max_wait_s=120, clock=clock)
    debouncer.add("s3://drops/in/a", "in/a/1.png", "m1")
    clock.now += 3
    debouncer.add("s3://drops/in/b", "in/b/1.png", "m2")
    debouncer.add("s3://drops/in/a", "in/a/2.png", "m3")
    clock.now += 10
    landed = debouncer.release()
    assert [(r.folder, r.objects, r.tokens) for r in landed] == [("s3://drops/in/a", 2, ("m1", "m3")),
                                                                 ("s3://drops/in/b", 1, ("m2",))]


def test_the_quiet_period_restarts_on_new_objects_in_that_folder_only() -> None:
    clock = Clock()
    debouncer = Debouncer(quiet_s=10, max_wait_s=120, clock=clock)
    debouncer.add("s3://drops/in/a", "in/a/1.png", "m1")
    debouncer.add("s3://drops/in/b", "in/b/1.png", "m2")
    clock.now += 8
    debouncer.add("s3://drops/in/a", "in/a/2.png", "m3")
    assert debouncer.next_due() == clock.now + 2  # b is due first
    clock.now += 2
    assert [r.folder for r in debouncer.release()] == ["s3://drops/in/b"]
    clock.now += 7.9
    assert debouncer.release() == []  # a: 9.9 s after its last object
    clock.now += 0.1
    assert [r.folder for r in debouncer.release()] == ["s3://drops/in/a"]


def test_max_wait_caps_a_steady_trickle() -> None:
    clock = Clock()
    debouncer = Debouncer(quiet_s=10, max_wait_s=60, clock=clock)
    released = []
    for i in range(100):  # one object every 5 s, never 10 s quiet
        debouncer.add("s3://drops/in/a", f"in/a/{i}.png", f"m{i}")
        released += [(clock.now, r) for r in debouncer.release()]
        clock.now += 5
    assert len(released) >= 7
    first_at = 1000.0
    for at, landed in released:
        assert landed.first == first_at and at - landed.first == 60  # released exactly max_wait after its first
        first_at = at + 5  # the next object starts the next group


def test_a_redelivered_notification_does_not_restart_the_quiet_period() -> None:
    clock = Clock()
    debouncer = Debouncer(quiet_s=10, max_wait_s=120, clock=clock)
    debouncer.add("s3://drops/in/a", "in/a/1.png", "m1")
    clock.now += 9
    debouncer.add("s3://drops/in/a", "in/a/1.png", "m1")
    clock.now += 1
    (landed,) = debouncer.release()
    assert landed.objects == 1 and landed.tokens == ("m1",)


@pytest.mark.parametrize("quiet, max_wait", [(-1, 10), (10, 5), (0, 0), (float("nan"), 10), (1, float("inf"))])
def test_debouncer_refuses_bad_periods(quiet: float, max_wait: float) -> None:
    with pytest.raises(ConfigError):
        Debouncer(quiet, max_wait)


# --- the loop against a fake queue ---------------------------------------------------------------------------------

class FakeQueue:
    """SQS's behaviour in miniature: received messages are hidden until deleted or handed back; a receipt is
    valid for its latest delivery only."""

    url = "https://sqs.us-east-1.amazonaws.com/123456789012/fake"

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}
        self.hidden: dict[str, str] = {}  # id → receipt of the latest delivery
        self.deleted_ids: list[str] = []
        self.deliveries = 0
        self.waits: list[int] = []

    def send(self, body: str) -> str:
        message_id = f"id-{len(self.messages) + len(self.deleted_ids)}"
        self.messages[message_id] = body
        return message_id

    def receive(self, *, wait_s: int, visibility_s: int) -> list[Message]:
        self.waits.append(wait_s)
        out = []
        for message_id, body in self.messages.items():
            if message_id in self.hidden or len(out) == 10:
                continue
            self.deliveries += 1
            receipt = f"{message_id}#{self.deliveries}"
            self.hidden[message_id] = receipt
            out.append(Message(message_id, receipt, body))
        return out

    def expire(self) -> None:
        """The visibility timeout ran out: every hidden message is visible again."""
        self.hidden.clear()

    def delete(self, receipts: Sequence[str]) -> int:
        failed = 0
        for receipt in receipts:
            message_id = receipt.split("#")[0]
            if self.hidden.get(message_id) != receipt:
                failed += 1
                continue
            del self.messages[message_id], self.hidden[message_id]
            self.deleted_ids.append(message_id)
        return failed

    def release(self, receipts: Sequence[str]) -> None:
        for receipt in receipts:
            message_id = receipt.split("#")[0]
            if self.hidden.get(message_id) == receipt:
                del self.hidden[message_id]


def _bridge(queue: Any, clock: Clock, emitted: list[DropEvent], **kwargs: Any) -> tuple[Bridge, list[str]]:
    lines: list[str] = []
    bridge = Bridge(queue, DropWatch("s3://drops/in"), "s3://results/desra", emitted.append, quiet_s=10,
                    max_wait_s=120, poll_s=20, clock=clock, say=lines.append, warn=lambda s: lines.append("W " + s),
                    **kwargs)
    return bridge, lines


def test_bridge_deletes_messages_only_after_their_event_was_emitted() -> None:
    queue, clock, emitted = FakeQueue(), Clock(), []
    queue.send(TEST_EVENT)
    for i in range(25):
        queue.send(s3_body("drops", f"in/a/{i}.png"))
    bridge, lines = _bridge(queue, clock, emitted)
    for _ in range(4):  # 26 messages: three receives and an empty one; nothing due yet
        assert bridge.step() == []
    assert queue.waits == [20, 0, 0, 0] and len(queue.messages) == 25 and len(queue.hidden) == 25
    assert bridge.step() == [] and queue.waits[-1] == 10  # long poll until the folder is due (10 s quiet)
    clock.now += 10
    (event,) = bridge.step()
    assert event == drop_event("s3://drops/in/a", "s3://results/desra", 25) and emitted == [event]
    assert queue.messages == {} and len(queue.deleted_ids) == 26
    assert any("test event" in line for line in lines)


def test_bridge_deletes_what_it_ignores_at_once_and_survives_malformed_messages() -> None:
    queue, clock, emitted = FakeQueue(), Clock(), []
    for body in ["garbage", "{}", s3_body("other", "in/a/x.png"), s3_body("drops", "in/x.png"),
                 s3_body("drops", "in/a/../x.png"), s3_body("drops", "in/a/x.png", event="ObjectRemoved:Delete")]:
        queue.send(body)
    good = queue.send(s3_body("drops", "in/a/ok.png"))
    bridge, lines = _bridge(queue, clock, emitted)
    bridge.step()
    assert list(queue.messages) == [good] and emitted == []  # the six others are gone already
    assert sum(line.startswith("W deleted message") for line in lines) == 2
    assert sum(line.startswith("ignored") for line in lines) == 4
    clock.now += 10
    bridge.step()
    bridge.step()
    assert [e.payload["folder"] for e in emitted] == ["s3://drops/in/a"] and queue.messages == {}


def test_the_bridge_shows_forged_keys_and_bodies_as_inert_lines() -> None:
    queue, clock, emitted = FakeQueue(), Clock(), []
    forged = "x\n\n# all drops done\n[ok](javascript:alert(1)) <img src=x onerror=alert(1)>\u202e.png"
    queue.send(s3_body("drops", f"elsewhere/{forged}"))
    queue.send(s3_body("drops", f"in/a/{forged}"))
    queue.send(s3_body("drops", f"in/a/{forged}", event="ObjectRemoved:Delete"))
    queue.send(json.dumps({f"<img src=x>\n# {i}": i for i in range(3)}))
    bridge, lines = _bridge(queue, clock, emitted)
    bridge.step()
    assert len(lines) == 4 and queue.messages == {} and emitted == []
    for line in lines:
        assert "\n" not in line and "\u202e" not in line and "<img" not in line and "](javascript" not in line, line


def test_a_failed_emit_hands_the_messages_back_and_the_next_try_succeeds() -> None:
    queue, clock = FakeQueue(), Clock()
    for i in range(3):
        queue.send(s3_body("drops", f"in/a/{i}.png"))
    emitted: list[DropEvent] = []
    failures = [RuntimeError("the Prefect API is away")]

    def emit(event: DropEvent) -> None:
        if failures:
            raise failures.pop()
        emitted.append(event)

    bridge, lines = _bridge(queue, clock, [])
    bridge.emit = emit
    bridge.step()
    bridge.step()
    clock.now += 10
    assert bridge.step() == [] and emitted == []
    assert len(queue.messages) == 3 and queue.hidden == {}  # all back in the queue, visible at once
    assert any("could not emit" in line and "go back to the queue" in line for line in lines)
    bridge.step()
    bridge.step()
    clock.now += 10
    (event,) = bridge.step()
    assert event.payload["objects"] == 3 and emitted == [event] and queue.messages == {}


def test_a_message_delivered_again_while_waiting_is_deleted_with_its_newest_receipt() -> None:
    queue, clock, emitted = FakeQueue(), Clock(), []
    queue.send(s3_body("drops", "in/a/1.png"))
    bridge, _ = _bridge(queue, clock, emitted)
    bridge.step()
    bridge.step()
    clock.now += 5
    queue.expire()  # the visibility timeout ran out: SQS delivers it again, with a new receipt
    bridge.step()
    clock.now += 5  # 10 s after the first delivery: the redelivery did not restart the quiet period
    (event,) = bridge.step()
    assert event.payload["objects"] == 1 and queue.messages == {}


def test_a_message_naming_two_drops_is_deleted_after_both_events() -> None:
    queue, clock, emitted = FakeQueue(), Clock(), []
    queue.send(s3_body("drops", "in/a/1.png", "in/b/1.png"))
    bridge, _ = _bridge(queue, clock, emitted)
    bridge.step()
    bridge.step()
    clock.now += 10
    assert len(bridge.step()) == 2 and queue.messages == {}


def test_stopping_hands_pending_messages_back() -> None:
    queue, clock, emitted = FakeQueue(), Clock(), []
    queue.send(s3_body("drops", "in/a/1.png"))
    queue.send(TEST_EVENT)
    bridge, lines = _bridge(queue, clock, emitted)
    bridge.step()
    assert len(queue.hidden) == 1
    bridge.stop.set()
    bridge.run()  # returns at once, and closes
    assert emitted == [] and len(queue.messages) == 1 and queue.hidden == {}
    assert any("go back to the queue" in line for line in lines)


def test_run_survives_queue_failures() -> None:
    class Flaky(FakeQueue):
        fails = 2

        def receive(self, *, wait_s: int, visibility_s: int) -> list[Message]:
            if self.fails:
                self.fails -= 1
                raise StorageError("expected to reach the SQS queue, got no answer after retries")
            bridge.stop.set()
            return super().receive(wait_s=wait_s, visibility_s=visibility_s)

    queue, clock = Flaky(), Clock()
    bridge, lines = _bridge(queue, clock, [])
    bridge.stop.wait = lambda timeout=None: False  # type: ignore[method-assign]  # no real pauses
    bridge.run()
    assert queue.fails == 0 and sum("trying again" in line for line in lines) == 2


# --- against moto's S3 and SQS server -------------------------------------------------------------------------------

@pytest.fixture
def notified_bucket(s3_client: Any, s3_env: RecordingMotoServer) -> tuple[str, str]:
    """A new bucket whose object-created notifications go to a new SQS queue on the same server: (bucket, URL)."""
    import boto3

    sqs = boto3.client("sqs", endpoint_url=s3_env.endpoint)
    name = f"desra-{uuid.uuid4().hex[:16]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3_client.create_bucket(Bucket=name)
    s3_client.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    return name, url


def _run_until_idle(bridge: Bridge, queue: SQSQueue, deadline_s: float = 60) -> list[DropEvent]:
    """Step the bridge until it has emitted, holds nothing and the queue is empty (no event can follow)."""
    events: list[DropEvent] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        events += bridge.step()
        if events and len(bridge.debouncer) == 0 and queue.counts() == (0, 0):
            return events
    raise AssertionError(f"the bridge did not settle in {deadline_s} s: {events}, {queue.counts()}")


def test_moto_notifications_of_a_burst_give_one_event_and_an_empty_queue(s3_client: Any,
                                                                            notified_bucket: tuple[str, str]) -> None:
    """Moto's S3 server sends its notifications to its SQS queue (S3's own JSON, and S3's test event when the
    configuration is set); 20 uploads and 2 elsewhere give exactly one event. Uploading the same bytes again gives
    one more: the bridge does not remember content; the run that event starts does no model work, because the
    pipeline's store knows every image by its bytes."""
    bucket, url = notified_bucket
    queue = SQSQueue(url)
    assert queue.arn().endswith(f":{bucket}") and queue.counts()[0] >= 1  # S3's test event is waiting
    files = {f"in/batch-1/img {i:02d}.png": os.urandom(64) for i in range(20)}
    for key, data in files.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    for key in ("elsewhere/batch-1/x.png", "in/stray.png"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")

    emitted: list[DropEvent] = []
    lines: list[str] = []
    bridge = Bridge(queue, DropWatch(f"s3://{bucket}/in"), "s3://results/desra", emitted.append, quiet_s=0.5,
                    max_wait_s=30, poll_s=1, say=lines.append, warn=lines.append)
    events = _run_until_idle(bridge, queue)
    assert events == emitted == [drop_event(f"s3://{bucket}/in/batch-1", "s3://results/desra", 20)]
    assert events[0].payload["folder"] == f"s3://{bucket}/in/batch-1"
    assert any("test event" in line for line in lines)
    assert sum(line.startswith("ignored") for line in lines) == 2

    for key, data in files.items():  # the same bytes again: S3 notifies again, the bridge emits again
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    more = _run_until_idle(bridge, queue)
    assert more == [drop_event(f"s3://{bucket}/in/batch-1", "s3://results/desra", 20)] and len(emitted) == 2


def test_sqs_errors_name_the_queue_never_the_secret(s3_env: RecordingMotoServer, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    missing = SQSQueue(f"{s3_env.endpoint}/123456789012/no-such-queue-{uuid.uuid4().hex[:8]}")
    with pytest.raises(StorageError, match=r"expected an SQS queue at .*no-such-queue") as caught:
        missing.arn()
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="credentials"):
        SQSQueue(f"{s3_env.endpoint}/123456789012/any").arn()
    with pytest.raises(ConfigError, match="SQS queue URL"):
        SQSQueue("not a url")


# --- the command ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--queue-url", "nope", "--drop", "s3://drops/in", "--out", "/data/out"], "SQS queue URL"),
    (["--queue-url", "https://sqs.us-east-1.amazonaws.com/1/q", "--drop", "/data/in", "--out", "/data/out"],
     "s3://bucket/prefix"),
    (["--queue-url", "https://sqs.us-east-1.amazonaws.com/1/q", "--drop", "s3://drops/in", "--out", "out"],
     "absolute path"),
    (["--queue-url", "https://sqs.us-east-1.amazonaws.com/1/q", "--drop", "s3://drops", "--out", "s3://drops/out"],
     "loop"),
    (["--queue-url", "https://sqs.us-east-1.amazonaws.com/1/q", "--drop", "s3://drops/in", "--out", "/o",
      "--quiet", "30", "--max-wait", "10"], "longest wait"),
])
def test_watch_refuses_bad_arguments_before_reaching_anything(argv: list[str], message: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", *argv]) == 2
    assert message in capsys.readouterr().err


def test_watch_needs_a_prefect_api(capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["watch", "--queue-url", "https://sqs.us-east-1.amazonaws.com/1/q", "--drop", "s3://drops/in",
                     "--out", "s3://results/desra"]) == 2
    assert "expected PREFECT_API_URL" in capsys.readouterr().err


def test_watch_command_stops_cleanly_on_sigterm(notified_bucket: tuple[str, str], s3_client: Any,
                                                tmp_path: Path) -> None:
    """The installed command, in its own process: it checks the queue, polls, and on SIGTERM hands the message
    of a drop not yet quiet back to the queue (visible at once, for the next bridge) and exits 0."""
    bucket, url = notified_bucket
    s3_client.put_object(Bucket=bucket, Key="in/batch-1/a.png", Body=b"png")
    queue = SQSQueue(url)
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.Popen([sys.executable, "-m", "desra", "watch", "--queue-url", url, "--drop", f"s3://{bucket}/in",
                             "--out", "s3://results/desra", "--poll", "1", "--quiet", "300", "--max-wait", "600"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "watching" in first and f"s3://{bucket}/in" in first, first
        end = time.monotonic() + 60
        while queue.counts() != (0, 1) and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.2)  # until it has deleted S3's test event and holds the object's notification
        assert queue.counts() == (0, 1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping" in out and "1 message(s) of 1 drop folder(s)" in out and out.rstrip().endswith("stopped")
    assert queue.counts() == (1, 0)  # back in the queue, visible now
    assert SECRET not in out + err


def test_prefect_emitter_raises_when_the_event_is_not_delivered() -> None:
    """Nothing listens on the API's port: the emitter raises, so the bridge keeps the messages."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from desra.watch import prefect_emitter

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with pytest.raises(OSError):
            prefect_emitter(reconnection_attempts=0)(drop_event("s3://drops/in/a", "/data/out", 1))


def test_prefect_emitter_delivers_the_event_to_a_prefect_server() -> None:
    """The emitter's event, read back from a real (test-harness) Prefect server: name, resource id and payload as
    the desra/on-drop trigger expects them."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.testing.utilities import prefect_test_harness

    from desra.watch import prefect_emitter

    folder = f"s3://drops/in/batch-{uuid.uuid4().hex[:8]}"
    with prefect_test_harness(server_startup_timeout=120):
        prefect_emitter()(drop_event(folder, "s3://results/desra", 20))
        wanted = EventFilter(event=EventNameFilter(name=[EVENT]),
                             resource=EventResourceFilter(id=[f"desra.drop.{folder}"]))
        with get_client(sync_client=True) as client:
            end = time.monotonic() + 60
            while not (events := client.read_events(wanted, limit=10).events) and time.monotonic() < end:
                time.sleep(0.5)  # the server stores events in batches
    (event,) = events
    assert event.resource.id == f"desra.drop.{folder}" and event.resource.name == folder.rsplit("/", 1)[1]
    assert event.payload == {"folder": folder, "output_dir": "s3://results/desra", "objects": 20}
