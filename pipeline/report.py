"""What a run publishes: the store's entries under stable names, and the report schema.

Layout under ``output_dir``::

    masks/<stem>.png  pseudo_gt/<stem>.png  sr/mse/<stem>.png  sr/gan/<stem>.png  labels/<stem>.png
    reports/<stem>.parquet      one row per artifact region (+ image-level columns), or one row
                                without a region when the image is clean or failed
    runs/<run>.parquet          one row per image of a run; read the folder as one dataset:
                                ``pandas.read_parquet(output_dir / "runs")``
    report.html                 the run's review page; a large run's further pages are report-2.html…
    report-files/               the review pages' preview pictures (named by their content)

Every entry point writes these with the same columns and types (:data:`IMAGE_COLUMNS`,
:data:`REGION_COLUMNS`). Each image's row carries its timeline: ``<step>_started_at`` and
``<step>_finished_at`` (UTC) for every step the run computed (:data:`STEPS`), null for what came from
the store.
"""

import contextlib
import functools
import hashlib
import io
import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from desra.pipeline import pixels
from desra.pipeline.objects import Bucket
from desra.pipeline.review import PICTURE_FOLDER, write_review_page
from desra_core.errors import ConfigError, MissingObjectError
from desra_core.image import atomic_path, atomic_write_bytes

__all__ = ["IMAGE_COLUMNS", "REGION_COLUMNS", "STEPS", "TIMELINE_COLUMNS", "batch_rows_key", "frame", "is_published",
           "publish_image", "read_batch_rows", "review_fragments", "write_batch_rows", "write_run_files"]

STEPS = ("sr_mse", "sr_gan", "segment", "detect", "pseudo_gt", "publish")
TIMELINE_COLUMNS = [f"{step}_{edge}" for step in STEPS for edge in ("started_at", "finished_at")]

IMAGE_COLUMNS = [
    "stem", "status", "error", "artifact_fraction", "region_count", "height", "width", "min_area", "notes",
    "input_path", "input_sha256", "mse_model", "gan_model", "mse_model_sha256", "gan_model_sha256",
    "segmenter", "config_hash", "sr_seconds", "detect_seconds", "cached", "computed", "run_id",
    *TIMELINE_COLUMNS,
]
REGION_COLUMNS = ["region_id", "x", "y", "w", "h", "area", "classes", "mean_adjusted"]


def _publish(src: str, dst: Path) -> None:
    """Publish a store file under a stable name: an atomic copy (never a hard link, so that editing the
    published file in place cannot change the store entry that later runs trust; an object store would copy
    too). The copy shares the store file's cached pixels (:func:`desra.pipeline.pixels.alias`)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    pixels.alias(src, dst)


_INTS = {"region_count", "height", "width", "min_area", "region_id", "x", "y", "w", "h", "area"}
_FLOATS = {"artifact_fraction", "sr_seconds", "detect_seconds", "mean_adjusted"}
_BOOLS = {"cached"}
_TIMES = set(TIMELINE_COLUMNS)


def frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows as a frame with the report's dtypes (nullable ``Int64`` counts, ``float64`` numbers)."""
    frame = pd.DataFrame(rows, columns=columns)
    for col in columns:
        if col in _INTS:
            frame[col] = frame[col].astype("Int64")
        elif col in _FLOATS:
            frame[col] = frame[col].astype("float64")
        elif col in _TIMES:
            frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


@functools.cache
def _schema(columns: tuple[str, ...]) -> pa.Schema:
    """One Arrow schema per report kind, whatever the rows hold: every file of ``reports/`` (and of
    ``runs/``) has the same column types, so the folder reads as one dataset, and a column that is empty
    in one file (e.g. ``error``) is still a string column. Carries pandas' metadata, so pandas reads
    counts back as ``Int64``."""
    now = pd.Timestamp("2026-01-01", tz="UTC")
    sample = {c: (1 if c in _INTS else 0.5 if c in _FLOATS else True if c in _BOOLS else now if c in _TIMES
                  else "x") for c in columns}
    return pa.Schema.from_pandas(frame([sample], list(columns)), preserve_index=False)


