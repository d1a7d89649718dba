"""The streaming scheduler (:mod:`desra.pipeline.stream`): no barrier between images, model calls alone on the
device thread, earliest image first, one failing image failing alone, a bounded number of images in flight.

Everything runs :func:`~desra.pipeline.stream.process_images` directly (no Prefect) with tiny real SR models
saved in ``tmp_path`` and loaded through :class:`~desra.pipeline.models.Models`, as the entry points do.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import desra.pipeline.models
import desra.pipeline.pixels
import desra.pipeline.steps
from desra.pipeline.drop import drop_items
from desra.pipeline.models import Models
from desra.pipeline.report import STEPS, write_run_files
from desra.pipeline.settings import Settings
from desra.pipeline.steps import ImageJob, Run
from desra.pipeline.stream import Device, process_images
from tests.core.models.test_sr import save_tiny_pair
from tests.flows.conftest import write_lr

DEVICE_THREAD = "desra-device"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    return save_tiny_pair(tmp_path_factory.mktemp("models"))


@pytest.fixture
def slow_sr(monkeypatch):
    """Every SR model call sleeps ``delay[0]`` seconds first, so that the device is the bottleneck."""
    delay = [0.15]
    real = desra.pipeline.models.upscale

    def upscale(*a, **k):
        time.sleep(delay[0])
        return real(*a, **k)

    monkeypatch.setattr(desra.pipeline.models, "upscale", upscale)
    return delay


def _drop(folder: Path, n: int) -> Path:
    for i in range(n):
        write_lr(folder / f"img{i}.png", i)
    return folder


def _run(drop: Path, out: Path, models: tuple[str, str], run_id: str, *, segmenter: str | None = None,
         threshold: float = 0.7, **kwargs) -> tuple[list[dict], pd.DataFrame]:
    """``process_images`` over the drop, then the run files as every entry point writes them."""
    settings = Settings.from_options(mse_model=models[0], gan_model=models[1], segmenter=segmenter,
                                     threshold=threshold, min_area=10, device="cpu")
    run = Run(settings=settings, output_dir=str(out), run_id=run_id, models=Models(settings))
    rows = process_images(drop_items(str(drop)), run, **kwargs)
    path, _ = write_run_files(rows, str(out), run_id, title=run_id)
    return rows, pd.read_parquet(path).set_index("stem")


def test_no_barrier_between_images_and_the_timeline_says_what_was_computed(tmp_path, models, slow_sr):
    drop, out = _drop(tmp_path / "drop", 6), tmp_path / "out"
    _, first = _run(drop, out, models, "first", workers=2)
    assert (first["status"] == "ok").all(), first["error"].tolist()
    timeline = [f"{s}_{edge}" for s in STEPS if s != "segment" for edge in ("started_at", "finished_at")]
    assert first[timeline].notna().all().all()  # every step computed, each with its times
    assert first["segment_started_at"].isna().all()  # no segmenter in this run
    for step in ("sr_mse", "sr_gan", "detect", "pseudo_gt", "publish"):
        assert (first[f"{step}_started_at"] <= first[f"{step}_finished_at"]).all(), step
    assert (first["sr_gan_finished_at"] <= first["detect_started_at"]).all()  # each image's own order
    # Streaming: some image was detected before another image's GAN pass had even started (a batch-
    # synchronous flow runs every SR pass of the batch before the first detection).
    assert first["detect_finished_at"].min() < first["sr_gan_started_at"].max(), first[
        ["sr_gan_started_at", "detect_finished_at"]]

    # Same settings: every image comes from the store, no step ran, no time is recorded.
    _, again = _run(drop, out, models, "again", workers=2)
    assert again["cached"].all() and (again["computed"] == "").all()
    assert again[[f"{s}_{e}" for s in STEPS for e in ("started_at", "finished_at")]].isna().all().all()

    # A new threshold: SR comes from the store (null SR times), detection and what follows are computed.
    _, changed = _run(drop, out, models, "changed", threshold=0.5, workers=2)
    assert (changed["status"] == "ok").all() and (changed["computed"] == "detect,pseudo_gt").all()
    assert changed[["sr_mse_started_at", "sr_mse_finished_at", "sr_gan_started_at",
                    "sr_gan_finished_at"]].isna().all().all()
    assert changed[["detect_started_at", "detect_finished_at", "publish_finished_at"]].notna().all().all()


def test_the_device_thread_only_runs_model_calls(tmp_path, models, monkeypatch):
    from tests.core.models.test_segmentation import ADE, _save_tiny

    segmenter = str(_save_tiny(tmp_path / "segformer", ADE))
    threads: dict[str, set[str]] = {}
    lock = threading.Lock()

    def recording(kind: str, fn):
        def wrapper(*a, **k):
            with lock:
                threads.setdefault(kind, set()).add(threading.current_thread().name)
            return fn(*a, **k)
        return wrapper

    # CPU work, wherever it is called from: decoding, encoding, detection, pseudo-GT, publishing.
    for module, name in ((desra.pipeline.steps, "read_image_bytes"), (desra.pipeline.steps, "write_image"),
                         (desra.pipeline.steps, "detect_artifacts"), (desra.pipeline.steps, "build_pseudo_gt"),
                         (desra.pipeline.steps, "publish_image"), (desra.pipeline.pixels, "write_image"),
                         (desra.pipeline.pixels, "write_mask"), (desra.pipeline.pixels, "read_pixels")):
        monkeypatch.setattr(module, name, recording(f"cpu:{name}", getattr(module, name)))
    for name in ("read", "store_sr", "store_labels", "detect", "pseudo_gt", "publish", "load_sr"):
        monkeypatch.setattr(ImageJob, name, recording(f"step:{name}", getattr(ImageJob, name)))
    # Model calls.
    monkeypatch.setattr(Models, "super_resolve", recording("model:sr", Models.super_resolve))
    monkeypatch.setattr(Models, "segment", recording("model:segment", Models.segment))

    drop, out = _drop(tmp_path / "drop", 4), tmp_path / "out"
    _, run = _run(drop, out, models, "run", segmenter=segmenter, workers=2)
    assert (run["status"] == "ok").all(), run["error"].tolist()
    assert (run["computed"] == "sr/mse,sr/gan,labels,detect,pseudo_gt").all()
    assert {"cpu:read_image_bytes", "cpu:detect_artifacts", "cpu:build_pseudo_gt", "cpu:publish_image",
            "cpu:write_mask", "step:store_labels", "model:sr", "model:segment"} <= set(threads)
    assert threads["model:sr"] == threads["model:segment"] == {DEVICE_THREAD}
    on_device = sorted(kind for kind, names in threads.items() if not kind.startswith("model:")
                       and DEVICE_THREAD in names)
    assert not on_device, f"CPU work ran on the device thread: {on_device}"


def test_device_runs_calls_earliest_image_first():
    device = Device()
    release, started = threading.Event(), threading.Event()
    ran: list[object] = []

    def blocker():
        started.set()
        release.wait(10)
        ran.append("first")

    try:
        first = device.submit(100, blocker)
        assert started.wait(10)
        futures = [device.submit(order, lambda order=order: ran.append(order) or order) for order in (5, 3, 9, 1, 3)]
        release.set()
        assert [f.result(10) for f in futures] == [5, 3, 9, 1, 3]
        first.result(10)
    finally:
        device.close()
    assert ran == ["first", 1, 3, 3, 5, 9]  # queued while busy: lowest order first, ties in submission order
    assert device.calls == 6


def test_a_failing_image_fails_alone(tmp_path, models, monkeypatch):
    drop, out = _drop(tmp_path / "drop", 4), tmp_path / "out"
    (drop / "corrupt.png").write_bytes(b"not an image")
    write_lr(drop / "model_fails.png", 7, size=24)
    real = desra.pipeline.models.upscale

    def upscale(model, lr, **k):  # a model call that fails for one image only (its own size)
        if lr.shape[:2] == (24, 24):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(model, lr, **k)

    monkeypatch.setattr(desra.pipeline.models, "upscale", upscale)
    rows, run = _run(drop, out, models, "run", workers=2)
    assert [r["stem"] for r in rows] == sorted(["corrupt", "img0", "img1", "img2", "img3", "model_fails"])
    assert (run.drop(index=["corrupt", "model_fails"])["status"] == "ok").all()
    for stem in ("corrupt", "model_fails"):
        assert run.loc[stem, "status"] == "failed"
        assert str(drop / f"{stem}.png") in run.loc[stem, "error"], run.loc[stem, "error"]
        assert pd.read_parquet(out / "reports" / f"{stem}.parquet")["status"].eq("failed").all()
        assert not (out / "masks" / f"{stem}.png").exists()
    assert "illegal memory access" in run.loc["model_fails", "error"]
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == ["img0", "img1", "img2", "img3"]


@pytest.mark.parametrize(("workers", "lookahead"), [(1, 2), (2, 1)])
def test_images_in_flight_are_bounded(tmp_path, models, slow_sr, monkeypatch, workers, lookahead):
    slow_sr[0] = 0.05
    live, peak = [0], [0]
    lock = threading.Lock()
    real_load, real_done = ImageJob.load, ImageJob.done_with_lr

    def load(self):  # an input's bytes (then its pixels) are in memory from here…
        result = real_load(self)
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        return result

    def done_with_lr(self):  # …to here
        with lock:
            live[0] -= 1
        real_done(self)

    monkeypatch.setattr(ImageJob, "load", load)
    monkeypatch.setattr(ImageJob, "done_with_lr", done_with_lr)
    drop, out = _drop(tmp_path / "drop", 10), tmp_path / "out"
    rows, _ = _run(drop, out, models, "run", workers=workers, lookahead=lookahead)
    assert all(r["status"] == "ok" for r in rows) and live[0] == 0
    assert 2 <= peak[0] <= workers + lookahead, peak[0]  # several at once, never more than the bound
