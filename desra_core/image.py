"""Image files in and out: the only module of desra_core that reads or writes image files.

Array contract: ``LoadedImage.pixels`` is RGB ``(H, W, 3)``, ``uint8`` for 8-bit sources and ``uint16``
for 16-bit ones (``to_float32()`` gives ``float32`` in [0, 1]); label maps are ``uint8 (H, W)``; masks
are ``bool (H, W)``. Reading decides the format by content, checks the header's pixel count before
decoding, refuses truncated files and applies the EXIF orientation. Writing is atomic: a temporary file
beside the target is written, flushed to disk and renamed onto it. Listing a folder gives every entry a
stem that is safe as a file name and as text, and says which entries cannot be used (a file name that is
not UTF-8, a symbolic link out of the folder, a directory named like an image…) and why.
"""

from __future__ import annotations

import contextlib
import io
import numbers
import os
import re
import secrets
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from .errors import ConfigError, InputImageError, LabelMapError, ShapeError
from .folder import read_bounded

__all__ = ["MAX_BYTES_PER_PIXEL", "MAX_PIXELS", "METADATA_ALLOWANCE", "LoadedImage", "atomic_path",
           "atomic_write_bytes", "printable_path", "read_header_size", "read_image", "read_image_bytes",
           "read_image_size", "read_image_size_bytes", "read_label_map", "read_label_map_bytes", "read_mask",
           "to_bit_depth", "to_float32", "write_image"]

StrPath = str | os.PathLike[str]
BytesPath = bytes | os.PathLike[bytes]

MAX_PIXELS: int = 268_435_456
"""Default limit on width × height (16384 × 16384) checked before decoding."""

# Pillow's format name -> the name used in messages. MPO is a JPEG with extra pictures appended.
_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP", "TIFF": "TIFF", "BMP": "BMP"}
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A JPEG marker: 0xFF followed by anything but a stuffed zero, a restart marker or another fill byte.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_ORIENTATION_TAG = 0x0112


def printable_path(path: StrPath | BytesPath) -> str:
    """``path`` as printable text: bytes of the name that are not valid UTF-8 become ``\\xNN`` escapes.

    A file name that is not UTF-8 decodes (``os.fsdecode``) to a string with lone surrogates, which
    Parquet, JSON and most terminals refuse; use this text in messages and reports, and the path itself
    only to open the file.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """A decoded image: ``pixels`` RGB ``(H, W, 3)``, ``uint8`` (``bit_depth`` 8) or ``uint16`` (16).

    ``notes`` are plain-language remarks on what reading did, e.g. ``"alpha channel dropped"``.
    """

    pixels: np.ndarray
    path: str
    bit_depth: int
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        px = self.pixels
        if px.ndim != 3 or px.shape[2] != 3 or px.dtype not in (np.uint8, np.uint16):
            raise ShapeError(f"expected pixels of shape (H, W, 3), uint8 or uint16, got {px.shape} {px.dtype}")
        if self.bit_depth != 8 * px.dtype.itemsize:
            raise ShapeError(f"expected bit_depth {8 * px.dtype.itemsize} for {px.dtype} pixels, got {self.bit_depth}")

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def to_float32(self) -> np.ndarray:
        """``float32 (H, W, 3)`` in [0, 1]: the pixels divided by 255 (8-bit) or 65535 (16-bit)."""
        return to_float32(self.pixels)


@dataclass(frozen=True, slots=True)
class _Source:
    """A file whose header passed the checks; ``image`` is Pillow's lazily opened view of ``data``."""

    path: str
    shown: str  # printable_path(path): for messages
    data: bytes
    image: Image.Image
    format: str
    orientation: int


def _pil_open(data: bytes) -> Image.Image:
    # Our own limit is checked right after opening; Pillow's warning threshold (about 89 Mpx) is not ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _check_size(width: int, height: int, max_pixels: int, path: str, error: type[InputImageError]) -> None:
    if width < 1 or height < 1:
        raise error(f"expected an image of at least 1×1 pixels, got {width}×{height}", path)
    if width * height > max_pixels:
        raise error(f"expected at most {max_pixels} pixels, got {width}×{height} = {width * height} pixels "
                    "(refused before decoding)", path)


