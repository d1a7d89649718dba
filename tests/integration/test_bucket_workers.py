# ruff: noqa: F811  (the S3 fixtures imported from tests.storage.conftest are arguments here)
"""Three process workers that share nothing but a bucket and the Prefect API run one ``desra/full`` drop.

One authenticated Prefect server, ``desra deploy`` registered with ``s3://`` drop and output roots, a moto S3
server on loopback and three ``prefect worker start --limit 1`` processes, each with its own ``HOME``,
``PREFECT_HOME``, working folder, ``DESRA_CACHE`` and ``TMPDIR``: no path is shared between them (the deployment
names the tiny models by their ``s3://`` URLs; each worker fetches its own copy). The drop (8-bit PNGs, 16-bit
PNGs and a file that is not an image) is split into ``desra-batch`` runs; one batch worker is SIGKILLed, with its
flow-run process, while that process holds store claims in the bucket. Then:

* the ``desra/full`` run still completes every image: once the zombie automation has marked the dead batch run
  Crashed, the parent run finishes that batch itself (``flows/full.py``), taking over the dead process's claims
  after their lease (``DESRA_CLAIM_LEASE_S``); a second ``desra/full`` run then finds everything in the store;
* every step of every image was computed at most once over both runs, and every step of an image that the first
  run reported in one row of it (``computed`` of ``runs/*.parquet``); the masks, pseudo-GT, SR results and
  report rows in the bucket are the bytes and rows of a local in-process run;
* a lister polling the bucket during both runs never saw an image object that does not decode or a Parquet
  or JSON object that does not parse.

The last test re-runs the drop split into ``desra-batch`` runs: every image comes from the store and is reported
ok, from the rows its batch recorded.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest

from desra.automations import HEARTBEAT_MULTIPLE, HEARTBEAT_SECONDS, crash_message
from tests.integration.conftest import (
    POOL,
    Proc,
    Stack,
    _descendants,
    _online_workers,
    _prefect_cli,
    sigkill_tree,
    write_lr,
)
from tests.storage.conftest import ACCESS_KEY, SECRET, s3_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = ("bucket-worker-a", "bucket-worker-b", "bucket-worker-c")
POOL_LIMIT = len(WORKERS) + 1  # every worker's slot, and one more than the workers can fill
LEASE_S = 5  # DESRA_CLAIM_LEASE_S of the workers: a dead worker's claims are free 5 s after its last renewal
BATCH_SIZE = 5
RUN_TIMEOUT = 300.0  # the first run waits for the zombie automation (≤ 120 s after the kill) on its dead batch
CRASH_WITHIN = HEARTBEAT_MULTIPLE * HEARTBEAT_SECONDS + 30.0  # the window after the last heartbeat, plus lag
PARAMS = {"min_area": 10, "threshold": 0.9}
# Columns that say where the input was, which run wrote the row, and when: they differ between the runs.
# Where the input and the models were named from (the workers took the models by URL, the local run by path,
# and the config hash covers those names), which run wrote the row, and when: they differ between the runs.
_VARIABLE = {"input_path", "run_id", "sr_seconds", "detect_seconds", "cached", "computed", "mse_model", "gan_model",
             "config_hash"}
_PUBLISHED = ("masks", "pseudo_gt", "sr/mse", "sr/gan")


def _drop(folder: Path) -> dict[str, bytes]:
    """20 8-bit images, 4 16-bit ones and a file that is not an image: name → bytes."""
    for i in range(20):
        write_lr(folder / f"img{i:02d}.png", seed=i, size=64)
    for i in range(4):
        rng = np.random.default_rng(100 + i)
        coarse = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
        assert cv2.imwrite(str(folder / f"deep{i}.png"), cv2.resize(coarse, (40, 40), interpolation=cv2.INTER_CUBIC))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _rows(frame: pd.DataFrame) -> list[dict[Any, Any]]:
    keep = [c for c in frame.columns if c not in _VARIABLE and not c.endswith(("_started_at", "_finished_at"))]
    return frame[keep].sort_values(["stem", "region_id"]).astype(object).where(frame[keep].notna(), None) \
        .to_dict("records")


def _keys(client: Any, bucket: str, prefix: str) -> dict[str, str]:
    """Key → ETag of every object under ``prefix``."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return found


