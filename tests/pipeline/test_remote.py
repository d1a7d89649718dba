"""A worker's local copy of a bucket output root: where it lives, and how it is kept within its bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from desra.pipeline.remote import bucket_of, read_through_limit, trim, work_root
from desra_core.errors import ConfigError


def test_each_output_url_has_its_own_local_copy_beside_the_weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DESRA_CACHE", str(tmp_path / "cache"))
    a, b = work_root("s3://bucket/out"), work_root("s3://bucket/out2")
    assert a != b and work_root("s3://bucket/out/") == a
    assert Path(a).parent == tmp_path / "cache" / "outputs"  # not under weights/, which model files may name
    assert work_root(str(tmp_path / "local")) == str(tmp_path / "local")  # a folder is its own root
    assert bucket_of(str(tmp_path / "local")) is None
    with pytest.raises(ConfigError, match="gs"):
        bucket_of("gs://bucket/out")


def test_the_bound_is_a_whole_number_of_megabytes():
    assert read_through_limit({}) == 20_000 * 1_000_000
    assert read_through_limit({"DESRA_OUTPUT_CACHE_MB": "5"}) == 5_000_000
    for bad in ("0", "-1", "1.5", "lots"):
        with pytest.raises(ConfigError, match="DESRA_OUTPUT_CACHE_MB"):
            read_through_limit({"DESRA_OUTPUT_CACHE_MB": bad})


def test_trim_removes_the_oldest_files_first_and_keeps_claims_and_locks(tmp_path):
    root = tmp_path / "copy"
    files = []
    names = ["sr/gan/a.png", ".desra/store/sr/ab/k1.png", "masks/a.png", ".desra/store/detect/cd/k2.json"]
    for i, rel in enumerate(names):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))  # oldest first
        files.append(path)
    keep = root / ".desra" / "locks" / "sr" / "k.lock"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"")
    assert trim(root, 250) == 200
    assert [p.exists() for p in files] == [False, False, True, True]
    assert keep.exists()
    assert trim(root, 1000) == 0