def _jpeg_is_complete(data: bytes) -> bool:
    """True when the JPEG stream reaches the end-of-image marker of its main picture.

    Walks the segments (skipping each by its length, so thumbnails inside EXIF are not mistaken for the
    end) and the entropy-coded data after each start-of-scan. Bytes after the end marker are allowed.
    """
    pos = 2
    while True:
        match = _JPEG_MARKER.search(data, pos)
        if match is None:
            return False
        marker, pos = data[match.start() + 1], match.end()
        if marker == 0xD9:
            return True
        if marker == 0x01:  # TEM: no length field
            continue
        if pos + 2 > len(data):
            return False
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            return False
        pos += length


def _truncation(image: Image.Image, data: bytes) -> str | None:
    """Why a PNG or JPEG file is incomplete (some decoders return such files half-decoded), or None.

    Pillow refuses to open a truncated WebP; OpenCV and Pillow refuse truncated TIFF and BMP files.
    """
    if image.format == "PNG":
        try:
            image.verify()  # walks every chunk up to IEND checking CRCs, without decompressing
        except (OSError, SyntaxError, EOFError, ValueError, struct.error) as exc:
            return str(exc) or type(exc).__name__
    elif image.format in ("JPEG", "MPO") and not _jpeg_is_complete(data):
        return "no end-of-image marker"
    return None


def _orientation(image: Image.Image) -> int:
    # PngImageFile.getexif() decodes the whole image when no eXIf chunk precedes IDAT; the PNG
    # specification puts eXIf before IDAT, so "none seen yet" means none.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # unreadable EXIF must not make readable pixels unusable
        return 1


def _signature_format(data: bytes) -> str | None:
    """The format that the file's first bytes announce (for messages), or None."""
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _read_path(path: StrPath | BytesPath, error: type[InputImageError]) -> tuple[str, str, bytes]:
    """``(name, shown, data)``: the file opened once (``fstat`` on the open file: a regular file) and read."""
    try:
        name = os.fsdecode(path)
    except TypeError:
        raise ConfigError(f"expected a path (str, bytes or os.PathLike), got {type(path).__name__}") from None
    shown = printable_path(name)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
        try:
            data = read_bounded(fd, shown, None, error)
        finally:
            os.close(fd)
    except OSError as exc:
        reason = {FileNotFoundError: "a path that does not exist", IsADirectoryError: "a directory",
                  PermissionError: "permission denied"}.get(type(exc), exc.strerror or str(exc))
        raise error(f"expected a readable image file, got {reason}", shown) from None
    except ValueError:  # an embedded NUL
        raise error("expected a file name without NUL characters, got one containing NUL", shown) from None
    return name, shown, data


def _open(path: StrPath | BytesPath, max_pixels: int, error: type[InputImageError]) -> _Source:
    """Read the file (one open), check its header (format, size, completeness); decode nothing yet."""
    _check_max_pixels(max_pixels)
    return _parse(*_read_path(path, error), max_pixels, error)


def _check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
        raise ConfigError(f"expected max_pixels to be a positive integer, got {max_pixels!r}")


