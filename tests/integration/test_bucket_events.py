"""Drops in a bucket on a real server (issue 19): the event path from S3 notifications to one desra/on-drop run,
and the confinement of URL parameters, seen from the S3 server's own request log.

A stack of this module's own: an authenticated Prefect server, ``desra deploy`` with ``DESRA_DROP_DIR`` and
``DESRA_OUTPUT_DIR`` set to ``s3://`` URLs (so the deployments are registered on, and confined to, the bucket's
``drops`` and ``out`` prefixes: the worker has no ``DESRA_ALLOWED_ROOTS``), one process worker with the ``AWS_*``
variables of moto's S3 and SQS server, and ``desra watch`` between the bucket's notifications and the server.
moto runs in this test process (``RecordingMotoServer`` of ``tests/storage/conftest.py``), so its request log
shows every request that the workers' runs made, and every one they did not make. SQS is served by a second,
plain moto server in the same process (moto's state is per process, so the bucket's notifications reach its
queue): the recording server answers one request at a time, and the watcher's long polls would otherwise hold
every S3 request of the runs and of the test back for up to a second each.
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.integration.conftest import POOL, Proc, Stack, make_drop
from tests.storage.conftest import ACCESS_KEY, SECRET, RecordingMotoServer, Served  # skips without moto or obstore

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 300.0
QUIET_S = 8.0  # desra watch --quiet: the burst's uploads come far closer together than this
MARGIN_S = 5.0  # beyond the quiet period: time for a second event (and its run) to show up, if there were one
WORKER_LIMIT = 4  # the refused runs run side by side
IMAGES = 20


class BucketStack:
    """The stack, the S3 server (with its request log) and the SQS server, the bucket the deployments were
    registered on, its queue, another bucket."""

    def __init__(self, stack: Stack, s3: RecordingMotoServer, sqs_endpoint: str, bucket: str, queue_url: str,
                 other: str) -> None:
        self.stack, self.s3, self.sqs_endpoint = stack, s3, sqs_endpoint
        self.bucket, self.queue_url, self.other = bucket, queue_url, other

    def client(self, service: str = "s3") -> Any:
        import boto3  # type: ignore[import-untyped]

        return boto3.client(service, endpoint_url=self.s3.endpoint if service == "s3" else self.sqs_endpoint,
                            region_name="us-east-1", aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET)

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix/`` of the bucket, relative to it (a listing; nothing downloaded)."""
        found = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{prefix}/"):
            found += [entry["Key"].removeprefix(f"{prefix}/") for entry in page.get("Contents", [])]
        return found

    def read(self, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def queue_counts(self) -> tuple[int, int]:
        attributes = self.client("sqs").get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _aws_env(s3_endpoint: str, sqs_endpoint: str, root: Path) -> dict[str, str]:
    """What a worker and ``desra watch`` need to reach moto: its endpoints and the fake credentials, and nothing
    from this machine's own AWS set-up."""
    return {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ENDPOINT_URL_SQS": sqs_endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
            "AWS_CONFIG_FILE": str(root / "no-aws-config")}


@pytest.fixture(scope="module")
def bucket_stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, str]) -> Iterator[BucketStack]:
    """moto's S3 and SQS server; a bucket whose object-created notifications go to a queue, and another bucket
    with images under ``x/``; a Prefect server with the deployments registered on ``s3://<bucket>/drops`` and
    ``s3://<bucket>/out``; one process worker without ``DESRA_ALLOWED_ROOTS``."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    s3, sqs_server = RecordingMotoServer(), ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    sqs_server.start()
    sqs_endpoint = "http://{}:{}".format(*sqs_server.get_host_and_port())
    root = tmp_path_factory.mktemp("bucket-stack")
    stack = Stack(root)
    try:
        bucket, other = f"desra-{uuid.uuid4().hex[:12]}", f"other-{uuid.uuid4().hex[:12]}"
        env = _aws_env(s3.endpoint, sqs_endpoint, root)
        probe = BucketStack(stack, s3, sqs_endpoint, bucket, "", other)
        sqs, client = probe.client("sqs"), probe.client()
        queue_url = sqs.create_queue(QueueName=bucket)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        client.create_bucket(Bucket=bucket)
        client.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
        client.create_bucket(Bucket=other)
        for path in sorted(Path(p) for p in _local_drop(root / "other-x", 2, seed=80)):
            client.put_object(Bucket=other, Key=f"x/{path.name}", Body=path.read_bytes())

        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3",
                     "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
            stack.env.pop(name, None)
        stack.env.update({**env,
                          "DESRA_DROP_DIR": f"s3://{bucket}/drops", "DESRA_OUTPUT_DIR": f"s3://{bucket}/out",
                          "DESRA_MSE_MODEL": tiny_models["mse"], "DESRA_GAN_MODEL": tiny_models["gan"],
                          "DESRA_SEGMENTER": "", "DESRA_CACHE": str(root / "desra-cache")})
        server = stack.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(stack.port),
                             "--no-scheduler", "--no-ui", "--analytics-off")
        stack.wait_healthy(server)
        stack.deploy_output = stack.deploy("--pool-limit", str(WORKER_LIMIT))
        stack.start("worker", "worker", "start", "--pool", POOL, "--type", "process", "--name", "bucket-worker",
                    "--limit", str(WORKER_LIMIT))
        stack.wait_for("the worker to poll the pool", lambda: _worker_online(stack), 90)
        yield BucketStack(stack, s3, sqs_endpoint, bucket, queue_url, other)
    finally:
        stack.stop_all()
        sqs_server.stop()
        s3.stop()


def _local_drop(folder: Path, count: int, seed: int) -> list[str]:
    make_drop(folder, count, seed=seed)
    return [str(p) for p in sorted(folder.glob("*.png"))]


def _worker_online(stack: Stack) -> bool:
    with stack.client() as client:
        return any(w.status == "ONLINE" for w in client.read_workers_for_work_pool(POOL))


def _runs_of(stack: Stack, deployment: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

    with stack.client() as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(), deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=[deployment])))


def _wait_final(stack: Stack, flow_run_id: Any, timeout: float = RUN_TIMEOUT) -> Any:
    def final() -> Any:
        with stack.client() as client:
            run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    return stack.wait_for(f"flow run {flow_run_id} to finish", final, timeout)


def _task_runs(stack: Stack, flow_run_id: Any) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with stack.client() as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _shown(log: list[Served]) -> str:
    return "\n".join(f"{s.method} {s.path}?{s.query} -> {s.status}" for s in log[:40])


# -- 1. the event path ----------------------------------------------------------------------------------------------

@pytest.fixture
def watcher(bucket_stack: BucketStack) -> Iterator[Proc]:
    """``desra watch`` in its own process, between the bucket's queue and the stack's server; stopped after."""
    b = bucket_stack
    log = b.stack.root / f"watch-{uuid.uuid4().hex[:6]}.log"
    proc = Proc("desra-watch", [sys.executable, "-m", "desra", "watch", "--queue-url", b.queue_url,
                                "--drop", f"s3://{b.bucket}/drops", "--out", f"s3://{b.bucket}/out",
                                "--quiet", str(QUIET_S), "--max-wait", "120", "--poll", "1"], b.stack.env, log)
    b.stack.procs.append(proc)
    try:
        b.stack.wait_for("desra watch to start watching", lambda: "watching" in log.read_text(errors="replace"), 120)
        yield proc
    finally:
        proc.stop()
        b.stack.procs.remove(proc)


def _settle(b: BucketStack, watcher: Proc) -> None:
    """Wait until the queue is empty (every notification taken and its event emitted), then the quiet period and a
    margin more: time for any further event, and its run, to appear."""
    b.stack.wait_for("the watcher to empty the queue", lambda: b.queue_counts() == (0, 0), 120)
    time.sleep(QUIET_S + MARGIN_S)
    assert watcher.alive(), watcher.tail()


def _emitted(watcher: Proc, folder: str) -> int:
    return sum(f"emitted desra.drop.landed for {folder} " in line for line in watcher.log.read_text().splitlines())


def _run_frames(b: BucketStack) -> dict[str, pd.DataFrame]:
    """The runs' reports in the output root: key → table."""
    return {key: pd.read_parquet(io.BytesIO(b.read(f"out/{key}"))) for key in b.keys("out")
            if key.startswith("runs/") and key.endswith(".parquet")}


