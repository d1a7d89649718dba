"""The HTML review pages of a run: ``report.html`` and, for a large run, ``report-2.html``, ``report-3.html``…,
worst images first.

Every failure and the worst :data:`PAGE_SIZE` other images are on the first page, the next
:data:`PAGE_SIZE` on each further page; every page links to all the others, and a page stays a few KB per
image whatever the run's size. Pictures are downscaled JPEG previews (panels at most :data:`PANEL_SIDE`
pixels on the longest side, the before/after comparison at most :data:`COMPARE_SIDE`, quality
:data:`JPEG_QUALITY`) kept as small files in :data:`PICTURE_FOLDER` beside the pages, named by their
content, and loaded lazily (``loading="lazy"``, with their sizes given so the layout does not move); each
panel links to its full-resolution file. The style sheet and the one small script are inline, and a
Content-Security-Policy forbids every fetch except pictures from the page's own origin (opened from disk
or served from a bucket, the pages and :data:`PICTURE_FOLDER` travel together) and ``data:``.

Per image (``ok`` rows): GAN-SR, MSE-SR, the artifact mask over the GAN-SR image (red tint, outlined
regions) and the pseudo-GT, side by side, then a GAN-SR / pseudo-GT comparison with a draggable divider
(an ``<input type=range>`` over a clipped copy; the arrow keys move it). Failed rows show their error.
Viewing works without JavaScript; only the divider needs it.

Array contract: previews are ``uint8 (H, W, 3)`` RGB, masks ``bool (H, W)``. Files are read through
:mod:`desra_core.image`. The fine-tuning page (a few validation images) embeds its pictures as ``data:``
URIs instead and is one self-contained file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import io
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

if sys.platform == "win32":  # not POSIX: page sets written into one folder at once are not kept apart
    fcntl = None
else:
    import fcntl

import cv2
import numpy as np
from PIL import Image

from desra_core.errors import ConfigError, DesraError, ShapeError
from desra_core.image import atomic_write_bytes, read_image, read_mask, to_bit_depth, to_float32

__all__ = [
    "COMPARE_SIDE",
    "JPEG_QUALITY",
    "PAGE_NAME",
    "PAGE_SIZE",
    "PANEL_SIDE",
    "PICTURE_FOLDER",
    "mask_overlay",
    "order_rows",
    "prepare_pictures",
    "preview",
    "render_finetune_page",
    "render_review_pages",
    "write_finetune_page",
    "write_review_page",
]

PAGE_NAME = "report.html"
PANEL_SIDE = 512
"""Longest side, in pixels, of the four panels' previews."""
COMPARE_SIDE = 1024
"""Longest side, in pixels, of the two pictures of the before/after comparison."""
JPEG_QUALITY = 90
PAGE_SIZE = 100
"""Images with pictures per page; the first page also shows every failure."""
PICTURE_FOLDER = "report-files"
"""The folder beside the pages that holds their preview pictures (``<2 hex>/<content hash>.jpg``)."""
_FRAGMENT_VERSION = "review-pictures-2"  # change with the pictures' HTML or encoding
_MIN_COMPARE_DISPLAY = 480  # smaller comparisons are shown enlarged by a whole factor

# Where each panel's file is, by default, under the output folder; a row may name its own files instead
# (``gan_path``, ``mse_path``, ``mask_path``, ``pseudo_gt_path``, as ``desra detect``'s report does).
_DEFAULT_FOLDERS = {"gan": "sr/gan", "mse": "sr/mse", "mask": "masks", "pseudo_gt": "pseudo_gt"}
_PANEL_TITLES = {"gan": "GAN-SR", "mse": "MSE-SR", "mask": "Artifact mask over GAN-SR", "pseudo_gt": "Pseudo-GT"}
_TINT_RGB = np.array([255.0, 32.0, 32.0], dtype=np.float32)
_TINT_ALPHA = 0.45
_OUTLINE_RGB = (255, 214, 10)


# ----------------------------------------------------------------------------------------------------------
# Pictures


def preview(pixels: np.ndarray, longest_side: int) -> np.ndarray:
    """``pixels`` (``uint8 (H, W, 3)`` RGB) shrunk so that its longest side is at most ``longest_side``.

    Area interpolation; never enlarges (a small image is returned as is). Raises ShapeError for other
    shapes or dtypes, ConfigError for a side below 1.
    """
    if longest_side < 1:
        raise ConfigError(f"expected a preview side of at least 1 pixel, got {longest_side}")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ShapeError(f"expected a uint8 (H, W, 3) image, got {pixels.shape} {pixels.dtype}")
    h, w = pixels.shape[:2]
    scale = longest_side / max(h, w)
    if scale >= 1.0:
        return pixels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """``mask`` (``bool (h, w)``) resampled to ``(height, width)``: a pixel is set where most of the area
    it covers is set."""
    if mask.shape == (height, width):
        return mask
    scaled = cv2.resize(mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_AREA)
    return scaled >= 128


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The artifact mask drawn over ``image``: a semi-transparent red tint where ``mask`` is set and a
    yellow outline around each region.

    Args:
        image: ``uint8 (H, W, 3)`` RGB.
        mask: ``bool (H, W)``, ``True`` = artifact; another size is resampled to the image's.

    Returns:
        A new ``uint8 (H, W, 3)`` RGB image; ``image`` is left unchanged.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ShapeError(f"expected a uint8 (H, W, 3) image, got {image.shape} {image.dtype}")
    if mask.ndim != 2:
        raise ShapeError(f"expected a (H, W) mask, got shape {mask.shape}")
    h, w = image.shape[:2]
    mask = _fit_mask(mask.astype(bool, copy=False), h, w)
    out = image.astype(np.float32)
    out[mask] = out[mask] * (1.0 - _TINT_ALPHA) + _TINT_RGB * _TINT_ALPHA
    out = np.rint(out).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if contours:
        cv2.drawContours(out, contours, -1, _OUTLINE_RGB, thickness=max(1, round(max(h, w) / 400)))
    return out


