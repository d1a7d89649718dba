"""desra_core.folder: a folder opened once, its files opened once without following links, bounded reads."""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import pytest

import desra_core.folder as folder_module
from desra_core import ConfigError, InputImageError
from desra_core.folder import (
    DEFAULT_MAX_INPUT_MB,
    MAX_INPUT_VARIABLE,
    Folder,
    max_input_bytes,
)
from desra_core.image import write_image
from desra_core.listing import list_image_entries


def _png(path, seed: int = 0) -> bytes:
    write_image(path, np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return path.read_bytes()


def test_max_input_bytes_reads_the_variable_and_refuses_nonsense():
    assert max_input_bytes({}) == int(DEFAULT_MAX_INPUT_MB * 2**20)
    assert max_input_bytes({MAX_INPUT_VARIABLE: " 1.5 "}) == 3 * 2**19
    for bad in ("0", "-2", "lots", "nan", "inf"):
        with pytest.raises(ConfigError, match=MAX_INPUT_VARIABLE):
            max_input_bytes({MAX_INPUT_VARIABLE: bad})


def test_read_gives_the_bytes_and_their_digest(tmp_path):
    data = _png(tmp_path / "a.png")
    with Folder(tmp_path) as folder:
        got = folder.read("a.png", max_bytes=len(data))
    assert got.data == data and got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.shown == str(tmp_path / "a.png")


@pytest.mark.parametrize("target", ["inside", "outside"])
def test_read_never_follows_a_link(tmp_path, target):
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    drop.mkdir()
    outside.mkdir()
    _png(drop / "real.png")
    _png(outside / "secret.png", 1)
    (drop / "link.png").symlink_to(drop / "real.png" if target == "inside" else outside / "secret.png")
    with Folder(drop) as folder, pytest.raises(InputImageError, match=r"got a symbolic link .*link\.png"):
        folder.read("link.png", max_bytes=None)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    done = []

    def read():
        with Folder(tmp_path) as folder, pytest.raises(InputImageError, match="a FIFO"):
            folder.read("fifo.png", max_bytes=None)
        done.append(True)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(30)  # a blocking open would never return: a bound on a hang, not a timing assertion
    assert done, "reading a FIFO blocked"


def test_a_file_over_the_limit_is_refused_from_fstat_without_reading(tmp_path, monkeypatch):
    path = tmp_path / "sparse.png"
    with open(path, "wb") as f:
        f.truncate(3 * 2**30)  # 3 GiB, sparse: no disk, and not one byte may be read
    monkeypatch.setattr(folder_module.os, "read", lambda *a: pytest.fail("read a file over the limit"))
    with Folder(tmp_path) as folder, pytest.raises(InputImageError) as info:
        folder.read("sparse.png", max_bytes=64 * 2**20)
    message = str(info.value)
    assert "at most 64 MiB" in message and MAX_INPUT_VARIABLE in message and str(3 * 2**30) in message
    assert "sparse.png" in message and "refused before reading" in message


def test_a_file_that_grows_while_read_is_cut_at_the_limit(tmp_path, monkeypatch):
    (tmp_path / "grows.png").write_bytes(b"x" * 100)
    real_read = os.read
    grown = []

    def read(fd, n):  # the first read sees the file as fstat did; then it has grown past the limit
        block = real_read(fd, n)
        if not grown:
            grown.append(True)
            with open(tmp_path / "grows.png", "ab") as f:
                f.write(b"y" * 1000)
        return block

    monkeypatch.setattr(folder_module.os, "read", read)
    with Folder(tmp_path) as folder, pytest.raises(InputImageError, match="grew while read"):
        folder.read("grows.png", max_bytes=500)


def test_a_folder_swapped_for_a_link_after_it_was_opened_is_still_the_folder_opened(tmp_path):
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    drop.mkdir()
    outside.mkdir()
    original = _png(drop / "mine.png")
    _png(outside / "secret.png", 1)
    with Folder(drop) as folder:
        os.rename(drop, tmp_path / "moved")
        (tmp_path / "drop").symlink_to(outside)  # the path now leads elsewhere
        assert folder.real == (tmp_path / "moved").resolve()  # checked on the descriptor, not the path
        assert sorted(list_image_entries(folder)) == ["mine"]
        assert folder.read("mine.png", max_bytes=None).data == original
        with pytest.raises(InputImageError, match="no longer exists"):
            folder.read("secret.png", max_bytes=None)


def test_a_missing_folder_or_a_file_is_refused(tmp_path):
    with pytest.raises(InputImageError, match="does not exist"):
        Folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(InputImageError, match="got a file"):
        Folder(tmp_path / "file.png")
