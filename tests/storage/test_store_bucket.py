"""The content-addressed store with its entries shared through a bucket (moto's S3 server on loopback):
claims that exclude across workers and outlive a dead holder only by their lease, entries fetched into a
worker's empty local copy, and image entries kept as references to the published object (stored once)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from desra.pipeline.objects import Bucket, Claims
from desra.pipeline.store import Store, claim_lease
from desra_core.errors import ConfigError

STEP, KEY = "sr", "ab" + "0" * 62


@pytest.fixture
def bucket(s3_env, s3_bucket_name) -> Bucket:
    return Bucket.at(f"s3://{s3_bucket_name}/out")


def _store(tmp_path: Path, bucket: Bucket, name: str) -> Store:
    return Store(tmp_path / name, bucket, owner=name)


def test_a_claim_excludes_another_worker_until_released(tmp_path, bucket):
    a, b = _store(tmp_path, bucket, "worker-a"), _store(tmp_path, bucket, "worker-b")
    with a.claim(STEP, KEY, blocking=True) as held:
        assert held
        with b.claim(STEP, KEY, blocking=False) as other:
            assert other is False
    with b.claim(STEP, KEY, blocking=False) as other:
        assert other is True


def test_a_held_claim_is_renewed_past_its_lease(tmp_path, bucket, monkeypatch):
    monkeypatch.setenv("DESRA_CLAIM_LEASE_S", "1")
    a, b = _store(tmp_path, bucket, "worker-a"), _store(tmp_path, bucket, "worker-b")
    with a.claim(STEP, KEY, blocking=True):
        time.sleep(2.5)  # more than twice the lease: only renewals keep it
        with b.claim(STEP, KEY, blocking=False) as other:
            assert other is False


def test_a_dead_holders_claim_is_taken_over_after_its_lease(tmp_path, bucket, monkeypatch):
    monkeypatch.setenv("DESRA_CLAIM_LEASE_S", "1")
    # the holder died: its claim object stays, nobody renews it
    start = time.monotonic()
    assert Claims(bucket, ".desra/claims", "dead-worker", 4.0).claim(f"{STEP}/{KEY}")
    b = _store(tmp_path, bucket, "worker-b")
    with b.claim(STEP, KEY, blocking=False) as other:
        assert other is False or time.monotonic() - start >= 4.0  # the lease still runs
    with b.claim(STEP, KEY, blocking=True) as held:
        assert held
    assert 4.0 <= time.monotonic() - start < 15.0  # not before the dead holder's lease ran out


def test_a_blocking_claim_waits_for_the_holder(tmp_path, bucket):
    a, b = _store(tmp_path, bucket, "worker-a"), _store(tmp_path, bucket, "worker-b")
    order: list[str] = []
    taken = threading.Event()

    def hold() -> None:
        with a.claim(STEP, KEY, blocking=True):
            taken.set()
            time.sleep(1.0)
            order.append("a done")

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    with b.claim(STEP, KEY, blocking=True):
        order.append("b holds")
    thread.join()
    assert order == ["a done", "b holds"]


def test_entries_reach_an_empty_local_copy_through_the_bucket(tmp_path, bucket):
    a, b = _store(tmp_path, bucket, "worker-a"), _store(tmp_path, bucket, "worker-b")
    a.write_json("detect", KEY, {"artifact_fraction": 0.25})
    assert b.read_json("detect", KEY) == {"artifact_fraction": 0.25}
    assert b.path("detect", KEY, ".json").is_file()  # kept in b's copy: read once

    data = b"published image bytes"
    bucket.write("masks/im.png", data)
    a.refer("detect", KEY, ".png", "masks/im.png", hashlib.sha256(data).hexdigest())
    assert b.has("detect", KEY, ".png")
    assert b.path("detect", KEY, ".png").read_bytes() == data
    # the bucket holds the bytes once: the store has a reference, not a copy
    keys = [info.key for info in bucket.list(".desra/store")]
    assert keys == [f".desra/store/detect/ab/{KEY}.json", f".desra/store/detect/ab/{KEY}.png.ref"]
    assert json.loads(bucket.read(keys[1])) == {"object": "masks/im.png", "sha256": hashlib.sha256(data).hexdigest()}


def test_a_reference_to_an_object_published_again_since_counts_as_absent(tmp_path, bucket):
    a, c = _store(tmp_path, bucket, "worker-a"), _store(tmp_path, bucket, "worker-c")
    bucket.write("sr/gan/im.png", b"first")
    a.refer("sr", KEY, ".png", "sr/gan/im.png", hashlib.sha256(b"first").hexdigest())
    bucket.write("sr/gan/im.png", b"second, from other keys")
    assert not c.has("sr", KEY, ".png")
    assert not c.path("sr", KEY, ".png").exists()
    bucket.write(Store.remote_key("sr", KEY, ".png") + ".ref", b"not json")
    assert not c.has("sr", KEY, ".png")


def test_the_lease_setting_is_checked():
    assert claim_lease({}) == 60.0
    assert claim_lease({"DESRA_CLAIM_LEASE_S": "5"}) == 5.0
    for bad in ("0", "-3", "abc", "7200"):
        with pytest.raises(ConfigError, match="DESRA_CLAIM_LEASE_S"):
            claim_lease({"DESRA_CLAIM_LEASE_S": bad})


def test_only_the_first_claim_ever_on_an_entry_skips_asking_the_bucket_again(tmp_path, bucket):
    a, b = _store(tmp_path, bucket, "worker-a"), _store(tmp_path, bucket, "worker-b")
    with a.claim(STEP, KEY, blocking=True):
        assert a.first  # nobody ever claimed it, so nobody computed it
        assert not a.has_after_claim(STEP, KEY, ".png")
        bucket.write("sr/gan/im.png", b"bytes")
        a.refer(STEP, KEY, ".png", "sr/gan/im.png", hashlib.sha256(b"bytes").hexdigest())
    with b.claim(STEP, KEY, blocking=True):
        assert not b.first  # claimed before: the entry may exist, and it does
        assert b.has_after_claim(STEP, KEY, ".png")
