"""Image file I/O: formats and pixel kinds, EXIF orientation, refusal of bad files, atomic writes."""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import desra_core.image as image_module
from desra_core.errors import ConfigError, InputImageError, LabelMapError, ShapeError
from desra_core.image import (
    MAX_PIXELS,
    LoadedImage,
    atomic_path,
    atomic_write_bytes,
    printable_path,
    read_image,
    read_label_map,
    read_mask,
    write_image,
)

RNG = np.random.default_rng(1234)


def _random_rgb(h: int = 24, w: int = 40, dtype=np.uint8) -> np.ndarray:
    return RNG.integers(0, np.iinfo(dtype).max, (h, w, 3), dtype=dtype, endpoint=True)


def _blocky(h_blocks: int = 3, w_blocks: int = 5, block: int = 16) -> np.ndarray:
    """Uniform 16×16 blocks aligned with JPEG's 8×8 grid, so a quality-100 JPEG is nearly exact."""
    colours = np.random.default_rng(7).integers(0, 200, (h_blocks, w_blocks, 3), dtype=np.uint8)
    colours[0, 0] = 255  # one white corner makes every orientation distinguishable
    return np.repeat(np.repeat(colours, block, axis=0), block, axis=1)


def _rgb_cv2(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- reading: formats and pixel kinds ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_is_exact(tmp_path, dtype):
    rgb = _random_rgb(dtype=dtype)
    path = tmp_path / "rgb.png"
    write_image(path, rgb)
    loaded = read_image(path)
    assert loaded.pixels.dtype == dtype
    assert np.array_equal(loaded.pixels, rgb)
    assert loaded.bit_depth == 8 * np.dtype(dtype).itemsize
    assert (loaded.height, loaded.width) == rgb.shape[:2]
    assert loaded.notes == ()
    assert loaded.path == str(path)
    as_float = loaded.to_float32()
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, rgb / np.iinfo(dtype).max, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("mode", "dtype"), [("L", np.uint8), ("I;16", np.uint16)])
def test_gray_png_becomes_three_identical_channels(tmp_path, mode, dtype):
    gray = RNG.integers(0, np.iinfo(dtype).max, (20, 30), dtype=dtype, endpoint=True)
    path = tmp_path / "gray.png"
    assert cv2.imwrite(str(path), gray)
    assert Image.open(path).mode == mode
    loaded = read_image(path)
    assert loaded.pixels.shape == (20, 30, 3)
    assert loaded.pixels.dtype == dtype
    for c in range(3):
        assert np.array_equal(loaded.pixels[..., c], gray)
    assert "converted from grayscale" in loaded.notes


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rgba_png_drops_alpha(tmp_path, dtype):
    rgba = RNG.integers(0, np.iinfo(dtype).max, (16, 18, 4), dtype=dtype, endpoint=True)
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3]])
    loaded = read_image(path)
    assert np.array_equal(loaded.pixels, rgba[..., :3])
    assert loaded.notes == ("alpha channel dropped",)


