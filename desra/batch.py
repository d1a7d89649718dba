"""Folder-level detection: pair images by stem, detect, write masks, pseudo-GT and a Parquet report.

Every image gets one report row; an image that cannot be processed gets a row with ``status ==
"failed"`` and the reason, and the others still run. Every file is written atomically, under the output
folder: stems come from :func:`desra_core.listing.list_image_entries`, so they are safe as file names, and
entries it refuses (a name that is not UTF-8, a symbolic link out of the folder, a directory…) become
failed rows. Paths in rows are printable text.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from desra_core import DesraError, DetectionConfig, InputImageError, build_pseudo_gt, detect_artifacts
from desra_core.image import (
    atomic_path,
    printable_path,
    read_image,
    read_label_map,
    to_float32,
    write_image,
)
from desra_core.listing import ImageEntry, list_image_entries

__all__ = ["REPORT_COLUMNS", "DetectJob", "pair_by_stem", "run_detect", "run_upscale", "write_report"]

REPORT_COLUMNS = [
    "stem", "status", "error", "height", "width", "artifact_fraction", "region_count", "min_area",
    "notes", "seconds", "mse_path", "gan_path", "labels_path", "mask_path", "pseudo_gt_path", "config",
]


@dataclass(frozen=True, kw_only=True)
class DetectJob:
    """One batch: where the inputs are, where outputs go, and how to detect."""

    mse_dir: Path
    gan_dir: Path
    out_dir: Path
    labels_dir: Path | None = None
    segmenter: object | None = None  # a desra_core.models.segmentation.Segmenter, when labels_dir is None
    config: DetectionConfig = field(default_factory=DetectionConfig)
    feather: float = 0.0


def pair_by_stem(*folders: Path | None) -> tuple[list[str], list[dict[str, ImageEntry]]]:
    """Image entries of each folder by stem; returns the sorted union of the first two folders' stems and
    one map per folder (entries may carry a ``problem``: see :func:`list_image_entries`)."""
    maps = [list_image_entries(f) if f is not None else {} for f in folders]
    stems = sorted(set().union(*(m.keys() for m in maps[:2])))
    return stems, maps


def _common_dtype(mse, gan) -> tuple[np.ndarray, np.ndarray]:
    """The two images in one dtype, keeping their precision (8-bit pairs stay uint8, 16-bit stay uint16)."""
    if mse.pixels.dtype == gan.pixels.dtype:
        return mse.pixels, gan.pixels
    return mse.to_float32(), gan.to_float32()


def _for_detector(image: np.ndarray) -> np.ndarray:
    """The detector takes uint8 or float32 in [0, 1]."""
    return image if image.dtype == np.uint8 else to_float32(image)


def _detect_one(stem: str, job: DetectJob, entries: dict[str, ImageEntry | None]) -> dict:
    mse_entry, gan_entry, labels_entry = entries["mse"], entries["gan"], entries["labels"]
    if mse_entry is None:
        raise DesraError(f"expected an MSE image with stem '{stem}' in {printable_path(job.mse_dir)}, found none")
    if gan_entry is None:
        raise DesraError(f"expected a GAN image with stem '{stem}' in {printable_path(job.gan_dir)}, found none")
    if job.labels_dir is not None and labels_entry is None:
        raise DesraError(f"expected a label map with stem '{stem}' in {printable_path(job.labels_dir)}, found none")
    for entry in (mse_entry, gan_entry, labels_entry):
        if entry is not None and entry.problem is not None:
            raise InputImageError(entry.problem)
    mse_path, gan_path = mse_entry.shown, gan_entry.shown
    labels_path = None if labels_entry is None else labels_entry.shown
    mse, gan = read_image(mse_entry.path), read_image(gan_entry.path)
    if mse.pixels.shape != gan.pixels.shape:
        raise DesraError(f"expected MSE and GAN images of one size, got {mse.width}×{mse.height} "
                         f"({mse_path}) and {gan.width}×{gan.height} ({gan_path})")
    labels = read_label_map(labels_entry.path) if labels_entry is not None else None
    mse_px, gan_px = _common_dtype(mse, gan)
    written_labels = None
    if labels is None and job.segmenter is not None:
        from desra_core.models.segmentation import segment

        labels = segment(job.segmenter, _for_detector(gan_px))
        written_labels = job.out_dir / "labels" / f"{stem}.png"
        write_image(written_labels, labels)
    try:
        detection = detect_artifacts(_for_detector(mse_px), _for_detector(gan_px), labels, job.config)
    except DesraError as e:  # name the files: the core only sees arrays
        raise type(e)(f"{e} (files: {mse_path}, {gan_path}" + (f", {labels_path})" if labels_path else ")")) from e
    mask_path = job.out_dir / "masks" / f"{stem}.png"
    pseudo_path = job.out_dir / "pseudo_gt" / f"{stem}.png"
    pseudo = build_pseudo_gt(gan_px, mse_px, detection.mask, feather=job.feather)
    write_image(mask_path, detection.mask)
    write_image(pseudo_path, pseudo)
    return {
        "height": mse.height, "width": mse.width,
        "artifact_fraction": detection.artifact_fraction, "region_count": len(detection.regions),
        "min_area": detection.min_area,
        "notes": "; ".join((*mse.notes, *gan.notes, *detection.notes)),
        "mask_path": str(mask_path), "pseudo_gt_path": str(pseudo_path),
        **({"labels_path": str(written_labels)} if written_labels is not None else {}),
    }


def run_detect(job: DetectJob, progress: Callable[[Iterable[str]], Iterable[str]] = iter) -> pd.DataFrame:
    """Detect artifacts for every stem found in the MSE or GAN folder; return the report rows.

    ``progress`` wraps the iteration over stems (e.g. a progress bar); it must yield the stems unchanged.
    """
    stems, (mse_map, gan_map, label_map) = pair_by_stem(job.mse_dir, job.gan_dir, job.labels_dir)
    segmenter = getattr(job.segmenter, "name", None)
    config_json = json.dumps({**job.config.to_dict(), "feather": job.feather, "segmenter": segmenter},
                             sort_keys=True)
    rows = []
    for stem in progress(stems):
        entries = {"mse": mse_map.get(stem), "gan": gan_map.get(stem), "labels": label_map.get(stem)}
        row = {"stem": stem, "config": config_json,
               **{f"{k}_path": (v.shown if v is not None else None) for k, v in entries.items()}}
        start = time.perf_counter()
        try:
            row.update(_detect_one(stem, job, entries), status="ok", error=None)
        except DesraError as e:
            row.update(status="failed", error=str(e))
        except Exception as e:  # a bug or an environment fault: report it with its type, keep going
            row.update(status="failed", error=f"{type(e).__name__}: {e} "
                                              f"[{traceback.extract_tb(e.__traceback__)[-1].name}]")
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return pd.DataFrame(rows, columns=REPORT_COLUMNS).astype(
        {"height": "Int64", "width": "Int64", "region_count": "Int64", "min_area": "Int64",
         "artifact_fraction": "float64"})


def write_report(report: pd.DataFrame, path: Path) -> None:
    """Write the report as Parquet, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        report.to_parquet(tmp, index=False)