def _read_pixels(path: Path) -> np.ndarray:
    return read_image(path).pixels


_Readers = tuple[Callable[[Path], np.ndarray], Callable[[Path], np.ndarray]]  # (RGB pixels, mask)


def _rgb8(pixels: np.ndarray) -> np.ndarray:
    """``uint8 (H, W, 3)`` RGB (16-bit pixels are rounded to 8 bits)."""
    return pixels if pixels.dtype == np.uint8 else to_bit_depth(to_float32(pixels), 8)


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0,
                                                      optimize=True)
    return buffer.getvalue()


def _jpeg_uri(pixels: np.ndarray) -> str:
    """``pixels`` as an embedded ``data:`` URI (the fine-tuning page)."""
    return "data:image/jpeg;base64," + base64.b64encode(_jpeg_bytes(pixels)).decode("ascii")


def _picture_file(pixels: np.ndarray, page_dir: Path) -> str:
    """``pixels`` encoded into ``page_dir/PICTURE_FOLDER``, named by the encoding's hash, written atomically
    unless that file is there already; returns its address relative to the pages."""
    data = _jpeg_bytes(pixels)
    digest = hashlib.sha256(data).hexdigest()[:32]
    relative = f"{PICTURE_FOLDER}/{digest[:2]}/{digest}.jpg"
    target = page_dir / relative
    try:
        present = target.stat().st_size == len(data)
    except OSError:
        present = False
    if not present:
        atomic_write_bytes(target, data)
    return relative


# ----------------------------------------------------------------------------------------------------------
# Rows


def _missing(value: object) -> bool:
    """True for None, NaN and pandas' NA (whose comparisons cannot be turned into a bool)."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except TypeError:
        return True


def _get(row: Mapping[str, Any], key: str) -> Any:  # a report value (number, text, time…) or None
    value = row.get(key)
    return None if _missing(value) else value


def _failed(row: Mapping[str, Any]) -> bool:
    status: object = _get(row, "status")
    return status != "ok"


def order_rows(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Worst first: failed rows (by stem), then by ``artifact_fraction`` descending (missing last), then
    by stem."""
    def key(row: Mapping[str, Any]) -> tuple[bool, bool, float, str]:
        fraction = _get(row, "artifact_fraction")
        return (not _failed(row), fraction is None, -float(fraction or 0.0), str(_get(row, "stem") or ""))
    return sorted(rows, key=key)


def _safe_stem(stem: str) -> bool:
    """Whether ``<folder>/<stem>.png`` stays inside ``<folder>``."""
    return bool(stem) and stem not in (".", "..") and not any(c in stem for c in ("/", "\\", "\0"))


def _sources(row: Mapping[str, Any], output_dir: Path) -> dict[str, Path | None]:
    """Each panel's file: the row's own ``<panel>_path``, else ``output_dir/<folder>/<stem>.png``."""
    stem = str(_get(row, "stem") or "")
    found: dict[str, Path | None] = {}
    for panel, folder in _DEFAULT_FOLDERS.items():
        given = _get(row, f"{panel}_path")
        if given is not None:
            found[panel] = Path(str(given))
        else:
            found[panel] = output_dir / folder / f"{stem}.png" if _safe_stem(stem) else None
    return found


# ----------------------------------------------------------------------------------------------------------
# HTML pieces


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: object) -> str:
    """Counts with thousands separators, other numbers with up to 6 significant digits, yes/no."""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    return str(value)


def _percent(fraction: float | None) -> str:
    return "—" if fraction is None or _missing(fraction) else f"{100.0 * float(fraction):.2f} %"


def _seconds(value: float | None) -> str:
    return "—" if value is None or _missing(value) else f"{float(value):.2f} s"


def _href(path: Path, page_dir: Path) -> str:
    """A link to ``path`` from the page: relative when possible (the folder can move), else ``file:``."""
    try:
        return quote(Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix(), safe="/")
    except ValueError:  # another drive
        return path.resolve().as_uri()


def _unique(rows: list[Mapping[str, Any]], key: str) -> list[Any]:
    seen = []
    for row in rows:
        value = _get(row, key)
        if value is not None and value not in seen:
            seen.append(value)
    return seen


