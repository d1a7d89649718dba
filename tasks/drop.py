"""Reading a drop: which images there are, their content digests, and the label maps that go with them."""


from prefect import task
from prefect.cache_policies import NO_CACHE

from desra_core.image import list_images
from tasks.store import file_sha256

__all__ = ["match_labels", "scan_drop"]


@task(name="scan-drop", cache_policy=NO_CACHE, persist_result=False)
def scan_drop(input_dir: str, stems: list[str] | None = None) -> list[dict]:
    """``[{"stem", "path", "sha256", "error"}]`` for the drop's images (all, or only ``stems``)."""
    images = list_images(input_dir)
    wanted = sorted(images) if stems is None else stems
    items = []
    for stem in wanted:
        path = images.get(stem)
        item = {"stem": stem, "path": None if path is None else str(path), "sha256": None, "error": None}
        if path is None:
            item["error"] = f"expected an image with stem '{stem}' in {input_dir}, found none"
        else:
            try:
                item["sha256"] = file_sha256(path)
            except OSError as e:
                item["error"] = f"cannot read {path}: {e.strerror or e}"
        items.append(item)
    return items


@task(name="match-labels", cache_policy=NO_CACHE, persist_result=False)
def match_labels(items: list[dict], labels_dir: str) -> list[dict]:
    """Precomputed label maps by stem: ``[{"stem", "key", "path", "error"}]``."""
    labels = list_images(labels_dir)
    out = []
    for item in items:
        path = labels.get(item["stem"])
        rec = {"stem": item["stem"], "key": None, "path": None if path is None else str(path), "error": None}
        if path is None:
            rec["error"] = f"expected a label map with stem '{item['stem']}' in {labels_dir}, found none"
        else:
            rec["key"] = "labels:" + file_sha256(path)
        out.append(rec)
    return out

