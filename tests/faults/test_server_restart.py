"""The Prefect server restarts (same port, same database) while a ``desra run`` against it is working:
the run either finishes or fails with a message, and a re-run completes every image."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from tests.faults.conftest import latest_run, start_server, store_files, untrustworthy_files
from tests.flows.conftest import write_lr
from tests.integration.conftest import Stack, tail

pytestmark = pytest.mark.integration

UUID_IN_URL = re.compile(r"flow-run/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")

IMAGES = 8
RUN_TIMEOUT = 240.0


@pytest.mark.parametrize("client_retries", [None, "0"], ids=["default-retries", "no-retries"])
def test_server_restart_during_a_run(server_stack: Stack, tmp_path, tiny_models, client_retries):
    """With the client's default retries (5, backing off 2, 4, 8, 16, 32 s) a restart of a few seconds is
    bridged; with none, it is an outage longer than the retries."""
    stack = server_stack
    env = dict(stack.env)
    if client_retries is not None:
        env["PREFECT_CLIENT_MAX_RETRIES"] = client_retries
    drop, out = tmp_path / "drop", tmp_path / "out"
    stems = [f"img{i}" for i in range(IMAGES)]
    for i, stem in enumerate(stems):
        write_lr(drop / f"{stem}.png", i, size=96)
    cmd = [sys.executable, "-m", "desra", "run", str(drop), "--out", str(out), "--mse-model", tiny_models[0],
           "--gan-model", tiny_models[1], "--no-semantic", "--min-area", "10", "--batch-size", "2"]
    log = tmp_path / "run-1.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=stack.root, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        detect = out / ".desra" / "store" / "detect"
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(list(detect.rglob("*.json"))) < 1:
            assert proc.poll() is None, f"the run ended before the restart\n{tail(log)}"
            assert time.monotonic() < deadline, f"no detection after {RUN_TIMEOUT} s\n{tail(log)}"
            time.sleep(0.1)
        stack.server.stop()  # SIGTERM: a clean shutdown
        stack.procs.remove(stack.server)
        assert proc.poll() is None, f"the run ended before the server went down\n{tail(log)}"
        down_at = time.monotonic()
        stack.server = start_server(stack, "server-2")
        downtime = time.monotonic() - down_at
        rc = proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text(errors="replace")
    seen = UUID_IN_URL.search(output)
    assert seen, f"the run did not log its flow run id\n{output[-3000:]}"
    with stack.client() as client:
        recorded = client.read_flow_run(seen.group(1)).state
    if client_retries is None and downtime < 30:
        assert rc == 0, f"the client's retries did not bridge a {downtime:.0f} s restart\n{output[-3000:]}"
    if rc == 0:  # the client's retries bridged the downtime, and the server knows the run finished
        assert f"{IMAGES} ok, 0 failed of {IMAGES} image(s)" in output, output[-3000:]
        assert recorded.is_completed(), recorded
    else:
        # An API call during the downtime (with no retries left) raised httpx.ConnectError in the flow;
        # reporting the Failed state then failed too, so the process exits 1 with that traceback and the
        # server keeps the run as Running (it never heard of its end).
        assert "Connection refused" in output or "ConnectError" in output, output[-3000:]
        assert not recorded.is_completed(), recorded
    assert untrustworthy_files(out) == []

    rerun = subprocess.run(cmd, cwd=stack.root, env=stack.env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"{IMAGES} ok, 0 failed of {IMAGES} image(s)" in rerun.stdout
    assert (latest_run(out)["status"] == "ok").all()
    assert store_files(out)
    print(f"server down for {downtime:.1f} s; first run exited {rc}, recorded as {recorded.type.value}")
