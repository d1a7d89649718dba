"""Throughput of the streaming pipeline against today's batch-synchronous order, same steps, same process.

    python benchmarks/pipeline_throughput.py [--images 24] [--size 512] [--g 0.5] [--workers N] [--real]

**Inputs: real photos.** ``--images`` distinct ``--size``×``--size`` RGB crops, written as PNG into a
temporary folder at run time (nothing is copied into the repository). They are cut from the ``gan.png`` of the
parity cases in ``../shared/parity`` (or ``$DESRA_SHARED/parity``; real photos from the scikit-image/scikit-
learn samples, upscaled ×4 by Real-ESRGAN; the ``*_injected`` cases are left out), cases in name order: first
the top-left crop of every case, then the bottom-right one, then top-right, bottom-left and centre, so 24
crops of 512² are the top-left and bottom-right crops of 12 photos' crops. A photo smaller than ``--size`` is
first enlarged with cubic interpolation (its label map with nearest neighbour).

**Simulated device (default).** The models object has the interface the steps use from
:class:`desra.pipeline.models.Models` (``digests``, ``segmenter_key``, ``device``, ``scale``,
``super_resolve(role, lr)``, ``segment(gan)``). Each call sleeps ``--g`` seconds, which holds the
simulated device without using the CPU, and returns a result prepared before timing starts: MSE is a
cubic ×4 upscale of the input softened by a Gaussian blur (sigma 0.7), GAN the same upscale sharpened
(unsharp mask) with one oriented high-frequency texture blob painted in (so detection finds a region,
as with a real GAN), and the label map is the parity case's ADE20K ``labels.png`` cut at the same place
and enlarged ×4 (nearest neighbour). The settings name a segmenter, so every image makes 3 device
calls. The only work in a call is one sha1 of the input (to find its prepared result; about 1 ms).
``--real`` uses :class:`desra.pipeline.models.Models` instead: SPAN (MSE) and Real-ESRGAN x4plus (GAN) from
``../shared/models`` and ``--segmenter`` (a SegFormer id or folder; ``""`` for none), on CUDA when
there is one (on a CPU the models use the CPU, and the CPU figure is no longer "non-model" work).

**What runs.** Each contender gets a fresh output root and an empty in-memory pixel cache, and does a
whole run: list and hash the drop (:func:`desra.pipeline.drop.drop_items`), every step of every image, then
``runs/<run>.parquet`` and ``report.html`` (:func:`desra.pipeline.report.write_run_files`).

* *pipeline*: :func:`desra.pipeline.stream.process_images` with a :class:`~desra.pipeline.stream.Device`.
* *batch-synchronous* (today's order before the streaming scheduler, one batch of up to ``--batch-size``
  images): all MSE-SR, each image read and its PNG encoded inside the SR loop while the device is held;
  then all GAN-SR the same way (reading each input again); then segmentation (label maps encoded in the
  loop); then detection of each image (on ``--workers`` threads, as the flow's task runner ran its detect
  tasks); then the pseudo-GT of each; then publishing each. It is driven here from the same
  :class:`desra.pipeline.steps.ImageJob` step methods: a different order of the same steps.

**Measured the same way for both.** Device busy = time spent inside the models object's calls (a
wrapper times each ``super_resolve``/``segment``); occupancy = busy / wall time of the whole run;
images per second; non-model CPU core-seconds per image = process CPU time (user + system, every thread,
``resource.getrusage``) over the run / images (the simulated models use no CPU). The batch-synchronous
run also prints the CPU and wall time of each of its phases, which shows where the CPU goes.

Targets (2-core machine, G = 0.5 s for each of MSE-SR, GAN-SR and segmentation): pipeline occupancy
≥ 85 %; pipeline CPU per image no more than the batch-synchronous order's (about 1.0 core-second per
2048×2048 result).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import itertools
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from desra.pipeline import pixels  # noqa: E402
from desra.pipeline.drop import drop_items  # noqa: E402
from desra.pipeline.report import write_run_files  # noqa: E402
from desra.pipeline.settings import Settings  # noqa: E402
from desra.pipeline.steps import ImageJob, Run  # noqa: E402
from desra.pipeline.stream import Device, default_workers, process_images  # noqa: E402
from desra_core.image import read_image, write_image  # noqa: E402

SHARED = Path(os.environ.get("DESRA_SHARED", Path(__file__).resolve().parents[2] / "shared"))  # ../shared
PARITY = SHARED / "parity"
MODELS = SHARED / "models"
SCALE = 4


# --- inputs ------------------------------------------------------------------------------------------------

def photo_crops(count: int, size: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``count`` distinct ``(name, rgb, labels)`` crops of ``size``² from the parity cases' ``gan.png``
    and ``labels.png`` (see the module's docstring for the order)."""
    cases = sorted(p for p in PARITY.iterdir()
                   if p.is_dir() and "injected" not in p.name and (p / "gan.png").is_file()
                   and (p / "labels.png").is_file())
    if not cases:
        raise SystemExit(f"expected parity cases with gan.png and labels.png in {PARITY}, found none")
    photos = []
    for case in cases:
        rgb = cv2.cvtColor(cv2.imread(str(case / "gan.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        labels = cv2.imread(str(case / "labels.png"), cv2.IMREAD_UNCHANGED)
        side = min(rgb.shape[:2])
        if side < size:  # enlarge so that a crop fits
            f = size / side
            shape = (round(rgb.shape[1] * f + 0.5), round(rgb.shape[0] * f + 0.5))
            rgb = cv2.resize(rgb, shape, interpolation=cv2.INTER_CUBIC)
            labels = cv2.resize(labels, shape, interpolation=cv2.INTER_NEAREST)
        photos.append((case.name, rgb, labels))
    crops, seen = [], set()
    for corner in ("tl", "br", "tr", "bl", "c"):
        for name, rgb, labels in photos:
            h, w = rgb.shape[:2]
            y = {"tl": 0, "tr": 0, "br": h - size, "bl": h - size, "c": (h - size) // 2}[corner]
            x = {"tl": 0, "bl": 0, "br": w - size, "tr": w - size, "c": (w - size) // 2}[corner]
            if (name, y, x) in seen:
                continue
            seen.add((name, y, x))
            crops.append((f"{name}_{corner}", np.ascontiguousarray(rgb[y:y + size, x:x + size]),
                          np.ascontiguousarray(labels[y:y + size, x:x + size])))
            if len(crops) == count:
                return crops
    raise SystemExit(f"expected at most {len(crops)} distinct {size}² crops from {PARITY}, asked for {count}")


def simulated_results(lr: np.ndarray, labels: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prepared (MSE, GAN, label map) results of one input (see the module's docstring)."""
    h, w = lr.shape[:2]
    up = cv2.resize(lr, (w * SCALE, h * SCALE), interpolation=cv2.INTER_CUBIC)
    mse = cv2.GaussianBlur(up, (0, 0), 0.7)
    sharp = cv2.addWeighted(up, 1.3, cv2.GaussianBlur(up, (0, 0), 1.5), -0.3, 0)
    yy, xx = np.mgrid[0:h * SCALE, 0:w * SCALE].astype(np.float32)
    rng = np.random.default_rng(index)
    cy, cx = rng.uniform(0.25, 0.75, 2) * (h * SCALE, w * SCALE)
    radius, angle = 0.05 * min(h, w) * SCALE, rng.uniform(0, np.pi)
    envelope = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / 3.5)
    gan = np.clip(sharp.astype(np.float32) + (45 * envelope * stripes)[..., None], 0, 255).astype(np.uint8)
    big_labels = cv2.resize(labels, (w * SCALE, h * SCALE), interpolation=cv2.INTER_NEAREST)
    return mse, gan, big_labels


class SimulatedModels:
    """Models that hold a simulated device for ``g`` seconds per call and return prepared results."""

    device = "simulated"
    scale = SCALE

    def __init__(self, g: float, results: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        self.g = g
        self.digests = {role: hashlib.sha256(f"simulated-{role}".encode()).hexdigest() for role in ("mse", "gan")}
        self.segmenter_key = "simulated-segmenter"
        self._results = results
        self._labels = {id(gan): labels for _, gan, labels in results.values()}

    def super_resolve(self, role: str, lr: np.ndarray) -> np.ndarray:
        mse, gan, _ = self._results[hashlib.sha1(np.ascontiguousarray(lr)).digest()]
        time.sleep(self.g)
        return mse if role == "mse" else gan

    def segment(self, gan: np.ndarray) -> np.ndarray:
        labels = self._labels[id(gan)]
        time.sleep(self.g)
        return labels


class Timed:
    """The models object of a run, with the time spent inside its calls added up (device busy time)."""

    def __init__(self, models: object) -> None:
        self._models = models
        self.busy = 0.0
        self.calls = 0
        self.intervals: list[tuple[float, float]] = []  # (start, end) of each call, perf_counter
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self._models, name)

    def _timed(self, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            end = time.perf_counter()
            with self._lock:
                self.busy += end - start
                self.calls += 1
                self.intervals.append((start, end))

    def super_resolve(self, role: str, lr: np.ndarray) -> np.ndarray:
        return self._timed(self._models.super_resolve, role, lr)

    def segment(self, gan: np.ndarray) -> np.ndarray:
        return self._timed(self._models.segment, gan)


# --- the two orders ----------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Phases:
    """Wall and CPU time of consecutive phases of a run."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), cpu_seconds()
        yield
        self.rows.append((name, time.perf_counter() - wall, cpu_seconds() - cpu))


def pipeline_run(drop: Path, run: Run, workers: int, phases: Phases) -> tuple[list[dict], Device]:
    device = Device()
    try:
        with phases("list and hash the drop"):
            items = drop_items(str(drop))
        with phases("process_images (every step, streamed)"):
            rows = process_images(items, run, device=device, workers=workers)
    finally:
        device.close()
    with phases("runs/<run>.parquet + report.html"):
        write_run_files(rows, run.output_dir, run.run_id, title=f"desra run {run.run_id}")
    return rows, device


def batch_synchronous_run(drop: Path, run: Run, workers: int, batch_size: int, phases: Phases) -> list[dict]:
    """Today's order, batch by batch, from the same ImageJob steps (see the module's docstring)."""
    with phases("list and hash the drop"):
        items = drop_items(str(drop))
    rows = []
    for first in range(0, len(items), batch_size):
        jobs = [ImageJob(run, item, order=first + i) for i, item in enumerate(items[first:first + batch_size])]
        with contextlib.ExitStack() as claims:
            for job in jobs:
                claims.enter_context(job.claims)
                job.plan()
            for role in ("mse", "gan"):
                with phases(f"{role.upper()}-SR: read, model, PNG encode"):
                    for job in (j for j in jobs if role in j.sr_needed):
                        job.read()
                        job.super_resolve(role)
                        job.store_sr(role)
                        job.done_with_lr()
            with phases("segment: model, PNG encode"):
                for job in (j for j in jobs if j.segment_needed):
                    job.segment()
                    job.store_labels()
            with phases(f"detect ({workers} threads)"), cf.ThreadPoolExecutor(workers) as pool:
                list(pool.map(ImageJob.detect, jobs))
            with phases("pseudo-GT"):
                for job in jobs:
                    job.pseudo_gt()
            with phases("publish"):
                rows += [job.publish(job.finish_row()) for job in jobs]
    with phases("runs/<run>.parquet + report.html"):
        write_run_files(rows, run.output_dir, run.run_id, title=f"desra run {run.run_id}")
    return rows


def measure(name: str, fn, models: Timed, images: int) -> dict:
    pixels.clear()  # each contender starts without the other's images in memory
    phases = Phases()
    busy0, calls0, first_call = models.busy, models.calls, len(models.intervals)
    load = os.getloadavg()[0]
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    result = fn(phases)
    end, cpu = time.perf_counter(), cpu_seconds() - cpu0
    wall = end - wall0
    calls = sorted(models.intervals[first_call:])
    idle = {"before the first call": calls[0][0] - wall0 if calls else wall,
            "between calls": sum(max(b[0] - a[1], 0.0) for a, b in itertools.pairwise(calls)),
            "after the last call": end - calls[-1][1] if calls else 0.0}
    rows = result[0] if isinstance(result, tuple) else result
    failed = [r for r in rows if r.get("status") != "ok"]
    busy = models.busy - busy0
    return {"name": name, "wall": wall, "cpu": cpu, "busy": busy, "calls": models.calls - calls0,
            "occupancy": busy / wall, "ips": images / wall, "cpu_per_image": cpu / images, "rows": rows,
            "failed": failed, "phases": phases.rows, "idle": idle, "load": (load, os.getloadavg()[0]),
            "extra": result[1] if isinstance(result, tuple) else None}


# --- main --------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=512, help="side of each input crop (pixels)")
    parser.add_argument("--g", type=float, default=0.5, help="simulated device seconds per model call")
    parser.add_argument("--workers", type=int, default=None, help="CPU stages at once (default: the cores)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch of the batch-synchronous order")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each; the fastest counts")
    parser.add_argument("--real", action="store_true", help="real models (CUDA when available) instead")
    parser.add_argument("--segmenter", default=None, help="with --real: SegFormer id or folder ('' for none)")
    args = parser.parse_args()
    workers = args.workers or default_workers()

    work = Path(tempfile.mkdtemp(prefix="desra-throughput-"))
    drop = work / "drop"
    drop.mkdir()
    crops = photo_crops(args.images, args.size)
    results = {}
    for i, (name, rgb, labels) in enumerate(crops):
        path = drop / f"{name}.png"
        write_image(path, rgb)
        lr = read_image(path).pixels  # exactly what the read step will decode
        if not args.real:
            results[hashlib.sha1(np.ascontiguousarray(lr)).digest()] = simulated_results(lr, labels, i)

    if args.real:
        from desra.pipeline.models import Models, check_device
        from desra_core.models.segmentation import DEFAULT_SEGMENTER

        settings = Settings(mse_model=str(MODELS / "span_x4_ch52.mse.safetensors"),
                            gan_model=str(MODELS / "realesrgan_x4plus.gan.safetensors"),
                            segmenter=DEFAULT_SEGMENTER if args.segmenter is None else args.segmenter,
                            device=check_device("auto"))  # as admission resolves it: Models takes it as it is
        models = Timed(Models(settings))
        what = f"real models on {models.device} (SPAN, Real-ESRGAN x4plus, segmenter {settings.segmenter_in_use})"
    else:
        settings = Settings(mse_model="simulated-mse", gan_model="simulated-gan", segmenter="simulated-segmenter")
        models = Timed(SimulatedModels(args.g, results))
        what = f"simulated device, G = {args.g} s per model call (MSE-SR, GAN-SR, segmentation)"

    def run_for(folder: str) -> Run:
        return Run(settings=settings, output_dir=str(work / folder), run_id=folder, models=models)

    # Warm-up on a fresh root: imports, lazily built tables, the page's assets; real models load here.
    warm = drop.parent / "warm_drop"
    warm.mkdir()
    for p in sorted(drop.iterdir())[:2]:
        os.link(p, warm / p.name)
    pipeline_run(warm, run_for("warm"), workers, Phases())

    # Alternate the contenders, each run on a fresh output root; each one's fastest run counts (other
    # processes on the machine slow the CPU steps, never the simulated device).
    bases, pipes = [], []
    for i in range(args.repeats):
        bases.append(measure("batch-synchronous", lambda ph, i=i: batch_synchronous_run(
            drop, run_for(f"batch{i}"), workers, args.batch_size, ph), models, args.images))
        pipes.append(measure("pipeline", lambda ph, i=i: pipeline_run(drop, run_for(f"pipeline{i}"), workers, ph),
                             models, args.images))
    base, pipe = (min(runs, key=lambda r: r["wall"]) for runs in (bases, pipes))

    out = args.size * SCALE
    print(f"{args.images} real-photo crops of {args.size}×{args.size} → {out}×{out}; {what}")
    print(f"{os.cpu_count()} cores, {workers} CPU worker(s); output roots under {work}")
    if args.repeats > 1:
        for runs in (bases, pipes):
            print(f"{runs[0]['name']}, all {args.repeats} runs: wall " + " ".join(f"{r['wall']:.2f}" for r in runs)
                  + " s; occupancy " + " ".join(f"{r['occupancy'] * 100:.1f}" for r in runs) + " %; CPU/image "
                  + " ".join(f"{r['cpu_per_image']:.3f}" for r in runs) + " core-s")
        print(f"fastest run of each ({args.repeats} alternating runs):")
    print()
    print(f"{'':20s} {'wall s':>8s} {'images/s':>9s} {'device busy s':>14s} {'occupancy':>10s} "
          f"{'CPU core-s/image':>17s}")
    for r in (base, pipe):
        print(f"{r['name']:20s} {r['wall']:8.2f} {r['ips']:9.3f} {r['busy']:14.2f} {r['occupancy'] * 100:9.1f}% "
              f"{r['cpu_per_image']:17.3f}")
    print(f"{'pipeline / batch':20s} {pipe['wall'] / base['wall']:7.2f}× {pipe['ips'] / base['ips']:8.2f}× "
          f"{pipe['busy'] / base['busy']:13.2f}× {pipe['occupancy'] / base['occupancy']:9.2f}× "
          f"{pipe['cpu_per_image'] / base['cpu_per_image']:16.2f}×")
    for r in (base, pipe):
        ok = [row for row in r["rows"] if row.get("status") == "ok"]
        print(f"{r['name']}: {len(ok)} ok, {sum((row.get('region_count') or 0) > 0 for row in ok)} with artifact "
              f"regions, mean artifact fraction {np.mean([row['artifact_fraction'] for row in ok] or [0]):.4f}")
    print(f"(pipeline's Device thread: {pipe['extra'].calls} calls, busy {pipe['extra'].busy_seconds:.2f} s; "
          f"model calls timed in the models object: {pipe['calls']} and {base['calls']})")
    for r in (base, pipe):
        print(f"\n{r['name']} (load average {r['load'][0]:.1f} before, {r['load'][1]:.1f} after)")
        print(f"  {'phase':40s} {'wall s':>8s} {'CPU core-s':>11s} {'per image':>10s}")
        for name, wall, cpu in r["phases"]:
            print(f"  {name:40s} {wall:8.2f} {cpu:11.2f} {cpu / args.images:10.3f}")
    print()
    for r in (base, pipe):
        print(f"{r['name']} device idle: " + ", ".join(f"{k} {v:.2f} s" for k, v in r["idle"].items()))
    reference = 1.0 * (out / 2048) ** 2
    occupancy_met = pipe["occupancy"] >= 0.85
    cpu_met = pipe["cpu_per_image"] <= base["cpu_per_image"] * 1.05
    print()
    print(f"target occupancy ≥ 85 %: {pipe['occupancy'] * 100:.1f}% "
          f"({'met' if occupancy_met else 'NOT met'}; batch-synchronous {base['occupancy'] * 100:.1f}%)")
    print(f"target CPU per image no more than the batch-synchronous order's (+5 % for noise): "
          f"{pipe['cpu_per_image']:.3f} against {base['cpu_per_image']:.3f} core-s "
          f"({'met' if cpu_met else 'NOT met'}; reference about {reference:.2f} core-s for a {out}² result)")
    failed = [row for r in bases + pipes for row in r["failed"]]
    for row in failed:
        print(f"FAILED {row['stem']}: {row.get('error')}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
