"""Which files of a folder are images, under which names: a drop's listing.

Stems name output files (``masks/<stem>.png``), report rows and Prefect task runs, so every stem that
leaves here is safe as a file name and as text; an entry that cannot be used (a name that is not UTF-8,
a symbolic link, a directory named like an image, two files with one stem) is still
listed, with its ``problem``, so that a run can give it a report row. A folder is listed through its
descriptor (:class:`~desra_core.folder.Folder`), and entries are checked without following links. Reading
one image is :mod:`desra_core.image`.
"""

from __future__ import annotations

import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .folder import Folder, file_kind
from .image import BytesPath, StrPath, printable_path

__all__ = ["IMAGE_SUFFIXES", "MAX_STEM_BYTES", "ImageEntry", "list_image_entries", "list_images", "safe_stem",
           "stem_problem"]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})
"""Lower-case suffixes that :func:`list_images` treats as image files."""

MAX_STEM_BYTES: int = 200
"""Longest stem (UTF-8 bytes) that :func:`list_image_entries` accepts: outputs add a suffix, temporary
files a prefix, and a file name may have at most 255 bytes."""


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """One entry of a folder that looks like an image file (see :func:`list_image_entries`).

    ``stem`` is unique in the folder and safe both as text (valid UTF-8, printable) and as a file name
    (see :func:`stem_problem`): the file's own stem when that is safe, else :func:`safe_stem` of it.
    ``path`` is the entry itself (it may hold surrogate escapes: open it, never print it); ``shown`` is
    :func:`printable_path` of it. ``problem`` says why the entry cannot be used, in the form
    "expected …, got … (file: …)", or is ``None``.
    """

    stem: str
    path: Path
    shown: str
    problem: str | None = None


def stem_problem(stem: str) -> str | None:
    """Why ``stem`` is not safe to use as an output file name and as report text, or ``None``.

    Safe means: valid UTF-8 (no surrogate escapes), no control characters, no ``/`` or ``\\``, not
    empty, not starting with ``.`` (so never ``.`` or ``..``) and at most :data:`MAX_STEM_BYTES` bytes.
    """
    try:
        size = len(stem.encode("utf-8"))
    except UnicodeEncodeError:
        return "a name that is not valid UTF-8"
    if not stem:
        return "an empty name"
    bad = sorted({c for c in stem if c in "/\\" or unicodedata.category(c) == "Cc"})
    if bad:
        return f"a name containing {', '.join(repr(c) for c in bad)}"
    if stem.startswith("."):
        return "a name starting with '.'"
    if size > MAX_STEM_BYTES:
        return f"a name of {size} bytes (more than {MAX_STEM_BYTES})"
    return None