def test_gray_alpha_png(tmp_path):
    la = RNG.integers(0, 256, (12, 14, 2), dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    loaded = read_image(path)
    assert np.array_equal(loaded.pixels, np.repeat(la[..., :1], 3, axis=2))
    assert set(loaded.notes) == {"alpha channel dropped", "converted from grayscale"}


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png(tmp_path, transparency):
    image = Image.fromarray(_random_rgb(16, 16)).quantize(colors=7)
    path = tmp_path / "palette.png"
    image.save(path, **({"transparency": 0} if transparency else {}))
    loaded = read_image(path)
    assert np.array_equal(loaded.pixels, np.asarray(image.convert("RGB")))
    assert "converted from palette" in loaded.notes
    assert ("alpha channel dropped" in loaded.notes) == transparency


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_comes_out_as_rgb(tmp_path, fmt):
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    path = tmp_path / f"cmyk.{fmt.lower()}"
    Image.fromarray(red).convert("CMYK").save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    assert Image.open(path).mode == "CMYK"
    loaded = read_image(path)
    assert loaded.pixels.shape == (32, 32, 3)
    assert np.abs(loaded.pixels.astype(int) - red).max() <= 8
    assert "converted from CMYK" in loaded.notes
    assert "alpha channel dropped" not in loaded.notes


@pytest.mark.parametrize(
    ("name", "save"),
    [
        ("webp", lambda p, a: Image.fromarray(a).save(p, "WEBP", lossless=True)),
        ("tif", lambda p, a: Image.fromarray(a).save(p, "TIFF")),
        ("tiff", lambda p, a: Image.fromarray(a).save(p, "TIFF", compression="tiff_lzw")),
        ("bmp", lambda p, a: Image.fromarray(a).save(p, "BMP")),
        ("jpeg", lambda p, a: Image.fromarray(a).save(p, "JPEG", quality=100, subsampling=0)),
    ],
)
def test_other_formats_8_bit(tmp_path, name, save):
    rgb = _blocky()
    path = tmp_path / f"image.{name}"
    save(path, rgb)
    loaded = read_image(path)
    assert loaded.bit_depth == 8
    tolerance = 6 if name == "jpeg" else 0
    assert np.abs(loaded.pixels.astype(int) - rgb).max() <= tolerance


@pytest.mark.parametrize("channels", [1, 3])
def test_tiff_16_bit(tmp_path, channels):
    data = RNG.integers(0, 65536, (10, 12, channels), dtype=np.uint16)
    path = tmp_path / "deep.tiff"
    assert cv2.imwrite(str(path), data[..., ::-1])
    loaded = read_image(path)
    assert loaded.bit_depth == 16
    assert np.array_equal(loaded.pixels, np.broadcast_to(data, (10, 12, 3)))


def test_format_is_decided_by_content_not_extension(tmp_path):
    rgb = _random_rgb()
    path = tmp_path / "really_a_png.jpg"
    Image.fromarray(rgb).save(path, "PNG")
    assert np.array_equal(read_image(path).pixels, rgb)


def test_jpeg_with_data_after_the_end_marker_loads(tmp_path):
    path = tmp_path / "trailer.jpg"
    Image.fromarray(_blocky()).save(path, quality=100, subsampling=0)
    path.write_bytes(path.read_bytes() + b"appended by some camera app \xff\x00\xff")
    assert read_image(path).pixels.shape == (48, 80, 3)


# --- EXIF orientation ----------------------------------------------------------------------------------


def _save_with_orientation(path: Path, rgb: np.ndarray, fmt: str, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    extra = {"JPEG": {"quality": 100, "subsampling": 0}, "WEBP": {"lossless": True}}.get(fmt, {})
    Image.fromarray(rgb).save(path, fmt, exif=exif, **extra)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_matches_pillow(tmp_path, orientation):
    rgb = _blocky()
    path = tmp_path / "photo.jpg"
    _save_with_orientation(path, rgb, "JPEG", orientation)
    loaded = read_image(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))  # Pillow as the independent oracle
    assert loaded.pixels.shape == expected.shape
    assert np.abs(loaded.pixels.astype(int) - expected).max() <= 6
    assert (f"EXIF orientation {orientation} applied" in loaded.notes) == (orientation != 1)


@pytest.mark.parametrize(("orientation", "white_corner"), [(3, (-1, -1)), (6, (0, -1)), (8, (-1, 0))])
def test_jpeg_orientation_moves_the_white_corner(tmp_path, orientation, white_corner):
    # The stored image has a white block at its top-left; rotating by 180°, 90° clockwise and 90°
    # counter-clockwise moves it to the bottom-right, top-right and bottom-left respectively.
    path = tmp_path / "photo.jpg"
    _save_with_orientation(path, _blocky(), "JPEG", orientation)
    pixels = read_image(path).pixels
    assert pixels.shape == ((80, 48, 3) if orientation != 3 else (48, 80, 3))
    assert (pixels[white_corner] >= 250).all()
    assert (pixels[0, 0] < 210).all()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", [2, 5, 6, 7])
def test_lossless_exif_orientation_is_exact(tmp_path, fmt, orientation):
    rgb = _random_rgb(6, 10)
    path = tmp_path / f"oriented.{fmt.lower()}"
    _save_with_orientation(path, rgb, fmt, orientation)
    loaded = read_image(path)
    assert np.array_equal(loaded.pixels, np.asarray(ImageOps.exif_transpose(Image.open(path))))
    assert any(note.endswith(f"orientation {orientation} applied") for note in loaded.notes)


# --- reading: refusals ---------------------------------------------------------------------------------


def _truncated(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])