def _read(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _owner_pid(owner: str) -> int | None:
    """The process id in a claim owner's name (``<host>-<pid>-<random>``, :func:`desra.pipeline.remote.owner`)."""
    try:
        return int(owner.rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        return None


class Lister(threading.Thread):
    """Lists the output prefix again and again while the runs go on, reads every new object version that a
    reader could trust (images, Parquet, JSON) and keeps what did not decode; also the owners it saw on claims."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        super().__init__(name="bucket-lister", daemon=True)
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.stop = threading.Event()
        self.seen: dict[str, str] = {}
        self.checked = 0
        self.problems: list[str] = []
        self.claim_owners: dict[str, set[str]] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception as e:  # the server is busy or the test ends: look again, keep the last errors
                self.errors = [*self.errors[-4:], repr(e)]
            self.stop.wait(0.3)

    def poll(self) -> None:
        for key, etag in _keys(self.client, self.bucket, self.prefix).items():
            if self.seen.get(key) == etag:
                continue
            try:
                data = _read(self.client, self.bucket, key)
            except self.client.exceptions.NoSuchKey:  # deleted between the listing and the read (a claim)
                continue
            self.seen[key] = etag
            self.check(key.removeprefix(self.prefix), data)

    def check(self, name: str, data: bytes) -> None:
        self.checked += 1
        if name.startswith(".desra/claims/"):
            try:
                self.claim_owners.setdefault(name, set()).add(json.loads(data)["owner"])
            except (ValueError, KeyError) as e:
                self.problems.append(f"{name}: not a claim record ({e!r})")
        elif name.endswith(".png"):
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if image is None:
                self.problems.append(f"{name}: OpenCV cannot decode its {len(data)} bytes")
        elif name.endswith(".parquet"):
            try:
                pd.read_parquet(io.BytesIO(data))
            except Exception as e:
                self.problems.append(f"{name}: pandas cannot read it ({type(e).__name__}: {e})")
        elif name.endswith((".json", ".ref")):
            try:
                json.loads(data)
            except ValueError as e:
                self.problems.append(f"{name}: not JSON ({e})")


def _start_worker(stack: Stack, root: Path, name: str, endpoint: str) -> Proc:
    """A worker on a machine of its own: its own home, Prefect home, working folder, cache and temp folder."""
    home = root / name
    folders = {key: home / key for key in ("home", "prefect-home", "work", "cache", "tmp")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    env = {**stack.env,
           "HOME": str(folders["home"]), "PREFECT_HOME": str(folders["prefect-home"]),
           "DESRA_CACHE": str(folders["cache"]), "TMPDIR": str(folders["tmp"]),
           "DESRA_CLAIM_LEASE_S": str(LEASE_S),
           "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": str(folders["home"] / "no-aws-credentials"),
           "AWS_CONFIG_FILE": str(folders["home"] / "no-aws-config")}
    proc = Proc(name, [*_prefect_cli(), "worker", "start", "--pool", POOL, "--type", "process", "--name", name,
                       "--limit", "1"],
                env, home / "worker.log", cwd=folders["work"])
    stack.procs.append(proc)
    return proc


def _run_pid(run: Any) -> int | None:
    """The process of a flow run that a process worker started (``infrastructure_pid``: ``<host>:<pid>``)."""
    if not run.infrastructure_pid:
        return None
    try:
        return int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    except ValueError:
        return None


def _batch_runs(stack: Stack, parent_id: str) -> list[Any]:
    """The ``desra-batch`` runs that the ``desra/full`` run ``parent_id`` started (a run's name changes, from
    ``batch i/n`` to the flow's own run name, when a worker starts it)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterParentFlowRunId

    with stack.client() as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["desra-batch"])),
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))


def _wait_final(stack: Stack, run_id: str, timeout: float) -> Any:
    def final() -> Any:
        with stack.client() as client:
            run = client.read_flow_run(run_id)
        return run if run.state is not None and run.state.is_final() else None

    return stack.wait_for(f"flow run {run_id} to end", final, timeout)


