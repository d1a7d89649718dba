"""Scale-out: 1, 2 and 3 worker processes on one drop, output root in a local folder or in an S3 bucket.

    python benchmarks/scale_out.py [--images 18] [--size 256] [--g 1.0] [--workers 1,2,3]
                                   [--storage local,s3] [--split batch|shared|both] [--quick]

**Workers.** Each worker is a separate OS process (this script with ``--worker``), with its own
``DESRA_CACHE`` and ``HOME``, so its local copy of a bucket output root
(:func:`desra.pipeline.remote.work_root`) is its own. It runs the same function as
:func:`desra.tasks.images.process` does for a ``desra-batch`` flow run, without the Prefect task wrapping:
:func:`desra.pipeline.drop.drop_items` over the drop, then :func:`desra.pipeline.stream.process_into` (a
:class:`~desra.pipeline.steps.Run` on the worker's local copy of the output root, the images streamed through
a :class:`~desra.pipeline.stream.Device`, the copy trimmed at the end). No
Prefect server runs: the workers share nothing but the drop and the output root (in S3 mode, the bucket:
the store, its claims, the published outputs), so whatever coordinates them goes through the store's claims.

**How the drop is split** (``--split``):

* ``batch`` (default; what the ``desra`` flow does under a deployment): each worker gets a contiguous
  batch of the drop's stems (``stems`` of ``desra-batch``), as even as can be.
* ``shared``: each worker gets the whole drop, in the same order, and the store's claims (``flock`` files on
  a local root, leased claim objects in a bucket) decide which worker computes each entry.

Either way every store entry must be computed once: the table's *model calls* column must be 3 × images
(MSE-SR, GAN-SR and segmentation of each image), whatever the number of workers.

**Simulated device.** As in ``pipeline_throughput.py`` (its :class:`SimulatedModels`, inputs from its
:func:`photo_crops`): every model call holds the worker's own simulated device for ``--g`` seconds
(default 1 s) without using the CPU and returns a result prepared before timing starts (here by this
process, once, shared with the workers through memory-mapped ``.npy`` files). Each worker thus has its own
device, as each machine of a pool has its own GPU, and the machine's cores are not the limit of the
device-bound work. One image is 3 calls, so one worker does at best 1 / (3 G) images per second.

**Storage** (``--storage``): ``local`` (drop and output root are folders of this machine) or ``s3`` (drop
and output root in buckets of a moto S3 server on loopback in this process, the tests' recording server
of ``tests/storage/conftest.py``, which answers one request at a time as S3 decides conditional writes
atomically; workers get ``AWS_ENDPOINT_URL`` and fake credentials). Each measurement gets a fresh output
root (a new bucket in S3 mode) and fresh worker caches. Unlike S3, moto's request handler speaks HTTP/1.0
(a new TCP connection for every request) and this server answers one request at a time for all workers, so
the S3 figures overstate the latency and client CPU of each request, more so as workers are added.

**Measured.** Each worker starts, imports, loads its simulated results and does a warm-up run of one
other image into a scratch local root (imports, compiled kernels, lazily built tables), then says it is
ready; all start together. Wall time: from the start to the last worker's end. Images per second: drop
size / wall. Scaling: images per second over one worker's, same storage. CPU core-seconds per image:
the sum of the workers' own CPU time (user + system, every thread, ``resource.getrusage``) from the start to
their end, over the drop size (the simulated device uses no CPU, so this is the pipeline's own work:
decoding, encoding, detection, pseudo-GT, publishing, S3 requests). Server CPU per image: this process's
CPU time over the same span (in S3 mode it runs the moto server; it does nothing else meanwhile). Requests
per image: requests the S3 server answered. *ok*: rows with status ok over the rows the workers returned (with
``shared``, each worker returns a row for every image). Below the table, per run: the steps computed (each
once in all), and per worker its images, model calls, when its first model call started, the device's idle
time between calls, when its last call ended and when it ended (so start-up and tail latency show), and its
CPU time; for S3, the requests per image by kind.

Goals (issue 19): 3 workers ≥ 2.5× one worker; one worker on S3 ≥ 0.9× its local throughput; CPU per image
on S3 within +15 % of local. ``--quick`` (2 images, 1-2 workers, G = 0.05 s, 64² inputs) checks that the
benchmark runs, not the goals.

**Repeats.** On a shared 2-core machine one worker's CPU per image moves by ±5 % from run to run, so a single
local/S3 pair can put the CPU ratio anywhere between +9 % and +25 % (four pairs of the same code on
2026-12-07; five rounds on 2026-12-08 spread from +2 % to +13 %). ``--repeat N`` measures every configuration
N times, the storages alternating within each round, and judges each goal on the median of its N per-round
figures, printing the worst beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(BENCH))

from pipeline_throughput import SimulatedModels, Timed, photo_crops, simulated_results  # noqa: E402

from desra.pipeline.settings import Settings  # noqa: E402
from desra_core.image import read_image, write_image  # noqa: E402

READY, RESULT = "@@scale-out ready", "@@scale-out result "
COLUMNS = ["storage", "split", "workers", "images", "wall s", "images/s", "× one worker", "CPU core-s/image",
           "server CPU core-s/image", "model calls", "requests/image", "ok"]
FAKE_ACCESS_KEY, FAKE_SECRET = "AKIADESRABENCH000001", "desra-bench-fake-secret"


def cpu_seconds() -> float:
    """This process's CPU time so far (user + system, every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def settings() -> Settings:
    """The settings of every run: the simulated models and a segmenter, so each image makes 3 model calls."""
    return Settings(mse_model="simulated-mse", gan_model="simulated-gan", segmenter="simulated-segmenter")


