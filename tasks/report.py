"""Publishing: the store's entries under stable names, per-image and run-level Parquet reports, and
the Prefect artifacts that show a run in the UI.

Layout under ``output_dir`` (the same as ``desra detect``, plus the SR results)::

    masks/<stem>.png  pseudo_gt/<stem>.png  sr/mse/<stem>.png  sr/gan/<stem>.png  labels/<stem>.png
    reports/<stem>.parquet      one row per artifact region (+ image-level columns), or one row
                                without a region when the image is clean or failed
    runs/<run>.parquet          one row per image of a run; read the folder as one dataset:
                                ``pandas.read_parquet(output_dir / "runs")``
"""

import functools
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run

from desra_core.image import atomic_path, atomic_write_bytes
from desra_core.listing import list_images
from desra_core.review import write_review_page
from tasks import pixels

__all__ = ["IMAGE_COLUMNS", "is_published", "publish_batch", "publish_image", "write_run_report"]

IMAGE_COLUMNS = [
    "stem", "status", "error", "artifact_fraction", "region_count", "height", "width", "min_area", "notes",
    "input_path", "input_sha256", "mse_model", "gan_model", "mse_model_sha256", "gan_model_sha256",
    "segmenter", "config_hash", "sr_seconds", "detect_seconds", "cached", "computed", "run_id",
]
REGION_COLUMNS = ["region_id", "x", "y", "w", "h", "area", "classes", "mean_adjusted"]


def _link(src: str, dst: Path) -> None:
    """Publish a store file under a stable name, atomically (hard link when possible, else copy)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


_INTS = {"region_count", "height", "width", "min_area", "region_id", "x", "y", "w", "h", "area"}
_FLOATS = {"artifact_fraction", "sr_seconds", "detect_seconds", "mean_adjusted"}
_BOOLS = {"cached"}


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Rows as a frame with the report's dtypes (nullable ``Int64`` counts, ``float64`` numbers)."""
    frame = pd.DataFrame(rows, columns=columns)
    for col in columns:
        if col in _INTS:
            frame[col] = frame[col].astype("Int64")
        elif col in _FLOATS:
            frame[col] = frame[col].astype("float64")
    return frame


@functools.cache
def _schema(columns: tuple[str, ...]) -> pa.Schema:
    """One Arrow schema per report kind, whatever the rows hold: every file of ``reports/`` (and of
    ``runs/``) has the same column types, so the folder reads as one dataset, and a column that is empty
    in one file (e.g. ``error``) is still a string column. Carries pandas' metadata, so pandas reads
    counts back as ``Int64``."""
    sample = {c: (1 if c in _INTS else 0.5 if c in _FLOATS else True if c in _BOOLS else "x") for c in columns}
    return pa.Schema.from_pandas(_frame([sample], list(columns)), preserve_index=False)


