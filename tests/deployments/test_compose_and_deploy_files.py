"""The Prefect stack files (docker-compose.yml, deployments/prefect.yaml) and ``desra deploy``.

No server is started here: the structure of the files is checked with PyYAML, the compose file with
``docker compose config`` where a compose client is installed, and ``desra deploy`` with its
subprocesses replaced by a recorder.
"""

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2.sandbox
import pytest
import yaml

from desra import cli

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"


@pytest.fixture(autouse=True)
def own_prefect_home(tmp_path, monkeypatch):
    """Anything that touches Prefect here writes into this test's own PREFECT_HOME."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def deployments() -> dict[str, dict]:
    spec = yaml.safe_load(PREFECT_FILE.read_text())
    return {d["name"]: d for d in spec["deployments"]}


def _compose_client() -> list[str] | None:
    """``docker compose`` (v2 plugin), else ``docker-compose`` (v1), else None."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for client in candidates:
        if subprocess.run([*client, "version"], capture_output=True, timeout=60).returncode == 0:
            return client
    return None


def _mount_target(volume: str) -> str:
    """``SOURCE:TARGET[:MODE]`` → TARGET (the source may hold ``${VAR:-default}``)."""
    parts = volume.split(":")
    return parts[-2] if parts[-1] in ("ro", "rw", "z", "Z") else parts[-1]


# --- docker-compose.yml ---------------------------------------------------------------------------

def test_compose_file_is_valid_for_the_compose_client():
    client = _compose_client()
    if client is None:
        pytest.skip("no compose client: neither `docker compose version` nor `docker-compose version` works")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    result = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(client)} config -q failed:\n{result.stdout}\n{result.stderr}"