# --- inputs and simulated results (this process, once) -----------------------------------------------------

def prepare(work: Path, images: int, size: int) -> tuple[Path, Path, Path]:
    """The drop (``images`` crops as PNG), a one-image warm-up drop, and the simulated results of both as
    ``.npy`` files with an index (sha1 of the decoded input → file stem) for the workers."""
    drop, warm, results = work / "drop", work / "warm_drop", work / "results"
    for folder in (drop, warm, results):
        folder.mkdir(parents=True)
    index = {}
    for i, (name, rgb, labels) in enumerate(photo_crops(images + 1, size)):
        path = (warm if i == images else drop) / f"{name}.png"
        write_image(path, rgb)
        lr = read_image(path).pixels  # exactly what the read step decodes
        for role, array in zip(("mse", "gan", "labels"), simulated_results(lr, labels, i), strict=True):
            np.save(results / f"{i}_{role}.npy", array)
        index[hashlib.sha1(np.ascontiguousarray(lr).tobytes()).hexdigest()] = i
    (results / "index.json").write_text(json.dumps(index))
    return drop, warm, results


def load_models(results: Path, g: float) -> SimulatedModels:
    """The simulated models of a worker, on the prepared results (memory-mapped copy-on-write: the workers
    share the pages)."""
    index = json.loads((results / "index.json").read_text())
    table = {bytes.fromhex(digest): tuple(np.load(results / f"{i}_{role}.npy", mmap_mode="c")
                                          for role in ("mse", "gan", "labels"))
             for digest, i in index.items()}
    return SimulatedModels(g, table)


# --- a worker process ----------------------------------------------------------------------------------------

