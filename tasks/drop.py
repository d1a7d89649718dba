"""Reading a drop: which images there are, their content digests, and the label maps that go with them.

Stems name output files (``masks/<stem>.png``, ``reports/<stem>.parquet``), task runs and report rows,
so every stem that leaves here is safe (:func:`desra_core.listing.stem_problem`) and every path in a
record is printable text. An entry that cannot be used (a name that is not UTF-8, a symbolic link out
of the drop, a directory…) becomes an item with its error, never a crash of the listing.
"""


from prefect import task
from prefect.cache_policies import NO_CACHE

from desra_core.image import printable_path
from desra_core.listing import list_image_entries, safe_stem
from tasks.store import file_sha256

__all__ = ["match_labels", "scan_drop"]


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


@task(name="scan-drop", cache_policy=NO_CACHE, persist_result=False)
def scan_drop(input_dir: str, stems: list[str] | None = None) -> list[dict]:
    """``[{"stem", "path", "sha256", "error"}]`` for the drop's images (all, or only ``stems``).

    An item with an ``error`` has no ``sha256``, and its ``path`` (if any) is for reports only.
    A requested stem that is not safe as a file name is reported under :func:`safe_stem` of it.
    """
    entries = list_image_entries(input_dir)
    items = []
    for stem in sorted(entries) if stems is None else stems:
        path, digest, error = _locate(entries, stem, "an image", input_dir)
        items.append({"stem": safe_stem(stem), "path": path, "sha256": digest, "error": error})
    return items


@task(name="match-labels", cache_policy=NO_CACHE, persist_result=False)
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