def test_a_burst_of_uploads_starts_one_on_drop_run_and_the_same_bytes_again_cost_no_model_work(
        bucket_stack: BucketStack, watcher: Proc, tmp_path: Path) -> None:
    """20 uploads into one drop folder start exactly one desra/on-drop run (counted after the queue is empty and the
    quiet period and a margin have passed; the run's own ~300 output objects also notify the queue, and the watcher
    ignores them), which completes and publishes every image into the bucket.

    Uploading the same 20 files again does start a second run: S3 notifies every PUT, whatever the bytes, and the
    watcher keeps no memory of content, so it emits one more event. That run does no model work (its runs parquet:
    cached everywhere, computed empty; its log: 20 from the store, model calls 0) and downloads none of the images,
    because each image's "seen" record (URL, ETag, size) is unchanged."""
    b, stack = bucket_stack, bucket_stack.stack
    folder = f"s3://{b.bucket}/drops/burst-1"
    files = {Path(p).name: Path(p).read_bytes() for p in _local_drop(tmp_path / "burst", IMAGES, seed=0)}
    stems = sorted(Path(n).stem for n in files)
    known = {r.id for r in _runs_of(stack, "on-drop")}
    client = b.client()
    first_start = len(b.s3.app.log)
    for name, data in files.items():
        client.put_object(Bucket=b.bucket, Key=f"drops/burst-1/{name}", Body=data)

    (new,) = stack.wait_for("the desra/on-drop run of the burst",
                            lambda: [r for r in _runs_of(stack, "on-drop") if r.id not in known], 120)
    run = _wait_final(stack, new.id)
    assert run.state.is_completed(), (run.state.name, run.state.message, stack.run_logs(run.id), watcher.tail())
    assert run.parameters["input_dir"] == folder and run.parameters["output_dir"] == f"s3://{b.bucket}/out"
    assert run.state.message == f"{IMAGES} ok, 0 failed of {IMAGES} image(s)"
    # the log sees the worker's runs: this one read every image of the drop (so an empty log means no request)
    read = {s.path.rsplit("/", 1)[1] for s in b.s3.app.log[first_start:]
            if s.method == "GET" and s.path.startswith(f"/{b.bucket}/drops/burst-1/") and s.status in (200, 206)}
    assert read == set(files), sorted(read)
    _settle(b, watcher)
    assert [r.id for r in _runs_of(stack, "on-drop") if r.id not in known] == [run.id], "more than one run"
    assert _emitted(watcher, folder) == 1, watcher.tail()

    out = set(b.keys("out"))
    for stem in stems:
        for kind in ("masks", "pseudo_gt", "sr/mse", "sr/gan"):
            assert f"{kind}/{stem}.png" in out, f"{kind}/{stem}.png is not in s3://{b.bucket}/out"
        assert f"reports/{stem}.parquet" in out
    assert "report.html" in out
    assert len([k for k in out if k.startswith(".desra/published/")]) == IMAGES
    (first_report,) = _run_frames(b).values()
    assert sorted(first_report["stem"]) == stems and (first_report["computed"].fillna("") != "").all()

    # The same bytes again: a second event and run, without model work or image downloads (see the docstring).
    runs_before = set(_run_frames(b))
    start = len(b.s3.app.log)
    for name, data in files.items():
        client.put_object(Bucket=b.bucket, Key=f"drops/burst-1/{name}", Body=data)
    (again,) = stack.wait_for("the desra/on-drop run of the repeated burst",
                              lambda: [r for r in _runs_of(stack, "on-drop") if r.id not in known | {run.id}], 120)
    rerun = _wait_final(stack, again.id)
    assert rerun.state.is_completed(), (rerun.state.name, rerun.state.message, stack.run_logs(rerun.id))
    assert rerun.state.message == f"{IMAGES} ok, 0 failed of {IMAGES} image(s)"
    # the run's last log lines reach the API a moment after its final state: wait for them
    stack.wait_for("the rerun's log line on its model work",
                   lambda: f"{IMAGES} image(s): {IMAGES} from the store, model calls 0" in stack.run_logs(rerun.id), 60)
    image_reads = [s for s in b.s3.app.log[start:]
                   if s.method == "GET" and s.path.startswith(f"/{b.bucket}/drops/burst-1/") and s.status in (200, 206)]
    _settle(b, watcher)
    assert sorted(str(r.id) for r in _runs_of(stack, "on-drop") if r.id not in known) == sorted(
        [str(run.id), str(rerun.id)]), "more than one run for the repeated burst"
    assert _emitted(watcher, folder) == 2, watcher.tail()
    frames = _run_frames(b)
    (new_key,) = set(frames) - runs_before
    second = frames[new_key]
    assert sorted(second["stem"]) == stems
    assert second["cached"].all() and (second["computed"].fillna("") == "").all(), second[["stem", "cached",
                                                                                             "computed"]]
    assert image_reads == [], f"the repeated run downloaded the drop's images: {_shown(image_reads)}"