def _run_numbers(rows: list[Mapping[str, Any]], output_dir: Path, extra: Mapping[str, object]) -> dict[str, str]:
    ok = [r for r in rows if not _failed(r)]
    numbers = {
        "Images": _number(len(rows)),
        "OK": _number(len(ok)),
        "Failed": _number(len(rows) - len(ok)),
        "With artifacts": _number(sum(1 for r in ok if (_get(r, "region_count") or 0) > 0)),
    }
    for label, key in (("Min area (px)", "min_area"), ("Config hash", "config_hash"), ("MSE model", "mse_model"),
                       ("GAN model", "gan_model"), ("Segmenter", "segmenter"), ("Run id", "run_id")):
        values = _unique(rows, key)
        if values:
            numbers[label] = ", ".join(_number(v) for v in values)
    for label, key in (("SR time, total", "sr_seconds"), ("Detection time, total", "detect_seconds")):
        times = [float(_get(r, key)) for r in rows if _get(r, key) is not None]
        if times:
            numbers[label] = _seconds(sum(times))
    cached = [bool(_get(r, "cached")) for r in rows if _get(r, "cached") is not None]
    if cached:
        numbers["From the store (cached)"] = _number(sum(cached))
    for label, value in extra.items():
        if not _missing(value):
            numbers[str(label)] = _number(value)
    numbers["Output folder"] = str(output_dir.resolve())
    return numbers


def _dl(items: Mapping[str, str], css: str) -> str:
    body = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in items.items())
    return f'<dl class="{css}">{body}</dl>'


def _image_numbers(row: Mapping[str, Any]) -> dict[str, str]:
    numbers = {} if _failed(row) else {"Artifacts": _percent(_get(row, "artifact_fraction"))}
    for label, key in (("Regions", "region_count"), ("Min area (px)", "min_area")):
        if _get(row, key) is not None:
            numbers[label] = _number(_get(row, key))
    if _get(row, "width") is not None and _get(row, "height") is not None:
        numbers["Size"] = f"{int(_get(row, 'width'))} × {int(_get(row, 'height'))}"
    for label, key in (("SR time", "sr_seconds"), ("Detection time", "detect_seconds")):
        if _get(row, key) is not None:
            numbers[label] = _seconds(_get(row, key))
    if _get(row, "cached") is not None:
        numbers["Cached"] = _number(bool(_get(row, "cached")))
    if _get(row, "notes"):
        numbers["Notes"] = str(_get(row, "notes"))
    return numbers


@dataclass(frozen=True)
class _Loaded:
    """One panel's picture, or why there is none."""

    pixels: np.ndarray | None
    path: Path | None
    problem: str | None


def _load(path: Path | None, reader: Callable[[Path], np.ndarray]) -> _Loaded:
    if path is None:
        return _Loaded(None, None, "no file for this image name")
    try:
        return _Loaded(reader(path), path, None)
    except (DesraError, OSError, ValueError, cv2.error) as e:  # shown in the page, in place of the picture
        return _Loaded(None, path, str(e) or type(e).__name__)


_LAZY = 'loading="lazy" decoding="async"'


def _figure(panel: str, picture: tuple[str, int, int] | None, loaded: _Loaded, stem: str, page_dir: Path) -> str:
    """One panel: ``picture`` is its preview's address, width and height (None: a placeholder that says
    why)."""
    title = _PANEL_TITLES[panel]
    if picture is None:
        body = f'<div class="missing" role="img" aria-label="{_e(title)} unavailable">' \
               f"<span>not available</span><small>{_e(loaded.problem)}</small></div>"
    else:
        src, width, height = picture
        img = f'<img src="{_e(src)}" width="{width}" height="{height}" alt="{_e(title)} of {_e(stem)}" {_LAZY}>'
        href = _href(loaded.path, page_dir) if loaded.path is not None else None
        body = f'<a href="{_e(href)}" title="full resolution: {_e(loaded.path)}">{img}</a>' if href else img
    return f'<figure class="panel">{body}<figcaption>{_e(title)}</figcaption></figure>'


def _comparison(gan: np.ndarray, pseudo: np.ndarray, stem: str, side: int,
                names: tuple[str, str] = ("GAN-SR", "pseudo-GT"),
                encode: Callable[[np.ndarray], str] = _jpeg_uri) -> str:
    """GAN-SR (left of the divider) over the pseudo-GT (right), both at one preview size; ``names`` label
    the two sides (another pair of pictures, e.g. original and fine-tuned model, reuses the slider);
    ``encode`` turns a picture into its ``src`` (a ``data:`` URI, or a file beside the page)."""
    left_name, right_name = names
    left = preview(gan, side)
    h, w = left.shape[:2]
    right = cv2.resize(pseudo, (w, h), interpolation=cv2.INTER_AREA) if pseudo.shape[:2] != (h, w) else pseudo
    # Small images are shown enlarged by a whole factor (crisp pixels), so that the divider has room.
    zoom = max(1, math.ceil(_MIN_COMPARE_DISPLAY / max(h, w)))
    shown_w, shown_h = w * zoom, h * zoom
    label = f"Divider between {left_name} (left) and {right_name} (right) of {stem}"
    return (
        f'<figure class="compare{" compare-zoomed" if zoom > 1 else ""}" data-width="{w}" data-height="{h}">'
        f'<div class="compare-frame">'
        f'<img class="compare-base" src="{_e(encode(right))}" width="{shown_w}" height="{shown_h}" '
        f'alt="{_e(right_name[:1].upper() + right_name[1:])} of {_e(stem)}" {_LAZY}>'
        f'<div class="compare-top"><img src="{_e(encode(left))}" width="{shown_w}" height="{shown_h}" '
        f'alt="{_e(left_name[:1].upper() + left_name[1:])} of {_e(stem)}" {_LAZY}></div>'
        f'<span class="compare-tag compare-tag-left" aria-hidden="true">{_e(left_name)}</span>'
        f'<span class="compare-tag compare-tag-right" aria-hidden="true">{_e(right_name)}</span>'
        f'<input class="compare-range" type="range" min="0" max="100" step="0.5" value="50" '
        f'aria-label="{_e(label)}" aria-valuetext="50% {_e(left_name)}">'
        f'<span class="compare-line" aria-hidden="true"></span>'
        f"</div>"
        f"<figcaption>Before/after: {_e(left_name)} left of the divider, {_e(right_name)} right "
        f"(drag, or focus and use the arrow keys; {w} × {h} preview"
        f"{f', shown {zoom}× enlarged' if zoom > 1 else ''})</figcaption>"
        f"</figure>"
    )