def _parse(name: str, shown: str, data: bytes, max_pixels: int, error: type[InputImageError]) -> _Source:
    """Check a file's bytes as read (format, size, completeness, nothing after its end); decode nothing."""
    if not data:
        raise error("expected an image file, got an empty (0-byte) file", shown)
    # A PNG header is checked before Pillow sees it: Pillow refuses a header without pixel data
    # as "not an image", which would hide the more useful "too large".
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        _check_size(width, height, max_pixels, shown, error)
    try:
        image = _pil_open(data)
    except Image.DecompressionBombError as exc:
        raise error(f"expected at most {max_pixels} pixels, got an image that Pillow refuses before "
                    f"decoding: {exc}", shown) from None
    except (UnidentifiedImageError, OSError) as exc:
        signed = _signature_format(data)
        if signed is not None:  # e.g. a JPEG cut inside its header: Pillow cannot even identify it
            reason = "not identified" if isinstance(exc, UnidentifiedImageError) else str(exc) or type(exc).__name__
            raise error(f"expected a complete {signed} file, got a truncated or corrupt one (it starts like "
                        f"a {signed} file but cannot be opened: {reason})", shown) from None
        if isinstance(exc, UnidentifiedImageError):
            raise error("expected a PNG, JPEG, WebP, TIFF or BMP image, got data in no known image format",
                        shown) from None
        raise error(f"expected a PNG, JPEG, WebP, TIFF or BMP image, got data that cannot be opened ({exc})",
                    shown) from None
    if image.format not in _FORMATS:
        raise error(f"expected a PNG, JPEG, WebP, TIFF or BMP image, got {image.format}", shown)
    _check_size(image.width, image.height, max_pixels, shown, error)
    orientation = _orientation(image)  # before verify(), which closes the image
    truncated = _truncation(image, data)
    if truncated is not None:
        raise error(f"expected a complete {_FORMATS[image.format]} file, got a truncated or corrupt one "
                    f"({truncated})", shown)
    _check_extent(image.format, data, image.width, image.height, shown, error)
    return _Source(name, shown, data, image, image.format, orientation)


def _png_end(data: bytes) -> int | None:
    """Where a PNG stream ends: the offset just after its IEND chunk (walking chunk headers), or None."""
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            return pos if pos <= len(data) else None
    return None


def _riff_end(data: bytes) -> int:
    """Where a RIFF (WebP) file ends by its header: 8 + the RIFF size, plus a pad byte for an odd size."""
    size = int.from_bytes(data[4:8], "little")
    return 8 + size + (size & 1)


MAX_BYTES_PER_PIXEL: int = 16
"""Largest file size per pixel that reading accepts (plus :data:`METADATA_ALLOWANCE`): twice a raw 16-bit
RGBA pixel (8 bytes). No PNG, JPEG, WebP, TIFF or BMP of real pixels comes near it; a file padded with
junk (inside a TIFF or BMP, or after a JPEG's end) does."""
METADATA_ALLOWANCE: int = 4 * 2**20
"""Bytes allowed beyond :data:`MAX_BYTES_PER_PIXEL` × pixels: ICC profiles, EXIF, XMP, thumbnails."""


def _check_extent(fmt: str, data: bytes, width: int, height: int, shown: str, error: type[InputImageError]) -> None:
    """Refuse bytes after the image's end (PNG: after IEND; WebP: after the RIFF size) and, for every format,
    a file out of proportion to its pixels (TIFF and BMP have no end marker to check; a JPEG may carry
    more after its end marker: MPO pictures, camera trailers)."""
    end = {"PNG": _png_end, "WEBP": _riff_end}.get(fmt, lambda d: len(d))(data)
    if end is not None and end < len(data):
        raise error(f"expected nothing after the end of the {_FORMATS[fmt]} image (byte {end}), got "
                    f"{len(data) - end} more bytes", shown)
    most = MAX_BYTES_PER_PIXEL * width * height + METADATA_ALLOWANCE
    if len(data) > most:
        raise error(f"expected a file size in proportion to its {width}×{height} pixels (at most {most} bytes), "
                    f"got {len(data)} bytes", shown)


def _decode_with_pillow(src: _Source, error: type[InputImageError]) -> np.ndarray:
    """Gray ``(H, W)``, RGB or RGBA decoded by Pillow: for what OpenCV cannot decode or convert."""
    try:
        with _pil_open(src.data) as image:
            image.load()  # raises on truncation (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
            mode = image.mode
            if mode.startswith("I;16"):
                return np.asarray(image).astype(np.uint16)
            alpha = mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info)
            target = "L" if mode in ("1", "L") else "RGBA" if alpha else "RGB"
            pixels = None if mode in ("I", "F") else np.asarray(image.convert(target))
    except Exception as exc:  # any decoder failure means the file cannot be used
        raise error(f"expected a decodable {_FORMATS[src.format]} file, got one that fails to decode "
                    f"({exc})", src.shown) from None
    if pixels is None:
        raise error(f"expected 8- or 16-bit integer samples, got Pillow mode {mode}", src.shown)
    return pixels


