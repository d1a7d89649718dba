"""desra.pipeline.objects against a real S3 API server (moto on loopback) and a local folder, with one API."""

from __future__ import annotations

import json
import os
import re
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desra.pipeline.objects import Bucket, Claims, LocalBucket, S3Bucket, check_key
from desra_core.errors import AccessDeniedError, ConfigError, MissingObjectError, StorageError

from .conftest import SECRET, RecordingMotoServer


def _hides_secret(error: BaseException) -> None:
    shown = [str(error), repr(error), "".join(traceback.format_exception(error))]
    for text in shown:
        assert SECRET not in text


def _together(count: int, work: Any) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released at the same moment; their results, by i."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # reported below, so a failing thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


# --- objects -------------------------------------------------------------------------------------------------

def test_at_picks_the_kind(tmp_path: Path) -> None:
    assert isinstance(Bucket.at("s3://some-bucket/a/b"), S3Bucket)
    assert isinstance(Bucket.at(tmp_path), LocalBucket)
    assert isinstance(Bucket.at(f"file://{tmp_path}"), LocalBucket)
    assert Bucket.at("s3://some-bucket/a/b/").url == "s3://some-bucket/a/b"
    with pytest.raises(ConfigError, match="gs"):
        Bucket.at("gs://some-bucket/a")
    for url in ("s3://Bad_Name/x", "s3://ab/x", "s3://some-bucket/a/../b"):
        with pytest.raises(ConfigError):
            Bucket.at(url)


def test_round_trip(root_url: str) -> None:
    bucket = Bucket.at(root_url)
    data = bytes(range(256)) * 40
    etag = bucket.write("sr/a b/é.png", data)
    assert bucket.read("sr/a b/é.png") == data
    assert bucket.read_versioned("sr/a b/é.png") == (data, etag)
    info = bucket.info("sr/a b/é.png")
    assert (info.key, info.size, info.etag) == ("sr/a b/é.png", len(data), etag)
    assert bucket.size("sr/a b/é.png") == len(data)
    assert bucket.exists("sr/a b/é.png") and not bucket.exists("sr/other")
    assert bucket.write("sr/a b/é.png", b"new") != etag
    assert bucket.read("sr/a b/é.png") == b"new"
    bucket.write("masks/m.png", b"m")
    assert [(o.key, o.size) for o in bucket.list()] == [("masks/m.png", 1), ("sr/a b/é.png", 3)]
    assert [o.key for o in bucket.list("sr")] == ["sr/a b/é.png"]
    assert bucket.list("s") == []  # whole components: "s" is not a prefix of "sr/…"
    bucket.delete("sr/a b/é.png")
    bucket.delete("sr/a b/é.png")  # deleting what is gone is fine
    assert [o.key for o in bucket.list()] == ["masks/m.png"]
    with pytest.raises(MissingObjectError, match=re.escape("sr/a b/é.png")):
        bucket.read("sr/a b/é.png")


def test_keys_stay_under_the_root_prefix(s3_bucket_name: str) -> None:
    inner = Bucket.at(f"s3://{s3_bucket_name}/runs/one")
    beside = Bucket.at(f"s3://{s3_bucket_name}/runs/one-more")
    inner.write("a.txt", b"inner")
    beside.write("a.txt", b"beside")
    whole = Bucket.at(f"s3://{s3_bucket_name}")
    assert [o.key for o in whole.list()] == ["runs/one-more/a.txt", "runs/one/a.txt"]
    assert [o.key for o in inner.list()] == ["a.txt"]
    assert inner.read("a.txt") == b"inner"


def test_local_list_skips_files_being_written(tmp_path: Path) -> None:
    bucket = Bucket.at(tmp_path)
    bucket.write("sr/a.png", b"a")
    (tmp_path / "sr" / ".b.png.0123abcd.tmp.png").write_bytes(b"half")
    assert [o.key for o in bucket.list()] == ["sr/a.png"]