def worker(spec_path: str) -> int:
    """One worker: set up and warm up, say it is ready, wait for the start, run its part of the drop as
    ``desra-batch`` does (without Prefect), print its result as one JSON line."""
    from desra.pipeline.drop import drop_items
    from desra.pipeline.steps import Run
    from desra.pipeline.stream import Device, process_images, process_into

    spec = json.loads(Path(spec_path).read_text())
    models = load_models(Path(spec["results"]), spec["g"])
    if spec["output"].startswith("s3://"):
        import botocore.session  # noqa: F401  (the S3 client's libraries are imported before the start, as
        import obstore  # noqa: F401  the flow's process has them by then: admission has probed the bucket)
    warm = Run(settings=settings(), output_dir=spec["scratch"], run_id="warm", models=models)
    warm_rows = process_images(drop_items(spec["warm"]), warm)
    if [r["status"] for r in warm_rows] != ["ok"]:
        print(f"warm-up failed: {warm_rows}", file=sys.stderr)
        return 1
    print(READY, flush=True)
    sys.stdin.readline()  # the start

    start, cpu0, clock0 = time.time(), cpu_seconds(), time.perf_counter()
    timed = Timed(models)
    items = drop_items(spec["input"], spec["stems"])
    device = Device()
    try:
        rows, _ = process_into(spec["output"], items, settings=settings(), run_id=spec["run_id"], models=timed,
                               device=device)
    finally:
        device.close()
    end, cpu = time.time(), cpu_seconds() - cpu0
    computed = [step for r in rows for step in (r.get("computed") or "").split(",") if step]
    calls = sorted(timed.intervals)
    gaps = sum(max(b[0] - a[1], 0.0) for a, b in itertools.pairwise(calls))
    device_times = ([calls[0][0] - clock0, gaps, calls[-1][1] - clock0] if calls else [0.0, 0.0, 0.0])
    result = {"start": start, "end": end, "cpu": cpu, "images": len(rows), "calls": device.calls,
              "device": device_times,  # first call's start, idle between calls, last call's end (s from start)
              "busy": device.busy_seconds, "ok": sum(r.get("status") == "ok" for r in rows),
              "computed": {step: computed.count(step) for step in sorted(set(computed))},
              "errors": [f"{r['stem']}: {r.get('error')}" for r in rows if r.get("status") != "ok"]}
    print(RESULT + json.dumps(result), flush=True)
    return 0


# --- the S3 server -----------------------------------------------------------------------------------------

def start_s3(work: Path) -> Any:
    """The tests' recording moto server on loopback, and this process's environment pointed at it."""
    from tests.storage.conftest import RecordingMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = RecordingMotoServer()
    server.start()
    os.environ.update(s3_environment(server.endpoint, work))
    return server


