"""``desra run`` SIGKILLed in the middle of a run (issue 16): its embedded Prefect server dies with it, and
the next run on the output root removes the temporary file that the killed run was writing.

The kill comes at the worst moment, deterministically: the killed process runs ``desra run`` with
``shutil.copyfile`` wrapped so that, once it has copied the first published file into its temporary name
(before the rename), it says so in a marker file and then blocks until it is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from desra.flows.full import desra
from tests.faults.conftest import untrustworthy_files
from tests.flows.conftest import write_lr
from tests.integration.conftest import REPO, _descendants, tail

pytestmark = pytest.mark.slow

SERVER_START = 300  # seconds the embedded server may take to start on a small, shared machine
START_TIMEOUT = SERVER_START + 120.0  # until the first image is published
EXIT_TIMEOUT = 30.0  # the kernel's SIGKILL of the orphaned server, and its reaping

BLOCKED_RUN = """
import shutil, sys, threading
from pathlib import Path

marker, argv = Path(sys.argv[1]), sys.argv[2:]
real = shutil.copyfile

def copyfile(src, dst, *args, **kwargs):
    real(src, dst, *args, **kwargs)
    marker.write_text(str(dst))  # the temporary file exists now, not yet renamed into place
    threading.Event().wait()  # until SIGKILL

shutil.copyfile = copyfile
from desra.cli import main
sys.exit(main(argv))
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie waiting to be reaped has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_desra_run_leaves_no_server_and_the_next_run_no_temporary_file(tmp_path, tiny_models):
    drop, out, marker = tmp_path / "drop", tmp_path / "out", tmp_path / "blocked"
    for i in range(2):
        write_lr(drop / f"img{i}.png", i)
    script = tmp_path / "blocked_run.py"
    script.write_text(BLOCKED_RUN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # no API: the embedded one
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "1", "DESRA_OFFLINE": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO),
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(SERVER_START)})
    log = tmp_path / "run.log"
    with open(log, "wb") as fh:
        run = subprocess.Popen([sys.executable, str(script), str(marker), "run", str(drop), "--out", str(out),
                                "--mse-model", tiny_models[0], "--gan-model", tiny_models[1], "--no-semantic",
                                "--min-area", "10"], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    descendants: list[int] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not marker.exists():
            assert run.poll() is None, f"desra run exited with {run.returncode} before publishing\n{tail(log)}"
            assert time.monotonic() < deadline, f"desra run did not publish in {START_TIMEOUT:.0f} s\n{tail(log)}"
            time.sleep(0.2)
        descendants = _descendants(run.pid)
        servers = [p for p in descendants if "uvicorn" in _cmdline(p) and "prefect.server" in _cmdline(p)]
        assert servers, f"no embedded server among the run's processes: {[_cmdline(p) for p in descendants]}"
        temp = Path(marker.read_text())
        assert temp.is_file() and ".tmp" in temp.name, temp

        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        deadline = time.monotonic() + EXIT_TIMEOUT
        while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {p: _cmdline(p) for p in descendants if _alive(p)}
        assert not left, f"processes of the killed desra run live on: {left}"
    finally:
        for pid in [run.pid, *descendants]:  # whatever the outcome, leave nothing running
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        run.wait(timeout=10)

    assert temp.is_file(), "the killed run's temporary file is gone before the next run"
    state = desra(input_dir=str(drop), output_dir=str(out), mse_model=tiny_models[0], gan_model=tiny_models[1],
                  segmenter=None, min_area=10, return_state=True)
    assert state.is_completed(), state.message
    assert not temp.exists()
    assert [p for p in out.rglob("*") if ".tmp" in p.name] == []
    assert untrustworthy_files(out) == []