def _section(rank: int, row: Mapping[str, Any], output_dir: Path, page_dir: Path, panel_side: int, compare_side: int,
             fragments: Path | None = None, readers: _Readers = (_read_pixels, read_mask)) -> str:
    stem = str(_get(row, "stem") or "(no name)")
    failed = _failed(row)
    fraction = _get(row, "artifact_fraction")
    if failed:
        badge = f'<span class="badge badge-failed">{_e(_get(row, "status") or "failed")}</span>'
    elif (_get(row, "region_count") or 0) > 0:
        badge = f'<span class="badge badge-artifacts">{_e(_percent(fraction))} artifacts</span>'
    else:
        badge = '<span class="badge badge-clean">clean</span>'
    parts = [f'<section class="image{" image-failed" if failed else ""}" id="img-{rank}" '
             f'aria-labelledby="img-{rank}-name">',
             f'<header><h2 id="img-{rank}-name"><span class="rank">#{rank}</span> <span class="stem">{_e(stem)}'
             f"</span></h2>{badge}</header>"]
    if failed:
        parts.append(f'<pre class="error">{_e(_get(row, "error") or "failed without an error message")}</pre>')
    numbers = _image_numbers(row)
    if numbers:
        parts.append(_dl(numbers, "numbers"))
    if not failed:
        parts.append(_pictures(row, stem, output_dir, page_dir, panel_side, compare_side, fragments, readers))
    parts.append('<p class="top-link"><a href="#top">back to top</a></p></section>')
    return "".join(parts)


def _fragment_key(sources: Mapping[str, Path | None], stem: str, page_dir: Path, sides: tuple[int, int]) -> str | None:
    """Identity of a section's pictures: the files (path, size, modification time), the stem, where the page
    links from and the preview sizes; None when a file cannot be examined (nothing is cached then)."""
    parts = [_FRAGMENT_VERSION, stem, str(page_dir.resolve()), *map(str, sides)]
    for panel in sorted(sources):
        path = sources[panel]
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            return None
        parts.append(f"{panel}={path}:{None if st is None else (st.st_size, st.st_mtime_ns)}")
    return hashlib.sha256("\0".join(parts).encode("utf-8", "backslashreplace")).hexdigest()


def _cached_pictures(cached: Path, page_dir: Path) -> str | None:
    """A section's cached pictures (its first line lists the picture files it shows, the rest is its HTML),
    or None when it is absent or one of its picture files has gone."""
    try:
        listed, html_text = cached.read_text(encoding="utf-8").split("\n", 1)
    except (OSError, ValueError):
        return None
    base = os.path.join(page_dir, "")  # plain strings: this runs for every image of every page written
    if not all(os.path.isfile(base + src) for src in listed.split()):
        return None
    return html_text