def test_compose_has_the_three_services_with_healthchecks(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "worker"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"service {name} has no healthcheck"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["postgres"]["image"].startswith("postgres:16")
    assert {services["postgres"]["environment"][k] for k in
            ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")} == {"prefect"}
    assert any(v.startswith("postgres-data:") for v in services["postgres"]["volumes"])


def test_compose_server_uses_postgres_and_publishes_the_ui(compose):
    server = compose["services"]["prefect-server"]
    assert server["image"] == "prefecthq/prefect:3.9.1-python3.11"
    assert server["command"] == "prefect server start --host 0.0.0.0"
    env = server["environment"]
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://prefect:prefect@postgres:5432/prefect"
    assert str(env["PREFECT_SERVER_ANALYTICS_ENABLED"]).lower() == "false"
    assert str(env["DO_NOT_TRACK"]) == "1"
    assert "4200:4200" in server["ports"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "localhost:4200/api/health" in " ".join(server["healthcheck"]["test"])
    assert server["stop_signal"] == "SIGINT"


def test_compose_worker_registers_deployments_and_reserves_the_gpu(compose):
    worker = compose["services"]["worker"]
    assert worker["build"]["context"] == "."
    assert (REPO / worker["build"].get("dockerfile", "Dockerfile")).is_file()
    env = worker["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["DESRA_PROJECT_DIR"] == "/app"
    assert env["DESRA_CACHE"] == "/cache"
    assert str(env["DO_NOT_TRACK"]) == "1"
    mounts = {_mount_target(v) for v in worker["volumes"]}
    assert {env["DESRA_DROP_DIR"], env["DESRA_OUTPUT_DIR"], "/cache"} <= mounts

    script = " ".join(worker["command"]) if isinstance(worker["command"], list) else worker["command"]
    create = script.index("prefect work-pool create desra --type process")
    deploy = script.index("prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all")
    zombies = script.index("python -m desra.automations")
    start = script.index("prefect worker start --pool desra")
    assert create < deploy < zombies < start

    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert worker["stop_signal"] == "SIGINT"


def test_dockerignore_keeps_environments_and_outputs_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", "out", ".git", ".pytest_cache", ".ruff_cache", ".hypothesis"} <= ignored


# --- deployments/prefect.yaml ------------------------------------------------------------------------

def test_prefect_yaml_pulls_the_project_dir():
    spec = yaml.safe_load(PREFECT_FILE.read_text())
    step = spec["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == "{{ $DESRA_PROJECT_DIR }}"


def test_prefect_yaml_full_is_scheduled_over_the_drop(deployments):
    full = deployments["full"]
    assert full["entrypoint"] == "flows/full.py:desra"
    assert full["work_pool"]["name"] == "desra"
    assert [s["interval"] for s in full["schedules"]] == [600]
    assert full["schedules"][0].get("active", True) is True
    assert full["parameters"]["input_dir"] == "{{ $DESRA_DROP_DIR }}"
    assert full["parameters"]["output_dir"] == "{{ $DESRA_OUTPUT_DIR }}"


def test_prefect_yaml_on_drop_runs_on_the_drop_event(deployments):
    on_drop = deployments["on-drop"]
    assert on_drop["entrypoint"] == "flows/full.py:desra"
    assert on_drop["work_pool"]["name"] == "desra"
    [trigger] = on_drop["triggers"]
    assert trigger["type"] == "event"
    assert trigger["expect"] == ["desra.drop.landed"]
    assert "event.payload.folder" in trigger["parameters"]["input_dir"]
    assert "event.payload.output_dir" in trigger["parameters"]["output_dir"]


@pytest.mark.parametrize("payload, expected", [
    ({"folder": "/drop/a", "output_dir": "/out/a"}, ("/drop/a", "/out/a")),
    ({"folder": "/drop/b"}, ("/drop/b", "/registered/out")),
])
def test_on_drop_parameters_render_with_and_without_output_dir(deployments, monkeypatch, payload, expected):
    """Deploy-time ``{{ $VAR }}`` filling as ``prefect deploy`` does it, then the server's sandboxed
    Jinja with an event: a payload without ``output_dir`` falls back to the registered output root."""
    from prefect.utilities.templating import apply_values

    monkeypatch.setenv("DESRA_OUTPUT_DIR", "/registered/out")
    params = apply_values(deployments["on-drop"]["triggers"][0]["parameters"], os.environ, remove_notset=False)
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.ChainableUndefined)
    event = {"event": "desra.drop.landed", "payload": payload}
    rendered = tuple(env.from_string(params[k]).render(event=event) for k in ("input_dir", "output_dir"))
    assert rendered == expected


def test_prefect_yaml_batch_deployment(deployments):
    batch = deployments["desra-batch"]
    assert batch["entrypoint"] == "flows/batch.py:desra_batch"
    assert batch["work_pool"]["name"] == "desra"


@pytest.mark.parametrize("deployment, flow_name", [("full", "desra"), ("on-drop", "desra"),
                                                    ("desra-batch", "desra-batch")])
def test_entrypoints_are_prefect_flows(deployments, deployment, flow_name):
    from prefect import Flow

    path, function = deployments[deployment]["entrypoint"].split(":")
    assert (REPO / path).is_file(), f"entrypoint file {path} is missing"
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    obj = getattr(module, function, None)
    assert isinstance(obj, Flow), f"expected a Prefect flow at {path}:{function}, got {obj!r}"
    assert obj.name == flow_name


# --- desra deploy --------------------------------------------------------------------------------------

class Recorder:
    """Stands in for ``subprocess.run``: records each call and answers with the given exit codes."""

    def __init__(self, inspect_rc: int = 0, create_rc: int = 0, deploy_rc: int = 0):
        self.calls: list[tuple[list[str], Path, dict]] = []
        self.codes = {"inspect": inspect_rc, "create": create_rc, "deploy": deploy_rc}

    def __call__(self, command, cwd=None, env=None, **kwargs):
        self.calls.append((list(command), Path(cwd), dict(env)))
        verb = next(w for w in ("inspect", "create", "deploy") if w in command)
        return subprocess.CompletedProcess(command, self.codes[verb], stdout="", stderr="")

    def verbs(self) -> list[str]:
        return [next(w for w in ("inspect", "create", "deploy") if w in c) for c, _, _ in self.calls]


@pytest.fixture
def deploy_env(tmp_path, monkeypatch):
    for name in ("DESRA_PROJECT_DIR", "DESRA_MSE_MODEL", "DESRA_GAN_MODEL", "DESRA_SEGMENTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DESRA_DROP_DIR", str(tmp_path / "drop"))
    monkeypatch.setenv("DESRA_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setattr(cli, "_print_registered", lambda pool, names: None)  # would ask the API
    return tmp_path


def _never_run(*args, **kwargs):
    raise AssertionError(f"desra deploy ran a command before validating its environment: {args}")


@pytest.mark.parametrize("missing", [("DESRA_DROP_DIR",), ("DESRA_OUTPUT_DIR",),
                                     ("DESRA_DROP_DIR", "DESRA_OUTPUT_DIR")])
def test_deploy_requires_drop_and_output_dirs(deploy_env, monkeypatch, capsys, missing):
    for name in missing:
        monkeypatch.delenv(name)
    monkeypatch.setattr(subprocess, "run", _never_run)
    assert cli.main(["deploy"]) == 2
    err = capsys.readouterr().err
    for name in missing:
        assert name in err


def test_deploy_treats_an_empty_variable_as_missing(deploy_env, monkeypatch, capsys):
    monkeypatch.setenv("DESRA_DROP_DIR", "")
    monkeypatch.setattr(subprocess, "run", _never_run)
    assert cli.main(["deploy"]) == 2
    assert "DESRA_DROP_DIR" in capsys.readouterr().err


def test_deploy_creates_a_missing_pool_then_deploys_all(deploy_env, monkeypatch, capsys):
    recorder = Recorder(inspect_rc=1)
    monkeypatch.setattr(subprocess, "run", recorder)
    monkeypatch.chdir(deploy_env)  # found through the installed flows package, not the cwd
    assert cli.main(["deploy"]) == 0
    assert recorder.verbs() == ["inspect", "create", "deploy"]
    create, deploy = recorder.calls[1][0], recorder.calls[2][0]
    assert create[:3] == [sys.executable, "-m", "prefect"]
    assert create[3:] == ["work-pool", "create", "desra", "--type", "process"]
    assert deploy[3:] == ["--no-prompt", "deploy", "--prefect-file", str(Path("deployments/prefect.yaml")), "--all"]
    _, cwd, env = recorder.calls[2]
    assert cwd == REPO
    assert env["DESRA_PROJECT_DIR"] == str(REPO)
    assert env["DESRA_DROP_DIR"] == str(deploy_env / "drop")
    assert env["DESRA_MSE_MODEL"] == "realesrnet_x4plus"
    assert env["DESRA_GAN_MODEL"] == "realesrgan_x4plus"
    assert env["DESRA_SEGMENTER"] == "nvidia/segformer-b5-finetuned-ade-640-640"
    assert env["DO_NOT_TRACK"] == "1"
    assert "prefect worker start --pool desra" in capsys.readouterr().out


def test_deploy_keeps_what_the_user_set(deploy_env, monkeypatch):
    monkeypatch.setenv("DESRA_PROJECT_DIR", "/app")
    monkeypatch.setenv("DESRA_GAN_MODEL", "/weights/gan.pth")
    recorder = Recorder()
    monkeypatch.setattr(subprocess, "run", recorder)
    assert cli.main(["deploy"]) == 0
    assert recorder.verbs() == ["inspect", "deploy"]  # the pool exists
    env = recorder.calls[-1][2]
    assert env["DESRA_PROJECT_DIR"] == "/app"
    assert env["DESRA_GAN_MODEL"] == "/weights/gan.pth"


def test_deploy_to_another_pool_deploys_each_deployment(deploy_env, monkeypatch):
    recorder = Recorder(inspect_rc=1)
    monkeypatch.setattr(subprocess, "run", recorder)
    assert cli.main(["deploy", "--pool", "gpu-a"]) == 0
    assert recorder.calls[1][0][-4:] == ["create", "gpu-a", "--type", "process"]
    deploys = [c for c, _, _ in recorder.calls if "deploy" in c]
    assert [c[c.index("--name") + 1] for c in deploys] == ["full", "on-drop", "desra-batch"]
    assert all(c[c.index("--pool") + 1] == "gpu-a" and "--all" not in c for c in deploys)


@pytest.mark.parametrize("codes, expected_rc", [({"inspect_rc": 1, "create_rc": 3}, 3), ({"deploy_rc": 4}, 4)])
def test_deploy_returns_the_failing_command_exit_code(deploy_env, monkeypatch, capsys, codes, expected_rc):
    recorder = Recorder(**codes)
    monkeypatch.setattr(subprocess, "run", recorder)
    assert cli.main(["deploy"]) == expected_rc
    assert "error:" in capsys.readouterr().err


def test_deploy_without_the_prefect_file_says_where_it_looked(deploy_env, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_project_root", lambda: None)
    monkeypatch.setattr(subprocess, "run", _never_run)
    assert cli.main(["deploy"]) == 2
    assert "deployments/prefect.yaml" in capsys.readouterr().err.replace(os.sep, "/")