def _write_parquet(rows: list[dict[str, Any]], columns: list[str], path: Path) -> None:
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows], schema=_schema(tuple(columns)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _marker(output_dir: str, stem: str) -> Path:
    return Path(output_dir) / ".desra" / "published" / f"{stem}.json"


def _marker_key(stem: str) -> str:
    return f".desra/published/{stem}.json"


def is_published(output_dir: str, stem: str, keys: Mapping[str, object], remote: Bucket | None = None) -> bool:
    """True when ``stem``'s outputs and report were published from exactly these store keys (with ``remote``,
    in that bucket, whatever this worker's local copy says: another worker may have published it since)."""
    if remote is not None:
        try:
            return bool(json.loads(remote.read(_marker_key(stem))) == keys)
        except MissingObjectError:
            return False
        except ValueError:  # not a record of this module: publish again
            return False
    marker = _marker(output_dir, stem)
    return marker.is_file() and json.loads(marker.read_text()) == keys



def publish_image(row: dict[str, Any], files: dict[str, str], regions: list[dict[str, Any]], output_dir: str,
                  keys: Mapping[str, object] | None = None, remote: Bucket | None = None, *,
                  refer: Callable[[str, str, str], None] | None = None) -> dict[str, Any]:
    """Copy the image's store entries to ``masks/``, ``pseudo_gt/``, ``sr/…``, ``labels/`` and write
    ``reports/<stem>.parquet``. ``files`` maps a folder (e.g. ``"masks"``, ``"sr/mse"``) to a store path.
    ``keys`` (the store keys it came from) are recorded last, so a later run can skip an image whose
    published outputs are current.

    With ``remote`` (the output root's bucket; ``output_dir`` is this worker's copy of it), each file is also
    written to the bucket under the same name, each object whole, then ``refer(folder, object key, sha256)``
    records it as its store entry's bytes, and the publication record goes last (or, for a failed image, is
    removed first), so no lister sees a record whose outputs are not all there."""
    out = Path(output_dir)
    stem = row["stem"]
    if remote is not None and keys is None:
        remote.delete(_marker_key(stem))
    for folder, src in files.items():
        _publish(src, out / folder / f"{stem}.png")
        if remote is not None:
            data = (out / folder / f"{stem}.png").read_bytes()
            obj = f"{folder}/{stem}.png"
            remote.write(obj, data)
            if refer is not None:
                refer(folder, obj, hashlib.sha256(data).hexdigest())
    image = {k: row.get(k) for k in IMAGE_COLUMNS}
    rows = [{**image, "region_id": r["id"], **{k: r[k] for k in REGION_COLUMNS[1:]}} for r in regions]
    report = out / "reports" / f"{stem}.parquet"
    _write_parquet(rows or [image], IMAGE_COLUMNS + REGION_COLUMNS, report)
    if remote is not None:
        remote.write(f"reports/{stem}.parquet", report.read_bytes())
    marker = _marker(output_dir, stem)
    if keys is None:
        marker.unlink(missing_ok=True)
    else:
        record = json.dumps(keys, sort_keys=True).encode()
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(marker, record)
        if remote is not None:
            remote.write(_marker_key(stem), record)
    return row


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def batch_rows_key(run_id: str, batch: str) -> str:
    """Where a batch's rows go; ConfigError for names that could leave ``.desra/batches``."""
    for what, value in (("run_id", run_id), ("batch", batch)):
        if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
            raise ConfigError(f"expected {what} of letters, digits, '.', '_' and '-' (at most 128), got {value!r}")
    return f".desra/batches/{run_id}/{batch}.parquet"


def write_batch_rows(rows: list[dict[str, Any]], output_dir: str, run_id: str, batch: str,
                     remote: Bucket | None = None) -> None:
    """One batch's image rows (``.desra/batches/<run_id>/<batch>.parquet``, also in ``remote``), for the run that
    split its drop into batches (:func:`read_batch_rows`): an image taken whole from the store publishes no new
    report, so its report still names the run that computed it."""
    key = batch_rows_key(run_id, batch)
    path = Path(output_dir) / key
    _write_parquet(rows, IMAGE_COLUMNS, path)
    if remote is not None:
        remote.write(key, path.read_bytes())


def read_batch_rows(output_dir: str, run_id: str, remote: Bucket | None = None) -> dict[str, dict[str, Any]]:
    """The image rows that the batches of run ``run_id`` wrote (:func:`write_batch_rows`), by stem."""
    prefix = batch_rows_key(run_id, "x").rsplit("/", 1)[0]
    if remote is not None:
        blobs = [remote.read(info.key) for info in remote.list(prefix) if info.key.endswith(".parquet")]
    else:
        blobs = [p.read_bytes() for p in sorted((Path(output_dir) / prefix).glob("*.parquet"))]
    rows: dict[str, dict[str, Any]] = {}
    for blob in blobs:
        for record in pd.read_parquet(io.BytesIO(blob)).to_dict("records"):
            rows[str(record["stem"])] = {k: None if k not in record or _missing(record[k]) else record[k]
                                         for k in IMAGE_COLUMNS}
    return rows


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # not a scalar
        return False


def review_fragments(output_dir: str) -> Path:
    """Where each image's encoded review pictures are kept (prepared as the image is published)."""
    return Path(output_dir) / ".desra" / "review"


def _read_through(read: Callable[[Path], Any], output_dir: str, remote: Bucket) -> Callable[[Path], Any]:
    """``read`` of a file of the local copy ``output_dir``, fetched first from ``remote`` (the same key) when this
    copy lacks it: a scaled-out run's page shows the images that other workers published."""
    root = Path(output_dir)

    def reader(path: Path) -> Any:
        path = Path(path)
        if not path.is_file():
            try:
                key = path.relative_to(root).as_posix()
            except ValueError:  # not an output of this root (e.g. a given SR result): read as it is
                return read(path)
            with contextlib.suppress(MissingObjectError, ConfigError):  # then the page says what is missing
                remote.download(key, path)
        return read(path)

    return reader


def write_run_files(rows: list[dict[str, Any]], output_dir: str, run_id: str, *, title: str,
                    run_numbers: dict[str, Any] | None = None,
                    remote: Bucket | None = None) -> tuple[Path | str, Path | str]:
    """``runs/<run_id>.parquet`` (one row per image) and ``report.html`` (the review page, worst first).

    Returns the Parquet path and the page's path, or, when the page could not be written (e.g. a full
    disk), the reason: the reports are written by then, and the page is only a view of them. With
    ``remote`` (``output_dir`` being this worker's copy of a bucket output root) both are written to the
    bucket too, the page's pictures first; the Parquet report is then returned as its URL, and the page as
    the local copy that was uploaded."""
    path = Path(output_dir) / "runs" / f"{run_id}.parquet"
    _write_parquet(rows, IMAGE_COLUMNS, path)
    runs: Path | str = path
    if remote is not None:
        remote.write(f"runs/{run_id}.parquet", path.read_bytes())
        runs = remote.url_of(f"runs/{run_id}.parquet")
    read_pixels: Callable[[Path], Any] = pixels.read_pixels
    read_mask: Callable[[Path], Any] = pixels.read_mask
    if remote is not None:  # images that other workers published are in the bucket, not in this local copy
        read_pixels, read_mask = (_read_through(read, output_dir, remote) for read in (read_pixels, read_mask))
    try:
        page = write_review_page(rows, output_dir, title=title, fragments=review_fragments(output_dir),
                                 read_pixels=read_pixels, read_mask_file=read_mask, run_numbers=run_numbers or {})
    except OSError as e:
        return runs, f"{type(e).__name__}: {e}"
    if remote is None:
        return runs, page
    pictures = Path(output_dir) / PICTURE_FOLDER
    known = {info.key for info in remote.list(PICTURE_FOLDER)}
    for picture in sorted(pictures.rglob("*")) if pictures.is_dir() else []:  # report-files/<2 hex>/<digest>.jpg
        name = f"{PICTURE_FOLDER}/{picture.relative_to(pictures).as_posix()}"  # named by their content: one
        if picture.is_file() and not picture.name.startswith(".") and name not in known:  # already there is it
            remote.write(name, picture.read_bytes())
    for page_file in sorted(Path(page).parent.glob("report*.html")):
        remote.write(page_file.name, page_file.read_bytes())
    return runs, page
