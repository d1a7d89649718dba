"""Flow ``desra-batch``: the whole DeSRA pipeline for one batch of a drop's images.

MSE-SR and GAN-SR inference (a batch per task, holding the ``gpu`` slot), segmentation of the GAN
results or precomputed label maps, then per image: detection, pseudo-GT and publishing. Every step is
cached by content in the output root's store. One image that fails fails its own ``detect`` task and
becomes a report row with its error; the others go on. The ``desra`` flow runs this flow as a subflow
for each batch, or, for a large drop under a deployment, as separate runs of the ``desra-batch``
deployment that any worker of the pool can pick up.
"""

import hashlib
import json
import re
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from desra_core import DesraError, DetectionConfig
from desra_core.models.segmentation import DEFAULT_SEGMENTER
from tasks.detect import build_pseudo_gts, detect_image, detect_key, pseudo_gt_key
from tasks.drop import match_labels, scan_drop
from tasks.models import segment_batch, super_resolve_batch
from tasks.preflight import admit
from tasks.progress import Progress
from tasks.report import is_published, publish_batch
from tasks.store import Store

__all__ = ["desra_batch", "detection_config", "process_batch", "state_error"]

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def detection_config(threshold: float, min_area: int, min_area_fraction: float | None) -> dict:
    """Validated :class:`DetectionConfig` fields as a JSON-able dict (raises ConfigError)."""
    cfg = DetectionConfig(threshold=threshold, min_area=min_area, min_area_fraction=min_area_fraction)
    return {k: v for k, v in cfg.to_dict().items() if k != "class_table_k"}


def _config_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _first_error(*records: dict | None) -> str | None:
    return next((r["error"] for r in records if r is not None and r.get("error")), None)


@flow(name="desra-batch", flow_run_name="desra-batch {input_dir} ({run_id})", validate_parameters=True,
      task_runner=ThreadPoolTaskRunner(max_workers=4))
def desra_batch(
    input_dir: str,
    output_dir: str,
    stems: list[str] | None = None,
    mse_model: str = "realesrnet_x4plus",
    gan_model: str = "realesrgan_x4plus",
    segmenter: str | None = DEFAULT_SEGMENTER,
    labels_dir: str | None = None,
    threshold: Fraction = 0.7,
    min_area: Annotated[int, Field(ge=0)] = 4000,
    min_area_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None,
    tile: Annotated[int, Field(ge=16)] = 512,
    overlap: Annotated[int, Field(ge=0)] = 32,
    feather: Annotated[float, Field(ge=0.0)] = 0.0,
    device: str = "auto",
    run_id: str = "adhoc",
) -> list[dict]:
    """Process ``stems`` of ``input_dir`` (all images when ``None``); returns one row per image.

    Refused (a ``Failed`` state, nothing read or created) when a path lies outside the allowed roots
    (``DESRA_ALLOWED_ROOTS``, or the folders the deployment was registered with), or when the device,
    the models, the segmenter or the output root do not pass the preflight checks."""
    segmenter, labels_dir = segmenter or None, labels_dir or None
    refused = admit(input_dir=input_dir, output_dir=output_dir, labels_dir=labels_dir, mse_model=mse_model,
                    gan_model=gan_model, segmenter=segmenter, device=device)
    if refused is not None:
        return refused
    return process_batch(input_dir, output_dir, stems, mse_model, gan_model, segmenter, labels_dir, threshold,
                         min_area, min_area_fraction, tile, overlap, feather, device, run_id)