BAD_FILES = [
    ("empty.png", lambda p: p.write_bytes(b"")),
    ("notes.png", lambda p: p.write_text("this is not an image\n")),
    ("garbage.jpg", lambda p: p.write_bytes(b"\xff\xd8" + bytes(range(256)) * 4)),
    ("half.png", lambda p: (Image.fromarray(_random_rgb()).save(p, "PNG"), _truncated(p, 0.5))),
    ("no_iend.png", lambda p: (Image.fromarray(_random_rgb()).save(p, "PNG"), _truncated(p, -12))),
    ("half.jpg", lambda p: (Image.fromarray(_random_rgb()).save(p, "JPEG"), _truncated(p, 0.5))),
    ("no_eoi.jpg", lambda p: (Image.fromarray(_random_rgb()).save(p, "JPEG"), _truncated(p, -2))),
    ("half_progressive.jpg",
     lambda p: (Image.fromarray(_random_rgb()).save(p, "JPEG", progressive=True), _truncated(p, 0.7))),
    # a comment holding an end-of-image marker must not pass for the end of the file
    ("comment.jpg", lambda p: (Image.fromarray(_random_rgb(64, 64)).save(p, "JPEG", comment=b"\xff\xd9" * 8),
                               _truncated(p, 0.5))),
    ("half.webp", lambda p: (Image.fromarray(_random_rgb()).save(p, "WEBP"), _truncated(p, 0.5))),
    ("half.tiff", lambda p: (Image.fromarray(_random_rgb()).save(p, "TIFF"), _truncated(p, 0.5))),
    ("half.bmp", lambda p: (Image.fromarray(_random_rgb()).save(p, "BMP"), _truncated(p, 0.5))),
    ("zero_width.png", lambda p: p.write_bytes(_png_header(0, 10) + _chunk(b"IEND", b""))),
    ("anim.gif", lambda p: Image.fromarray(_random_rgb()).save(p, "GIF")),
]


@pytest.mark.parametrize(("name", "make"), BAD_FILES)
def test_bad_files_raise_naming_the_file(tmp_path, name, make):
    path = tmp_path / name
    make(path)
    with pytest.raises(InputImageError) as info:
        read_image(path)
    assert name in str(info.value)
    assert info.value.path == str(path)
    assert str(info.value).startswith("expected")


@pytest.mark.parametrize("name", ["half.png", "no_iend.png", "half.jpg", "no_eoi.jpg", "half_progressive.jpg",
                                  "comment.jpg", "half.webp"])
def test_truncation_is_caught_even_if_the_decoder_returns_partial_pixels(tmp_path, monkeypatch, name):
    # Some OpenCV builds hand back a half-grey image for a truncated file instead of None.
    make = dict(BAD_FILES)[name]
    path = tmp_path / name
    make(path)
    monkeypatch.setattr(image_module.cv2, "imdecode", lambda *a: np.zeros((24, 40, 3), np.uint8))
    with pytest.raises(InputImageError, match=re.escape(name)) as info:
        read_image(path)
    assert "truncated" in str(info.value) or "cannot be opened" in str(info.value)


@pytest.mark.parametrize("name", ["missing.png", "folder.png"])
def test_missing_file_and_directory_raise(tmp_path, name):
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(InputImageError, match=name):
        read_image(tmp_path / name)