def _decode(src: _Source, error: type[InputImageError]) -> tuple[np.ndarray, bool]:
    """The pixels as gray ``(H, W)``, RGB ``(H, W, 3)`` or RGB(A) with alpha last, uint8 or uint16.

    Also says whether the decoder already applied the orientation (OpenCV does for TIFF files, even
    with ``IMREAD_UNCHANGED``; it does not for JPEG, PNG and WebP).
    """
    try:
        pixels = cv2.imdecode(np.frombuffer(src.data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        pixels = None
    if pixels is not None and pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels is not None and src.image.mode == "CMYK" and (pixels.ndim != 3 or pixels.shape[2] != 3):
        pixels = None  # OpenCV converts CMYK JPEGs to BGR but may hand other CMYK files back as 4 channels
    if pixels is None:
        pixels, oriented = _decode_with_pillow(src, error), False
    else:
        if pixels.ndim == 3:
            pixels = pixels[..., [2, 1, 0, 3]] if pixels.shape[2] == 4 else pixels[..., 2::-1]
        oriented = src.format == "TIFF"
    if pixels.dtype not in (np.uint8, np.uint16):
        raise error(f"expected 8- or 16-bit integer samples, got {pixels.dtype}", src.shown)
    if pixels.ndim == 3 and pixels.shape[2] not in (2, 3, 4):
        raise error(f"expected 1 to 4 channels, got {pixels.shape[2]}", src.shown)
    return pixels, oriented


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 (how the stored rows and columns map to the displayed image)."""
    transforms = {
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # rotated 180°
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # displayed rotated 90° clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # transversed
        8: lambda a: np.rot90(a, 1),  # displayed rotated 90° counter-clockwise
    }
    return transforms[orientation](pixels) if orientation in transforms else pixels


def read_image(path: StrPath | BytesPath, *, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read a PNG, JPEG, WebP, TIFF or BMP file (8- or 16-bit) as RGB.

    Gray is replicated to 3 channels, alpha is dropped, palette and CMYK images are converted, and the
    EXIF orientation is applied; each such step leaves a note.

    Args:
        path: the file (``str``, ``bytes`` or path-like; a name that is not UTF-8 is fine); its format is
            decided by content, not by extension. ``LoadedImage.path`` is ``os.fsdecode(path)``; messages
            show :func:`printable_path`.
        max_pixels: largest width × height accepted, checked on the header before decoding. Pillow's
            own decompression-bomb guard (``2 * PIL.Image.MAX_IMAGE_PIXELS``) applies as well.

    Returns:
        ``LoadedImage`` with ``pixels`` RGB ``(H, W, 3)``, ``uint8`` or ``uint16``.

    Raises:
        InputImageError: missing, unreadable, empty, truncated, corrupt, too large or unsupported file, a
            directory, or a special file (a FIFO is refused rather than read, which would block).
        ConfigError: ``max_pixels`` is not a positive integer, or ``path`` is not a path.
    """
    return _loaded(_open(path, max_pixels, InputImageError))


def read_image_bytes(data: bytes, path: StrPath, *, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """:func:`read_image` of a file's bytes as they were read once (e.g.
    :meth:`desra_core.folder.Folder.read`): the same checks and conversions; ``path`` names the file in
    messages and in ``LoadedImage.path``; nothing is opened.

    Raises:
        InputImageError, ConfigError: as :func:`read_image`.
    """
    _check_max_pixels(max_pixels)
    return _loaded(_parse(os.fsdecode(path), printable_path(path), data, max_pixels, InputImageError))


def _loaded(src: _Source) -> LoadedImage:
    pixels, oriented = _decode(src, InputImageError)
    mode, notes = src.image.mode, []
    if mode in ("P", "PA"):
        notes.append("converted from palette")
    elif mode == "CMYK":
        notes.append("converted from CMYK")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels in (2, 4):
        pixels = pixels[..., :-1] if channels == 4 else pixels[..., 0]
        notes.append("alpha channel dropped")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if channels <= 2 or mode in _GRAY_MODES:
        notes.append("converted from grayscale")
    if src.orientation in range(2, 9):
        if not oriented:
            pixels = _orient(pixels, src.orientation)
        notes.append(f"{'TIFF' if src.format == 'TIFF' else 'EXIF'} orientation {src.orientation} applied")
    elif src.orientation != 1:
        notes.append(f"EXIF orientation {src.orientation} ignored (expected 1..8)")
    return LoadedImage(np.ascontiguousarray(pixels), src.path, 8 * pixels.dtype.itemsize, tuple(notes))


def read_image_size(path: StrPath | BytesPath, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`read_image` would return it (EXIF orientation applied),
    from its header: the same checks as :func:`read_image` (format, size, completeness), no pixel decoded.

    Raises:
        InputImageError: as :func:`read_image`, for everything found before decoding.
        ConfigError: as :func:`read_image`.
    """
    return _size(_open(path, max_pixels, InputImageError))


def read_image_size_bytes(data: bytes, path: StrPath, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """:func:`read_image_size` of a file's bytes as they were read once (see :func:`read_image_bytes`)."""
    _check_max_pixels(max_pixels)
    return _size(_parse(os.fsdecode(path), printable_path(path), data, max_pixels, InputImageError))


def read_header_size(head: bytes) -> tuple[int, int] | None:
    """``(width, height)`` that the first bytes of an image file declare, as :func:`read_image_size` gives it
    (EXIF orientation applied when the EXIF lies inside ``head``), or ``None`` when ``head`` does not reach the
    size (e.g. a JPEG whose EXIF block comes first and is larger) or is in no format that is read.

    Nothing is checked or decoded: this is for refusing an image whose result would be too large (a
    decompression bomb) from a ranged read of the start of a remote file, before the whole file is fetched.
    The whole file, once read, still gets every check of :func:`read_image_size_bytes`.
    """
    declared = _declared_size(head)
    try:
        with _pil_open(head) as image:
            if image.format not in _FORMATS:
                return None
            (width, height), orientation = image.size, _orientation(image)
    except Exception:  # cut short, or over Pillow's own limit: what the PNG/JPEG header says (None: read it whole)
        return declared
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _declared_size(head: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR, a WebP's first chunk or a JPEG's start-of-frame inside ``head`` (no
    orientation), or None."""
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return (width, height) if width and height else None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        return _webp_size(head)
    if not head.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(head):  # a marker and its length field
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        pos += 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            continue
        if marker in (0xD9, 0xDA):  # the end, or a scan, before any frame header
            return None
        if marker in _JPEG_SOF:
            if pos + 7 > len(head):
                return None
            height, width = struct.unpack(">HH", head[pos + 3:pos + 7])
            return (width, height) if width and height else None
        length = int.from_bytes(head[pos:pos + 2], "big")
        if length < 2:
            return None
        pos += length
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """The canvas size of a WebP from its first chunk: VP8X (extended), VP8L (lossless) or VP8 (lossy)."""
    kind = head[12:16]
    if kind == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if kind == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
        return (width, height) if width and height else None
    return None


def _size(src: _Source) -> tuple[int, int]:
    width, height = src.image.width, src.image.height
    return (height, width) if src.orientation in (5, 6, 7, 8) else (width, height)


def _read_single_channel(src: _Source, what: str, error: type[InputImageError]) -> np.ndarray:
    """``(H, W)`` uint8 or uint16 from a machine-written file; no orientation is applied.

    Palette files give their indices; 3 identical channels count as one.
    """
    if src.image.mode == "P":
        try:
            with _pil_open(src.data) as image:
                pixels = np.asarray(image)  # the stored indices, not the colours
        except Exception as exc:  # any decoder failure means the file cannot be used
            raise error(f"expected a decodable {what}, got one that fails to decode ({exc})", src.shown) from None
    else:
        pixels, _ = _decode(src, error)
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        if channels != 3:
            raise error(f"expected a single-channel {what}, got {channels} channels (with alpha)", src.shown)
        if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])):
            raise error(f"expected a single-channel {what}, got a colour image whose 3 channels differ", src.shown)
        pixels = pixels[..., 0]
    return np.ascontiguousarray(pixels)


def read_label_map(path: StrPath) -> np.ndarray:
    """Read a label map (typically an 8-bit PNG) as ``uint8 (H, W)``.

    16-bit files are accepted when every value is at most 255. Palette PNGs give their indices. A file
    with 3 identical channels is taken as one channel; a colour image is refused. No EXIF orientation
    is applied (label maps are machine-written). Which values are meaningful is the caller's business.

    Raises:
        LabelMapError: unreadable file, several different channels, or values above 255.
    """
    return _label_map(_open(path, MAX_PIXELS, LabelMapError))


def read_label_map_bytes(data: bytes, path: StrPath) -> np.ndarray:
    """:func:`read_label_map` of a file's bytes as they were read once (see :func:`read_image_bytes`).

    Raises:
        LabelMapError: as :func:`read_label_map`.
    """
    return _label_map(_parse(os.fsdecode(path), printable_path(path), data, MAX_PIXELS, LabelMapError))


def _label_map(src: _Source) -> np.ndarray:
    labels = _read_single_channel(src, "label map", LabelMapError)
    if labels.dtype != np.uint8:
        too_big = labels > 255
        if too_big.any():
            values = np.unique(labels[too_big])
            shown = ", ".join(str(v) for v in values[:5]) + (", …" if values.size > 5 else "")
            raise LabelMapError(f"expected label values of at most 255, got {int(too_big.sum())} pixels "
                                f"above it (values {shown})", src.shown)
        labels = labels.astype(np.uint8)
    return labels


def read_mask(path: StrPath) -> np.ndarray:
    """Read a mask as ``bool (H, W)``, ``True`` where the stored value is non-zero (8- or 16-bit).

    Channels as for :func:`read_label_map`. Raises InputImageError for unreadable or colour files.
    """
    mask: NDArray[np.bool_] = _read_single_channel(_open(path, MAX_PIXELS, InputImageError), "mask",
                                                   InputImageError) != 0
    return mask


def _temp_beside(target: Path) -> Path:
    """Create an empty hidden file beside ``target``, ending in its suffix; mode 0o666 less the umask.

    (``mkstemp`` would give 0o600, which ``os.replace`` would carry over to the target.)
    """
    for _ in range(100):
        temp = target.with_name(f".{target.name[:100]}.{secrets.token_hex(4)}.tmp{target.suffix}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return temp
    raise FileExistsError(f"could not create a temporary file next to {target}")


def _fsync(path: Path, flags: int = os.O_RDWR) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: StrPath) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write to, creating the parent folder.

    On normal exit the file is flushed to disk and ``os.replace``-d onto ``path``; on an exception it is
    removed, ``path`` is left untouched and the exception propagates.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_beside(target)
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable; best effort
        with contextlib.suppress(OSError):
            _fsync(target.parent, os.O_RDONLY)


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temp, open(temp, "wb") as fh:
        fh.write(data)


def _png_pixels(array: np.ndarray) -> np.ndarray:
    """What ``cv2.imencode`` needs: BGR uint8/uint16 ``(H, W, 3)`` or gray uint8 ``(H, W)``."""
    a = np.asarray(array)
    if a.size == 0:
        raise ShapeError(f"expected a non-empty image, got shape {a.shape}")
    if a.ndim == 2 and a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if a.ndim == 2 and a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.ndim == 3 and a.shape[2] == 3:
        if a.dtype == np.float32:
            if not np.isfinite(a).all():
                raise ShapeError("expected float32 values in [0, 1], got NaN or infinity")
            a = np.rint(np.clip(a, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
        if a.dtype in (np.uint8, np.uint16):
            return np.ascontiguousarray(a[..., ::-1])
    raise ShapeError("expected RGB (H, W, 3) uint8, uint16 or float32, or (H, W) bool or uint8, "
                     f"got {a.shape} {a.dtype}")


def _png_chunk(fh: IO[bytes], kind: bytes, data: bytes) -> None:
    fh.write(struct.pack(">I", len(data)))
    fh.write(kind)
    fh.write(data)
    fh.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def _write_png_rgb(fh: IO[bytes], rgb: np.ndarray, rows: int = 64) -> None:
    """Stream ``uint8``/``uint16`` RGB ``(H, W, 3)`` to ``fh`` as an 8- or 16-bit PNG, a band of rows at
    a time: no BGR copy of the image and no encoded copy of the file in memory (only ``rows`` rows).

    Each row uses PNG's "Up" filter (the difference to the row above), deflated at level 1 with run-length
    matching: on upscaled photos about as small as OpenCV's encoder and faster.
    """
    height, width = rgb.shape[:2]
    _png_chunk(fh, b"IHDR", struct.pack(">IIBBBBB", width, height, 8 * rgb.itemsize, 2, 0, 0, 0))
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)

    def as_bytes(band: np.ndarray) -> np.ndarray:  # PNG samples are big-endian
        band = band.astype(">u2") if band.dtype == np.uint16 else np.ascontiguousarray(band)
        return band.view(np.uint8).reshape(band.shape[0], -1)

    above = None
    for top in range(0, height, rows):
        raw = as_bytes(rgb[top:top + rows])
        lines = np.empty((raw.shape[0], raw.shape[1] + 1), dtype=np.uint8)
        lines[:, 0] = 2  # filter type Up; modulo-256 differences
        np.subtract(raw[1:], raw[:-1], out=lines[1:, 1:])
        lines[0, 1:] = raw[0] if above is None else raw[0] - above
        above = raw[-1].copy()
        data = deflate.compress(lines.data)  # the array's buffer (ndarray is no typed Buffer before 3.12)
        if data:
            _png_chunk(fh, b"IDAT", data)
    _png_chunk(fh, b"IDAT", deflate.flush())
    _png_chunk(fh, b"IEND", b"")


def write_image(path: StrPath, array: np.ndarray) -> None:
    """Write ``array`` as a PNG file, atomically, creating parent folders.

    ``uint8``/``uint16`` RGB is encoded a band of rows at a time, straight from the array (no copy of
    the image or of the encoded file is held), so writing a large result costs little beyond the array.

    Args:
        path: target ending in ``.png``.
        array: RGB ``(H, W, 3)`` ``uint8`` or ``uint16`` (written as a 16-bit PNG), RGB ``float32`` in
            [0, 1] (clipped, then ``rint(x * 255)`` as 8-bit), ``bool (H, W)`` (written as 0/255) or
            gray ``uint8 (H, W)``.

    Raises:
        ConfigError: the target does not end in ``.png``.
        ShapeError: any other shape or dtype, or non-finite float values.
        OSError: encoding or writing failed; an existing ``path`` is then left as it was.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ConfigError(f"expected a .png target, got '{target.suffix or 'no suffix'}' ({target})")
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype in (np.uint8, np.uint16) and a.size:
        with atomic_path(target) as temp, open(temp, "wb") as fh:
            fh.write(_PNG_SIGNATURE)
            _write_png_rgb(fh, a)
        return
    pixels = _png_pixels(a)
    try:
        ok, encoded = cv2.imencode(".png", pixels)
    except cv2.error as exc:
        raise OSError(f"could not encode {target} as PNG: {exc}") from exc
    if not ok or encoded is None:
        raise OSError(f"could not encode {target} as PNG")
    with atomic_path(target) as temp, open(temp, "wb") as fh:
        fh.write(encoded.data)


def to_bit_depth(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """``float32`` RGB in [0, 1] → ``uint8`` (``bit_depth`` 8) or ``uint16`` (16), clipped and rounded."""
    if bit_depth not in (8, 16):
        raise ConfigError(f"expected a bit depth of 8 or 16, got {bit_depth}")
    top = 255.0 if bit_depth == 8 else 65535.0
    out: NDArray[np.uint8] | NDArray[np.uint16] = np.rint(np.clip(image, 0.0, 1.0) * top).astype(
        np.uint8 if bit_depth == 8 else np.uint16)
    return out


def to_float32(image: np.ndarray) -> np.ndarray:
    """``uint8`` / ``uint16`` pixels → ``float32`` in [0, 1]; ``float32`` is returned as is."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535.0)
    if image.dtype == np.float32:
        return image
    raise ShapeError(f"expected pixels of dtype uint8, uint16 or float32, got {image.dtype}")
