"""The run report in the Prefect UI: ``runs/<run>.parquet`` and ``report.html`` (written by
:func:`desra.pipeline.report.write_run_files`, as every entry point does), a table artifact of the run's images
(failures and worst artifacts first) and a summary artifact that links to the review page.

The Prefect UI renders both artifacts as markdown (each table cell too), so every name, path and error in
them passes through :func:`desra.pipeline.text.inert`: a file name cannot add a line, a heading, a link or HTML."""

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from desra.pipeline.remote import bucket_of, read_through_limit, trim, work_root
from desra.pipeline.report import IMAGE_COLUMNS, frame, write_run_files
from desra.pipeline.text import inert

__all__ = ["write_run_report"]


@task(name="run-report", cache_policy=NO_CACHE, persist_result=False)
def write_run_report(rows: list[dict], output_dir: str, run_id: str, run_numbers: dict | None = None) -> str:
    """The run's Parquet report and review page, and its table and summary artifacts; returns the Parquet path."""
    remote = bucket_of(output_dir)
    path, page = write_run_files(rows, work_root(output_dir), run_id, title=f"desra run {run_id}",
                                 run_numbers=run_numbers, remote=remote)
    if remote is not None:  # the page may have fetched other workers' images into this worker's copy
        trim(work_root(output_dir), read_through_limit())
    table = frame(rows, IMAGE_COLUMNS)
    ranked = table.assign(_failed=table["status"] != "ok").sort_values(
        ["_failed", "artifact_fraction"], ascending=[False, False], na_position="last")
    create_table_artifact(
        table=[{"image": inert(r["stem"]), "status": inert(r["status"]),
                "artifact %": None if pd.isna(r["artifact_fraction"]) else round(100 * r["artifact_fraction"], 3),
                "regions": None if pd.isna(r["region_count"]) else int(r["region_count"]),
                "error": inert(r["error"]) if isinstance(r["error"], str) else ""}
               for r in ranked.to_dict("records")],
        key="desra-images", description="Images of this run, failures and worst artifacts first")
    ok = int((table["status"] == "ok").sum())
    failed = len(table) - ok
    flagged = int((table["region_count"].fillna(0) > 0).sum())
    lines = [f"# desra run {inert(run_id)}", "",
             f"* images: {len(table)} ({ok} ok, {failed} failed)",
             f"* with artifacts: {flagged}",
             f"* from the store (no model work): {int(table['cached'].fillna(False).sum())}",
             f"* output: {inert(output_dir if remote else Path(output_dir).resolve())} (`masks/`, `pseudo_gt/`, "
             "`sr/`, `reports/`)",
             f"* run report: {inert(path if isinstance(path, str) else path.resolve())}"]
    if isinstance(page, Path) and remote is not None:  # no link: the browser cannot open a bucket URL
        lines.append(f"* review page: {inert(remote.url_of(page.name))}")
    elif isinstance(page, Path):  # as_uri() percent-encodes every character that could end the link
        lines.append(f"* review page: [report.html]({page.resolve().as_uri()}) ({inert(page.resolve())})")
    else:  # e.g. a full disk: the reports above are written; the page is a view of them
        get_run_logger().warning("could not write the review page: %s", inert(page))
        lines.append(f"* review page: not written ({inert(page)})")
    if failed:
        lines += ["", "## Failed", ""] + [f"* {inert(r.stem)}: {inert(r.error)}" for r in ranked.itertuples()
                                          if r.status != "ok"]
    create_markdown_artifact("\n".join(lines), key="desra-summary", description="desra run summary")
    return str(path)