def _pictures(row: Mapping[str, Any], stem: str, output_dir: Path, page_dir: Path, panel_side: int, compare_side: int,
              fragments: Path | None, readers: _Readers) -> str:
    """The four panels and the comparison of one image, their previews written into
    ``page_dir/PICTURE_FOLDER``; with ``fragments`` (a folder), kept there by the identity of their files so
    that a page written again over unchanged files encodes no picture."""
    sources = _sources(row, output_dir)
    key = None if fragments is None else _fragment_key(sources, stem, page_dir, (panel_side, compare_side))
    cached = None if key is None or fragments is None else fragments / key[:2] / f"{key}.html"
    if cached is not None:
        html_text = _cached_pictures(cached, page_dir)
        if html_text is not None:
            return html_text
    parts, written = [], []

    def read_rgb8(path: Path) -> np.ndarray:
        return _rgb8(readers[0](path))

    def encode(pixels: np.ndarray) -> str:
        written.append(_picture_file(pixels, page_dir))
        return written[-1]

    def picture(pixels: np.ndarray) -> tuple[str, int, int]:
        return encode(pixels), pixels.shape[1], pixels.shape[0]

    gan = _load(sources["gan"], read_rgb8)
    loaded = {"gan": gan, "mse": _load(sources["mse"], read_rgb8), "mask": _load(sources["mask"], readers[1]),
              "pseudo_gt": _load(sources["pseudo_gt"], read_rgb8)}
    pictures = {}
    for panel in ("gan", "mse", "pseudo_gt"):
        pixels = loaded[panel].pixels
        pictures[panel] = None if pixels is None else picture(preview(pixels, panel_side))
    if loaded["mask"].pixels is not None and gan.pixels is not None:
        pictures["mask"] = picture(mask_overlay(preview(gan.pixels, panel_side), loaded["mask"].pixels))
    else:
        pictures["mask"] = None
        if loaded["mask"].problem is None:
            loaded["mask"] = _Loaded(None, loaded["mask"].path, f"no GAN-SR image to draw on: {gan.problem}")
    figures = "".join(_figure(p, pictures[p], loaded[p], stem, page_dir) for p in _DEFAULT_FOLDERS)
    parts.append(f'<div class="panels">{figures}</div>')
    if gan.pixels is not None and loaded["pseudo_gt"].pixels is not None:
        parts.append(_comparison(gan.pixels, loaded["pseudo_gt"].pixels, stem, compare_side, encode=encode))
    html_text = "".join(parts)
    if cached is not None and all(item.problem is None for item in loaded.values()):
        with contextlib.suppress(OSError):  # a cache that cannot be written is no reason to fail the page
            atomic_write_bytes(cached, (" ".join(written) + "\n" + html_text).encode("utf-8"))
    return html_text


def _index(ranked: list[tuple[int, Mapping[str, Any]]], summary: str) -> str:
    lines = []
    for rank, row in ranked:
        failed = _failed(row)
        regions = _get(row, "region_count")
        status = _e(_get(row, "status") or "failed")
        lines.append(
            f'<tr class="{"row-failed" if failed else ""}"><td class="num">{rank}</td>'
            f'<td><a href="#img-{rank}">{_e(_get(row, "stem") or "(no name)")}</a></td>'
            f"<td>{status}</td><td class='num'>{'' if failed else _e(_percent(_get(row, 'artifact_fraction')))}"
            f"</td><td class='num'>{'' if regions is None else _e(_number(regions))}</td></tr>")
    return (f'<details class="index" open><summary>{_e(summary)}</summary><table><thead><tr>'
            '<th class="num">#</th><th>Image</th><th>Status</th><th class="num">Artifacts</th>'
            '<th class="num">Regions</th></tr></thead><tbody>' + "".join(lines) + "</tbody></table></details>")


def _split_pages(ordered: list[Mapping[str, Any]], page_size: int) -> list[list[tuple[int, Mapping[str, Any]]]]:
    """``ordered`` (worst first, failures first) with their ranks, cut into pages: every failure and the
    first ``page_size`` other images on the first page, ``page_size`` images on each further page."""
    ranked = list(enumerate(ordered, start=1))
    failures = sum(1 for row in ordered if _failed(row))
    first = failures + page_size
    return [ranked[:first]] + [ranked[i:i + page_size] for i in range(first, len(ranked), page_size)]


def _page_names(first: str, count: int) -> list[str]:
    """``report.html``, ``report-2.html``, … (``count`` names; ``first`` names the first page)."""
    stem, suffix = Path(first).stem, Path(first).suffix
    return [first] + [f"{stem}-{k}{suffix}" for k in range(2, count + 1)]


def _pager(names: list[str], spans: list[tuple[int, int]], current: int, total: int) -> str:
    """Links between the pages: which page this is, every page by number (its ranks in the title) and
    the previous and next ones; nothing when there is one page."""
    if len(names) < 2:
        return ""
    items = []
    for k, (name, (low, high)) in enumerate(zip(names, spans, strict=True)):
        span = f"images #{low}–#{high}"
        if k == current:
            items.append(f'<li><span aria-current="page" title="{span}">{k + 1}</span></li>')
        else:
            items.append(f'<li><a href="{_e(quote(name))}" title="{span}">{k + 1}</a></li>')
    low, high = spans[current]
    steps = []
    if current > 0:
        steps.append(f'<a rel="prev" href="{_e(quote(names[current - 1]))}">← previous page</a>')
    if current + 1 < len(names):
        steps.append(f'<a rel="next" href="{_e(quote(names[current + 1]))}">next page →</a>')
    return (f'<nav class="pages" aria-label="Pages of this review"><span class="pages-where">Page {current + 1} '
            f"of {len(names)}: images #{low}–#{high} of {_number(total)}</span>"
            f'<ol>{"".join(items)}</ol><span class="pages-steps">{" ".join(steps)}</span></nav>')


# The page's style sheet (data/review.css), inlined into every page and allowed by its hash.
# Read beside this file, not through importlib.resources: an editable install made while ``pipeline`` had no
# ``__init__.py`` resolves it as a namespace package, whose resources Python 3.11 cannot open.
_CSS = (Path(__file__).parent / "data" / "review.css").read_text("utf-8")