def test_local_write_is_whole_or_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = Bucket.at(tmp_path)
    bucket.write("sr/a.png", b"old")

    def fail(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(StorageError, match=re.escape(f"{tmp_path}/sr/a.png")):
        bucket.write("sr/a.png", b"new")
    with pytest.raises(StorageError):
        bucket.write_if_absent("sr/b.png", b"new")
    monkeypatch.undo()
    assert bucket.read("sr/a.png") == b"old"
    assert sorted(p.name for p in (tmp_path / "sr").iterdir()) == ["a.png"]  # no temporary file left behind


def test_s3_bucket_pickles_without_its_client(s3_bucket_name: str) -> None:
    import pickle

    bucket = Bucket.at(f"s3://{s3_bucket_name}/drop")
    bucket.write("a", b"x")
    copy = pickle.loads(pickle.dumps(bucket))
    assert copy.url == bucket.url and copy.read("a") == b"x"


def test_local_symlink_cannot_lead_out_of_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    bucket = Bucket.at(root)
    with pytest.raises(ConfigError, match="link/f"):
        bucket.write("link/f", b"x")
    assert list(outside.iterdir()) == []


def test_ranged_read_fetches_only_the_range(s3_env: RecordingMotoServer, s3_bucket_name: str) -> None:
    bucket = Bucket.at(f"s3://{s3_bucket_name}/drop")
    data = os.urandom(4 << 20)
    bucket.write("big.bin", data)
    start = len(s3_env.app.log)
    assert bucket.read_range("big.bin", 1_000_000, 100) == data[1_000_000:1_000_100]
    gets = [r for r in s3_env.app.log[start:] if r.method == "GET" and r.path.endswith("/drop/big.bin")]
    assert [(r.range, r.status, r.sent) for r in gets] == [("bytes=1000000-1000099", 206, 100)]
    assert bucket.read_range("big.bin", len(data) - 10, 100) == data[-10:]
    assert bucket.read_range("big.bin", len(data) + 5, 100) == b""


def test_ranged_read_local(tmp_path: Path) -> None:
    bucket = Bucket.at(tmp_path)
    bucket.write("f", b"0123456789")
    assert bucket.read_range("f", 2, 3) == b"234"
    assert bucket.read_range("f", 8, 10) == b"89"
    assert bucket.read_range("f", 20, 10) == b""
    with pytest.raises(ConfigError):
        bucket.read_range("f", -1, 3)
    with pytest.raises(MissingObjectError):
        bucket.read_range("gone", 0, 3)


def test_write_if_absent_twice(root_url: str) -> None:
    bucket = Bucket.at(root_url)
    assert bucket.write_if_absent("claims/x", b"first") is True
    assert bucket.write_if_absent("claims/x", b"second") is False
    assert bucket.read("claims/x") == b"first"


def test_write_if_absent_concurrently_has_one_winner(root_url: str) -> None:
    buckets = [Bucket.at(root_url) for _ in range(8)]  # one client each, as on separate machines
    wins = _together(8, lambda i: buckets[i].write_if_absent("k", f"writer {i}".encode()))
    assert wins.count(True) == 1
    assert buckets[0].read("k") == f"writer {wins.index(True)}".encode()


def test_replace_if(root_url: str) -> None:
    bucket = Bucket.at(root_url)
    etag = bucket.write("x", b"one")
    assert bucket.replace_if("x", b"two", etag) is True
    assert bucket.replace_if("x", b"three", etag) is False  # the ETag is stale now
    assert bucket.read("x") == b"two"
    assert bucket.replace_if("x", b"three", f'"{bucket.info("x").etag}"') is True  # quoted ETags too
    assert bucket.replace_if("absent", b"y", etag) is False
    assert not bucket.exists("absent")


def test_replace_if_concurrently_has_one_winner(root_url: str) -> None:
    buckets = [Bucket.at(root_url) for _ in range(6)]
    etag = buckets[0].write("k", b"start")
    wins = _together(6, lambda i: buckets[i].replace_if("k", f"writer {i}".encode(), etag))
    assert wins.count(True) == 1
    assert buckets[0].read("k") == f"writer {wins.index(True)}".encode()


BAD_KEYS: list[Any] = ["", "../x", "a/../b", "a/..", "./a", "a/./b", "a//b", "/abs", "a/", "a\\b", "a\x00b",
                       "a\nb", "a\tb", "a\x7fb", "a\u200bb", "a\u202eb", "bad\udcffname", b"\xff\xfe", "x" * 1100]


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: ascii(k)[:20])
def test_bad_keys_are_refused(root_url: str, key: Any) -> None:
    bucket = Bucket.at(root_url)
    operations = [lambda: bucket.read(key), lambda: bucket.read_range(key, 0, 1), lambda: bucket.info(key),
                  lambda: bucket.write(key, b"x"), lambda: bucket.write_if_absent(key, b"x"),
                  lambda: bucket.replace_if(key, b"x", "0" * 32), lambda: bucket.delete(key),
                  lambda: Claims(bucket, "claims", "w", 10).claim(key)]
    for operation in operations:
        with pytest.raises(ConfigError) as caught:
            operation()
        assert repr(key) in str(caught.value)  # named, with any odd character escaped
        assert str(caught.value).isprintable()
    assert bucket.list() == []


