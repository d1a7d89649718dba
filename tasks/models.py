"""GPU-bound tasks: MSE-SR and GAN-SR inference and segmentation, a batch of images per task.

Each task holds one slot of the global concurrency limit ``gpu`` while it runs models, so two flows on
one machine never share a GPU by accident; models stay loaded in the worker process between tasks.
Records, never pixels, go back to the flow: ``{"stem", "key", "path", "error", "cached", "seconds"}``.
"""

import functools
import time
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from desra_core import DesraError, __version__
from desra_core.image import read_image, read_image_size, to_float32, write_image
from desra_core.models.sr import (
    SRModel,
    check_output_size,
    check_same_scale,
    load_sr_model,
    max_output_pixels,
    upscale,
)
from desra_core.models.weights import resolve_weights
from tasks import pixels
from tasks.claims import compute_missing
from tasks.roots import segmenter_path
from tasks.store import Store, file_sha256, step_key

__all__ = ["GPU_LIMIT", "check_models", "gpu_slot", "model_digest", "resolve_device", "segment_batch", "segmenter_id",
           "super_resolve_batch"]

GPU_LIMIT = "gpu"
SR_VERSION = f"sr-1/{__version__}"
SEG_VERSION = f"seg-1/{__version__}"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_digest(spec: str) -> tuple[Path, str]:
    """The weights file of a model spec (known name or path) and its sha256."""
    path = resolve_weights(spec)
    return path, file_sha256(path)


@functools.lru_cache(maxsize=4)
def _sr_model(path: str, digest: str, device: str) -> SRModel:  # digest: a changed file is a new entry
    return load_sr_model(path, device=device)


@functools.lru_cache(maxsize=2)
def _segmenter(spec: str, device: str):
    from desra_core.models.segmentation import load_segmenter

    return load_segmenter(spec, device=device)


def gpu_slot(device: str):
    # Only work on a GPU competes for the slot; strict=False lets a run without the limit proceed.
    import contextlib

    return concurrency(GPU_LIMIT, occupy=1, strict=False) if device.startswith("cuda") else contextlib.nullcontext()


def check_models(models: dict[str, tuple[Path, str]]) -> dict:
    """Load both SR models on the CPU, before any image is touched, and check that their scales agree.

    ``models``: role (``"mse"``, ``"gan"``) → ``(weights file, sha256)`` from :func:`model_digest`, so the
    files are hashed once per run. Raises :class:`~desra_core.ModelLoadError` naming the file for a
    truncated, non-SR or code-running checkpoint, or for two different scales. Returns each role's
    architecture and scale. (:func:`tasks.preflight.preflight` remembers a pair that passed.)"""
    loaded = {role: _sr_model(str(path), digest, "cpu") for role, (path, digest) in models.items()}
    check_same_scale(loaded["mse"], loaded["gan"])
    return {role: {"architecture": m.architecture, "scale": m.scale} for role, m in loaded.items()}


def segmenter_id(spec: str) -> str:
    """How a segmenter spec enters store keys: a hub id as it is; a local folder (also behind a
    ``backend:`` prefix) with the digest of its files, so that a changed checkpoint computes anew."""
    local = segmenter_path(spec)
    return spec if local is None or not Path(local).is_dir() else f"{spec}@{_folder_digest(local)}"