def run_upscale(model, in_dir: Path, out_dir: Path, *, tile: int | None, overlap: int, batch_size: int,
                precision: str = "auto",
                progress: Callable[[Iterable[str]], Iterable[str]] = iter) -> list[dict]:
    """Upscale every image of ``in_dir`` into ``out_dir/<stem>.png`` at the input's bit depth.

    An image whose result would exceed ``DESRA_MAX_OUTPUT_MPIX`` megapixels is refused from its header,
    before any pixel is decoded; its row names the file, its size, the output size and the limit.
    Returns one record per image: ``stem``, ``status``, ``error``, ``notes``, ``seconds``, ``path``.
    """
    from desra_core.image import read_image_size
    from desra_core.models.sr import check_output_size, max_output_pixels, upscale

    limit = max_output_pixels()
    rows = []
    images = list_image_entries(in_dir)
    for stem in progress(images):
        start = time.perf_counter()
        row = {"stem": stem, "status": "ok", "error": None, "notes": "", "path": None}
        size = None  # the input's own size, once its header has been read
        try:
            if images[stem].problem is not None:
                raise InputImageError(images[stem].problem)
            width, height = size = read_image_size(images[stem].path)
            check_output_size(width, height, model.scale, limit, images[stem].shown)
            loaded = read_image(images[stem].path)
            result = upscale(model, loaded.pixels, tile=tile, overlap=overlap, batch_size=batch_size,
                             precision=precision, out_dtype=np.uint8 if loaded.bit_depth == 8 else np.uint16)
            path = out_dir / f"{stem}.png"
            write_image(path, result)
            row.update(notes="; ".join(loaded.notes), path=str(path))
        except DesraError as e:
            row.update(status="failed", error=str(e))
        except Exception as e:  # report with its type, keep going with the rest
            row.update(status="failed", error=f"{type(e).__name__}: {e} (file: {images[stem].shown})")
        shown_size = None if size is None else f"{size[0]}×{size[1]}"
        if row["error"] is not None and size is not None and not re.search(rf"(?<!\d){shown_size}(?!\d)", row["error"]):
            row["error"] += f" (input: {shown_size} pixels)"
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return rows