def test_unreadable_file_raises(tmp_path, monkeypatch):
    path = tmp_path / "secret.png"
    write_image(path, _random_rgb())

    real_open = os.open

    def refuse(name, *args, **kwargs):
        if os.fspath(name).endswith("secret.png"):
            raise PermissionError(13, "Permission denied", os.fspath(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(image_module.os, "open", refuse)  # chmod would not stop root
    with pytest.raises(InputImageError, match=r"got permission denied.*secret\.png"):
        read_image(path)


@pytest.mark.parametrize("tail", [b"", b"\x00garbage" * 100, _chunk(b"IDAT", b"not zlib at all")])
def test_header_only_png_bomb_is_refused_before_decoding(tmp_path, monkeypatch, tail):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(30000, 30000) + tail)
    monkeypatch.setattr(image_module.cv2, "imdecode", lambda *a: pytest.fail("decoded a bomb"))
    tracemalloc.start()
    try:
        with pytest.raises(InputImageError) as info:
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000  # refused from the header: no pixel buffer was ever allocated
    assert f"at most {MAX_PIXELS} pixels" in str(info.value)
    assert "30000×30000" in str(info.value)
    assert "bomb.png" in str(info.value)


def test_jpeg_bomb_refused_by_pillow_reads_as_the_same_error(tmp_path, monkeypatch):
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 30000, 30000, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x00\x03\x00\x00\x3f\x00"
    path = tmp_path / "bomb.jpg"
    path.write_bytes(b"\xff\xd8" + sof + sos + bytes(64))
    monkeypatch.setattr(image_module.cv2, "imdecode", lambda *a: pytest.fail("decoded a bomb"))
    with pytest.raises(InputImageError, match=f"expected at most {MAX_PIXELS} pixels") as info:
        read_image(path)
    assert "bomb.jpg" in str(info.value)


def test_own_limit_applies_without_pillow_warnings(tmp_path, monkeypatch):
    # 144 Mpx is above Pillow's warning threshold (about 89 Mpx) and above the limit given here.
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(12000, 12000) + _chunk(b"IDAT", b"x"))
    monkeypatch.setattr(image_module.cv2, "imdecode", lambda *a: pytest.fail("decoded a bomb"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputImageError, match="expected at most 100000000 pixels, got 12000×12000"):
            read_image(path, max_pixels=100_000_000)


def test_small_max_pixels_on_a_normal_image(tmp_path):
    path = tmp_path / "small.png"
    write_image(path, _random_rgb(20, 30))
    assert read_image(path, max_pixels=600).width == 30
    with pytest.raises(InputImageError, match="expected at most 599 pixels, got 30×20"):
        read_image(path, max_pixels=599)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100"])
def test_max_pixels_must_be_a_positive_integer(tmp_path, bad):
    path = tmp_path / "small.png"
    write_image(path, _random_rgb(4, 4))
    with pytest.raises(ConfigError):
        read_image(path, max_pixels=bad)


# --- label maps and masks ------------------------------------------------------------------------------


def test_label_map_uint8_is_exact_and_not_rotated(tmp_path):
    labels = RNG.integers(0, 150, (9, 13), dtype=np.uint8)
    labels[0, 0] = 255
    path = tmp_path / "labels.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # must be ignored: label maps are machine-written
    Image.fromarray(labels).save(path, exif=exif)
    out = read_label_map(path)
    assert out.dtype == np.uint8
    assert np.array_equal(out, labels)


def test_label_map_16_bit(tmp_path):
    labels = RNG.integers(0, 256, (8, 8), dtype=np.uint16)
    path = tmp_path / "labels16.png"
    assert cv2.imwrite(str(path), labels)
    out = read_label_map(path)
    assert out.dtype == np.uint8
    assert np.array_equal(out, labels)
    labels[2, 3], labels[4, 4] = 300, 1000
    assert cv2.imwrite(str(path), labels)
    with pytest.raises(LabelMapError, match=r"at most 255.*300, 1000") as info:
        read_label_map(path)
    assert "labels16.png" in str(info.value)


def test_label_map_with_three_identical_channels_and_palette_indices(tmp_path):
    labels = RNG.integers(0, 150, (7, 11), dtype=np.uint8)
    _rgb_cv2(tmp_path / "grey3.png", np.repeat(labels[..., None], 3, axis=2))
    assert np.array_equal(read_label_map(tmp_path / "grey3.png"), labels)
    palette_image = Image.fromarray(labels, mode="L").convert("P")
    palette_image.putpalette(RNG.integers(0, 256, 768, dtype=np.uint8).tolist())
    palette_image.save(tmp_path / "palette.png")
    assert np.array_equal(read_label_map(tmp_path / "palette.png"), labels)  # indices, not colours


@pytest.mark.parametrize("differing_channel", [0, 2, 3])
def test_colour_label_map_is_refused(tmp_path, differing_channel):
    # three equal channels except one pixel of one channel; channel 3 is an alpha channel
    stored = np.repeat(RNG.integers(0, 150, (6, 6, 1), dtype=np.uint8), 4 if differing_channel == 3 else 3, axis=2)
    stored[2, 3, differing_channel] += 1
    path = tmp_path / "colour.png"
    assert cv2.imwrite(str(path), stored)
    with pytest.raises(LabelMapError, match="expected a single-channel label map, got") as info:
        read_label_map(path)
    assert "colour.png" in str(info.value)


def test_unreadable_label_map_raises_label_map_error(tmp_path):
    path = tmp_path / "labels.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(LabelMapError, match=r"labels\.png"):
        read_label_map(path)
    with pytest.raises(InputImageError, match="does not exist"):
        read_label_map(tmp_path / "nope.png")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_read_mask(tmp_path, dtype):
    stored = np.zeros((5, 6), dtype)
    stored[1, 2], stored[3, 4], stored[4, 0] = 1, 255, np.iinfo(dtype).max
    path = tmp_path / "mask.png"
    assert cv2.imwrite(str(path), stored)
    mask = read_mask(path)
    assert mask.dtype == np.bool_
    assert np.array_equal(mask, stored != 0)


def test_read_mask_three_identical_channels_and_colour(tmp_path):
    stored = (RNG.random((5, 6)) > 0.5).astype(np.uint8) * 255
    _rgb_cv2(tmp_path / "grey3.png", np.repeat(stored[..., None], 3, axis=2))
    assert np.array_equal(read_mask(tmp_path / "grey3.png"), stored != 0)
    _rgb_cv2(tmp_path / "colour.png", _random_rgb(5, 6))
    with pytest.raises(InputImageError, match="single-channel mask"):
        read_mask(tmp_path / "colour.png")


# --- writing -------------------------------------------------------------------------------------------


def test_write_image_kinds(tmp_path):
    values = np.array([[-0.2, 0.0, 0.5 / 255, 0.5], [0.999, 1.0, 1.3, 128.4 / 255]], np.float32)
    write_image(tmp_path / "float.png", np.repeat(values[..., None], 3, axis=2))
    stored = cv2.imread(str(tmp_path / "float.png"), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint8
    assert stored[..., 0].tolist() == [[0, 0, 0, 128], [255, 255, 255, 128]]

    mask = RNG.random((7, 9)) > 0.5
    write_image(tmp_path / "mask.png", mask)
    assert np.array_equal(cv2.imread(str(tmp_path / "mask.png"), cv2.IMREAD_UNCHANGED), mask * np.uint8(255))
    assert np.array_equal(read_mask(tmp_path / "mask.png"), mask)

    gray = RNG.integers(0, 256, (7, 9), dtype=np.uint8)
    write_image(tmp_path / "sub" / "dir" / "gray.png", gray)  # creates parents
    assert np.array_equal(read_label_map(tmp_path / "sub" / "dir" / "gray.png"), gray)

    rgb = _random_rgb(5, 5)
    write_image(tmp_path / "rgb.PNG", rgb)
    assert np.array_equal(cv2.imread(str(tmp_path / "rgb.PNG"))[..., ::-1], rgb)  # stored as BGR for OpenCV
    assert _temp_files(tmp_path) == []


def test_write_image_replaces_and_uses_normal_permissions(tmp_path):
    path = tmp_path / "out.png"
    write_image(path, np.zeros((4, 4, 3), np.uint8))
    write_image(path, np.full((4, 4, 3), 9, np.uint8))
    assert (read_image(path).pixels == 9).all()
    if os.name == "posix":
        umask = os.umask(0o022)
        os.umask(umask)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert _temp_files(tmp_path) == []


@pytest.mark.parametrize(
    "fake_imencode",
    [lambda *a: (False, None), lambda *a: (_ for _ in ()).throw(cv2.error("encoder exploded"))],
)
def test_failed_encoding_leaves_the_old_file(tmp_path, monkeypatch, fake_imencode):
    path = tmp_path / "keep.png"
    write_image(path, np.full((3, 3), 7, np.uint8))  # gray and masks are encoded by OpenCV
    before = path.read_bytes()
    monkeypatch.setattr(image_module.cv2, "imencode", fake_imencode)
    with pytest.raises(OSError, match=r"keep\.png"):
        write_image(path, np.zeros((3, 3), np.uint8))
    assert path.read_bytes() == before
    assert _temp_files(tmp_path) == []


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.png"
    write_image(path, np.full((3, 3, 3), 7, np.uint8))
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(image_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_image(path, np.zeros((3, 3, 3), np.uint8))
    assert path.read_bytes() == before
    assert _temp_files(tmp_path) == []


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 3), np.float64),
        np.zeros((4, 4, 3), np.int32),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 1), np.uint8),
        np.zeros((4, 4), np.uint16),
        np.zeros((4, 4), np.float32),
        np.zeros((2, 4, 4, 3), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.full((4, 4, 3), np.nan, np.float32),
    ],
    ids=["float64", "int32", "rgba", "one_channel", "gray16", "gray_float", "batch", "empty", "nan"],
)
def test_write_image_refuses_other_arrays(tmp_path, array):
    with pytest.raises(ShapeError):
        write_image(tmp_path / "x.png", array)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["x.jpg", "x.tiff", "x"])