@task(name="super-resolve", cache_policy=NO_CACHE, persist_result=False, task_run_name="{role}-sr x{count}", retries=0)
def super_resolve_batch(items: list[dict], model: str, role: str, output_dir: str, tile: int, overlap: int,
                        device: str = "auto", count: int = 0) -> list[dict]:
    """Upscale each item's image (``{"stem", "path", "sha256"}``) with one model; cached by content.

    Each record carries the input's own size (``input_width``, ``input_height``, from its header) so that
    any later error about the image can name it. An image whose result would exceed
    ``DESRA_MAX_OUTPUT_MPIX`` megapixels is refused from its header, before any pixel is decoded: its
    record gets the error (file, input size, output size, limit) and the others go on. The result is
    written straight into ``uint8``/``uint16`` (the input's bit depth) as it is blended, so a pass needs
    about 3 or 6 bytes per output pixel plus tile-sized buffers (``benchmarks/sr_memory.py``)."""
    store, logger = Store(output_dir), get_run_logger()
    device = resolve_device(device)
    weights, digest = model_digest(model)
    limit = max_output_pixels()
    out, todo = [], []
    for item in items:
        key = step_key("sr", SR_VERSION, image=item["sha256"], model=digest, tile=tile, overlap=overlap)
        record = {"stem": item["stem"], "key": key, "path": str(store.path("sr", key, ".png")), "error": None,
                  "cached": store.has("sr", key, ".png"), "seconds": 0.0, "model": model, "model_sha256": digest,
                  "input_width": None, "input_height": None}
        out.append(record)
        try:  # the header only: cheap, and later messages can name the input's own size
            record["input_width"], record["input_height"] = read_image_size(item["path"])
        except DesraError as e:
            record.update(error=str(e), cached=False)
            continue
        if not record["cached"]:
            todo.append((item, record))
    if todo:
        with gpu_slot(device):
            sr = _sr_model(str(weights), digest, device)

            def work(job: tuple[dict, dict]) -> None:
                item, record = job
                start = time.perf_counter()
                try:
                    check_output_size(record["input_width"], record["input_height"], sr.scale, limit, item["path"])
                    image = read_image(item["path"])
                    result = upscale(sr, image.pixels, tile=tile, overlap=overlap,
                                     out_dtype=np.uint8 if image.bit_depth == 8 else np.uint16)
                    pixels.write_image(record["path"], result)
                except DesraError as e:
                    record["error"] = str(e)
                except Exception as e:  # reported per image; the batch goes on
                    record["error"] = f"{type(e).__name__}: {e} (file: {item['path']})"
                record["seconds"] = time.perf_counter() - start

            for _, record in compute_missing(store, "sr", ".png", todo, lambda job: job[1]["key"], work):
                record["cached"] = True
    logger.info("%s SR: %d image(s), %d from the store", role, len(items), sum(r["cached"] for r in out))
    return out


@task(name="segment", cache_policy=NO_CACHE, persist_result=False, task_run_name="segment x{count}")
def segment_batch(gan_records: list[dict], segmenter: str, output_dir: str, device: str = "auto",
                  count: int = 0) -> list[dict]:
    """ADE20K label maps of GAN-SR results (records from :func:`super_resolve_batch`); cached by content."""
    from desra_core.models.segmentation import segment

    store = Store(output_dir)
    device = resolve_device(device)
    spec_id = segmenter_id(segmenter)
    out, todo = [], []
    for rec in gan_records:
        key = step_key("segment", SEG_VERSION, image=rec["key"], segmenter=spec_id)
        record = {"stem": rec["stem"], "key": key, "path": str(store.path("segment", key, ".png")),
                  "error": rec["error"], "cached": store.has("segment", key, ".png"), "seconds": 0.0}
        out.append(record)
        if record["error"] is None and not record["cached"]:
            todo.append((rec, record))
    if todo:
        with gpu_slot(device):
            seg = _segmenter(segmenter, device)

            def work(job: tuple[dict, dict]) -> None:
                rec, record = job
                start = time.perf_counter()
                try:
                    write_image(record["path"], segment(seg, to_float32(pixels.read_pixels(rec["path"]))))
                except DesraError as e:
                    record["error"] = str(e)
                record["seconds"] = time.perf_counter() - start

            for _, record in compute_missing(store, "segment", ".png", todo, lambda job: job[1]["key"], work):
                record["cached"] = True
    return out


def _folder_digest(folder: str) -> str:
    """Digest of a local model folder's files (names, sizes, mtimes) so a changed checkpoint re-runs."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]
