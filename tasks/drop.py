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
    wanted = sorted(entries) if stems is None else stems
    items = []
    for stem in wanted:
        entry = entries.get(stem)
        item = {"stem": safe_stem(stem), "path": None, "sha256": None, "error": None}
        if entry is None:
            item["error"] = (f"expected an image with stem {printable_path(stem)!r} in {printable_path(input_dir)}, "
                             "found none")
            items.append(item)
            continue
        path, error = _usable(entry)
        item.update(path=path or entry.shown, error=error)
        if error is None:
            try:
                item["sha256"] = file_sha256(entry.path)
            except OSError as e:
                item["error"] = f"expected a readable image file, got {e.strerror or e} (file: {entry.shown})"
        items.append(item)
    return items


@task(name="match-labels", cache_policy=NO_CACHE, persist_result=False)
def match_labels(items: list[dict], labels_dir: str) -> list[dict]:
    """Precomputed label maps by stem: ``[{"stem", "key", "path", "error"}]``."""
    labels = list_image_entries(labels_dir)
    out = []
    for item in items:
        entry = labels.get(item["stem"])
        rec = {"stem": item["stem"], "key": None, "path": None, "error": None}
        if entry is None:
            rec["error"] = (f"expected a label map with stem '{item['stem']}' in {printable_path(labels_dir)}, "
                            "found none")
            out.append(rec)
            continue
        path, error = _usable(entry)
        rec.update(path=path or entry.shown, error=error)
        if error is None:
            try:
                rec["key"] = "labels:" + file_sha256(entry.path)
            except OSError as e:
                rec["error"] = f"expected a readable label map, got {e.strerror or e} (file: {entry.shown})"
        out.append(rec)
    return out
