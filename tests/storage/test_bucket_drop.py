"""A drop in a bucket (``s3://bucket/prefix``), against a real S3 API (moto's server): listed by the rules of a
local drop folder, each object read in one GET, a decompression bomb refused from a ranged GET of its header,
an oversize object refused from the listing's size, a failing object failing alone."""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from desra.pipeline.drop import drop_items, match_labels, result_items, scan_drop
from desra.pipeline.objectfile import HEADER_BYTES, ObjectFile
from desra.pipeline.objects import Bucket
from desra.pipeline.settings import Settings
from desra.pipeline.steps import ImageJob, Run
from desra_core import ConfigError, InputImageError
from tests.core.test_header_size import jpeg_with_big_app_segments
from tests.storage.conftest import RecordingMotoServer, Served, iam_keys


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb8 = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    rgb16 = rng.integers(0, 65536, (20, 16, 3), dtype=np.uint16)
    return {"a.png": _encode(".png", rgb8), "b16.png": _encode(".png", rgb16), "c.jpg": _encode(".jpg", rgb8),
            "d.PNG": _encode(".png", rgb8[:8, :8])}


def _mixed_drop() -> dict[str, bytes]:
    """Names of every kind a drop's listing meets, and their bytes."""
    files = _images()
    files.update({
        "notes.txt": b"not an image",  # skipped: not an image's suffix
        "broken.png": b"not a png at all",  # listed; fails when read
        "empty.png": b"",  # listed; fails when read
        ".hidden.png": files["a.png"],  # hidden: skipped
        ".a.png.0123abcd.tmp": b"half written",  # a temporary file: skipped
        "dup.png": files["a.png"], "dup.jpg": files["c.jpg"],  # one stem, two images: both refused
        "bad\\name.png": files["a.png"],  # a name that cannot name output files
        "..x.png": files["a.png"],  # a name starting with '..'
        "folder/x.png": files["a.png"],  # deeper: not listed
    })
    return files


