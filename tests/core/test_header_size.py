"""read_header_size: the size that the first bytes of an image file declare (for a ranged read of a remote file)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from desra_core.image import read_header_size, read_image_size_bytes

HEAD = 64 * 2**10


def _saved(fmt: str, width: int, height: int, orientation: int = 1) -> bytes:
    rgb = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, exif=exif) if fmt != "BMP" else Image.fromarray(rgb).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_the_head_of_a_large_file_gives_the_size_that_reading_the_whole_gives(fmt, orientation):
    data = _saved(fmt, 600, 400, orientation)
    assert len(data) > HEAD  # only a prefix is seen
    whole = read_image_size_bytes(data, "x")
    if fmt == "JPEG":
        assert whole == ((400, 600) if orientation == 6 else (600, 400))
    got = read_header_size(data[:HEAD])
    if fmt == "WEBP":  # Pillow opens no cut WebP; its header is parsed, and its EXIF (at the end) not seen
        assert got == (600, 400)
    else:
        assert got == whole or (fmt == "TIFF" and got is None)  # a TIFF's IFD may lie anywhere: then it cannot say


@pytest.mark.parametrize("options", [{"lossless": True}, {"quality": 80}, {"lossless": True, "exif": b"Exif\x00\x00"}])
def test_every_kind_of_webp_header(options):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((7, 13, 3), np.uint8)).save(buf, "WEBP", **options)
    data = buf.getvalue()
    assert read_header_size(data[:30]) == (13, 7) == read_image_size_bytes(data, "x")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_png_bomb_and_a_jpeg_bomb_declare_their_size():
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 90_000, 8, 2, 0, 0, 0))
    assert read_header_size(png + _chunk(b"IDAT", bytes(100))) == (100_000, 90_000)
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 60_000, 50_000, 3) + bytes(9)
    assert read_header_size(b"\xff\xd8" + sof + bytes(1000)) == (50_000, 60_000)  # Pillow refuses it: parsed here


def jpeg_with_big_app_segments(jpeg: bytes, total: int) -> bytes:
    """``jpeg`` with APP1 segments of about ``total`` bytes (EXIF-like) before its frame header."""
    segments = []
    while total > 0:
        body = b"Exif\x00\x00" + bytes(min(total, 60_000))
        segments.append(b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body)
        total -= 60_000
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def test_a_head_that_does_not_reach_the_size_says_none():
    exif_first = jpeg_with_big_app_segments(_saved("JPEG", 40, 30), 70_000)
    assert read_header_size(exif_first) == (40, 30)
    assert read_header_size(exif_first[:HEAD]) is None
    png = _saved("PNG", 40, 30)
    assert read_header_size(png[:20]) is None  # cut inside the IHDR
    assert read_header_size(png[:33]) == (40, 30)
    for junk in (b"", b"GIF89a" + bytes(100), bytes(HEAD), b"\xff\xd8\xff\xda" + bytes(50)):
        assert read_header_size(junk) is None