def test_write_image_only_writes_png(tmp_path, name):
    with pytest.raises(ConfigError, match=r"expected a \.png target"):
        write_image(tmp_path / name, np.zeros((2, 2, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_suffix_and_cleans_up(tmp_path):
    target = tmp_path / "report.parquet"
    with atomic_path(target) as temp:
        assert temp.parent == tmp_path
        assert temp.suffix == ".parquet"
        assert temp.name.startswith(".report.parquet.")
        temp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target) as temp:
        temp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "new"
    assert _temp_files(tmp_path) == []


def test_atomic_write_bytes(tmp_path):
    target = tmp_path / "deep" / "blob.bin"
    atomic_write_bytes(target, b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert _temp_files(target.parent) == []


# --- reading special files -----------------------------------------------------------------------------


def test_read_image_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(InputImageError, match=r"got a FIFO .*fifo\.png"):
        read_image(tmp_path / "fifo.png")


def test_read_image_takes_a_bytes_path_that_is_not_utf8(tmp_path):
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    write_image(os.fsdecode(name), _random_rgb())
    image = read_image(name)
    assert image.pixels.shape == (24, 40, 3) and image.path == os.fsdecode(name)
    with open(name, "r+b") as fh:
        fh.truncate(40)
    with pytest.raises(InputImageError) as info:
        read_image(name)
    assert "caf\\xe9.png" in str(info.value) and info.value.path == printable_path(name)
    str(info.value).encode("utf-8")  # printable: no surrogate escapes in the message


# --- LoadedImage ---------------------------------------------------------------------------------------


def test_loaded_image_checks_its_contract():
    image = LoadedImage(np.full((2, 3, 3), 65535, np.uint16), "x.png", 16)
    assert (image.height, image.width) == (2, 3)
    assert image.to_float32().max() == 1.0
    with pytest.raises(ShapeError):
        LoadedImage(np.zeros((2, 3), np.uint8), "x.png", 8)
    with pytest.raises(ShapeError):
        LoadedImage(np.zeros((2, 3, 3), np.uint8), "x.png", 16)


def test_to_bit_depth_rounds_and_clips():
    from desra_core.image import to_bit_depth

    x = np.array([[[0.0, 0.5, 1.2]]], np.float32)
    assert to_bit_depth(x, 8).tolist() == [[[0, 128, 255]]]
    assert to_bit_depth(x, 16).tolist() == [[[0, 32768, 65535]]]
    with pytest.raises(ConfigError):
        to_bit_depth(x, 12)


def test_file_cut_inside_its_header_reads_as_truncated(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_random_rgb()).save(buffer, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:300])  # inside the quantisation and Huffman tables
    with pytest.raises(InputImageError, match=r"expected a complete JPEG file, got a truncated .*cut\.jpg"):
        read_image(path)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(1, 1), (64, 5), (65, 3), (200, 131)])
