"""Reading a drop: which images there are, and the label maps that go with them.

Stems name output files (``masks/<stem>.png``, ``reports/<stem>.parquet``), task runs and report rows,
so every stem that leaves here is safe (:func:`desra_core.listing.stem_problem`) and every path in a
record is printable text. An entry that cannot be used (a name that is not UTF-8, a symbolic link, a
directory…) becomes an item with its error, never a crash of the listing.

A drop's folder (and a labels folder) is opened once (:class:`~desra_core.folder.Folder`) and listed
through its descriptor; each item carries its file as a :class:`~desra_core.folder.FolderFile`, which the
image's own step opens once, without following a link, and reads, hashes and decodes (nothing is hashed
here). A flow admits its folders first (:func:`admit_folder`: opened, and checked against the allowed
roots on the descriptor), so that its later listings go through the folder it checked, whatever has
become of the path since.

A drop (or a labels folder) may also be a URL, ``s3://bucket/prefix``: its objects directly under the prefix
are listed by the same rules (:func:`desra.pipeline.objectfile.list_object_entries`), each item's ``path`` is
its object's URL, and its ``file`` an :class:`~desra.pipeline.objectfile.ObjectFile` (read like a folder's file).
``desra detect`` reads local folders only.
"""

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from desra.pipeline.objectfile import ObjectEntry, ObjectFile, list_object_entries
from desra.pipeline.objects import Bucket, S3Bucket, is_url
from desra.pipeline.roots import Roots
from desra.pipeline.steps import Item
from desra.pipeline.store import file_sha256
from desra_core import ConfigError
from desra_core.folder import Folder, FolderFile
from desra_core.image import printable_path
from desra_core.listing import ImageEntry, list_image_entries, safe_stem

__all__ = ["admit_folder", "drop_folder", "drop_items", "match_labels", "result_items", "scan_drop"]

_ADMITTED: OrderedDict[str, Folder] = OrderedDict()
_KEEP = 32  # folders admitted by the latest runs of this process; one that is dropped closes when unused


def admit_folder(path: str, roots: Roots | None, parameter: str = "input_dir") -> Folder:
    """Open the folder ``path`` once for this process, check on the open descriptor (where the folder really
    is, not where the path leads now) that it lies inside ``roots`` (``None``: unconfined), and keep it:
    :func:`drop_folder` of the same ``path`` then gives this folder.

    Raises:
        InputImageError: not an existing, readable folder.
        ConfigError: the opened folder lies outside the roots (e.g. the path was swapped for a link after
            the run's paths were checked), naming ``parameter``.
    """
    folder = Folder(path)
    if roots is not None and not roots.contain(folder.real):
        real = folder.real
        folder.close()
        raise ConfigError(f"expected {parameter} inside the allowed roots, {roots.describe()}, got {path}, which "
                          f"when opened was {real} (changed after it was checked?)")
    _ADMITTED[path] = folder
    _ADMITTED.move_to_end(path)
    while len(_ADMITTED) > _KEEP:
        _ADMITTED.popitem(last=False)
    return folder


def drop_folder(path: str | Folder) -> Folder:
    """The folder that :func:`admit_folder` opened for ``path`` in this process, else ``path`` opened now.

    Raises:
        InputImageError: not an existing, readable folder.
    """
    if isinstance(path, Folder):
        return path
    return _ADMITTED.get(path) or Folder(path)


def _usable(entry: ImageEntry) -> tuple[str | None, str | None]:
    """``(path, None)`` for an entry that can be read and reported, else ``(None, error)``."""
    if entry.problem is not None:
        return None, entry.problem
    text = str(entry.path)
    try:
        text.encode("utf-8")
        return text, None
    except UnicodeEncodeError:  # the folder's own path is not UTF-8: it could not go in a report
        return None, f"expected a path that is valid UTF-8, got one that is not (file: {entry.shown})"


def scan_drop(input_dir: str | Folder, stems: list[str] | None = None) -> list[dict[str, Any]]:
    """``[{"stem", "path", "file", "error"}]`` for the drop's images (all, or only ``stems``), listed through
    the drop's folder (:func:`drop_folder`); ``file`` (a :class:`FolderFile`) is what to read, ``None``
    with an ``error``; ``path`` is for reports only.

    A requested stem that is not safe as a file name is reported under :func:`safe_stem` of it; one requested
    twice is listed once. ``input_dir`` may be an ``s3://bucket/prefix`` URL (``file``: an
    :class:`~desra.pipeline.objectfile.ObjectFile`, ``path``: its URL).

    Raises:
        InputImageError: a local folder that is missing or unreadable.
        StorageError: a bucket that cannot be listed, naming its URL.
    """
    listed, find = _listing(input_dir)
    items = []
    # A stem asked for twice is one image: two copies would publish the same files at once.
    for stem in listed if stems is None else dict.fromkeys(stems):
        path, file, error = find(stem, "an image")
        items.append({"stem": safe_stem(stem), "path": path, "file": file, "error": error})
    return items


def match_labels(items: list[dict[str, Any]], labels_dir: str | Folder) -> list[dict[str, Any]]:
    """Precomputed label maps by stem, listed through the labels folder (or bucket prefix): ``[{"stem", "path",
    "file", "error"}]`` (``file`` as in :func:`scan_drop`)."""
    _, find = _listing(labels_dir)
    out = []
    for item in items:
        path, file, error = find(item["stem"], "a label map")
        out.append({"stem": item["stem"], "path": path, "file": file, "error": error})
    return out


