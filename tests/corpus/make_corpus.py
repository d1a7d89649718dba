"""A corpus of hostile input files, generated at test time (no binaries in the repository).

:func:`make_corpus` writes every kind of file that a real-world drop may hold and that has hurt image
pipelines before (empty, truncated, misnamed, odd pixel formats, EXIF rotation, tiny, a decompression
bomb, file names that are not UTF-8 or look like path traversal, symbolic links (out of the folder and
inside it), a directory named like an image, a FIFO) and says, for each, what reading it and processing it must give.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = ["HEIGHT", "WIDTH", "Expectation", "make_corpus"]

HEIGHT, WIDTH = 24, 32
"""Size of the corpus's ordinary images (small: the flow test runs real tiny models on all of them)."""

DETECT_WINDOW = 11
"""Detection needs images of at least this many pixels a side (the Eq. 7 window)."""


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """What one corpus file must give.

    ``stem``: its stem in listings and reports (a safe stand-in for names that are refused).
    ``read``: a fragment of the ``InputImageError`` that ``read_image`` raises, or ``None`` if it reads.
    ``listing``: a fragment of the problem that the folder listing reports, or ``None`` if it is usable.
    ``shape``/``bit_depth``/``pixels``/``check``: the result of reading (``pixels`` exact when lossless;
    ``check`` a further test of the pixels, e.g. that the EXIF rotation was applied).
    """

    stem: str
    read: str | None = None
    listing: str | None = None
    shape: tuple[int, int] | None = None
    bit_depth: int = 8
    pixels: np.ndarray | None = None
    check: Callable[[np.ndarray], bool] | None = None

    def error(self, scale: int) -> str | None:
        """The fragment expected in the error of this file's report row, when images are processed at
        ``scale`` (1: detection on the files themselves; 4: after ×4 super-resolution), or ``None`` if ok."""
        if self.listing is not None:
            return self.listing
        if self.read is not None:
            return self.read
        if min(self.shape) * scale < DETECT_WINDOW:
            return f"at least {DETECT_WINDOW}×{DETECT_WINDOW}"
        return None


def _blocky(h: int, w: int, seed: int, block: int = 8) -> np.ndarray:
    """RGB uint8 made of uniform ``block``-pixel squares (survives JPEG nearly unchanged)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, (-(-h // block), -(-w // block), 3), dtype=np.uint8)
    return np.repeat(np.repeat(colours, block, axis=0), block, axis=1)[:h, :w]


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb() -> bytes:
    """A PNG whose IHDR claims 30000×30000 RGB (2.7 GB decoded) with a few bytes of compressed data."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", zlib.compress(bytes(4096), 9)) + _chunk(b"IEND", b"")


def _close(expected: np.ndarray, tolerance: float) -> Callable[[np.ndarray], bool]:
    def check(pixels: np.ndarray) -> bool:
        return pixels.shape == expected.shape and float(np.abs(pixels.astype(float) - expected).mean()) < tolerance
    return check


