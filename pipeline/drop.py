"""Reading a drop: which images there are, their content digests, and the label maps that go with them.

Stems name output files (``masks/<stem>.png``, ``reports/<stem>.parquet``), task runs and report rows,
so every stem that leaves here is safe (:func:`desra_core.listing.stem_problem`) and every path in a
record is printable text. An entry that cannot be used (a name that is not UTF-8, a symbolic link out
of the drop, a directory…) becomes an item with its error, never a crash of the listing.
"""

from desra_core.image import printable_path
from desra_core.listing import list_image_entries, safe_stem
from pipeline.steps import Item
from pipeline.store import file_sha256

__all__ = ["drop_items", "match_labels", "result_items", "scan_drop"]


def _usable(entry) -> tuple[str | None, str | None]:
    """``(path, None)`` for an entry that can be read and reported, else ``(None, error)``."""
    if entry.problem is not None:
        return None, entry.problem
    text = str(entry.path)
    try:
        text.encode("utf-8")
        return text, None
    except UnicodeEncodeError:  # the folder's own path is not UTF-8: it could not go in a report
        return None, f"expected a path that is valid UTF-8, got one that is not (file: {entry.shown})"


def scan_drop(input_dir: str, stems: list[str] | None = None) -> list[dict]:
    """``[{"stem", "path", "sha256", "error"}]`` for the drop's images (all, or only ``stems``).

    An item with an ``error`` has no ``sha256``, and its ``path`` (if any) is for reports only.
    A requested stem that is not safe as a file name is reported under :func:`safe_stem` of it; one requested
    twice is listed once.
    """
    entries = list_image_entries(input_dir)
    items = []
    # A stem asked for twice is one image: two copies would publish the same files at once.
    for stem in sorted(entries) if stems is None else dict.fromkeys(stems):
        path, digest, error = _locate(entries, stem, "an image", input_dir)
        items.append({"stem": safe_stem(stem), "path": path, "sha256": digest, "error": error})
    return items


def match_labels(items: list[dict], labels_dir: str) -> list[dict]:
    """Precomputed label maps by stem: ``[{"stem", "key", "path", "error"}]``."""
    labels = list_image_entries(labels_dir)
    out = []
    for item in items:
        path, digest, error = _locate(labels, item["stem"], "a label map", labels_dir)
        out.append({"stem": item["stem"], "key": None if digest is None else "labels:" + digest, "path": path,
                    "error": error})
    return out


def _locate(entries: dict, stem: str, what: str, folder: str) -> tuple[str | None, str | None, str | None]:
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


def drop_items(input_dir: str, stems: list[str] | None = None, labels_dir: str | None = None) -> list[Item]:
    """The drop's images (all, or only ``stems``) as pipeline items, with their label maps when given."""
    scanned = scan_drop(input_dir, stems)
    labels = {r["stem"]: r for r in match_labels(scanned, labels_dir)} if labels_dir else {}
    items = []
    for s in scanned:
        lab = labels.get(s["stem"])
        items.append(Item(stem=s["stem"], path=s["path"], sha256=s["sha256"], error=s["error"],
                          labels=None if lab is None else (lab["path"], None if lab["key"] is None
                                                           else lab["key"].removeprefix("labels:"), lab["error"])))
    return items


def result_items(mse_dir: str, gan_dir: str, labels_dir: str | None = None) -> list[Item]:
    """Pairs of SR results that exist already (``desra detect``), by stem: every stem of either folder."""
    mse_entries, gan_entries = list_image_entries(mse_dir), list_image_entries(gan_dir)
    label_entries = list_image_entries(labels_dir) if labels_dir else {}
    items = []
    for stem in sorted(set(mse_entries) | set(gan_entries)):
        gan_path, gan_digest, gan_error = _locate(gan_entries, stem, "a GAN result", gan_dir)
        mse_path, mse_digest, mse_error = _locate(mse_entries, stem, "an MSE result", mse_dir)
        labels = _locate(label_entries, stem, "a label map", labels_dir) if labels_dir else None
        error = mse_error or gan_error
        items.append(Item(stem=safe_stem(stem), path=None, sha256=None, error=error, labels=labels,
                          given={"mse": (mse_path, mse_digest), "gan": (gan_path, gan_digest)}))
    return items
