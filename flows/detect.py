"""Flow ``detect``: DeSRA detection only, on folders of existing MSE-SR and GAN-SR results.

The same outputs as ``desra detect`` (``masks/``, ``pseudo_gt/``, ``reports/``, ``runs/``), with
content caching: pairs whose files and settings did not change are not detected again.
"""

import time
from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Completed, Failed
from pydantic import Field

from flows.batch import detection_config, state_error
from tasks.detect import build_pseudo_gts, detect_image
from tasks.drop import match_labels, scan_drop
from tasks.report import publish_batch, write_run_report

__all__ = ["detect"]


@flow(name="detect", flow_run_name="detect {gan_dir}", validate_parameters=True)
def detect(
    mse_dir: str,
    gan_dir: str,
    output_dir: str,
    labels_dir: str | None = None,
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7,
    min_area: Annotated[int, Field(ge=0)] = 4000,
    min_area_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None,
    feather: Annotated[float, Field(ge=0.0)] = 0.0,
):
    """Detect artifacts for every stem of ``gan_dir`` against the same stem in ``mse_dir``."""
    config = detection_config(threshold, min_area, min_area_fraction)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{str(runtime_flow_run.id or 'local')[:8]}"
    gans = scan_drop(gan_dir)
    mses = {i["stem"]: i for i in scan_drop(mse_dir, [g["stem"] for g in gans])}
    labels = {r["stem"]: r for r in match_labels(gans, labels_dir)} if labels_dir else {}
    rows, detected, publishing = [], [], []
    for g in gans:
        stem, m, lab = g["stem"], mses[g["stem"]], labels.get(g["stem"])
        gan = {"key": f"file:{g['sha256']}", "path": g["path"], "error": g["error"]}
        mse = {"key": f"file:{m['sha256']}", "path": m["path"], "error": m["error"]}
        upstream = g["error"] or m["error"] or (lab or {}).get("error")
        row = {"stem": stem, "input_path": g["path"], "input_sha256": g["sha256"], "run_id": run_id,
               "status": "failed", "cached": False}
        state = detect_image(stem, mse, gan, lab, config, output_dir, upstream_error=upstream, return_state=True)
        if state.is_completed():
            detected.append((row, state.result(), mse, gan))
        else:
            row["error"] = upstream or state_error(state)
            publishing.append({"row": row, "files": {}, "regions": [], "keys": None})
        rows.append(row)
    pseudo = build_pseudo_gts([{"stem": r["stem"], "mse": m, "gan": g, "detection": d} for r, d, m, g in detected],
                              feather, output_dir, len(detected))
    for row, det, _, _ in detected:
        made = pseudo[row["stem"]]
        if made["error"] is not None:
            row["error"] = made["error"]
            publishing.append({"row": row, "files": {}, "regions": [], "keys": None})
            continue
        row.update({k: det[k] for k in ("artifact_fraction", "region_count", "height", "width", "min_area",
                                        "notes", "detect_seconds")}, status="ok", error=None, cached=det["cached"])
        publishing.append({"row": row, "files": {"masks": det["mask_path"], "pseudo_gt": made["path"]},
                           "regions": det["regions"], "keys": None})
    publish_batch(publishing, output_dir, len(publishing))
    write_run_report(rows, output_dir, run_id)
    failed = [r for r in rows if r["status"] != "ok"]
    message = f"{len(rows) - len(failed)} ok, {len(failed)} failed of {len(rows)} image(s)"
    return Failed(message=message) if failed else Completed(message=message)