def test_rgb_png_streamed_in_bands_reads_back_exactly(tmp_path, dtype, shape):
    # RGB is written band by band (64 rows) by desra's own encoder; OpenCV and Pillow must both read
    # back every value, across band boundaries, at both bit depths.
    top = np.iinfo(dtype).max
    pixels = np.random.default_rng(sum(shape)).integers(0, top + 1, (*shape, 3), dtype=dtype)
    pixels[: shape[0] // 2] //= 7  # smooth and noisy parts
    path = tmp_path / "rgb.png"
    write_image(path, pixels)
    loaded = read_image(path)
    assert loaded.bit_depth == 8 * np.dtype(dtype).itemsize
    assert np.array_equal(loaded.pixels, pixels)
    with Image.open(path) as im:
        assert im.size == (shape[1], shape[0])
        im.verify()  # every chunk's CRC
    if dtype == np.uint8:
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), pixels)


# --- what comes after an image's end (issue 16, item 2) ----------------------------------------------------


def _encoded(rgb: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, rgb[..., ::-1])
    assert ok
    return data.tobytes()


@pytest.mark.parametrize(("ext", "fmt"), [(".png", "PNG"), (".webp", "WebP")])
def test_bytes_after_the_end_of_a_png_or_webp_are_refused(tmp_path, ext, fmt):
    rgb = _random_rgb()
    clean = _encoded(rgb, ext)
    path = tmp_path / f"padded{ext}"
    path.write_bytes(clean)
    assert np.array_equal(read_image(path).pixels, rgb) or fmt == "WebP"  # the same file without padding reads
    path.write_bytes(clean + b"\0" * 10)
    with pytest.raises(InputImageError) as info:
        read_image(path)
    message = str(info.value)
    assert f"expected nothing after the end of the {fmt} image (byte {len(clean)}), got 10 more bytes" in message
    assert f"padded{ext}" in message