# The only script: marks the page as scripted (showing the dividers) and moves a divider on input.
_JS = """
document.documentElement.classList.add("js");
for (const range of document.querySelectorAll(".compare-range")) {
  const figure = range.closest(".compare");
  const move = () => {
    figure.style.setProperty("--pos", range.value + "%");
    range.setAttribute("aria-valuetext", Math.round(range.value) + "% GAN-SR");
  };
  range.addEventListener("input", move);
  move();
}
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def prepare_pictures(row: Mapping[str, Any], output_dir: str | os.PathLike[str], *, fragments: str | os.PathLike[str],
                     page_dir: str | os.PathLike[str] | None = None, panel_side: int = PANEL_SIDE,
                     compare_side: int = COMPARE_SIDE, read_pixels: Callable[[Path], np.ndarray] | None = None,
                     read_mask_file: Callable[[Path], np.ndarray] | None = None) -> None:
    """Encode one image's pictures into ``page_dir/PICTURE_FOLDER`` and its section into ``fragments`` now,
    as the pages would, so that writing the pages at the end of a run only assembles them: the pipeline calls
    this as each image is published, on the CPU workers, while the device works on other images. Arguments
    as for :func:`render_review_pages`."""
    out = Path(output_dir)
    stem = str(_get(row, "stem") or "")
    if _failed(row) or not _safe_stem(stem):
        return
    _pictures(row, stem, out, Path(page_dir) if page_dir is not None else out, panel_side, compare_side,
              Path(fragments), (read_pixels or _read_pixels, read_mask_file or read_mask))


def _check_layout(panel_side: int, compare_side: int, page_size: int) -> None:
    for name, value, unit in (("panel_side", panel_side, "whole number of pixels"),
                              ("compare_side", compare_side, "whole number of pixels"),
                              ("page_size", page_size, "whole number of images")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"expected {name} to be a {unit} of at least 1, got {value!r}")


def render_review_pages(rows: Iterable[Mapping[str, Any]], output_dir: str | os.PathLike[str], *, title: str,
                        run_numbers: Mapping[str, object] | None = None,
                        page_dir: str | os.PathLike[str] | None = None, page_name: str = PAGE_NAME,
                        page_size: int = PAGE_SIZE, panel_side: int = PANEL_SIDE, compare_side: int = COMPARE_SIDE,
                        fragments: str | os.PathLike[str] | None = None,
                        read_pixels: Callable[[Path], np.ndarray] | None = None,
                        read_mask_file: Callable[[Path], np.ndarray] | None = None) -> list[tuple[str, str]]:
    """The review pages (see the module docstring) as ``(file name, HTML)``, the first one first; the
    pictures they show are written into ``page_dir/PICTURE_FOLDER`` (each atomically, once).

    Args:
        rows: one mapping per image with the run report's columns (``stem``, ``status``, ``error``,
            ``artifact_fraction``, ``region_count``, ``height``, ``width``, ``min_area``, ``notes``,
            ``sr_seconds``, ``detect_seconds``, ``cached``, ``mse_model``, ``gan_model``, ``config_hash``,
            ``run_id``…; absent or NaN values are shown as missing). A row may name its pictures with
            ``gan_path``, ``mse_path``, ``mask_path``, ``pseudo_gt_path``; otherwise they are read from
            ``output_dir`` (``sr/gan/``, ``sr/mse/``, ``masks/``, ``pseudo_gt/`` + ``<stem>.png``).
            A missing or unreadable file shows as a placeholder that says why.
        output_dir: the run's output folder.
        title: the pages' title (escaped).
        run_numbers: further run-level numbers shown on top, label → value (e.g. ``{"Threshold": 0.7}``);
            a label that the page computes itself (e.g. ``"Images"``) is replaced; None values are left out.
        page_dir: the folder the pages will be in, for their pictures and the links to the full-resolution
            files (default: ``output_dir``).
        page_name: the first page's file name; further pages add ``-2``, ``-3``… before its suffix.
        page_size: images with pictures per page (the first page also has every failure).
        panel_side, compare_side: longest side in pixels of the panel and comparison previews.
        fragments: a folder in which to keep each image's section, by the identity of its files (paths,
            sizes, modification times), so that writing the pages again over unchanged files encodes
            nothing; None: encode every time.
        read_pixels, read_mask_file: how to read a picture (RGB ``uint8``/``uint16``) and a mask (``bool``);
            default :func:`~desra_core.image.read_image` (its pixels) and :func:`~desra_core.image.read_mask`.
            The pipeline passes readers that serve images it still holds in memory.

    Raises:
        ConfigError: a preview side or a page size below 1.
    """
    _check_layout(panel_side, compare_side, page_size)
    out = Path(output_dir)
    page_dir = Path(page_dir) if page_dir is not None else out
    ordered = order_rows(rows)
    numbers = _run_numbers(ordered, out, run_numbers or {})
    readers = (read_pixels or _read_pixels, read_mask_file or read_mask)
    pages = _split_pages(ordered, page_size)
    names = _page_names(page_name, len(pages))
    spans = [(ranked[0][0], ranked[-1][0]) if ranked else (0, 0) for ranked in pages]
    csp = (f"default-src 'none'; img-src 'self' data:; style-src {_csp_hash(_CSS)}; "
           f"script-src {_csp_hash(_JS)}; base-uri 'none'; form-action 'none'")
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    rendered = []
    for k, ranked in enumerate(pages):
        sections = "".join(_section(rank, row, out, page_dir, panel_side, compare_side,
                                    None if fragments is None else Path(fragments), readers) for rank, row in ranked)
        pager = _pager(names, spans, k, len(ordered))
        where = "" if len(pages) < 2 else f" (page {k + 1} of {len(pages)})"
        summary = "All images, worst first" if len(pages) < 2 else \
            f"Images on this page, worst first (#{spans[k][0]}–#{spans[k][1]} of {_number(len(ordered))})"
        rendered.append((names[k], (
            "<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="referrer" content="no-referrer">'
            '<link rel="icon" href="data:,">'
            f"<title>{_e(title)}{_e(where)}</title><style>{_CSS}</style></head>"
            f'<body><main id="top"><h1>{_e(title)}</h1>'
            f'<p class="sub">desra review page{_e(where)}, written {_e(written)}; images with failures first, '
            f"then by the share of pixels flagged as artifacts.</p>"
            f"{_dl(numbers, 'run')}"
            f'<p class="note">Pictures are previews, not the files themselves: panels at most {panel_side} px on '
            f"the longest side, the before/after comparison at most {compare_side} px, JPEG quality "
            f"{JPEG_QUALITY}, kept in {_e(PICTURE_FOLDER)}/ beside this page and loaded as you scroll. Click a "
            f"panel for the full-resolution file in the output folder. The mask panel tints artifact pixels red "
            f"and outlines each region in yellow.</p>"
            "<noscript><p class=\"note\">JavaScript is off: everything is visible, but the comparison dividers "
            "stay in the middle.</p></noscript>"
            f"{pager}{_index(ranked, summary)}{sections}{pager}"
            f"<footer>Written by desra. This page loads nothing from the network.</footer>"
            f"</main><script>{_JS}</script></body></html>\n")))
    return rendered


@contextlib.contextmanager
def _pages_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` itself for the ``with`` block: two runs writing their pages
    into one folder at once then write one whole set after the other, instead of one run removing the other's
    further pages just before that one's first page links to them. Ends with the block or the process."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_pages(first: Path, count: int) -> None:
    """Remove ``<stem>-<k><suffix>`` beside ``first`` for every ``k`` above ``count``: the further pages of
    an earlier, larger run, which no page links to any more."""
    pattern = re.compile(re.escape(first.stem) + r"-([1-9][0-9]*)" + re.escape(first.suffix))
    with os.scandir(first.parent) as entries:
        stale = [e.path for e in entries
                 if (m := pattern.fullmatch(e.name)) and int(m.group(1)) > max(count, 1) and e.is_file()]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):  # another run removed it first
            os.unlink(path)


def write_review_page(rows: Iterable[Mapping[str, Any]], output_dir: str | os.PathLike[str], *, title: str,
                      run_numbers: Mapping[str, object] | None = None, path: str | os.PathLike[str] | None = None,
                      page_size: int = PAGE_SIZE, panel_side: int = PANEL_SIDE, compare_side: int = COMPARE_SIDE,
                      fragments: str | os.PathLike[str] | None = None,
                      read_pixels: Callable[[Path], np.ndarray] | None = None,
                      read_mask_file: Callable[[Path], np.ndarray] | None = None) -> Path:
    """Write :func:`render_review_pages`' pages: the first to ``path`` (default ``output_dir/report.html``),
    the others beside it, each atomically and the first one last (it never links to a page not yet
    written); then remove the further pages an earlier, larger run left there. Writing and removing hold a
    lock on the folder, so that pages written into it at once by another run do not mix with these.

    Returns the first page's path. Arguments as for :func:`render_review_pages`.
    """
    target = Path(path) if path is not None else Path(output_dir) / PAGE_NAME
    pages = render_review_pages(rows, output_dir, title=title, run_numbers=run_numbers, page_dir=target.parent,
                                page_name=target.name, page_size=page_size, panel_side=panel_side,
                                compare_side=compare_side, fragments=fragments, read_pixels=read_pixels,
                                read_mask_file=read_mask_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _pages_lock(target.parent):
        for name, text in reversed(pages):
            atomic_write_bytes(target.parent / name, text.encode("utf-8"))
        _remove_stale_pages(target, len(pages))
    return target


# ----------------------------------------------------------------------------------------------------------
# Fine-tuning


def _fraction_pair(block: Mapping[str, Any], key: str) -> str:
    values = block.get(key) or {}
    before, after = values.get("original"), values.get("fine_tuned")
    fmt = _percent if key == "artifact_fraction" else (lambda v: "—" if _missing(v) else f"{float(v):.3f}")
    return f"{fmt(before)} → {fmt(after)}"


def _worst(checkpoint: Mapping[str, Any]) -> str:
    image = checkpoint.get("validation_worst_detail_image")
    ratio = checkpoint.get("validation_worst_detail_ratio")
    return "—" if image is None else f"{image}: {'—' if _missing(ratio) else _number(ratio)}"


def _objective(objective: Mapping[str, Any] | None) -> dict[str, str]:
    """The loss weights a fine-tuning run used and why (the card's ``settings.objective``), as one entry."""
    if not objective:
        return {}
    weights = ", ".join(f"{name} {objective[name]:g}" for name in ("perceptual", "gan", "texture") if name in objective)
    return {"Objective": f"L1 + {weights} ({objective.get('why', '')})"}


def render_finetune_page(card: Mapping[str, Any], pictures: Iterable[tuple[str, np.ndarray, np.ndarray]], *, title: str,
                         compare_side: int = COMPARE_SIDE) -> str:
    """A page for a fine-tuning run: which checkpoint was chosen and why, the evidence the validation
    could give (images, artifact pixels, measured noise), the validation image that keeps the least detail,
    before/after figures on the train and validation images (from a model card,
    :func:`desra_core.finetune.card.build_model_card`), and per validation image a slider between the
    original model's result (left) and the fine-tuned one's (right).

    ``pictures``: ``(stem, original uint8 (H, W, 3), fine-tuned uint8 (H, W, 3))``; empty when no model was
    chosen.
    """
    chosen = card.get("chosen")
    numbers = {"Base model": f"{card['base_model']['source']} (sha256 {card['base_model']['sha256'][:12]}…)",
               "Chosen checkpoint": "none: no generator written" if chosen is None else
               f"step {chosen['step']} ({chosen['weights']} weights)",
               "Why": card.get("reason", ""),
               **_objective(card.get("settings", {}).get("objective")),
               "Train images": ", ".join(i["stem"] for i in card["train_images"]),
               "Validation images": ", ".join(i["stem"] for i in card["validation_images"])}
    evidence = card.get("evidence")
    if evidence:
        numbers["Evidence"] = (
            f"{evidence['validation_images']} validation image(s), {evidence['images_with_artifacts']} with "
            f"artifacts ({evidence['artifact_pixels']:,} artifact pixels), {evidence['images_above_noise']} above "
            f"the noise of validating the original model again (mean ±{_percent(evidence['mean_noise'])}); "
            + ("enough to judge" if evidence["sufficient"] else f"not enough: {evidence['missing']}"))
    if chosen is not None and chosen.get("validation_worst_detail_image") is not None:
        numbers["Worst detail (chosen)"] = (f"{chosen['validation_worst_detail_image']} keeps "
                                            f"{_number(chosen.get('validation_worst_detail_ratio'))} of the "
                                            "original's detail")
    for part in ("validation", "train"):
        block = card[part]
        numbers[f"{part.capitalize()}: artifacts, original → fine-tuned"] = _fraction_pair(block, "artifact_fraction")
        numbers[f"{part.capitalize()}: detail, original → fine-tuned"] = _fraction_pair(block, "detail")
    rows = "".join(
        f"<tr><td class='num'>{c['step']}</td><td>{_e(c['weights'])}</td>"
        f"<td class='num'>{_e(_percent(c['validation_artifact_fraction']))}</td>"
        f"<td class='num'>{_e(_number(c['validation_detail_ratio']))}</td>"
        f"<td>{_e(_worst(c))}</td></tr>" for c in card.get("checkpoints", []))
    table = ('<details class="index" open><summary>Validated checkpoints</summary><table><thead><tr>'
             '<th class="num">Step</th><th>Weights</th><th class="num">Validation artifacts</th>'
             '<th class="num">Detail ratio (mean)</th><th>Worst image: detail ratio</th></tr></thead><tbody>'
             + rows + "</tbody></table></details>")
    sections = []
    for rank, (stem, original, tuned) in enumerate(pictures, start=1):
        per = card["validation"]["per_image"].get(stem, {})
        facts = {"Artifacts, original": _percent(per.get("original", {}).get("artifact_fraction")),
                 "Artifacts, fine-tuned": _percent(per.get("fine_tuned", {}).get("artifact_fraction"))}
        sections.append(f'<section class="image" id="val-{rank}"><header><h2><span class="stem">{_e(stem)}'
                        f"</span></h2></header>{_dl(facts, 'numbers')}"
                        f"{_comparison(original, tuned, stem, compare_side, ('original', 'fine-tuned'))}</section>")
    csp = (f"default-src 'none'; img-src data:; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; "
           "base-uri 'none'; form-action 'none'")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer"><link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f'<body><main id="top"><h1>{_e(title)}</h1>'
        f'<section class="finetune" aria-label="Fine-tuning"><h2>Fine-tuning</h2>{_dl(numbers, "run")}{table}'
        f"</section>{''.join(sections)}"
        f"<footer>Written by desra. This page loads nothing from the network.</footer>"
        f"</main><script>{_JS}</script></body></html>\n"
    )


def write_finetune_page(card: Mapping[str, Any], pictures: Iterable[tuple[str, np.ndarray, np.ndarray]],
                        path: str | os.PathLike[str], *, title: str, compare_side: int = COMPARE_SIDE) -> Path:
    """Write :func:`render_finetune_page`'s page to ``path`` atomically; returns the path."""
    target = Path(path)
    atomic_write_bytes(target, render_finetune_page(card, pictures, title=title, compare_side=compare_side)
                       .encode("utf-8"))
    return target