def make_corpus(folder: Path, outside_folder: Path) -> dict[str, Expectation]:
    """Write the corpus into ``folder`` (and one valid image into ``outside_folder``, the target of a
    symbolic link that leads out of ``folder``); return each entry's expectation by file name
    (``os.fsdecode`` of the name: the name that is not UTF-8 holds a surrogate escape)."""
    folder, outside_folder = Path(folder), Path(outside_folder)
    folder.mkdir(parents=True, exist_ok=True)
    outside_folder.mkdir(parents=True, exist_ok=True)
    rgb = _blocky(HEIGHT, WIDTH, seed=1)
    png = _encode(Image.fromarray(rgb), "PNG")
    jpeg = _encode(Image.fromarray(rgb), "JPEG", quality=95, subsampling=0)
    size = (HEIGHT, WIDTH)
    corpus: dict[str, tuple[bytes | None, Expectation]] = {}

    def add(name: str, data: bytes | None, **expect) -> None:
        stem = expect.pop("stem", Path(name).stem)
        corpus[name] = (data, Expectation(stem=stem, **expect))

    # Bytes that are not a usable image.
    add("empty.png", b"", read="empty (0-byte) file")
    add("truncated_png.png", png[: len(png) // 2], read="truncated")
    add("truncated_jpeg.jpg", jpeg[: len(jpeg) // 2], read="truncated")
    add("text_named.png", b"just some notes, not an image\n", read="no known image format")
    add("bomb.png", _bomb(), read="30000×30000 = 900000000 pixels (refused before decoding)")
    # Valid images whose extension lies: the format is decided by content.
    add("jpeg_named.png", jpeg, shape=size, check=_close(rgb, 3.0))
    add("png_named.jpg", png, shape=size, pixels=rgb)
    # Pixel formats, all read as RGB.
    deep = _blocky(HEIGHT, WIDTH, seed=2).astype(np.uint16) * 257 + 3
    add("deep16.png", cv2.imencode(".png", np.ascontiguousarray(deep[..., ::-1]))[1].tobytes(), shape=size,
        bit_depth=16, pixels=deep)
    gray = _blocky(HEIGHT, WIDTH, seed=3)[..., 0]
    add("gray.png", _encode(Image.fromarray(gray, "L"), "PNG"), shape=size, pixels=np.dstack([gray] * 3))
    alpha = np.linspace(0, 255, HEIGHT * WIDTH).astype(np.uint8).reshape(HEIGHT, WIDTH)
    add("gray_alpha.png", _encode(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG"), shape=size,
        pixels=np.dstack([gray] * 3))
    add("rgba.png", _encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"), shape=size, pixels=rgb)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add("palette.png", _encode(palette, "PNG"), shape=size, pixels=np.asarray(palette.convert("RGB")))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    add("cmyk.jpg", _encode(cmyk, "JPEG", quality=95), shape=size,
        check=_close(np.asarray(Image.open(io.BytesIO(_encode(cmyk, "JPEG", quality=95))).convert("RGB")), 3.0))
    # Stored WIDTH×HEIGHT, EXIF orientation 6: shown rotated 90° clockwise, so HEIGHT wide and WIDTH tall.
    exif = Image.Exif()
    exif[0x0112] = 6
    add("rotated.jpg", _encode(Image.fromarray(rgb), "JPEG", quality=95, subsampling=0, exif=exif.tobytes()),
        shape=(WIDTH, HEIGHT), check=_close(np.rot90(rgb, -1), 3.0))
    # Tiny images: read fine; detection needs DETECT_WINDOW pixels a side (after super-resolution).
    add("one.png", _encode(Image.fromarray(rgb[:1, :1]), "PNG"), shape=(1, 1), pixels=rgb[:1, :1])
    add("five.png", _encode(Image.fromarray(rgb[:5, :5]), "PNG"), shape=(5, 5), pixels=rgb[:5, :5])
    # Names: odd but safe ones are processed; unsafe ones are refused under a safe stand-in stem.
    add("-rf leading dash.png", png, shape=size, pixels=rgb)
    add("  spaced café ☕.png", png, shape=size, pixels=rgb)
    add(os.fsdecode(b"caf\xe9.png"), png, shape=size, pixels=rgb, stem="caf%E9", listing="not valid UTF-8")
    add("..%2f..%2fetc.png", png, shape=size, pixels=rgb, stem="%2E%2E%2f..%2fetc", listing="starting with '.'")
    # Two images with one stem: outputs are named by stem, so both are refused (the second under a stand-in).
    add("twin.jpg", jpeg, shape=size, check=_close(rgb, 3.0), listing="one image per stem")
    add("twin.png", png, shape=size, pixels=rgb, stem="twin~2", listing="one image per stem")
    # Entries that are not regular files inside the folder.
    # Every symbolic link is refused by the listing, wherever it leads (read_image, given a path, follows it).
    add("outside_link.png", None, shape=size, pixels=rgb, listing="got a symbolic link")
    add("inside_link.png", None, shape=size, pixels=np.dstack([gray] * 3), listing="got a symbolic link")
    add("dir.png", None, read="got a directory", listing="got a directory")
    add("fifo.png", None, read="got a FIFO", listing="got a FIFO")

    for name, (data, _) in corpus.items():
        if data is not None:
            (folder / name).write_bytes(data)
    (outside_folder / "outside.png").write_bytes(png)
    (folder / "outside_link.png").symlink_to(outside_folder.resolve() / "outside.png")
    (folder / "inside_link.png").symlink_to("gray.png")
    (folder / "dir.png").mkdir()
    (folder / "dir.png" / "inner.png").write_bytes(png)  # not listed: listing is not recursive
    os.mkfifo(folder / "fifo.png")
    return {name: expectation for name, (_, expectation) in corpus.items()}
