"""A real Prefect server, the ``desra`` process work pool, the deployments of ``deployments/prefect.yaml``
and two process workers, started once per session for the integration tests, stopped at the end.

Like an installation, nothing here runs in this checkout: the server, ``desra deploy``, the workers and every
CLI call start in the stack's own temporary folder (``Stack.root``), and the workers' flow runs import the
installed ``desra`` package (the deployments' entrypoints are ``desra.flows`` modules).

The server wants credentials (``PREFECT_SERVER_API_AUTH_STRING``, a fresh random one per stack) and has
CSRF protection on; every client here (the ``prefect`` CLI, ``desra deploy``, the workers, their flow runs,
:meth:`Stack.client`) sends ``PREFECT_API_AUTH_STRING``. The pool is created by ``desra deploy``, so it has
desra's locked job template and a concurrency limit, as in production. The workers' environment sets
``DESRA_ALLOWED_ROOTS`` to the session's temporary folder, so runs over the tests' own folders pass
confinement. Everything runs against its own ``PREFECT_HOME`` on a free 127.0.0.1 port, with telemetry off
and the scheduler service off (so the 10-minute schedule of ``desra/full`` cannot start runs in the middle of a
test; the tests create runs themselves). Every process started here runs in its own process group,
which teardown terminates (then kills), also when a test or a fixture fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
POOL = "desra"
WORKER_NAMES = ("desra-it-a", "desra-it-b")
WORKER_LIMIT = 2  # the desra/full run holds one slot while its desra-batch runs need the others
POOL_LIMIT = 2 * WORKER_LIMIT  # `desra deploy --pool-limit`: one per worker slot
HEARTBEAT_SECONDS = 30  # desra's flow-run heartbeat (desra.automations.HEARTBEAT_SECONDS)
SERVER_START_TIMEOUT = 180.0  # a cold start takes ~10 s here, far longer when the 2 cores are busy
CLI_TIMEOUT = 180.0
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _prefect_cli() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


def _desra_cli() -> list[str]:
    return [sys.executable, "-m", "desra"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


class Proc:
    """A long-running subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
        """``cwd``: by default the log's folder (a stack's temporary folder), never this checkout."""
        self.name, self.args, self.log = name, args, log
        cwd = log.parent if cwd is None else cwd
        self._out = open(log, "wb")  # closed in stop()
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} (pid {self.popen.pid}, log {self.log}) ---\n{tail(self.log, lines)}"

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, and SIGKILL any descendant left.

        Workers start each flow run in a session of its own, outside the worker's process group, so the
        descendants are listed (before the worker dies and they are re-parented) and killed by pid.
        """
        pgid = self.popen.pid  # start_new_session: the leader's pid is the group id
        descendants = _descendants(self.popen.pid)
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in descendants:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._out.close()


def _descendants(pid: int) -> list[int]:
    """Pids of every living descendant of ``pid`` (from /proc; empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def sigkill_tree(stack: Stack, proc: Proc) -> list[int]:
    """SIGKILL ``proc``'s process group and every descendant (a flow-run process has its own session); the pids
    killed besides the group. ``proc`` is reaped and no longer one of the stack's processes."""
    victims = _descendants(proc.popen.pid)
    os.killpg(proc.popen.pid, signal.SIGKILL)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.stop(grace=0)  # reaps it and closes its log
    stack.procs.remove(proc)  # a dead process that wait_for should not complain about
    return victims


class Stack:
    """The running server and workers, the environment to reach them, and helpers that wait on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "prefect-home"
        self.home.mkdir()
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.procs: list[Proc] = []
        self.drop_dir, self.output_dir = root / "drop", root / "out-default"  # the deployments' defaults
        self.deploy_output = ""
        self.auth_string = f"desra:{secrets.token_urlsafe(18)}"  # user:password, as Prefect's basic auth wants
        # Nothing of this checkout on the path (PYTHONPATH): the processes import the installed package.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DESRA_", "PYTHONPATH"))}
        self.env.update({
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_AUTH_STRING": self.auth_string,  # clients; the server gets server_env()
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_CLI_COLORS": "false",
            "PREFECT_LOGGING_LOG_PRINTS": "false",
            "DESRA_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "250",
        })

    def server_env(self) -> dict[str, str]:
        """The server's environment, as in docker-compose.yml: it checks the credentials (and sends them from
        its own services, e.g. automations' actions), CSRF protection on, no client credentials."""
        env = {k: v for k, v in self.env.items() if k != "PREFECT_API_AUTH_STRING"}
        env.update({"PREFECT_SERVER_API_AUTH_STRING": self.auth_string,
                    "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true"})
        return env

    # -- processes -------------------------------------------------------------------------------
    def start(self, name: str, *args: str) -> Proc:
        """``prefect ARGS`` in the background; ``server start …`` with :meth:`server_env`, the rest with ``env``."""
        env = self.server_env() if args[:2] == ("server", "start") else self.env
        proc = Proc(name, [*_prefect_cli(), *args], env, self.root / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):  # workers before the server
            proc.stop()

    def logs(self, lines: int = 40) -> str:
        return "\n".join(p.tail(lines) for p in self.procs)

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT, input: str | None = None) -> str:
        """Run a ``prefect`` command to completion; its output, or a failure with output and log tails."""
        try:
            done = subprocess.run([*_prefect_cli(), *args], cwd=self.root, env=self.env, capture_output=True,
                                  text=True, timeout=timeout, input=input, start_new_session=True)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"`prefect {' '.join(args)}` did not finish in {timeout:.0f} s\n{e.stdout}\n{e.stderr}\n"
                        f"{self.logs()}")
        if done.returncode != 0:
            pytest.fail(f"`prefect {' '.join(args)}` exited {done.returncode}\nstdout:\n{done.stdout}\n"
                        f"stderr:\n{done.stderr}\n{self.logs()}")
        return done.stdout + done.stderr

    def desra(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        """Run a ``desra`` command (``python -m desra``) against this stack; the finished process."""
        try:
            return subprocess.run([*_desra_cli(), *args], cwd=self.root, env=self.env, capture_output=True, text=True,
                                  timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"`desra {' '.join(args)}` did not finish in {timeout:.0f} s\n{e.stdout}\n{e.stderr}\n"
                        f"{self.logs()}")

    def deploy(self, *args: str) -> str:
        """``desra deploy ARGS``, which must succeed; its output."""
        done = self.desra("deploy", *args)
        if done.returncode != 0:
            pytest.fail(f"`desra deploy {' '.join(args)}` exited {done.returncode}\nstdout:\n{done.stdout}\n"
                        f"stderr:\n{done.stderr}\n{self.logs()}")
        return done.stdout + done.stderr

    def client(self):
        """A sync client of this server with its credentials (independent of the test process's settings)."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url, auth_string=self.auth_string)

    def settings(self):
        """``temporary_settings`` that point this process's Prefect client at this server, with credentials."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        return temporary_settings(updates={PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth_string})

    # -- waiting ---------------------------------------------------------------------------------
    def wait_healthy(self, server: Proc, timeout: float = SERVER_START_TIMEOUT) -> None:
        deadline, last = time.monotonic() + timeout, "no answer yet"
        while time.monotonic() < deadline:
            if not server.alive():
                pytest.fail(f"the Prefect server exited with {server.popen.returncode} while starting\n"
                            f"{server.tail(80)}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.5)
        pytest.fail(f"the Prefect server at {self.api_url} was not healthy after {timeout:.0f} s "
                    f"(last: {last})\n{server.tail(80)}")

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
        """Call ``probe`` until it returns something truthy; fail with the process logs after ``timeout``."""
        deadline, last_error = time.monotonic() + timeout, None
        while True:
            try:
                value = probe()
                if value:
                    return value
            except Exception as e:  # an API hiccup: try again until the deadline, then show it
                last_error = e
            if time.monotonic() > deadline:
                break
            for proc in self.procs:
                if not proc.alive():
                    pytest.fail(f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}\n"
                                f"{self.logs()}")
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}"
                    f"{f' (last error: {last_error!r})' if last_error else ''}\n{self.logs()}")

    def run_logs(self, flow_run_id, lines: int = 60) -> str:
        """The last log lines that a flow run sent to the API."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        from prefect.client.schemas.sorting import LogSort

        try:
            with self.client() as client:
                logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                        sort=LogSort.TIMESTAMP_ASC)
        except Exception as e:
            return f"<cannot read the logs of flow run {flow_run_id}: {e!r}>"
        return "\n".join(f"{log.timestamp:%H:%M:%S} {log.name}: {log.message}" for log in logs[-lines:])

    def wait_for_flow_run(self, flow_run_id, timeout: float = 180.0):
        """Wait until the flow run is final; it must be Completed. Returns the flow run."""
        def final():
            with self.client() as client:
                run = client.read_flow_run(flow_run_id)
            return run if run.state is not None and run.state.is_final() else None

        run = self.wait_for(f"flow run {flow_run_id} to finish", final, timeout)
        if not run.state.is_completed():
            pytest.fail(f"flow run {run.name} ({flow_run_id}) ended {run.state.name}: {run.state.message}\n"
                        f"--- its logs ---\n{self.run_logs(flow_run_id)}\n{self.logs()}")
        return run

    def run_deployment(self, name: str, parameters: dict) -> str:
        """``prefect deployment run NAME --params JSON``; the new flow run's id."""
        out = self.cli("deployment", "run", name, "--params", json.dumps(parameters))
        ids = UUID_RE.findall(out)
        if not ids:
            pytest.fail(f"no flow run id in the output of `prefect deployment run {name}`:\n{out}")
        return ids[-1]

    def table_artifact(self, key: str, flow_run_id) -> list[dict]:
        """Rows of the table artifact ``key`` that the flow run created (read through the API)."""
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

        with self.client() as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        assert len(found) == 1, f"expected one '{key}' artifact of flow run {flow_run_id}, got {len(found)}"
        assert found[0].type == "table", found[0]
        data = found[0].data
        return json.loads(data) if isinstance(data, str) else data