@dataclass
class Cluster:
    """The Prefect and S3 servers, the workers (by name), the bucket and its client, the drop, the local run's
    output folder."""

    stack: Stack
    server: Any
    workers: dict[str, Proc]
    client: Any
    bucket: str
    drop: Path
    stems: list[str]
    local_out: Path

    @property
    def good(self) -> list[str]:
        return [s for s in self.stems if s != "broken"]

    def run(self, **parameters: Any) -> Any:
        """A ``desra/full`` run over the registered drop and output root, with :data:`PARAMS`; waits for its end."""
        run_id = self.stack.run_deployment("desra/full", {**PARAMS, **parameters})
        return _wait_final(self.stack, run_id, RUN_TIMEOUT)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: Any, tiny_models: dict[str, str]) -> Iterator[Cluster]:
    """Server, ``desra deploy`` with ``s3://`` roots, three workers on "machines" of their own, a bucket holding the
    drop, and the local in-process run of the same images (run while the workers start)."""
    import boto3  # type: ignore[import-untyped]

    root = tmp_path_factory.mktemp("bucket-workers")
    (root / "stack").mkdir()
    stack = Stack(root / "stack")
    bucket = "desra-workers"
    aws = {"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
           "AWS_CONFIG_FILE": str(root / "no-aws-config")}
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    files = _drop(root / "drop")
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"drop/{name}", Body=data)
    models = {}  # the workers take the models from the bucket too: no path is shared between the "machines"
    for role in ("mse", "gan"):
        name = Path(tiny_models[role]).name
        client.put_object(Bucket=bucket, Key=f"models/{name}", Body=Path(tiny_models[role]).read_bytes())
        models[role] = f"s3://{bucket}/models/{name}"
    stack.env.update({**aws, "DESRA_DROP_DIR": f"s3://{bucket}/drop", "DESRA_OUTPUT_DIR": f"s3://{bucket}/out",
                      "DESRA_MSE_MODEL": models["mse"], "DESRA_GAN_MODEL": models["gan"], "DESRA_SEGMENTER": ""})
    try:
        server = stack.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(stack.port),
                             "--no-scheduler", "--no-ui", "--analytics-off")
        stack.wait_healthy(server)
        stack.deploy_output = stack.deploy("--pool-limit", str(POOL_LIMIT))
        assert f"flow runs without a heartbeat for {HEARTBEAT_MULTIPLE * HEARTBEAT_SECONDS} s" in stack.deploy_output
        workers = {name: _start_worker(stack, root / "machines", name, s3_server.endpoint) for name in WORKERS}

        from desra.flows.full import run_in_process

        with stack.settings():  # the same model files, as paths (rows name the models: compared apart)
            local = run_in_process(input_dir=str(root / "drop"), output_dir=str(root / "local"),
                                   mse_model=tiny_models["mse"], gan_model=tiny_models["gan"], segmenter=None,
                                   **PARAMS)
        stems = sorted(Path(n).stem for n in files)
        assert local.name == "Failed" and local.message.startswith(f"{len(stems) - 1} ok, 1 failed"), local.message

        stack.wait_for("the three workers to poll the pool", lambda: _online_workers(stack) >= set(WORKERS), 90)
        yield Cluster(stack, s3_server, workers, client, bucket, root / "drop", stems, root / "local")
    finally:
        stack.stop_all()