def safe_stem(stem: str) -> str:
    """``stem`` unchanged when :func:`stem_problem` finds nothing, else a printable stand-in.

    The stand-in writes each byte that is not UTF-8 and each control character, ``/`` or ``\\`` as
    ``%XX``, and leading dots as ``%2E`` (``caf\\xe9`` → ``caf%E9``, ``../x`` → ``%2E%2E%2Fx``), then
    cuts it to :data:`MAX_STEM_BYTES` bytes. Different stems may share a stand-in.
    """
    if stem_problem(stem) is None:
        return stem
    parts = []
    for c in stem:
        if 0xDC80 <= ord(c) <= 0xDCFF:  # a byte that os.fsdecode could not decode
            parts.append(f"%{ord(c) - 0xDC00:02X}")
        elif c in "/\\" or unicodedata.category(c) == "Cc" or 0xD800 <= ord(c) <= 0xDFFF:
            parts.append("".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")))
        else:
            parts.append(c)
    text = "".join(parts)
    dots = len(text) - len(text.lstrip("."))
    text = "%2E" * dots + text[dots:]
    return text.encode("utf-8")[:MAX_STEM_BYTES].decode("utf-8", "ignore") or "%"


def _kind_problem(folder: Folder, name: str) -> str | None:
    """Why the entry is not a regular file (checked on the entry itself: a link is not followed), or ``None``."""
    try:
        mode = folder.lstat(name).st_mode
    except OSError as exc:
        return f"expected a readable image file, got {exc.strerror or exc}"
    if stat.S_ISLNK(mode):
        return ("expected an image file, got a symbolic link (links are not followed, even inside the folder: "
                "copy the file into the folder)")
    kind = file_kind(mode)
    return None if kind is None else f"expected an image file, got {kind}"


def list_image_entries(directory: StrPath | BytesPath | Folder) -> dict[str, ImageEntry]:
    """Entries directly inside ``directory`` (not recursive) that look like images, by stem, sorted.

    An entry looks like an image by its suffix (:data:`IMAGE_SUFFIXES`, any case), whatever it is;
    hidden names (a single leading ``.``, e.g. temporary files and macOS ``._`` files) are skipped. An
    entry gets a ``problem`` (and, for a bad name, a :func:`safe_stem` stand-in as its stem, with
    ``~2``, ``~3``… added when that is taken) when:

    * its name is not valid UTF-8, has control characters or ``\\``, starts with ``..`` or has a stem
      over :data:`MAX_STEM_BYTES` bytes: stems name output files and report rows;
    * it is a symbolic link (wherever it leads: a drop is read through its folder's descriptor, and no
      file is opened through a link);
    * it is a directory, a FIFO, a socket or a device;
    * another image has the same stem (``a.png`` and ``a.jpg``): both are refused, the second under
      a stand-in stem (``a~2``).

    ``directory`` may be a :class:`~desra_core.folder.Folder` (listed through its descriptor, as it was
    opened: a drop); a path is opened for this listing only. ``ImageEntry.path`` is the folder's path
    joined with the entry's name.

    Raises:
        InputImageError: ``directory`` is missing or not a folder.
    """
    if isinstance(directory, Folder):
        return _entries(directory)
    with Folder(directory) as opened:
        return _entries(opened)


def _entries(opened: Folder) -> dict[str, ImageEntry]:
    folder = Path(opened.path)
    entries = [folder / name for name in opened.names()]
    found: dict[str, ImageEntry] = {}
    renamed: list[tuple[Path, str]] = []  # entries with a bad name get their stand-in stems last
    for entry in entries:
        name = entry.name
        if (name.startswith(".") and not name.startswith("..")) or entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        problem = stem_problem(entry.stem)
        if problem is not None:
            renamed.append((entry, f"expected a file name usable for output files and reports, got {problem}; "
                                   "rename the file"))
            continue
        if entry.stem in found:  # outputs are named by stem: neither file can be used, and both are reported
            first = found[entry.stem]
            clash = (f"expected one image per stem, got '{first.path.name}' and '{name}'; rename one of them "
                     "(both refused)")
            found[entry.stem] = ImageEntry(first.stem, first.path, first.shown, clash)
            renamed.append((entry, clash))
            continue
        found[entry.stem] = ImageEntry(entry.stem, entry, printable_path(entry), _kind_problem(opened, name))
    for entry, problem in renamed:
        base = stem = safe_stem(entry.stem)
        n = 1
        while stem in found:
            n += 1
            stem = f"{base}~{n}"
        shown_entry = printable_path(entry)
        found[stem] = ImageEntry(stem, entry, shown_entry, f"{problem} (file: {shown_entry})")
    for stem, item in found.items():
        if item.problem is not None and "(file:" not in item.problem:
            found[stem] = ImageEntry(stem, item.path, item.shown, f"{item.problem} (file: {item.shown})")
    return dict(sorted(found.items()))


def list_images(directory: StrPath | BytesPath | Folder) -> dict[str, Path]:
    """The usable entries of :func:`list_image_entries` (no ``problem``): path by stem, sorted by stem.

    Use :func:`list_image_entries` where refused entries must be reported (a drop's report rows).

    Raises:
        InputImageError: ``directory`` is missing or not a folder.
    """
    return {stem: entry.path for stem, entry in list_image_entries(directory).items() if entry.problem is None}
