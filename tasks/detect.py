"""CPU tasks: artifact detection and pseudo-GT building for one image, cached by content."""

import json
import time

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from desra_core import DesraError, DetectionConfig, __version__, build_pseudo_gt, detect_artifacts
from desra_core.image import read_label_map, to_float32
from tasks import pixels
from tasks.store import Store, step_key

__all__ = ["build_pseudo_gt_image", "build_pseudo_gts", "detect_image", "detect_key", "pseudo_gt_key"]

DETECT_VERSION = f"detect-1/{__version__}"
PSEUDO_VERSION = f"pseudo-1/{__version__}"


def _pair(mse_path: str, gan_path: str):
    """The MSE and GAN results' pixels as ``detect_artifacts`` takes them: both ``uint8``, else both ``float32``."""
    mse, gan = pixels.read_pixels(mse_path), pixels.read_pixels(gan_path)
    if mse.shape != gan.shape:
        raise DesraError(f"expected MSE and GAN results of one size, got {mse.shape[1]}×{mse.shape[0]} and "
                         f"{gan.shape[1]}×{gan.shape[0]} (files: {mse_path}, {gan_path})")
    if mse.dtype == gan.dtype == np.uint8:
        return mse, gan
    return to_float32(mse), to_float32(gan)


def detect_key(mse: dict, gan: dict, labels: dict | None, config: dict) -> str:
    """Store key of a detection: the SR results' keys, the label map's key and the settings."""
    return step_key("detect", DETECT_VERSION, mse=mse["key"], gan=gan["key"],
                    labels=None if labels is None else labels["key"], config=config)


def pseudo_gt_key(mse: dict, gan: dict, detection_key: str, feather: float) -> str:
    return step_key("pseudo_gt", PSEUDO_VERSION, mse=mse["key"], gan=gan["key"], mask=detection_key,
                    feather=feather)


@task(name="detect", cache_policy=NO_CACHE, persist_result=False, task_run_name="detect {stem}")
def detect_image(stem: str, mse: dict | None, gan: dict | None, labels: dict | None, config: dict, output_dir: str,
                 upstream_error: str | None = None) -> dict:
    """Detect artifacts in one MSE/GAN pair; returns the image-level record with its regions.

    ``mse``/``gan``/``labels`` are records ``{"key", "path"}`` of earlier steps (``labels`` may be
    ``None``: no semantic adjustment); ``config`` holds :class:`DetectionConfig` fields. An
    ``upstream_error`` (the image could not be read or super-resolved) fails this image's task.
    """
    if upstream_error:
        raise DesraError(upstream_error)
    store = Store(output_dir)
    key = detect_key(mse, gan, labels, config)
    with store.claim("detect", key, blocking=True):  # another run may be detecting this very image
        cached = store.read_json("detect", key)
        if cached is not None and store.has("detect", key, ".png"):
            return {**cached, "cached": True}
        start = time.perf_counter()
        mse_px, gan_px = _pair(mse["path"], gan["path"])
        label_map = None if labels is None else read_label_map(labels["path"])
        det = detect_artifacts(mse_px, gan_px, label_map, DetectionConfig(**config))
        mask_path = store.path("detect", key, ".png")
        pixels.write_mask(mask_path, det.mask)
        record = {
            "stem": stem, "key": key, "mask_path": str(mask_path), "height": int(det.mask.shape[0]),
            "width": int(det.mask.shape[1]), "artifact_fraction": det.artifact_fraction,
            "region_count": len(det.regions), "min_area": det.min_area, "notes": "; ".join(det.notes),
            "regions": [{"id": r.id, "x": r.bbox[0], "y": r.bbox[1], "w": r.bbox[2], "h": r.bbox[3],
                         "area": r.area, "mean_adjusted": r.mean_adjusted,
                         "classes": json.dumps([[c.index, c.name, round(c.fraction, 4)] for c in r.classes])}
                        for r in det.regions],
            "detect_seconds": time.perf_counter() - start,
        }
        store.write_json("detect", key, record)  # written last: the record marks the entry complete
    return {**record, "cached": False}


@task(name="pseudo-gt", cache_policy=NO_CACHE, persist_result=False, task_run_name="pseudo-gt x{count}")
def build_pseudo_gts(jobs: list[dict], feather: float, output_dir: str, count: int = 0) -> dict[str, dict]:
    """Pseudo-GT for a batch of detected images (``{"stem", "mse", "gan", "detection"}`` each);
    returns ``stem → {"key", "path", "cached", "error"}`` (a failure is reported per image)."""
    out = {}
    for job in jobs:
        try:
            out[job["stem"]] = {**build_pseudo_gt_image(job["mse"], job["gan"], job["detection"], feather,
                                                        output_dir), "error": None}
        except DesraError as e:
            out[job["stem"]] = {"key": None, "path": None, "cached": False, "error": str(e)}
        except OSError as e:  # e.g. a full disk: this image fails, the rest of the batch goes on
            out[job["stem"]] = {"key": None, "path": None, "cached": False, "error": f"{type(e).__name__}: {e}"}
    return out


def build_pseudo_gt_image(mse: dict, gan: dict, detection: dict, feather: float, output_dir: str) -> dict:
    """MSE pixels inside the mask, GAN pixels elsewhere; returns ``{"key", "path", "cached"}``."""
    store = Store(output_dir)
    key = pseudo_gt_key(mse, gan, detection["key"], feather)
    path = store.path("pseudo_gt", key, ".png")
    with store.claim("pseudo_gt", key, blocking=True):
        if path.is_file():
            return {"key": key, "path": str(path), "cached": True}
        mse_px, gan_px = _pair(mse["path"], gan["path"])
        mask = pixels.read_mask(detection["mask_path"])
        pixels.write_image(path, build_pseudo_gt(gan_px, mse_px, mask, feather=feather))
    return {"key": key, "path": str(path), "cached": False}