def process_batch(input_dir: str, output_dir: str, stems: list[str] | None, mse_model: str, gan_model: str,
                  segmenter: str | None, labels_dir: str | None, threshold: float, min_area: int,
                  min_area_fraction: float | None, tile: int, overlap: int, feather: float, device: str,
                  run_id: str) -> list[dict]:
    """The body of :func:`desra_batch`, callable inside any flow run (tasks run in that flow's runner)."""
    logger = get_run_logger()
    # An empty string means none: a deployment made with DESRA_SEGMENTER="" passes "" as its default.
    segmenter, labels_dir = segmenter or None, labels_dir or None
    config = detection_config(threshold, min_area, min_area_fraction)
    seg_id = None if labels_dir else segmenter
    config_hash = _config_hash({**config, "feather": feather, "tile": tile, "overlap": overlap,
                                "mse": mse_model, "gan": gan_model, "seg": seg_id, "labels": labels_dir})
    store = Store(output_dir)
    items = scan_drop(input_dir, stems)
    good = [i for i in items if i["error"] is None]
    progress = Progress(f"desra-batch: {len(items)} image(s)")

    mse_future = super_resolve_batch.submit(good, mse_model, "mse", output_dir, tile, overlap, device, len(good))
    gan_future = super_resolve_batch.submit(good, gan_model, "gan", output_dir, tile, overlap, device, len(good))
    mse_recs = {r["stem"]: r for r in mse_future.result()}
    gan_list = gan_future.result()
    gan_recs = {r["stem"]: r for r in gan_list}
    if labels_dir:
        label_recs = {r["stem"]: r for r in match_labels(good, labels_dir)}
    elif segmenter:
        label_recs = {r["stem"]: r for r in segment_batch(gan_list, segmenter, output_dir, device, len(gan_list))}
    else:
        label_recs = {}

    # Per image, a detect task (a bad image fails its own task); then one pseudo-GT task and one publish
    # task for the batch. Images whose published outputs already come from the current store keys need
    # no task at all.
    rows, pending = [], []
    for item in items:
        stem = item["stem"]
        mse, gan, labels = mse_recs.get(stem), gan_recs.get(stem), label_recs.get(stem)
        row = {"stem": stem, "input_path": item["path"], "input_sha256": item["sha256"], "mse_model": mse_model,
               "gan_model": gan_model, "segmenter": seg_id, "config_hash": config_hash, "run_id": run_id,
               "status": "failed", "cached": False, "computed": ""}
        if mse is not None:
            row.update(mse_model_sha256=mse["model_sha256"], gan_model_sha256=gan["model_sha256"],
                       sr_seconds=mse["seconds"] + gan["seconds"],
                       computed=_computed({"sr/mse": mse, "sr/gan": gan, "labels": None if labels_dir else labels}))
        upstream = item["error"] or _first_error(mse, gan, labels)
        keys = None
        if upstream is None:
            dkey = detect_key(mse, gan, labels, config)
            keys = {"detect": dkey, "pseudo_gt": pseudo_gt_key(mse, gan, dkey, feather), "mse": mse["key"],
                    "gan": gan["key"], "labels": None if labels is None else labels["key"]}
            record = store.read_json("detect", dkey)
            if record is not None and is_published(output_dir, stem, keys):
                rows.append(_ok_row(row, record, cached=True))
                continue
        det = detect_image.submit(stem, mse, gan, labels, config, output_dir, upstream_error=upstream)
        pending.append((row, det, mse, gan, labels, keys, upstream))

    detected, publishing = [], []
    for n, (row, det, mse, gan, labels, keys, upstream) in enumerate(pending, start=1):
        state = det.wait() or det.state
        if state.is_completed():
            detected.append((row, det.result(), mse, gan, labels, keys))
        else:
            row["error"] = _about_input(upstream or state_error(state), row["input_path"], mse or gan)
            logger.warning("%s failed: %s", row["stem"], row["error"])
            publishing.append({"row": row, "files": {}, "regions": [], "keys": None})
        rows.append(row)
        progress.update(90.0 * n / len(pending))
    pseudo = build_pseudo_gts([{"stem": r["stem"], "mse": m, "gan": g, "detection": d}
                               for r, d, m, g, _, _ in detected], feather, output_dir, len(detected))
    for row, record, mse, gan, labels, keys in detected:
        made = pseudo[row["stem"]]
        if made["error"] is not None:
            row["error"] = _about_input(made["error"], row["input_path"], mse)
            publishing.append({"row": row, "files": {}, "regions": [], "keys": None})
            continue
        files = {"masks": record["mask_path"], "pseudo_gt": made["path"], "sr/mse": mse["path"],
                 "sr/gan": gan["path"]}
        if labels is not None and not labels_dir:
            files["labels"] = labels["path"]
        row["computed"] = _computed({"sr/mse": mse, "sr/gan": gan, "labels": None if labels_dir else labels,
                                     "detect": record, "pseudo_gt": made})
        _ok_row(row, record, cached=not row["computed"])
        publishing.append({"row": row, "files": files, "regions": record["regions"], "keys": keys})
    if publishing:
        publish_batch(publishing, output_dir, len(publishing))
    progress.done()
    order = {item["stem"]: i for i, item in enumerate(items)}
    return sorted(rows, key=lambda r: order[r["stem"]])


def _about_input(error: str, path: str | None, sr: dict | None) -> str:
    """``error`` naming the input file and its own size (from the SR record's header read), when it does
    not already: a step after SR only sees the upscaled images, e.g. "expected images at least 11×11
    pixels (the window), got 4×4" for a 1×1 input."""
    size = None if sr is None or sr.get("input_width") is None else f"{sr['input_width']}×{sr['input_height']}"
    missing = [] if not path or path in error else [path]
    if size is not None and re.search(rf"(?<!\d){size}(?!\d)", error) is None:  # "1×1" is in "11×11"
        missing.append(f"{size} pixels")
    return f"{error} (input: {', '.join(missing)})" if missing else error


def _computed(steps: dict[str, dict | None]) -> str:
    """The steps this run computed for an image (the rest came from the store), e.g. ``"detect,pseudo_gt"``."""
    return ",".join(step for step, rec in steps.items() if rec is not None and not rec.get("cached", True))


def _ok_row(row: dict, record: dict, cached: bool) -> dict:
    row.update({k: record[k] for k in ("artifact_fraction", "region_count", "height", "width", "min_area",
                                       "notes", "detect_seconds")}, status="ok", error=None, cached=cached)
    return row


def state_error(state) -> str:
    try:
        state.result()
    except DesraError as e:
        return str(e)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return state.message or "failed"