def write_lr(path: Path, seed: int, size: int = 40) -> None:
    """A small smooth 8-bit RGB image with some texture (the tiny random SR models disagree on it)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path


def make_drop(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` 40×40 PNGs in ``folder``; their stems."""
    stems = [f"img{seed + i:02d}" for i in range(count)]
    for i, stem in enumerate(stems):
        write_lr(folder / f"{stem}.png", seed + i)
    return stems


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Random-init tiny RRDBNet (as the MSE model) and Compact (as the GAN model) ``.pth`` files."""
    from tests.core.models.test_sr import save_tiny_pair

    mse, gan = save_tiny_pair(tmp_path_factory.mktemp("models"), "mse_rrdb_tiny_x4.pth", "gan_compact_tiny_x4.pth")
    return {"mse": mse, "gan": gan}


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_models) -> Iterator[Stack]:
    """Server + work pool + deployments + two process workers, for the whole session."""
    root = tmp_path_factory.mktemp("prefect-stack")
    s = Stack(root)
    s.drop_dir.mkdir()
    s.output_dir.mkdir()
    s.env.update({  # the deployments' parameter defaults come from these at deploy time
        "DESRA_ALLOWED_ROOTS": str(tmp_path_factory.getbasetemp()),  # the workers' runs: the tests' folders
        "DESRA_DROP_DIR": str(s.drop_dir),
        "DESRA_OUTPUT_DIR": str(s.output_dir),
        "DESRA_MSE_MODEL": tiny_models["mse"],
        "DESRA_GAN_MODEL": tiny_models["gan"],
        "DESRA_SEGMENTER": "",  # no semantic adjustment
    })
    try:
        server = s.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(s.port),
                         "--no-scheduler", "--no-ui", "--analytics-off")
        s.wait_healthy(server)
        s.deploy_output = s.deploy("--pool-limit", str(POOL_LIMIT))  # creates the locked pool first
        for name in WORKER_NAMES:
            s.start(name, "worker", "start", "--pool", POOL, "--type", "process", "--name", name,
                    "--limit", str(WORKER_LIMIT))
        s.wait_for("both workers to poll the pool", lambda: _online_workers(s) >= set(WORKER_NAMES), 90)
        yield s
    finally:
        s.stop_all()


def _online_workers(s: Stack) -> set[str]:
    with s.client() as client:
        return {w.name for w in client.read_workers_for_work_pool(POOL) if w.status == "ONLINE"}