def _put(client: Any, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = folder.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _run(tmp_path: Path, models: Any = None) -> Run:
    settings = Settings.from_options(mse_model="mse.pth", gan_model="gan.pth", device="cpu")
    return Run(settings=settings, output_dir=str(tmp_path / "out"), run_id="t", models=models)


class FourTimes:
    """A stand-in for the run's models: only the scale is used before any model call."""

    def __init__(self) -> None:
        self.scale = 4
        self.digests = {"mse": "0" * 64, "gan": "1" * 64}
        self.segmenter_key = None

    def super_resolve(self, role: str, lr: np.ndarray) -> np.ndarray:
        raise AssertionError("no model call in these tests")

    def segment(self, gan: np.ndarray) -> np.ndarray:
        raise AssertionError("no model call in these tests")


def _object_requests(log: list[Served], start: int, bucket: str, key: str) -> list[Served]:
    return [served for served in log[start:] if served.path == f"/{bucket}/{key}"]


def test_a_bucket_drop_lists_and_reads_as_the_same_local_folder(s3_client: Any, s3_bucket_name: str,
                                                                 tmp_path: Path) -> None:
    files = _mixed_drop()
    _put(s3_client, s3_bucket_name, "drop", files)
    local = tmp_path / "drop"
    _write(local, files)
    url = f"s3://{s3_bucket_name}/drop"

    remote_items, local_items = drop_items(url), drop_items(str(local))

    def as_url(text: str | None) -> str | None:
        return None if text is None else text.replace(str(local), url)

    assert [i.stem for i in remote_items] == [i.stem for i in local_items]
    assert "x" not in [i.stem for i in remote_items]  # folder/x.png is not in the drop
    assert {i.stem for i in remote_items} == {"a", "b16", "c", "d", "broken", "empty", "dup", "dup~2", "bad%5Cname",
                                              "%2E%2Ex"}
    for remote, here in zip(remote_items, local_items, strict=True):
        assert (remote.path, remote.error) == (as_url(here.path), as_url(here.error)), remote.stem
        assert (remote.file is None) == (here.file is None), remote.stem
    refused = {i.stem: i.error for i in remote_items if i.error is not None}
    assert set(refused) == {"dup", "dup~2", "bad%5Cname", "%2E%2Ex"}
    assert f"(file: {url}/bad\\name.png)" in str(refused["bad%5Cname"])

    # Each image read in one GET: the same digests (and failures) as the local files.
    run = _run(tmp_path)
    for remote, here in zip(remote_items, local_items, strict=True):
        if remote.file is None:
            continue
        assert isinstance(remote.file, ObjectFile) and remote.file.shown == remote.path
        jobs = ImageJob(run, remote), ImageJob(run, here)
        for job in jobs:
            job.load()
        assert jobs[0].load_error is None and jobs[0].item.sha256 == jobs[1].item.sha256 is not None, remote.stem
        if remote.stem in ("broken", "empty"):  # the same failure, naming the URL
            with pytest.raises(InputImageError) as caught:
                jobs[0].plan()
            with pytest.raises(InputImageError) as caught_here:
                jobs[1].plan()
            assert str(caught.value) == as_url(str(caught_here.value))
            assert f"(file: {url}/{remote.stem}.png)" in str(caught.value)
        else:
            assert jobs[0].src is not None and jobs[1].src is not None and jobs[0].src.data == jobs[1].src.data
            etag = s3_client.head_object(Bucket=s3_bucket_name, Key=f"drop/{remote.file.key}")["ETag"].strip('"')
            assert jobs[0].src.etag == etag


def test_labels_and_requested_stems_in_a_bucket(s3_client: Any, s3_bucket_name: str) -> None:
    images = _images()
    _put(s3_client, s3_bucket_name, "drop", {"a.png": images["a.png"], "c.jpg": images["c.jpg"]})
    _put(s3_client, s3_bucket_name, "labels", {"a.png": images["d.PNG"]})
    url, labels_url = f"s3://{s3_bucket_name}/drop/", f"s3://{s3_bucket_name}/labels"

    scanned = scan_drop(url, ["c", "zz", "c"])
    assert [(s["stem"], s["path"], s["error"]) for s in scanned] == [
        ("c", f"s3://{s3_bucket_name}/drop/c.jpg", None),
        ("zz", None, f"expected an image with stem 'zz' in s3://{s3_bucket_name}/drop, found none")]
    labels = match_labels(scan_drop(url), labels_url)
    assert [(lab["stem"], lab["path"], lab["error"] is None) for lab in labels] == [
        ("a", f"{labels_url}/a.png", True), ("c", None, False)]
    items = drop_items(url, labels_dir=labels_url)
    assert items[0].labels_file is not None and items[0].labels == (f"{labels_url}/a.png", None, None)
    with pytest.raises(ConfigError, match="desra detect reads local folders"):
        result_items(url, "/tmp/gan")


def test_an_oversize_object_is_refused_without_a_get(s3_env: RecordingMotoServer, s3_client: Any, s3_bucket_name: str,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = _encode(".png", np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    assert len(big) > 20_000
    _put(s3_client, s3_bucket_name, "drop", {"big.png": big, "small.png": _images()["d.PNG"]})
    monkeypatch.setenv("DESRA_MAX_INPUT_MB", str(20_000 / 2**20))
    url = f"s3://{s3_bucket_name}/drop"
    items = {i.stem: i for i in drop_items(url)}
    start = len(s3_env.app.log)
    jobs = {stem: ImageJob(_run(tmp_path, FourTimes()), item) for stem, item in items.items()}
    for job in jobs.values():
        job.load()
    error = jobs["big"].load_error
    assert isinstance(error, InputImageError)
    assert str(error) == (f"expected an input file of at most {20_000 / 2**20:g} MiB (DESRA_MAX_INPUT_MB), got "
                          f"{len(big)} bytes (refused before reading) (file: {url}/big.png)")
    assert _object_requests(s3_env.app.log, start, s3_bucket_name, "drop/big.png") == []
    assert jobs["small"].load_error is None  # the other image is read (its one GET, bounded by the limit)
    [get] = _object_requests(s3_env.app.log, start, s3_bucket_name, "drop/small.png")
    assert get.method == "GET" and get.range == "bytes=0-20000"


def _png_bomb(width: int, height: int, filler: int) -> bytes:
    """A PNG whose IHDR says ``width``×``height``, followed by ``filler`` bytes of (junk) image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(filler)) + chunk(b"IEND", b"")


def test_a_decompression_bomb_costs_one_small_ranged_get(s3_env: RecordingMotoServer, s3_client: Any,
                                                         s3_bucket_name: str, tmp_path: Path) -> None:
    bomb = _png_bomb(100_000, 100_000, 2 * 2**20)
    _put(s3_client, s3_bucket_name, "drop", {"bomb.png": bomb})
    url = f"s3://{s3_bucket_name}/drop"
    [item] = drop_items(url)
    start = len(s3_env.app.log)
    job = ImageJob(_run(tmp_path, FourTimes()), item)
    job.load()
    assert isinstance(job.load_error, InputImageError)
    assert str(job.load_error) == (
        "expected at most 80 megapixels of output per image (DESRA_MAX_OUTPUT_MPIX), got a 100000×100000 image "
        "whose x4 result would be 400000×400000 = 160000.0 megapixels (refused before decoding) "
        f"(file: {url}/bomb.png)")
    [get] = _object_requests(s3_env.app.log, start, s3_bucket_name, "drop/bomb.png")
    assert (get.method, get.range) == ("GET", f"bytes=0-{HEADER_BYTES - 1}")
    assert get.sent <= HEADER_BYTES < len(bomb)
    assert job.src is None and job.item.sha256 is None

    # Without models (every result given) nothing is refused from the header: the object is read whole.
    start = len(s3_env.app.log)
    ImageJob(_run(tmp_path), item).load()
    [get] = _object_requests(s3_env.app.log, start, s3_bucket_name, "drop/bomb.png")
    assert get.sent == len(bomb)


def test_a_header_that_does_not_say_falls_back_to_the_whole_object(s3_env: RecordingMotoServer, s3_client: Any,
                                                                   s3_bucket_name: str, tmp_path: Path) -> None:
    image = np.random.default_rng(2).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    exif_first = jpeg_with_big_app_segments(_encode(".jpg", image), 70_000)  # the frame header lies past 64 KiB
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 60_000, 60_000, 3) + bytes(9)
    bomb = jpeg_with_big_app_segments(b"\xff\xd8" + sof + bytes(1000), 70_000)
    _put(s3_client, s3_bucket_name, "drop", {"e.jpg": exif_first, "f.jpg": bomb})
    url = f"s3://{s3_bucket_name}/drop"
    items = drop_items(url)
    assert [i.stem for i in items] == ["e", "f"] and isinstance(items[0].file, ObjectFile)
    assert items[0].file.header_size() is None

    start = len(s3_env.app.log)
    jobs = [ImageJob(_run(tmp_path, FourTimes()), item) for item in items]
    for job in jobs:
        job.load()
    for job, data in zip(jobs, (exif_first, bomb), strict=True):
        assert job.load_error is None and job.src is not None and job.src.data == data
        header, whole = _object_requests(s3_env.app.log, start, s3_bucket_name, f"drop/{job.item.stem}.jpg")
        assert header.range == f"bytes=0-{HEADER_BYTES - 1}" and whole.sent == len(data)
    jobs[0].plan()
    assert jobs[0].size == (24, 16)
    # The whole file's checks still refuse the bomb whose header did not say.
    with pytest.raises(InputImageError, match=f"expected at most .* pixels.*file: {url}/f.jpg"):
        jobs[1].plan()


def test_an_object_deleted_after_the_listing_fails_alone(s3_client: Any, s3_bucket_name: str, tmp_path: Path) -> None:
    images = _images()
    _put(s3_client, s3_bucket_name, "drop", {"a.png": images["a.png"], "gone.png": images["a.png"]})
    url = f"s3://{s3_bucket_name}/drop"
    items = drop_items(url)
    s3_client.delete_object(Bucket=s3_bucket_name, Key="drop/gone.png")
    jobs = [ImageJob(_run(tmp_path, FourTimes()), item) for item in items]
    for job in jobs:
        job.load()
    assert jobs[0].load_error is None and jobs[0].item.sha256 is not None
    assert isinstance(jobs[1].load_error, InputImageError)
    assert str(jobs[1].load_error) == ("expected the object that the drop's listing named, got none (deleted since?) "
                                       f"(file: {url}/gone.png)")
    with pytest.raises(InputImageError, match=f"{url}/gone.png"):
        jobs[1].plan()


def test_access_denied_on_one_object_fails_it_alone(s3_env: RecordingMotoServer, s3_client: Any, s3_bucket_name: str,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.core.authorization import enable_iam_authentication

    images = _images()
    _put(s3_client, s3_bucket_name, "drop", {"open.png": images["a.png"], "closed.png": images["a.png"]})
    keys = iam_keys(s3_env.endpoint, f"reader-{s3_bucket_name}",
                    [f"arn:aws:s3:::{s3_bucket_name}", f"arn:aws:s3:::{s3_bucket_name}/drop/open.png"])
    url = f"s3://{s3_bucket_name}/drop"
    with enable_iam_authentication():
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["secret"])
        items = {i.stem: i for i in drop_items(url)}
        jobs = {stem: ImageJob(_run(tmp_path), item) for stem, item in items.items()}
        for job in jobs.values():
            job.load()
    assert jobs["open"].load_error is None
    assert str(jobs["closed"].load_error) == ("expected to be allowed to read the object, got access denied "
                                              f"(file: {url}/closed.png)")


def test_listing_two_thousand_objects_is_list_requests_only(s3_env: RecordingMotoServer, s3_client: Any,
                                                            s3_bucket_name: str) -> None:
    for i in range(2000):
        s3_client.put_object(Bucket=s3_bucket_name, Key=f"big-drop/img{i:04d}.png", Body=b"x")
    start = len(s3_env.app.log)
    began = time.perf_counter()
    items = drop_items(f"s3://{s3_bucket_name}/big-drop")
    took = time.perf_counter() - began
    requests = s3_env.app.log[start:]
    assert len(items) == 2000 and all(i.error is None for i in items)
    assert [(r.method, r.path, "list-type=2" in r.query) for r in requests] == [("GET", f"/{s3_bucket_name}", True)] * 2
    print(f"listing 2000 objects: {len(requests)} LIST requests, {took:.2f} s")
    start = len(s3_env.app.log)
    bucket = Bucket.at(f"s3://{s3_bucket_name}/big-drop")
    assert len(bucket.list_level()[0]) == 2000
    assert bucket._lister is None  # names obstore takes as they are: no botocore client was made
    assert [(r.method, "list-type=2" in r.query) for r in s3_env.app.log[start:]] == [("GET", True)] * 2


def test_names_that_only_a_bucket_can_hold(s3_client: Any, s3_bucket_name: str) -> None:
    """A key with a character that no object key may have here, and a "folder" named like an image."""
    png = _images()["a.png"]
    _put(s3_client, s3_bucket_name, "drop", {"rtl\u202egnp.png": png, "bell\x07.png": png, "sub.png/inner.png": png,
                                            "ok.png": png})
    url = f"s3://{s3_bucket_name}/drop"
    items = {i.stem: i for i in drop_items(url)}
    bucket = Bucket.at(url)
    assert sorted(name for name, _, _ in bucket.list_level()[0]) == sorted(["rtl\u202egnp.png", "bell\x07.png",
                                                                         "ok.png"])
    assert bucket._lister is not None  # obstore refused the page (the bell character): botocore listed it
    assert set(items) == {"rtl\u202egnp", "bell%07", "sub", "ok"}
    assert items["ok"].error is None
    assert items["rtl\u202egnp"].file is None and items["rtl\u202egnp"].path == f"{url}/rtl\\u202egnp.png"
    assert str(items["rtl\u202egnp"].error).endswith(
        "(a control or non-printable character) (file: " + f"{url}/rtl\\u202egnp.png)")
    assert items["bell%07"].path == f"{url}/bell\\x07.png"
    assert str(items["bell%07"].error).startswith("expected a file name usable for output files and reports, got a "
                                                  "name containing '\\x07'; rename the file")
    assert items["sub"].error == f"expected an image file, got a folder of objects (file: {url}/sub.png/)"


def test_an_object_replaced_after_the_listing_is_recorded_as_read_and_not_remembered(
        s3_client: Any, s3_bucket_name: str, tmp_path: Path) -> None:
    """The row's digest is that of the bytes processed; the "seen" record that lets a later run skip the download
    is written only when the read saw the listed content, so the replaced object is read again next time."""
    images = _images()
    _put(s3_client, s3_bucket_name, "drop", {"a.png": images["a.png"]})
    url = f"s3://{s3_bucket_name}/drop"
    run = _run(tmp_path, FourTimes())
    (item,) = drop_items(url)
    replacement = images["b16.png"]
    s3_client.put_object(Bucket=s3_bucket_name, Key="drop/a.png", Body=replacement)
    job = ImageJob(run, item)
    job.load()
    job.remember()
    assert job.item.sha256 == hashlib.sha256(replacement).hexdigest()  # what was processed
    assert not list((Path(run.output_dir) / ".desra" / "store").glob("seen/*/*.json"))
    assert not ImageJob(run, drop_items(url)[0]).recall()  # listed anew: not known yet

    (item,) = drop_items(url)  # listed after the replacement: the read sees the listed content
    job = ImageJob(run, item)
    job.load()
    job.remember()
    again = ImageJob(run, drop_items(url)[0])
    assert again.recall() and again.item.sha256 == hashlib.sha256(replacement).hexdigest()