def test_three_workers_share_a_bucket_drop_and_survive_one_killed(cluster: Cluster) -> None:
    stack, workers, client, bucket = cluster.stack, cluster.workers, cluster.client, cluster.bucket
    stems, good, drop_url = cluster.stems, cluster.good, f"s3://{cluster.bucket}/drop"
    lister = Lister(client, bucket, "out/")
    lister.start()
    try:
        parent = stack.run_deployment("desra/full", {**PARAMS, "batch_size": BATCH_SIZE})

        # Wait for a batch run on a worker whose flow-run process holds claims in the bucket (inside a batch).
        def victim() -> str | None:
            with stack.client() as api:
                state = api.read_flow_run(parent).state
                parent_pid = _run_pid(api.read_flow_run(parent))
            if state is not None and state.is_final():
                pytest.fail(f"the desra/full run ended {state.name} ({state.message}) before the kill\n"
                            f"{stack.run_logs(parent)}")
            now = time.time()
            holders = set()
            for key in _keys(client, bucket, "out/.desra/claims/"):
                try:
                    record = json.loads(_read(client, bucket, key))
                except client.exceptions.NoSuchKey:
                    continue
                if record["expires"] > now and (pid := _owner_pid(record["owner"])) is not None:
                    holders.add(pid)
            for name, proc in workers.items():
                tree = set(_descendants(proc.popen.pid))
                if holders & tree and parent_pid not in tree:
                    return name
            return None

        name = stack.wait_for("a batch worker's flow run to hold claims", victim, RUN_TIMEOUT, interval=0.2)
        batches_before = _batch_runs(stack, parent)
        victims = sigkill_tree(stack, workers.pop(name))
        killed_at = time.monotonic()
        assert victims, "the worker had no flow-run process to kill"
        dead_claims = {}
        for key in _keys(client, bucket, "out/.desra/claims/"):
            with_owner = json.loads(_read(client, bucket, key))["owner"]
            if _owner_pid(with_owner) in victims:
                dead_claims[key.removeprefix("out/")] = with_owner
        assert dead_claims, "the killed flow-run process held no claim"
        log_at_kill = len(cluster.server.app.log)
        killed_runs = [r for r in batches_before if _run_pid(r) in victims]
        assert len(killed_runs) == 1, ([(r.name, r.infrastructure_pid, r.state_name) for r in batches_before], victims,
                                       dead_claims)
        [killed] = killed_runs
        killed_stems = killed.parameters["stems"]
        published = set(_keys(client, bucket, "out/reports/"))
        unpublished = [s for s in killed_stems if f"out/reports/{s}.parquet" not in published]
        assert unpublished, "the killed batch had published all its images before the kill"

        # The dead batch run is marked Crashed by the zombie automation; its parent then finishes that batch itself.
        first = _wait_final(stack, parent, RUN_TIMEOUT)
        with stack.client() as api:
            crashed = api.read_flow_run(killed.id).state
        assert crashed.is_crashed() and crashed.message == crash_message(HEARTBEAT_MULTIPLE * HEARTBEAT_SECONDS), \
            (crashed, stack.run_logs(parent))
        assert time.monotonic() - killed_at < RUN_TIMEOUT
        lost = ["broken"]
        assert first.state.is_failed(), first.state
        assert first.state.message.startswith(f"{len(stems) - len(lost)} ok, {len(lost)} failed of {len(stems)}"), \
            (first.state.message, lost, stack.run_logs(parent))
        first_rows = pd.read_parquet(io.BytesIO(_read(client, bucket, f"out/runs/{_run_file(client, bucket, 1)}")))
        failed = first_rows[first_rows["status"] != "ok"]
        assert sorted(failed["stem"]) == lost, failed[["stem", "error"]]
        assert "crashed: processing its" in stack.run_logs(parent, lines=400), stack.run_logs(parent)

        # A second run over the same drop, in one process on a live worker: everything comes from the store.
        second = cluster.run(scale_out=False)
        assert second.state.message.startswith(f"{len(good)} ok, 1 failed of {len(stems)}"), \
            (second.state.message, stack.run_logs(second.id))
    finally:
        lister.stop.set()
        lister.join(timeout=30)

    # Every object the lister saw under a final key was whole.
    assert lister.checked > 0 and lister.problems == [], (lister.problems, lister.errors)
    # each worker that ran a flow took both models from the bucket into its own cache
    copies = {name: sorted(p.name for p in (cluster.drop.parent / "machines" / name / "cache" / "models").rglob("*")
                           if p.is_file()) for name in WORKERS}
    assert sum(bool(found) for found in copies.values()) >= 2, copies
    models = sorted(key.rsplit("/", 1)[1] for key in _keys(client, bucket, "models/"))
    assert len(models) == 2 and all(found in ([], models) for found in copies.values()), (copies, models)
    # Live processes took over the dead one's claims (a claim object that nobody renewed is written again only
    # with If-Match once its lease has run out): the request log has successful PUTs of them after the kill.
    taken_over = {key for key in dead_claims for served in cluster.server.app.log[log_at_kill:]
                  if served.method == "PUT" and served.status == 200 and served.path.endswith(f"/out/{key}")}
    assert taken_over, (dead_claims, {k: lister.claim_owners.get(k) for k in dead_claims})
    print(f"killed {name} in {killed.name} ({len(unpublished)} of its images unpublished); {len(taken_over)} of "
          f"{len(dead_claims)} dead claims taken over; the lister checked {lister.checked} object versions")

    # Each step of each image computed once over both runs.
    run_files = sorted(k for k in _keys(client, bucket, "out/runs/") if k.endswith(".parquet"))
    assert len(run_files) == 2, run_files
    rows = pd.concat(pd.read_parquet(io.BytesIO(_read(client, bucket, k))) for k in run_files)
    computed = {stem: [step for c in rows.loc[rows["stem"] == stem, "computed"].fillna("") for step in c.split(",")
                       if step] for stem in good}
    for stem in good:
        steps = computed[stem]
        assert len(steps) == len(set(steps)), f"{stem}: a step computed twice over the runs: {steps}"
        if stem not in unpublished:  # computed by a run that reported it: every step in one row
            assert {"sr/mse", "sr/gan"} <= set(steps), (stem, steps)
    # The killed process held claims on entries it had not finished: the first run's parent computed them.
    assert any(computed[stem] for stem in unpublished), {stem: computed[stem] for stem in unpublished}
    # The reports in the bucket are rows of these runs.
    reports = pd.concat(pd.read_parquet(io.BytesIO(_read(client, bucket, k)))
                        for k in sorted(_keys(client, bucket, "out/reports/")))
    for _, report in reports.drop_duplicates("stem").iterrows():
        same = rows[(rows["stem"] == report["stem"]) & (rows["run_id"] == report["run_id"])]
        assert len(same) == 1 and (same["computed"].fillna("") == (report["computed"] or "")).all(), report

    # The same bytes and rows as the local run.
    local_out = cluster.local_out
    objects = {k.removeprefix("out/"): k for k in _keys(client, bucket, "out/")}
    for folder in _PUBLISHED:
        local_files = {p.name: p.read_bytes() for p in (local_out / folder).iterdir()}
        assert sorted(local_files) == sorted(f"{s}.png" for s in good)
        for file_name, data in local_files.items():
            assert _read(client, bucket, objects[f"{folder}/{file_name}"]) == data, f"{folder}/{file_name} differs"
    local_reports = pd.concat(pd.read_parquet(p) for p in sorted((local_out / "reports").iterdir()))
    local_reports["error"] = local_reports["error"].str.replace(str(cluster.drop), drop_url, regex=False)
    assert _rows(local_reports) == _rows(reports)
    ok = reports[reports["status"] == "ok"]
    assert set(ok["mse_model"]) == {f"s3://{bucket}/models/{Path(p).name}" for p in local_reports["mse_model"]
                                    if isinstance(p, str)}  # the URL on every worker, not a worker's copy
    assert ok["config_hash"].nunique() == 1


def test_a_scaled_out_rerun_reports_the_images_it_took_from_the_store(cluster: Cluster) -> None:
    """A ``desra/full`` run split into ``desra-batch`` runs over a drop whose images are all in the store (the
    previous test's, or a first run here) reports them ok and cached, as a run in one process does."""
    if not _keys(cluster.client, cluster.bucket, "out/runs/"):  # run alone: a first run computes the drop
        cluster.run(batch_size=BATCH_SIZE)
    again = cluster.run(batch_size=BATCH_SIZE)
    newest = sorted(_keys(cluster.client, cluster.bucket, "out/runs/"))[-1]
    rows = pd.read_parquet(io.BytesIO(_read(cluster.client, cluster.bucket, newest)))
    failed = rows.loc[rows["status"] != "ok", ["stem", "error"]].to_dict("records")
    assert again.state.message.startswith(f"{len(cluster.good)} ok, 1 failed of {len(cluster.stems)}"), \
        (again.state.message, failed)


def _run_file(client: Any, bucket: str, count: int) -> str:
    """The name of the newest ``runs/`` object, of which there must be ``count``."""
    names = sorted(k.removeprefix("out/runs/") for k in _keys(client, bucket, "out/runs/"))
    assert len(names) == count, names
    return names[-1]