def s3_environment(endpoint: str, folder: Path) -> dict[str, str]:
    """AWS variables for the moto server, and nothing from this machine's own AWS setup."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-credentials"),
            "AWS_CONFIG_FILE": str(folder / "no-config")}


def upload(client: Any, folder: Path, bucket: str, prefix: str) -> None:
    client.create_bucket(Bucket=bucket)
    for path in sorted(folder.iterdir()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())


# --- one measurement ---------------------------------------------------------------------------------------

def split_stems(stems: list[str], workers: int, split: str) -> list[list[str] | None]:
    """Each worker's stems: contiguous batches as even as can be (``batch``), or the whole drop (``shared``:
    ``None``, as ``desra-batch`` with no stems)."""
    if split == "shared":
        return [None] * workers
    size, extra = divmod(len(stems), workers)
    batches: list[list[str] | None] = []
    first = 0
    for i in range(workers):
        last = first + size + (i < extra)
        batches.append(stems[first:last])
        first = last
    return batches


def measure(*, work: Path, storage: str, split: str, workers: int, drop: str, warm: Path, results: Path,
            stems: list[str], g: float, server: Any, client: Any) -> dict[str, Any]:
    """One run of ``workers`` worker processes on the drop; the table's row."""
    name = f"{storage}-{split}-{workers}-{uuid.uuid4().hex[:6]}"
    base = work / name
    base.mkdir()
    if storage == "s3":
        bucket = f"desra-out-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        output = f"s3://{bucket}/root"
    else:
        output = str(base / "out")
    procs, logs = [], []
    for i, batch in enumerate(split_stems(stems, workers, split)):
        home = base / f"w{i}"
        (home / "home").mkdir(parents=True)
        spec = {"results": str(results), "g": g, "warm": str(warm), "scratch": str(home / "scratch"),
                "input": drop, "output": output, "stems": batch, "run_id": name}
        (home / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "DESRA_CACHE": str(home / "cache"), "HOME": str(home / "home")}
        env.pop("XDG_CACHE_HOME", None)
        log = open(home / "stderr.txt", "w")  # closed below
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(home / "spec.json")], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True))
    try:
        for i, proc in enumerate(procs):
            _expect(proc, READY, base / f"w{i}" / "stderr.txt")
        requests0 = len(server.app.log) if server is not None else 0
        start, cpu0 = time.time(), cpu_seconds()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outs = [json.loads(_expect(proc, RESULT, base / f"w{i}" / "stderr.txt")) for i, proc in enumerate(procs)]
        server_cpu = cpu_seconds() - cpu0
        requests = (len(server.app.log) - requests0) if server is not None else 0
        for proc in procs:
            proc.wait(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    wall = max(o["end"] for o in outs) - start
    images = len(stems)
    computed: dict[str, int] = {}
    for o in outs:
        for step, count in o["computed"].items():
            computed[step] = computed.get(step, 0) + count
    return {"storage": storage, "split": split, "workers": workers, "images": images, "wall": wall,
            "ips": images / wall, "cpu_per_image": sum(o["cpu"] for o in outs) / images,
            "server_cpu_per_image": server_cpu / images, "calls": sum(o["calls"] for o in outs),
            "requests_per_image": requests / images, "ok": sum(o["ok"] for o in outs),
            "rows": sum(o["images"] for o in outs), "computed": computed,
            "errors": [e for o in outs for e in o["errors"]],
            "per_worker": [(o["images"], o["calls"], *o["device"], o["end"] - start, o["cpu"]) for o in outs],
            "requests": _kinds(server.app.log[requests0:]) if server is not None else {}}


def _kinds(log: list[Any]) -> dict[str, int]:
    """The S3 requests of a measurement by method and what they were about (claims, store entries, "seen"
    records, publication records, published outputs, the drop)."""
    kinds: dict[str, int] = {}
    for served in log:
        parts = served.path.strip("/").split("/")
        key = "/".join(parts[1:])
        if parts[0] == "desra-drop":
            what = "drop"
        elif key.startswith("root/.desra/store/seen/"):
            what = "seen records"
        elif key.startswith("root/.desra/"):
            what = key.split("/")[2]
        elif served.method == "GET" and "list-type" in served.query:
            what = "listing"
        else:
            what = "outputs"
        kind = f"{served.method} {what}"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _expect(proc: subprocess.Popen[str], prefix: str, log: Path) -> str:
    """The rest of the worker's next stdout line that starts with ``prefix``; SystemExit naming its log when
    the worker ends first."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    proc.wait()
    tail = log.read_text()[-3000:] if log.is_file() else ""
    raise SystemExit(f"expected {prefix.strip()!r} from worker {proc.pid}, got exit status {proc.returncode} "
                     f"(log: {log})\n{tail}")


# --- report ------------------------------------------------------------------------------------------------

def one_worker_baselines(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each storage's median images/s with one worker, for the scaling column; a storage measured without one
    worker (``--workers 2,3``) has none."""
    ones: dict[str, list[float]] = {}
    for r in rows:
        if r["workers"] == 1:
            ones.setdefault(r["storage"], []).append(r["ips"])
    return {storage: statistics.median(ips) for storage, ips in ones.items()}


def table(rows: list[dict[str, Any]], baselines: dict[str, float]) -> list[str]:
    """The markdown table of the measurements (scaling against one worker's median on the same storage; the
    round in brackets after the storage when there are several)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(COLUMNS) - 3)) + "|"]
    rounds = len({x.get("round", 0) for x in rows})
    for r in rows:
        one = baselines.get(r["storage"])
        scaling = f"{r['ips'] / one:.2f}" if one else "n/a"
        storage = f"{r['storage']} ({r.get('round', 0) + 1})" if rounds > 1 else r["storage"]
        cells = [storage, r["split"], str(r["workers"]), str(r["images"]), f"{r['wall']:.2f}",
                 f"{r['ips']:.3f}", scaling, f"{r['cpu_per_image']:.3f}", f"{r['server_cpu_per_image']:.3f}",
                 str(r["calls"]), f"{r['requests_per_image']:.1f}", f"{r['ok']}/{r['rows']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _one(rows: list[dict[str, Any]], round_: int, storage: str, workers: int) -> dict[str, Any] | None:
    """The batch-split row of one round, storage and worker count, if measured."""
    found = [r for r in rows if r["split"] == "batch" and r.get("round", 0) == round_ and r["storage"] == storage
             and r["workers"] == workers]
    return found[0] if found else None


def _spread(ratios: list[float], fmt: str) -> str:
    """``median`` alone for one round, else ``median (worst …, rounds: …)``; worst = the highest, as every
    ratio here is a cost (throughput goals pass their inverse)."""
    text = fmt.format(statistics.median(ratios))
    if len(ratios) > 1:
        text += f" (worst {fmt.format(max(ratios))}; rounds: " + ", ".join(fmt.format(x) for x in ratios) + ")"
    return text


def goals(rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """The issue's goals, each as ``(text, met)``, for the measurements that were made: per round, each figure
    from that round's rows; met when the median over the rounds meets the goal (the worst is printed)."""
    out = []
    rounds = sorted({r.get("round", 0) for r in rows})

    def per_round(storage: str, workers: int, other: str, other_workers: int, key: str) -> list[float]:
        pairs = [(_one(rows, i, storage, workers), _one(rows, i, other, other_workers)) for i in rounds]
        return [a[key] / b[key] for a, b in pairs if a is not None and b is not None and b[key]]

    for storage in ("local", "s3"):
        slower = per_round(storage, 1, storage, 3, "ips")  # one worker's throughput over three's: a cost
        if slower:
            median = 1 / statistics.median(slower)
            out.append((f"{storage}: 3 workers ≥ 2.5× one worker: {median:.2f}×"
                        + (f" (worst {1 / max(slower):.2f}×)" if len(slower) > 1 else ""), median >= 2.5))
    slower = per_round("local", 1, "s3", 1, "ips")  # local throughput over S3's
    if slower:
        median = 1 / statistics.median(slower)
        out.append((f"one worker on S3 ≥ 0.9× its local throughput: {median:.2f}×"
                    + (f" (worst {1 / max(slower):.2f}×)" if len(slower) > 1 else ""), median >= 0.9))
    for n in sorted({r["workers"] for r in rows if r["storage"] == "s3" and r["split"] == "batch"}):
        cpu = per_round("s3", n, "local", n, "cpu_per_image")
        if cpu:
            out.append((f"CPU per image on S3 within +15 % of local, {n} worker(s): "
                        + _spread([x - 1 for x in cpu], "{:+.1%}"), statistics.median(cpu) <= 1.15))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=18, help="drop size")
    parser.add_argument("--size", type=int, default=256, help="side of each input crop (pixels); results are ×4")
    parser.add_argument("--g", type=float, default=1.0, help="simulated device seconds per model call")
    parser.add_argument("--workers", default="1,2,3", help="worker counts to measure, comma-separated")
    parser.add_argument("--storage", default="local,s3", help="local, s3 or both, comma-separated")
    parser.add_argument("--split", choices=("batch", "shared", "both"), default="batch")
    parser.add_argument("--quick", action="store_true", help="2 images of 64², 1-2 workers, G = 0.05 s")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (drop, output roots, worker logs)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every configuration; goals are judged on the median round, the worst shown")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.quick:
        args.images, args.size, args.g, args.workers = 2, 64, 0.05, "1,2"
    counts = sorted({int(n) for n in args.workers.split(",")})
    storages = [s for s in ("local", "s3") if s in args.storage.split(",")]
    splits = ["batch", "shared"] if args.split == "both" else [args.split]
    if not counts or min(counts) < 1 or not storages or args.images < max(counts) or args.repeat < 1:
        raise SystemExit(f"expected worker counts ≥ 1 and at most --images, and local and/or s3 storage, got "
                         f"--workers {args.workers} --storage {args.storage} --images {args.images} "
                         f"--repeat {args.repeat}")

    work = Path(tempfile.mkdtemp(prefix="desra-scale-out-"))
    drop, warm, results = prepare(work, args.images, args.size)
    stems = sorted(p.stem for p in drop.iterdir())
    server = client = None
    if "s3" in storages:
        import boto3  # type: ignore[import-untyped]

        server = start_s3(work)
        client = boto3.client("s3", endpoint_url=server.endpoint)
        upload(client, drop, "desra-drop", "drop")
    rows = []
    try:
        for round_ in range(args.repeat):
            for n in counts:  # the storages alternate within a round, so drift on the machine hits both
                for split in splits:
                    for storage in storages:
                        if split == "shared" and n == 1 and "batch" in splits:
                            continue  # one worker with the whole drop: the batch row already
                        source = "s3://desra-drop/drop" if storage == "s3" else str(drop)
                        rows.append({**measure(work=work, storage=storage, split=split, workers=n, drop=source,
                                               warm=warm, results=results, stems=stems, g=args.g,
                                               server=server if storage == "s3" else None, client=client),
                                     "round": round_})
                        r = rows[-1]
                        print(f"  round {round_ + 1}: {storage} {split} {n} worker(s): {r['wall']:.2f} s, "
                              f"{r['ips']:.3f} images/s, {r['cpu_per_image']:.3f} CPU core-s/image",
                              file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    baselines = one_worker_baselines(rows)
    print(f"{args.images} real-photo crops of {args.size}×{args.size} → {args.size * 4}×{args.size * 4}; simulated "
          f"device, G = {args.g} s per model call, 3 calls per image, one device per worker; {os.cpu_count()} "
          f"cores (load average {os.getloadavg()[0]:.1f}); work folder {work}{'' if args.keep else ' (removed)'}")
    print(f"split: {', '.join(splits)} (batch: contiguous stems per worker; shared: the whole drop to each worker, "
          f"split by the store's claims)")
    print()
    order = {"local": 0, "s3": 1}
    rows.sort(key=lambda r: (order[r["storage"]], r["split"], r["workers"], r["round"]))  # as the table reads
    print("\n".join(table(rows, baselines)))
    print()
    for r in rows:
        steps = ", ".join(f"{step} {count}" for step, count in sorted(r["computed"].items()))
        print(f"{r['storage']} {r['split']} {r['workers']}: computed {steps}")
        print("  per worker: images, model calls, first call at, device idle between calls, last call ended at, "
              "worker ended at (s from the start), CPU core-s: "
              + "; ".join(f"{a}, {b}, {c:.2f}, {d:.2f}, {e:.2f}, {f:.2f}, {g:.2f}" for a, b, c, d, e, f, g in
                          r["per_worker"]))
        if r["requests"]:
            print("  S3 requests per image: " + ", ".join(f"{kind} {count / r['images']:.1f}" for kind, count in
                                                         sorted(r["requests"].items(), key=lambda kv: -kv[1])))
    print()
    met = goals(rows)
    for text, ok in met:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    once = all(r["calls"] == 3 * r["images"] for r in rows)
    print(f"{'PASS' if once else 'FAIL'}  every entry computed once (model calls = 3 × images in every run)")
    errors = [e for r in rows for e in r["errors"]]
    for e in errors:
        print(f"FAILED {e}")
    return 1 if errors or not once else 0


if __name__ == "__main__":
    raise SystemExit(main())