def _write_parquet(rows: list[dict], columns: list[str], path: Path) -> None:
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows], schema=_schema(tuple(columns)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _marker(output_dir: str, stem: str) -> Path:
    return Path(output_dir) / ".desra" / "published" / f"{stem}.json"


def is_published(output_dir: str, stem: str, keys: dict) -> bool:
    """True when ``stem``'s outputs and report were published from exactly these store keys."""
    marker = _marker(output_dir, stem)
    return marker.is_file() and json.loads(marker.read_text()) == keys


@task(name="publish", cache_policy=NO_CACHE, persist_result=False, task_run_name="publish x{count}")
def publish_batch(entries: list[dict], output_dir: str, count: int = 0) -> None:
    """:func:`publish_image` for each ``{"row", "files", "regions", "keys"}`` of a batch."""
    for e in entries:
        publish_image(e["row"], e["files"], e["regions"], output_dir, e["keys"])


def publish_image(row: dict, files: dict[str, str], regions: list[dict], output_dir: str,
                  keys: dict | None = None) -> dict:
    """Link the image's store entries to ``masks/``, ``pseudo_gt/``, ``sr/…``, ``labels/`` and write
    ``reports/<stem>.parquet``. ``files`` maps a folder (e.g. ``"masks"``, ``"sr/mse"``) to a store path.
    ``keys`` (the store keys it came from) are recorded last, so a later run can skip an image whose
    published outputs are current."""
    out = Path(output_dir)
    stem = row["stem"]
    for folder, src in files.items():
        _link(src, out / folder / f"{stem}.png")
    image = {k: row.get(k) for k in IMAGE_COLUMNS}
    rows = [{**image, "region_id": r["id"], **{k: r[k] for k in REGION_COLUMNS[1:]}} for r in regions]
    _write_parquet(rows or [image], IMAGE_COLUMNS + REGION_COLUMNS, out / "reports" / f"{stem}.parquet")
    marker = _marker(output_dir, stem)
    if keys is None:
        marker.unlink(missing_ok=True)
    else:
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(marker, json.dumps(keys, sort_keys=True).encode())
    return row


@task(name="run-report", cache_policy=NO_CACHE, persist_result=False)
def write_run_report(rows: list[dict], output_dir: str, run_id: str) -> str:
    """``runs/<run_id>.parquet`` (one row per image), ``report.html`` (a self-contained review page of the
    run's images, worst first), a table artifact (worst first) and a summary that links to the page.

    The page's threshold and input folder come from the calling flow run's parameters when there is one;
    for flow ``detect`` (parameters ``gan_dir`` and ``mse_dir``) the page shows the SR inputs themselves."""
    frame = _frame(rows, IMAGE_COLUMNS)
    path = Path(output_dir) / "runs" / f"{run_id}.parquet"
    _write_parquet(rows, IMAGE_COLUMNS, path)
    ranked = frame.assign(_failed=frame["status"] != "ok").sort_values(
        ["_failed", "artifact_fraction"], ascending=[False, False], na_position="last")
    create_table_artifact(
        table=[{"image": r.stem, "status": r.status, "artifact %": None if pd.isna(r.artifact_fraction)
                else round(100 * r.artifact_fraction, 3), "regions": None if pd.isna(r.region_count)
                else int(r.region_count), "error": r.error or ""} for r in ranked.itertuples()],
        key="desra-images", description="Images of this run, failures and worst artifacts first")
    ok = int((frame["status"] == "ok").sum())
    failed = len(frame) - ok
    flagged = int((frame["region_count"].fillna(0) > 0).sum())
    lines = [f"# desra run `{run_id}`", "",
             f"* images: {len(frame)} ({ok} ok, {failed} failed)",
             f"* with artifacts: {flagged}",
             f"* from the store (no model work): {int(frame['cached'].fillna(False).sum())}",
             f"* output: `{Path(output_dir).resolve()}` (`masks/`, `pseudo_gt/`, `sr/`, `reports/`)",
             f"* run report: `{path.resolve()}`"]
    params = runtime_flow_run.parameters or {}
    page_rows = rows
    if params.get("gan_dir") and params.get("mse_dir"):  # flow ``detect``: no sr/ folders, the inputs are the SR
        mse_files = list_images(params["mse_dir"])
        page_rows = [{**r, "gan_path": r.get("input_path"), "mse_path": mse_files.get(r["stem"])} for r in rows]
    try:
        page = write_review_page(
            page_rows, output_dir, title=f"desra run {run_id}", fragments=Path(output_dir) / ".desra" / "review",
            read_pixels=pixels.read_pixels, read_mask_file=pixels.read_mask,
            run_numbers={"Threshold": params.get("threshold"),
                         "Input folder": params.get("input_dir") or params.get("gan_dir")})
        lines.append(f"* review page: [report.html]({page.resolve().as_uri()}) (`{page.resolve()}`)")
    except OSError as e:  # e.g. a full disk: the reports above are written; the page is a view of them
        get_run_logger().warning("could not write the review page: %s", e)
        lines.append(f"* review page: not written ({type(e).__name__}: {e})")
    if failed:
        lines += ["", "## Failed", ""] + [f"* `{r.stem}`: {r.error}" for r in ranked.itertuples() if r.status != "ok"]
    create_markdown_artifact("\n".join(lines), key="desra-summary", description="desra run summary")
    return str(path)