_Find = Callable[[str, str], tuple[str | None, FolderFile | ObjectFile | None, str | None]]


def _listing(source: str | Folder) -> tuple[list[str], _Find]:
    """The sorted stems of a drop's (or labels folder's) listing, and ``find(stem, what)`` → ``(path, file,
    error)`` of one stem (``what`` names it in messages, e.g. "a label map"): a folder, or a bucket prefix."""
    if isinstance(source, str) and is_url(source):
        bucket = Bucket.at(source)  # refuses a scheme other than s3://, with its reason
        if not isinstance(bucket, S3Bucket):
            raise ConfigError(f"expected an s3:// URL or a local folder, got {source!r}")
        objects = list_object_entries(bucket)
        return list(objects), lambda stem, what: _object_file(bucket, objects, stem, what)
    folder = drop_folder(source)
    entries = list_image_entries(folder)
    return list(entries), lambda stem, what: _entry_file(folder, entries, stem, what)


def _object_file(bucket: S3Bucket, entries: dict[str, ObjectEntry], stem: str,
                 what: str) -> tuple[str | None, ObjectFile | None, str | None]:
    """``(URL, file, error)`` of the entry ``stem`` of a bucket prefix's listing; the URL is printable."""
    entry = entries.get(stem)
    if entry is None:
        return None, None, f"expected {what} with stem {printable_path(stem)!r} in {bucket.url}, found none"
    return entry.shown, entry.file, entry.problem


def _entry_file(folder: Folder, entries: dict[str, ImageEntry], stem: str,
                what: str) -> tuple[str | None, FolderFile | None, str | None]:
    """``(path, file, error)`` of the entry ``stem`` of a folder's listing; the path is printable."""
    entry = entries.get(stem)
    if entry is None:
        return None, None, (f"expected {what} with stem {printable_path(stem)!r} in {folder.shown}, "
                            "found none")
    path, error = _usable(entry)
    return path or entry.shown, None if error is not None else folder.file(entry.path.name), error


def _locate(entries: dict[str, ImageEntry], stem: str, what: str,
            folder: str) -> tuple[str | None, str | None, str | None]:
    """``(path, sha256, error)`` of the entry ``stem`` of a listing; ``what`` names it in messages
    (e.g. "a label map"). The path is printable; with an error there is no digest."""
    entry = entries.get(stem)
    if entry is None:
        return None, None, f"expected {what} with stem {printable_path(stem)!r} in {printable_path(folder)}, found none"
    path, error = _usable(entry)
    path = path or entry.shown
    if error is not None:
        return path, None, error
    try:
        return path, file_sha256(entry.path), None
    except OSError as e:
        return path, None, f"expected {what} that can be read, got {e.strerror or e} (file: {entry.shown})"


def drop_items(input_dir: str | Folder, stems: list[str] | None = None,
               labels_dir: str | Folder | None = None) -> list[Item]:
    """The drop's images (all, or only ``stems``) as pipeline items, with their label maps when given.

    Nothing is read or hashed here: each item's ``file`` (and ``labels_file``) is opened and read once by
    its image's step (:meth:`desra.pipeline.steps.ImageJob.load`), which fills in the digests."""
    scanned = scan_drop(input_dir, stems)
    labels = {r["stem"]: r for r in match_labels(scanned, labels_dir)} if labels_dir else {}
    items = []
    for s in scanned:
        lab = labels.get(s["stem"])
        items.append(Item(stem=s["stem"], path=s["path"], sha256=None, error=s["error"], file=s["file"],
                          labels=None if lab is None else (lab["path"], None, lab["error"]),
                          labels_file=None if lab is None else lab["file"]))
    return items


def result_items(mse_dir: str, gan_dir: str, labels_dir: str | None = None) -> list[Item]:
    """Pairs of SR results that exist already (``desra detect``), by stem: every stem of either folder.

    The SR results are hashed here and decoded later by path (they are the user's own results, often
    larger than ``DESRA_MAX_INPUT_MB``); label maps are read once by the image's step, as for a drop.

    Raises:
        ConfigError: a folder given as a URL (``desra detect`` reads local folders).
    """
    for name, value in (("mse_dir", mse_dir), ("gan_dir", gan_dir), ("labels_dir", labels_dir)):
        if is_url(value):
            raise ConfigError(f"expected {name} as a local folder (desra detect reads local folders), got the URL "
                              f"{value!r}")
    mse_entries, gan_entries = list_image_entries(mse_dir), list_image_entries(gan_dir)
    label_folder = drop_folder(labels_dir) if labels_dir else None
    label_entries = list_image_entries(label_folder) if label_folder is not None else {}
    items = []
    for stem in sorted(set(mse_entries) | set(gan_entries)):
        gan_path, gan_digest, gan_error = _locate(gan_entries, stem, "a GAN result", gan_dir)
        mse_path, mse_digest, mse_error = _locate(mse_entries, stem, "an MSE result", mse_dir)
        labels, labels_file = None, None
        if label_folder is not None:
            path, labels_file, label_error = _entry_file(label_folder, label_entries, stem, "a label map")
            labels = (path, None, label_error)
        error = mse_error or gan_error
        items.append(Item(stem=safe_stem(stem), path=None, sha256=None, error=error, labels=labels,
                          labels_file=labels_file,
                          given={"mse": (mse_path, mse_digest), "gan": (gan_path, gan_digest)}))
    return items