def test_good_keys_pass_the_check() -> None:
    for key in ("a", "a/b.c", "sr/photo 1 (2).png", "ü/日本.png", "a..b/c", b"bytes/ok"):
        assert check_key(key) == (key.decode() if isinstance(key, bytes) else key)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=24))
def test_ascii_keys_are_judged_by_the_rule(key: str) -> None:
    """Printable ASCII keys are checked by a shortcut; it must say what the rule says, character by character."""
    parts = key.split("/")
    good = (key != "" and all(0x20 <= ord(ch) < 0x7F for ch in key) and "\\" not in key
            and not any(part in ("", ".", "..") for part in parts))
    if good:
        assert check_key(key) == key
    else:
        with pytest.raises(ConfigError):
            check_key(key)


# --- errors --------------------------------------------------------------------------------------------------

def test_missing_bucket(s3_env: RecordingMotoServer) -> None:
    bucket = Bucket.at("s3://desra-no-such-bucket/drop")
    for operation in (lambda: bucket.read("a.png"), lambda: bucket.list(), lambda: bucket.write("a.png", b"x"),
                      lambda: bucket.info("a.png"), lambda: bucket.exists("a.png")):
        with pytest.raises(StorageError, match="s3://desra-no-such-bucket/drop") as caught:
            operation()
        assert "no bucket" in str(caught.value) and not isinstance(caught.value, MissingObjectError)
        _hides_secret(caught.value)


def test_missing_folder(tmp_path: Path) -> None:
    bucket = Bucket.at(tmp_path / "nowhere")
    for operation in (lambda: bucket.read("a.png"), lambda: bucket.list(), lambda: bucket.write("a.png", b"x")):
        with pytest.raises(StorageError, match="nowhere"):
            operation()
    assert not (tmp_path / "nowhere").exists()


def test_missing_object_names_the_url(root_url: str) -> None:
    bucket = Bucket.at(root_url)
    for operation in (lambda: bucket.read("sr/none.png"), lambda: bucket.info("sr/none.png"),
                      lambda: bucket.read_range("sr/none.png", 0, 10), lambda: bucket.read_versioned("sr/none.png")):
        with pytest.raises(MissingObjectError) as caught:
            operation()
        assert f"{root_url}/sr/none.png" in str(caught.value)
        assert caught.value.url == f"{root_url}/sr/none.png"
        _hides_secret(caught.value)


def test_no_credentials(s3_env: RecordingMotoServer, s3_bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match=re.escape(f"credentials for s3://{s3_bucket_name}/drop/a.png")) as caught:
        Bucket.at(f"s3://{s3_bucket_name}/drop").read("a.png")
    _hides_secret(caught.value)