@pytest.mark.parametrize("ext", [".bmp", ".tiff", ".jpg"])
def test_a_file_out_of_proportion_to_its_pixels_is_refused(tmp_path, ext):
    # TIFF and BMP have no end marker to check, and a JPEG may carry data after its end (MPO pictures, camera
    # trailers): for them the file size is checked against the pixels, 16 bytes a pixel plus 4 MiB.
    rgb = _random_rgb(8, 8)
    clean = _encoded(rgb, ext)
    path = tmp_path / f"padded{ext}"
    path.write_bytes(clean + b"\0" * 1000)  # a small trailer is within the allowance
    assert read_image(path).pixels.shape == (8, 8, 3)
    most = image_module.MAX_BYTES_PER_PIXEL * 64 + image_module.METADATA_ALLOWANCE
    path.write_bytes(clean + b"\0" * (most - len(clean)))  # exactly at the limit: read
    assert read_image(path).pixels.shape == (8, 8, 3)
    size = most + 1
    path.write_bytes(clean + b"\0" * (size - len(clean)))
    with pytest.raises(InputImageError) as info:
        read_image(path)
    message = str(info.value)
    assert f"expected a file size in proportion to its 8×8 pixels (at most {most} bytes), got {size} bytes" in message
    assert f"padded{ext}" in message


def test_reading_bytes_gives_what_reading_the_file_gives(tmp_path):
    from desra_core.image import read_image_bytes, read_image_size_bytes, read_label_map_bytes

    rgb = _random_rgb()
    path = tmp_path / "a.png"
    write_image(path, rgb)
    data = path.read_bytes()
    image = read_image_bytes(data, path)
    assert np.array_equal(image.pixels, rgb) and image.path == str(path)
    assert read_image_size_bytes(data, path) == (40, 24)
    labels = np.arange(24 * 40, dtype=np.uint8).reshape(24, 40) % 150
    write_image(tmp_path / "labels.png", labels)
    assert np.array_equal(read_label_map_bytes((tmp_path / "labels.png").read_bytes(), "labels.png"), labels)
    with pytest.raises(InputImageError, match=r"truncated .*\(file: a\.png\)"):
        read_image_bytes(data[:-20], "a.png")