# -- 2. confinement, from the S3 server's request log ------------------------------------------------------------------

def test_runs_and_events_naming_other_buckets_or_prefixes_fail_without_one_request(bucket_stack: BucketStack
                                                                                     ) -> None:
    """Four refused runs side by side, two created through the API and two by ``desra.drop.landed`` events:
    each ends Failed with the sentence that names the parameter and the registered URLs, runs no task, and the S3
    server answers no request at all from the moment they are created until the last has failed."""
    b, stack = bucket_stack, bucket_stack.stack
    drops, out = f"s3://{b.bucket}/drops", f"s3://{b.bucket}/out"
    cases = [  # (how, deployment, parameters or event payload, the refused parameter)
        ("api", "full", {"input_dir": f"s3://{b.other}/x"}, "input_dir"),
        ("api", "full", {"input_dir": f"{drops}/burst-9", "output_dir": f"s3://{b.bucket}/outx"}, "output_dir"),
        ("event", "on-drop", {"folder": f"s3://{b.other}/x"}, "input_dir"),
        ("event", "on-drop", {"folder": f"{drops}/burst-9", "output_dir": f"s3://{b.other}/out"}, "output_dir"),
    ]
    known = {r.id for r in _runs_of(stack, "on-drop")}
    start = len(b.s3.app.log)
    created: list[tuple[Any, str, str]] = []  # (flow run id, deployment, parameter)
    for i, (how, deployment, values, parameter) in enumerate(cases):
        if how == "api":
            created.append((stack.run_deployment(f"desra/{deployment}", values), deployment, parameter))
            continue
        stack.cli("event", "emit", "desra.drop.landed", "--resource-id", f"desra.drop.confinement-{i}",
                  "--payload", json.dumps(values))
        (new,) = stack.wait_for("the desra/on-drop run of the event",
                                lambda: [r for r in _runs_of(stack, "on-drop") if r.id not in known], 60)
        known.add(new.id)
        assert new.parameters["input_dir"] == values["folder"]
        assert new.parameters["output_dir"] == values.get("output_dir", out)
        created.append((new.id, deployment, parameter))

    runs = [(_wait_final(stack, run_id), deployment, parameter) for run_id, deployment, parameter in created]
    during = b.s3.app.log[start:]
    for run, deployment, parameter in runs:
        roots = (f"the folders that deployment desra/{deployment} was registered with ({drops}, {out}, "
                 f"{stack.env['DESRA_MSE_MODEL']}, {stack.env['DESRA_GAN_MODEL']})")
        assert run.state.is_failed(), (run.state.name, run.state.message, stack.run_logs(run.id))
        assert run.state.message == (f"refused: expected {parameter} inside the allowed roots, {roots}, got "
                                     f"{run.parameters[parameter]}; set DESRA_ALLOWED_ROOTS on the worker to allow "
                                     "other folders"), run.state.message
        assert _task_runs(stack, run.id) == [], "a refused run started tasks"
    assert during == [], f"the S3 server was asked {len(during)} request(s) while the refused runs ran:\n" \
                         f"{_shown(during)}"
    # nothing, ever, on the other bucket or on the prefix that only starts like the output root
    elsewhere = [s for s in b.s3.app.log
                 if s.path.startswith((f"/{b.other}/out", f"/{b.bucket}/outx", f"/{b.bucket}/drops/burst-9"))
                 or (s.path.rstrip("/") == f"/{b.other}" and s.method != "PUT")]
    assert elsewhere == [], _shown(elsewhere)
    assert [s for s in b.s3.app.log if s.path.startswith(f"/{b.other}/x/") and s.method != "PUT"] == []