def test_wrong_credentials_and_access_denied(s3_bucket_name: str, iam_user: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.core.authorization import enable_iam_authentication

    url = f"s3://{s3_bucket_name}/drop"
    with enable_iam_authentication():
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", iam_user["id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", iam_user["secret"])
        bucket = Bucket.at(url)
        assert bucket.read("open/a.png") == b"pixels"
        with pytest.raises(AccessDeniedError, match=re.escape(f"{url}/closed/a.png")) as denied:
            bucket.read("closed/a.png")
        assert bucket.read("open/a.png") == b"pixels"  # the denied object fails alone

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # the right key id, a wrong secret
        with pytest.raises(StorageError, match=re.escape(f"credentials for {url}/open/a.png")) as wrong_secret:
            Bucket.at(url).read("open/a.png")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADESRAUNKNOWN0000")
        with pytest.raises(StorageError, match=re.escape(f"credentials for {url}/open/a.png")) as unknown_key:
            Bucket.at(url).read("open/a.png")
    assert not isinstance(wrong_secret.value, AccessDeniedError)
    for error in (denied.value, wrong_secret.value, unknown_key.value):
        _hides_secret(error)
        assert iam_user["secret"] not in str(error) + repr(error)


def test_transient_errors_are_retried(s3_env: RecordingMotoServer, s3_bucket_name: str) -> None:
    bucket = Bucket.at(f"s3://{s3_bucket_name}/drop")
    bucket.write("a.png", b"pixels")
    start = len(s3_env.app.log)
    s3_env.app.fail_next(2, method="GET")
    assert bucket.read("a.png") == b"pixels"
    assert [r.status for r in s3_env.app.log[start:] if r.method == "GET"] == [503, 503, 200]


def test_persistent_errors_end_in_an_error(s3_env: RecordingMotoServer, s3_bucket_name: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    bucket = Bucket.at(f"s3://{s3_bucket_name}/drop")
    bucket.write("a.png", b"pixels")
    start = len(s3_env.app.log)
    s3_env.app.fail_next(100, method="GET")
    try:
        with pytest.raises(StorageError, match=re.escape(f"s3://{s3_bucket_name}/drop/a.png") + ".*SlowDown") as caught:
            bucket.read("a.png")
    finally:
        s3_env.app.fail_next(0)
    assert [r.status for r in s3_env.app.log[start:] if r.method == "GET"] == [503, 503]
    _hides_secret(caught.value)


def test_unreachable_endpoint(s3_env: RecordingMotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError, match=re.escape("reach the S3 endpoint for s3://desra-anything/drop/a")) as caught:
        Bucket.at("s3://desra-anything/drop").read("a")
    _hides_secret(caught.value)


# --- claims --------------------------------------------------------------------------------------------------

class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_claim_renew_release(root_url: str) -> None:
    bucket = Bucket.at(root_url)
    clock = Clock(1000.0)
    mine = Claims(bucket, "claims/detect", "worker-a", 30, clock=clock)
    theirs = Claims(bucket, "claims/detect", "worker-b", 30, clock=clock)
    assert mine.holder("img1") is None
    assert mine.claim("img1") is True
    assert theirs.holder("img1") == "worker-a"
    assert json.loads(bucket.read("claims/detect/img1")) == {"owner": "worker-a", "expires": 1030.0}
    assert theirs.claim("img1") is False
    clock.now = 1020.0
    assert mine.renew("img1") is True
    assert json.loads(bucket.read("claims/detect/img1"))["expires"] == 1050.0
    assert theirs.renew("img1") is False
    clock.now = 1040.0  # past the first lease, within the renewed one
    assert theirs.claim("img1") is False
    assert theirs.release("img1") is False  # not theirs: refused, nothing changes
    assert theirs.holder("img1") == "worker-a"
    assert mine.release("img1") is True
    assert mine.holder("img1") is None
    assert theirs.claim("img1") is True
    assert mine.holder("img1") == "worker-b"
    assert mine.release("img1") is False


def test_a_holder_renews_and_releases_with_one_request_each(s3_env: RecordingMotoServer, s3_bucket_name: str) -> None:
    """The holder rewrites its claim with If-Match on the ETag its own last write returned, without reading it
    first; when another owner took the claim over in between, that write is refused and nothing changes."""
    bucket = Bucket.at(f"s3://{s3_bucket_name}/out")
    clock = Clock(1000.0)
    mine = Claims(bucket, ".desra/claims", "worker-a", 30, clock=clock)
    theirs = Claims(bucket, ".desra/claims", "worker-b", 30, clock=clock)

    def requests(action: Any) -> list[str]:
        start = len(s3_env.app.log)
        action()
        return [r.method for r in s3_env.app.log[start:]]

    assert requests(lambda: mine.create("sr/k1")) == ["PUT"]
    clock.now = 1020.0
    assert requests(lambda: mine.renew("sr/k1")) == ["PUT"]
    assert json.loads(bucket.read(".desra/claims/sr/k1"))["expires"] == 1050.0
    assert requests(lambda: mine.release("sr/k1")) == ["PUT"]
    assert mine.holder("sr/k1") is None

    assert mine.claim("sr/k2") is True
    clock.now = 1100.0  # mine stopped renewing: its lease ran out, and worker-b takes the claim over
    assert theirs.claim("sr/k2") is True
    assert mine.renew("sr/k2") is False and mine.release("sr/k2") is False
    assert theirs.holder("sr/k2") == "worker-b"
    assert theirs.release("sr/k2") is True and theirs.holder("sr/k2") is None


def test_claim_from_eight_threads_has_one_winner(root_url: str) -> None:
    claims = [Claims(Bucket.at(root_url), "claims", f"worker-{i}", 60) for i in range(8)]
    wins = _together(8, lambda i: claims[i].claim("img"))
    assert wins.count(True) == 1
    assert claims[0].holder("img") == f"worker-{wins.index(True)}"


def test_expired_lease_is_taken_over_by_exactly_one(root_url: str) -> None:
    dead = Claims(Bucket.at(root_url), "claims", "dead-worker", 30, clock=Clock(1000.0))
    assert dead.claim("img") is True
    later = Clock(1031.0)
    takers = [Claims(Bucket.at(root_url), "claims", f"worker-{i}", 30, clock=later) for i in range(6)]
    wins = _together(6, lambda i: takers[i].claim("img"))
    assert wins.count(True) == 1
    assert takers[0].holder("img") == f"worker-{wins.index(True)}"
    assert dead.renew("img") is False  # the dead holder, back, has lost it
    assert dead.release("img") is False
    assert takers[0].holder("img") == f"worker-{wins.index(True)}"


def test_unexpired_lease_is_not_taken_over(root_url: str) -> None:
    holder = Claims(Bucket.at(root_url), "claims", "alive", 30, clock=Clock(1000.0))
    assert holder.claim("img") is True
    soon = Clock(1029.0)
    takers = [Claims(Bucket.at(root_url), "claims", f"worker-{i}", 30, clock=soon) for i in range(6)]
    assert _together(6, lambda i: takers[i].claim("img")) == [False] * 6
    assert takers[0].holder("img") == "alive"


def test_an_unreadable_claim_object_counts_as_expired(root_url: str) -> None:
    bucket = Bucket.at(root_url)
    bucket.write("claims/img", b"not json")
    claims = Claims(bucket, "claims", "w", 30, clock=Clock(5.0))
    assert claims.holder("img") is None
    assert claims.claim("img") is True
    assert claims.holder("img") == "w"


def test_claims_options_are_checked(tmp_path: Path) -> None:
    bucket = Bucket.at(tmp_path)
    for owner, lease in (("", 10), ("w", 0), ("w", float("nan")), ("a\nb", 10)):
        with pytest.raises(ConfigError):
            Claims(bucket, "claims", owner, lease)
    with pytest.raises(ConfigError):
        Claims(bucket, "../up", "w", 10)
