"""The in-process cache of store images: what it hands out must equal what reading the file gives."""

from __future__ import annotations

import os

import numpy as np
import pytest

from desra.pipeline import pixels
from desra_core import InputImageError
from desra_core.image import read_image, read_mask
from desra_core.image import write_image as plain_write


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch):
    monkeypatch.delenv("DESRA_PIXEL_CACHE_MB", raising=False)
    pixels.clear()
    yield
    pixels.clear()


def rgb(seed: int, dtype=np.uint8, size: int = 24) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top, (size, size + 3, 3), dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_cached_pixels_equal_the_file_and_are_read_only(tmp_path, dtype):
    path = tmp_path / "a.png"
    image = rgb(0, dtype)
    pixels.write_image(path, image)
    image[:] = 0  # the writer's array may change afterwards; the cache kept its own copy
    got = pixels.read_pixels(path)
    assert np.array_equal(got, read_image(path).pixels) and got.dtype == dtype
    assert got is pixels.read_pixels(path)  # served from memory
    with pytest.raises(ValueError):
        got[0, 0, 0] = 1


def test_a_hard_link_of_a_cached_file_is_served_from_memory(tmp_path):
    pixels.write_image(tmp_path / "store.png", rgb(4))
    os.link(tmp_path / "store.png", tmp_path / "published.png")
    assert pixels.read_pixels(tmp_path / "published.png") is pixels.read_pixels(tmp_path / "store.png")


def test_masks_round_trip(tmp_path):
    mask = np.zeros((20, 30), bool)
    mask[5:9, 3:20] = True
    pixels.write_mask(tmp_path / "m.png", mask)
    assert np.array_equal(pixels.read_mask(tmp_path / "m.png"), read_mask(tmp_path / "m.png"))


def test_a_file_changed_on_disk_is_read_again(tmp_path):
    path = tmp_path / "a.png"
    pixels.write_image(path, rgb(1))
    other = rgb(2)
    plain_write(path, other)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # even when the size happens to match
    assert np.array_equal(pixels.read_pixels(path), other)


def test_a_removed_or_truncated_file_is_not_served_from_memory(tmp_path):
    path = tmp_path / "a.png"
    pixels.write_image(path, rgb(3))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputImageError):
        pixels.read_pixels(path)
    path.unlink()
    with pytest.raises(InputImageError):
        pixels.read_pixels(path)


def test_the_budget_evicts_least_recently_used(tmp_path, monkeypatch):
    one = rgb(0).nbytes
    monkeypatch.setenv("DESRA_PIXEL_CACHE_MB", str(2.5 * one / 2**20))
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, p in enumerate(paths[:2]):
        pixels.write_image(p, rgb(i))
    first = pixels.read_pixels(paths[0])  # 0 is now the most recently used
    pixels.write_image(paths[2], rgb(2))  # evicts 1
    assert pixels.read_pixels(paths[0]) is first
    assert pixels.read_pixels(paths[1]) is not pixels.read_pixels(paths[1])  # read from disk each time
    monkeypatch.setenv("DESRA_PIXEL_CACHE_MB", "0")
    pixels.clear()
    pixels.write_image(paths[0], rgb(0))
    assert pixels.read_pixels(paths[0]) is not pixels.read_pixels(paths[0])


def test_a_published_copy_shares_the_cached_array_and_counts_once(tmp_path, monkeypatch):
    import shutil

    image = rgb(5)
    monkeypatch.setenv("DESRA_PIXEL_CACHE_MB", str(1.5 * image.nbytes / 2**20))  # room for one array only
    pixels.write_image(tmp_path / "store.png", image)
    shutil.copyfile(tmp_path / "store.png", tmp_path / "published.png")
    pixels.alias(tmp_path / "store.png", tmp_path / "published.png")
    served = pixels.read_pixels(tmp_path / "published.png")
    assert served is pixels.read_pixels(tmp_path / "store.png")  # one array, both names, nothing evicted
    assert np.array_equal(served, read_image(tmp_path / "published.png").pixels)
    plain_write(tmp_path / "published.png", rgb(6))  # the copy edited: read from disk, the store's stays
    st = (tmp_path / "published.png").stat()
    os.utime(tmp_path / "published.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert np.array_equal(pixels.read_pixels(tmp_path / "published.png"), rgb(6))
    assert pixels.read_pixels(tmp_path / "store.png") is served
