"""The Prefect stack files (docker-compose.yml, deployments/prefect.yaml) and ``desra deploy``.

No server is started here: the structure of the files is checked with PyYAML, the compose file with
``docker compose config`` where a compose client is installed, and ``desra deploy`` with its
subprocesses replaced by a recorder.
"""

import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jinja2.sandbox
import pytest
import yaml

from desra import cli
from tests.conftest import unavailable

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

COMPOSE_SECRETS = {"DESRA_API_AUTH": "desra:s3cret-for-the-test", "DESRA_DB_PASSWORD": "db-s3cret-for-the-test"}
S3_SECRETS = {"MINIO_ROOT_USER": "desra-0123abcd", "MINIO_ROOT_PASSWORD": "minio-s3cret-for-the-test"}
S3_SERVICES = {"minio", "minio-setup"}  # the services of the compose profile "s3"
S3_ONE_SHOT = {"minio-setup"}  # runs once and exits: no healthcheck


def _compose_config(client: list[str], extra_env: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DESRA_", "MINIO_"))}
    return subprocess.run([*client, "-f", str(COMPOSE), *options, "config"], cwd=REPO, env={**env, **extra_env},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def compose_client() -> list[str]:
    client = _compose_client()
    if client is None:
        unavailable("no compose client: neither `docker compose version` nor `docker-compose version` works")
    return client


def test_compose_file_is_valid_for_the_compose_client(compose_client):
    result = _compose_config(compose_client, COMPOSE_SECRETS)
    assert result.returncode == 0, f"{' '.join(compose_client)} config failed:\n{result.stdout}\n{result.stderr}"
    rendered = yaml.safe_load(result.stdout)
    server, worker = rendered["services"]["prefect-server"], rendered["services"]["worker"]
    assert server["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == COMPOSE_SECRETS["DESRA_API_AUTH"]
    assert worker["environment"]["PREFECT_API_AUTH_STRING"] == COMPOSE_SECRETS["DESRA_API_AUTH"]
    assert server["environment"]["PREFECT_SERVER_DATABASE_PASSWORD"] == COMPOSE_SECRETS["DESRA_DB_PASSWORD"]
    assert rendered["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == COMPOSE_SECRETS["DESRA_DB_PASSWORD"]
    [port] = server["ports"]  # v1 renders "127.0.0.1:4200:4200", v2 a mapping
    published = port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}:{port['target']}"
    assert published.removesuffix("/tcp") == "127.0.0.1:4200:4200", port


@pytest.mark.parametrize("missing", sorted(COMPOSE_SECRETS))
def test_compose_refuses_to_start_without_a_secret(compose_client, missing):
    result = _compose_config(compose_client, {k: v for k, v in COMPOSE_SECRETS.items() if k != missing})
    assert result.returncode != 0, result.stdout
    assert f"set {missing}" in result.stderr, result.stderr  # the `${VAR:?message}` message


def test_compose_publishes_elsewhere_only_when_told(compose_client):
    result = _compose_config(compose_client, {**COMPOSE_SECRETS, "DESRA_BIND": "0.0.0.0"})
    assert result.returncode == 0, result.stderr
    [port] = yaml.safe_load(result.stdout)["services"]["prefect-server"]["ports"]
    assert (port if isinstance(port, str) else port["host_ip"]).startswith("0.0.0.0"), port


def test_compose_has_the_three_services_with_healthchecks(compose):
    services = compose["services"]
    assert {name for name, s in services.items() if not s.get("profiles")} == {"postgres", "prefect-server", "worker"}
    for name, service in services.items():
        if name not in S3_ONE_SHOT:  # every long-running service, the s3 profile's included
            assert service.get("healthcheck", {}).get("test"), f"service {name} has no healthcheck"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${DESRA_DB_PASSWORD:?")
    assert "ports" not in services["postgres"]  # the database is reachable inside the compose network only
    assert any(v.startswith("postgres-data:") for v in services["postgres"]["volumes"])


def _required(value: str, variable: str) -> bool:
    """``value`` is exactly ``${VARIABLE:?message}``: compose refuses to start without the variable."""
    return value.startswith("${" + variable + ":?") and value.endswith("}") and value.count("${") == 1


def test_compose_has_no_literal_secrets(compose):
    server = compose["services"]["prefect-server"]["environment"]
    worker = compose["services"]["worker"]["environment"]
    postgres = compose["services"]["postgres"]["environment"]
    assert _required(server["PREFECT_SERVER_API_AUTH_STRING"], "DESRA_API_AUTH")
    assert _required(worker["PREFECT_API_AUTH_STRING"], "DESRA_API_AUTH")
    assert _required(server["PREFECT_SERVER_DATABASE_PASSWORD"], "DESRA_DB_PASSWORD")
    assert _required(postgres["POSTGRES_PASSWORD"], "DESRA_DB_PASSWORD")
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in server  # it would hold the password
    text = COMPOSE.read_text()
    assert "${DESRA_API_AUTH:-" not in text and "${DESRA_DB_PASSWORD:-" not in text  # no default secret
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "AUTH_STRING", "SECRET", "TOKEN", "API_KEY")):
                if service.get("profiles"):  # not required in the file (see _required_variables); no default
                    assert value == "${" + key + ":-}", f"{key} of {name} has a literal or default value"
                else:
                    assert str(value).startswith("${") and ":?" in str(value), f"{key} has a literal value"


def test_compose_server_uses_postgres_and_publishes_the_ui_on_localhost(compose):
    server = compose["services"]["prefect-server"]
    assert server["image"] == "prefecthq/prefect:3.9.1-python3.11"
    assert server["command"] == "prefect server start --host 0.0.0.0"
    env = server["environment"]
    assert env["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert env["PREFECT_SERVER_DATABASE_HOST"] == "postgres"
    assert str(env["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"]).lower() == "true"
    assert str(env["PREFECT_SERVER_ANALYTICS_ENABLED"]).lower() == "false"
    assert str(env["DO_NOT_TRACK"]) == "1"
    assert server["ports"] == ["${DESRA_BIND:-127.0.0.1}:4200:4200"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "localhost:4200/api/health" in " ".join(server["healthcheck"]["test"])  # open without credentials
    assert server["stop_signal"] == "SIGINT"


def test_compose_worker_deploys_a_locked_pool_and_reserves_the_gpu(compose):
    worker = compose["services"]["worker"]
    assert worker["build"]["context"] == "."
    assert (REPO / worker["build"].get("dockerfile", "Dockerfile")).is_file()
    env = worker["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert "DESRA_PROJECT_DIR" not in env  # flow runs import the installed package, not a checkout
    assert env["DESRA_CACHE"] == "/cache"
    assert str(env["DO_NOT_TRACK"]) == "1"
    assert str(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) == "30"  # the window desra deploy sets counts on it
    mounts = {_mount_target(v) for v in worker["volumes"]}
    assert mounts == {env["DESRA_DROP_DIR"], env["DESRA_OUTPUT_DIR"], "/cache"}  # data only: no source mount
    assert "working_dir" not in worker  # the image's own (/data): no folder of code

    script = " ".join(worker["command"]) if isinstance(worker["command"], list) else worker["command"]
    deploy = script.index("desra deploy --pool-limit ${DESRA_POOL_LIMIT:-1}")
    start = script.index("prefect worker start --pool desra --type process --limit 1")
    assert deploy < start
    assert "work-pool create" not in script  # an open pool: only desra deploy creates it

    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert worker["stop_signal"] == "SIGINT"
    assert "ports" not in worker


def test_compose_s3_profile_is_valid_for_the_compose_client(compose_client):
    """A plain run needs none of the s3 profile's settings; with the profile, MinIO is on this host only."""
    plain = _compose_config(compose_client, COMPOSE_SECRETS)
    assert plain.returncode == 0, f"without --profile s3 and MINIO_*:\n{plain.stderr}"
    rendered = yaml.safe_load(plain.stdout)["services"]
    for name in S3_SERVICES & set(rendered):  # v1 renders every service with its profiles, v2 the active ones
        assert rendered[name]["profiles"] == ["s3"], rendered[name]
    result = _compose_config(compose_client, {**COMPOSE_SECRETS, **S3_SECRETS}, "--profile", "s3")
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)["services"]
    assert S3_SERVICES <= set(rendered)
    assert rendered["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == S3_SECRETS["MINIO_ROOT_PASSWORD"]
    for port in rendered["minio"]["ports"]:  # v1 renders "127.0.0.1:9000:9000", v2 a mapping
        published = port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}:{port['target']}"
        assert published.startswith("127.0.0.1:"), port


def _strings(node: object) -> Iterator[str]:
    """Every string value of a parsed compose file: what compose substitutes variables in."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def test_compose_requires_only_the_two_stack_secrets(compose):
    """Compose substitutes variables in every service before it picks the active profiles, so a required
    ``${VAR:?…}`` in a service of the s3 profile would stop a plain ``docker compose up`` as well."""
    required = {name for value in _strings(compose) for name in re.findall(r"(?<!\$)\$\{(\w+):?\?", value)}
    assert required == set(COMPOSE_SECRETS)


def test_compose_s3_profile_runs_minio_and_its_setup_only_when_asked(compose):
    services = compose["services"]
    assert {name for name, s in services.items() if s.get("profiles")} == S3_SERVICES
    for name in S3_SERVICES:
        assert services[name]["profiles"] == ["s3"], name
    for name, service in services.items():  # nothing outside the profile waits for it
        if name not in S3_SERVICES:
            assert not set(service.get("depends_on") or {}) & S3_SERVICES, name
    minio, setup = services["minio"], services["minio-setup"]
    release = r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ"  # a pinned release, never latest
    assert re.fullmatch(r"quay\.io/minio/minio:" + release, minio["image"]), minio["image"]
    assert re.fullmatch(r"quay\.io/minio/mc:" + release, setup["image"]), setup["image"]
    assert minio["command"] == ["server", "/data", "--console-address", ":9001"]
    assert "minio-data:/data" in minio["volumes"] and "minio-data" in compose["volumes"]
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert minio["restart"] == "unless-stopped"
    assert setup["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert setup["restart"] == "no" and "healthcheck" not in setup and "ports" not in setup
    assert setup["environment"]["DESRA_BUCKET"] == "${DESRA_BUCKET:-desra}"


# HOST_IP:HOST_PORT:CONTAINER_PORT, where the host address or port may be a ${VAR:-default}
PUBLISHED = re.compile(r"(?P<ip>\$\{[^}]*\}|[^:]+):(?P<port>\$\{[^}]*\}|\d+):(?P<target>\d+)(/tcp)?")


def test_compose_publishes_nothing_on_all_interfaces(compose):
    """Every published port names its host address: 127.0.0.1, or DESRA_BIND for the UI alone. MinIO's API
    and console have no variable that could move them to 0.0.0.0."""
    published: dict[str, list[re.Match[str]]] = {}
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            match = PUBLISHED.fullmatch(port) if isinstance(port, str) else None
            assert match, f"service {name} publishes {port!r} without a host address (every interface)"
            published.setdefault(name, []).append(match)
    assert set(published) == {"prefect-server", "minio"}
    assert [m["ip"] for m in published["prefect-server"]] == ["${DESRA_BIND:-127.0.0.1}"]
    assert {m["target"]: m["ip"] for m in published["minio"]} == {"9000": "127.0.0.1", "9001": "127.0.0.1"}


def test_compose_minio_credentials_come_from_the_environment(compose):
    for name in S3_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["MINIO_ROOT_USER"] == "${MINIO_ROOT_USER:-}", name  # no default user, no default secret
        assert env["MINIO_ROOT_PASSWORD"] == "${MINIO_ROOT_PASSWORD:-}", name
    assert not any("minioadmin" in value for value in _strings(compose))  # MinIO's well-known default
    assert not re.search(r"\$\{MINIO_\w+:?-[^}]", COMPOSE.read_text())  # nor any other default, comments included


def _entrypoint_script(compose: dict, service: str) -> tuple[str, list[str]]:
    """The ``sh -c`` script of ``service``'s entrypoint as the container runs it (compose's ``$$`` → ``$``),
    and the arguments after it."""
    entrypoint = compose["services"][service]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"], entrypoint
    raw = entrypoint[2]
    assert not re.search(r"(?<!\$)\$\{", raw.replace("$$", "")), raw  # compose substitutes nothing in it
    return raw.replace("$$", "$"), entrypoint[3:]


@pytest.mark.parametrize("user, password, starts", [
    ("", "", False),  # MinIO would start with minioadmin:minioadmin
    ("desra-0123abcd", "", False),
    ("desra-0123abcd", "pw-1234", False),  # MinIO's minimum is 8 characters
    ("ab", "minio-s3cret-for-the-test", False),
    ("desra-0123abcd", "minio-s3cret-for-the-test", True),
])
def test_minio_refuses_to_start_without_its_credentials(compose, tmp_path, user, password, starts):
    """The minio service's entrypoint, run with sh: it hands over to the image's own entrypoint (a stand-in
    here) with the service's command only when both credentials are there."""
    script, args = _entrypoint_script(compose, "minio")
    assert script.count("exec /usr/bin/docker-entrypoint.sh ") == 1
    image_entrypoint = tmp_path / "docker-entrypoint.sh"
    image_entrypoint.write_text('#!/bin/sh\necho "image entrypoint: $*"\n')
    image_entrypoint.chmod(0o755)
    script = script.replace("/usr/bin/docker-entrypoint.sh", str(image_entrypoint))
    result = subprocess.run(["sh", "-c", script, *args, *compose["services"]["minio"]["command"]],
                            env={"PATH": os.environ["PATH"], "MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password},
                            capture_output=True, text=True, timeout=30)
    if starts:
        assert result.returncode == 0, result.stderr
        assert result.stdout == "image entrypoint: server /data --console-address :9001\n"
    else:
        assert result.returncode == 64 and result.stdout == "", result
        assert "MINIO_ROOT_USER" in result.stderr and "MINIO_ROOT_PASSWORD" in result.stderr
        assert not password or password not in result.stderr  # the message shows no secret


def test_minio_setup_creates_each_bucket_and_stops_at_a_failure(compose, tmp_path):
    """minio-setup's script, run with sh and a stand-in ``mc`` that records its arguments."""
    script, args = _entrypoint_script(compose, "minio-setup")
    (tmp_path / "bin").mkdir()
    mc = tmp_path / "bin" / "mc"
    mc.write_text('#!/bin/sh\necho "$*" >> "$MC_LOG"\n[ "$*" != "$MC_FAIL" ]\n')  # fails on the MC_FAIL call
    mc.chmod(0o755)
    log = tmp_path / "mc.log"

    def run(fail: str = "") -> subprocess.CompletedProcess:
        log.unlink(missing_ok=True)
        env = {"PATH": f"{mc.parent}:{os.environ['PATH']}", "MC_LOG": str(log), "MC_FAIL": fail,
               "DESRA_BUCKET": "desra desra-extra", **S3_SECRETS}
        return subprocess.run(["sh", "-c", script, *args], env=env, capture_output=True, text=True, timeout=30)

    assert run().returncode == 0
    user, password = S3_SECRETS["MINIO_ROOT_USER"], S3_SECRETS["MINIO_ROOT_PASSWORD"]
    assert log.read_text().splitlines() == [f"alias set local http://minio:9000 {user} {password}",
                                            "mb --ignore-existing local/desra",
                                            "mb --ignore-existing local/desra-extra"]
    failed = run(fail="mb --ignore-existing local/desra")
    assert failed.returncode != 0  # the one-shot service fails, and compose shows it
    assert log.read_text().splitlines()[-1] == "mb --ignore-existing local/desra"  # nothing after the failure


def test_compose_documents_how_the_worker_uses_the_bucket(compose):
    """The docker-compose.override.yml example at the top of the file is valid YAML that points the worker at
    minio with credentials from the environment and the drop and output root in the bucket minio-setup makes."""
    lines = COMPOSE.read_text().splitlines()
    block = []
    for line in lines[lines.index("#   services:"):]:
        if not line.startswith("#   "):
            break
        block.append(line.removeprefix("#   "))
    env = yaml.safe_load("\n".join(block))["services"]["worker"]["environment"]
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert _required(env["AWS_ACCESS_KEY_ID"], "MINIO_ROOT_USER")
    assert _required(env["AWS_SECRET_ACCESS_KEY"], "MINIO_ROOT_PASSWORD")
    assert env["DESRA_DROP_DIR"] == "s3://desra/drop" and env["DESRA_OUTPUT_DIR"] == "s3://desra/out"
    assert set(env) == {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DESRA_DROP_DIR",
                        "DESRA_OUTPUT_DIR"}  # the worker's own settings (pool, auth, heartbeat) stay


def test_every_deploy_instruction_says_desra_deploy():
    """The README, the compose file, prefect.yaml and the Dockerfile tell the same working way to deploy."""
    for path in (REPO / "README.md", COMPOSE, PREFECT_FILE):
        text = path.read_text()
        assert "desra deploy" in text, path
        for line in text.splitlines():
            if "prefect work-pool create" in line:
                pytest.fail(f"{path.name} tells users to create an open pool: {line.strip()}")
    assert "--limit" in (REPO / "Dockerfile").read_text()


def _dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [" ".join(i.split()) for i in "\n".join(lines).replace("\\\n", " ").splitlines() if i.strip()]


def test_dockerfile_installs_the_constrained_builds_and_keeps_no_source():
    instructions = _dockerfile_instructions()
    text = "\n".join(instructions)
    pip_installs = [part.strip() for i in instructions if i.startswith("RUN ")
                    for part in i.replace(";", "&&").split("&&") if "pip install" in part]
    assert len(pip_installs) >= 3, pip_installs  # torch (either index), then desra
    for command in pip_installs:  # every install, torch's included, takes its versions from constraints.txt
        assert "-c /tmp/constraints.txt" in command or "-c constraints.txt" in command, command
    assert "torch==" not in text and "torchvision==" not in text  # the versions live in constraints.txt only
    assert any('--index-url "$TORCH_INDEX_URL" torch torchvision' in c for c in pip_installs), pip_installs
    assert 'ARG TORCH_INDEX_URL=""' in instructions
    assert "assert torch.version.cuda" in text  # the CUDA-build check stays
    assert "COPY constraints.txt /tmp/constraints.txt" in instructions
    # not -e; with the s3 extra, so that the worker takes s3:// drops and outputs (the store of the s3 profile), and
    # the aws-block extra, so that its credentials may come from a prefect-aws block
    assert any(c.endswith("pip install -c constraints.txt '.[s3,aws-block]'") for c in pip_installs), pip_installs
    assert "rm -rf /src" in text  # the sources are gone once installed: workers run the package
    assert "DESRA_PROJECT_DIR" not in text and "/app" not in text


def test_dockerignore_keeps_environments_and_outputs_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", "out", ".git", ".pytest_cache", ".ruff_cache", ".hypothesis"} <= ignored


# --- deployments/prefect.yaml ------------------------------------------------------------------------

def test_prefect_yaml_pins_no_folder_of_code():
    """One pull step that stays in the folder the worker gives each run (with no pull step at all, `prefect
    deploy` would add one into the folder it ran in); no deployment overrides it, none names a file."""
    spec = yaml.safe_load(PREFECT_FILE.read_text())
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "."}}]
    for deployment in spec["deployments"]:
        assert "pull" not in deployment, deployment["name"]
        assert ".py" not in deployment["entrypoint"] and "/" not in deployment["entrypoint"], deployment
    assert "DESRA_PROJECT_DIR" not in PREFECT_FILE.read_text()


def test_prefect_yaml_full_is_scheduled_over_the_drop(deployments):
    full = deployments["full"]
    assert full["entrypoint"] == "desra.flows.full:desra"
    assert full["work_pool"]["name"] == "desra"
    assert [s["interval"] for s in full["schedules"]] == [600]
    assert full["schedules"][0].get("active", True) is True
    assert full["parameters"]["input_dir"] == "{{ $DESRA_DROP_DIR }}"
    assert full["parameters"]["output_dir"] == "{{ $DESRA_OUTPUT_DIR }}"


def test_prefect_yaml_on_drop_runs_on_the_drop_event(deployments):
    on_drop = deployments["on-drop"]
    assert on_drop["entrypoint"] == "desra.flows.full:desra"
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
    assert batch["entrypoint"] == "desra.flows.batch:desra_batch"
    assert batch["work_pool"]["name"] == "desra"


@pytest.mark.parametrize("deployment, flow_name", [("full", "desra"), ("on-drop", "desra"),
                                                    ("desra-batch", "desra-batch")])
def test_entrypoints_are_prefect_flows(deployments, deployment, flow_name):
    """Each entrypoint is a module of the installed package, loaded the way a worker loads it."""
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    entrypoint = deployments[deployment]["entrypoint"]
    module_name, function = entrypoint.split(":")
    module = importlib.import_module(module_name)
    assert module_name.startswith("desra.flows.") and Path(module.__file__).is_file(), module
    obj = load_flow_from_entrypoint(entrypoint)
    assert isinstance(obj, Flow), f"expected a Prefect flow at {entrypoint}, got {obj!r}"
    assert obj is getattr(module, function) and obj.name == flow_name


# --- desra deploy --------------------------------------------------------------------------------------

class Recorder:
    """Stands in for ``subprocess.run`` (the ``prefect deploy`` commands) and ``desra.pool.ensure_pool``:
    records each call and answers with the given exit code / pool status."""

    def __init__(self, deploy_rc: int = 0, pool_status: str = "created", pool_error: Exception | None = None):
        self.calls: list[tuple[list[str], Path, dict]] = []
        self.cwd_contents: list[list[str]] = []  # what each command's working folder held when it ran
        self.pools: list[tuple[str, int | None]] = []
        self.pool_options: list[dict] = []  # pool_type and kubernetes, when desra deploy passed them
        self.deploy_rc, self.pool_status, self.pool_error = deploy_rc, pool_status, pool_error

    def __call__(self, command, cwd=None, env=None, **kwargs):
        self.calls.append((list(command), Path(cwd), dict(env)))
        self.cwd_contents.append(sorted(p.name for p in Path(cwd).iterdir()))
        assert "deploy" in command, command
        return subprocess.CompletedProcess(command, self.deploy_rc, stdout="", stderr="")

    def ensure_pool(self, name, *, limit, **options):
        from desra.pool import PoolResult

        self.pools.append((name, limit))
        self.pool_options.append(options)
        if self.pool_error is not None:
            raise self.pool_error
        return PoolResult(status=self.pool_status, name=name, limit=limit,
                          pool_type=options.get("pool_type", "process"), job=options.get("kubernetes"))


@pytest.fixture
def deploy_env(tmp_path, monkeypatch):
    for name in ("DESRA_PROJECT_DIR", "DESRA_MSE_MODEL", "DESRA_GAN_MODEL", "DESRA_SEGMENTER",
                 "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):  # (DESRA_PROJECT_DIR: no longer used; none may leak in)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DESRA_DROP_DIR", str(tmp_path / "drop"))
    monkeypatch.setenv("DESRA_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached: the API calls are replaced
    monkeypatch.setattr(cli, "_print_registered", lambda pool, names: None)  # would ask the API
    return tmp_path


@pytest.fixture
def recorder(deploy_env, monkeypatch) -> Recorder:
    import desra.pool

    rec = Recorder()
    monkeypatch.setattr(subprocess, "run", rec)
    monkeypatch.setattr(desra.pool, "ensure_pool", rec.ensure_pool)
    return rec


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


def test_deploy_locks_the_pool_then_deploys_all(recorder, deploy_env, monkeypatch, capsys):
    (deploy_env / "desra").mkdir()  # a folder that would shadow the package if prefect deploy ran here
    monkeypatch.chdir(deploy_env)  # any folder: the prefect file comes with the installed package
    assert cli.main(["deploy"]) == 0
    assert recorder.pools == [("desra", 1)]  # the default limit: one flow run at a time (one worker)
    [(deploy, cwd, env)] = recorder.calls
    assert deploy[:3] == [sys.executable, "-m", "prefect"]
    installed = Path(importlib.import_module("desra.deployments").__file__).with_name("prefect.yaml")
    assert deploy[3:] == ["--no-prompt", "deploy", "--prefect-file", str(installed), "--all"]
    assert installed.samefile(PREFECT_FILE)  # this checkout's file, through the link desra/deployments
    # prefect deploy imports the entrypoints with its working folder first on sys.path: an empty one of its own
    assert cwd not in (REPO, deploy_env) and recorder.cwd_contents == [[]] and not cwd.exists()
    assert "DESRA_PROJECT_DIR" not in env
    assert env["DESRA_DROP_DIR"] == str(deploy_env / "drop")
    assert env["DESRA_MSE_MODEL"] == "realesrnet_x4plus"
    assert env["DESRA_GAN_MODEL"] == "realesrgan_x4plus"
    assert env["DESRA_SEGMENTER"] == "nvidia/segformer-b5-finetuned-ade-640-640"
    assert env["DO_NOT_TRACK"] == "1"
    out = capsys.readouterr().out
    assert "created work pool 'desra'" in out
    assert "PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 prefect worker start --pool desra --limit 1" in out
    version = importlib.import_module("desra").__version__
    assert f"start each worker, in any folder, where desra {version} is installed" in out, out
    for line in (f"drop (input_dir):         {deploy_env / 'drop'}", "MSE model:                realesrnet_x4plus",
                 "segmenter:                nvidia/segformer-b5-finetuned-ade-640-640",
                 "pool limit:               1 flow run(s) at once in pool 'desra'"):
        assert line in out, out


def test_deploy_keeps_an_empty_segmenter_and_says_none(recorder, monkeypatch, capsys):
    monkeypatch.setenv("DESRA_SEGMENTER", "")
    monkeypatch.setenv("DESRA_MSE_MODEL", "")
    assert cli.main(["deploy"]) == 0
    env = recorder.calls[-1][2]
    assert env["DESRA_SEGMENTER"] == ""  # no semantic adjustment, not the hub default
    assert env["DESRA_MSE_MODEL"] == "realesrnet_x4plus"  # an empty model means the default
    assert "segmenter:                none (no semantic adjustment)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, limit, says", [(["--pool-limit", "3"], 3, "3 flow run(s) at once"),
                                               (["--pool-limit", "0"], None, "none on pool 'desra'")])
def test_deploy_pool_limit(recorder, capsys, argv, limit, says):
    assert cli.main(["deploy", *argv]) == 0
    assert recorder.pools == [("desra", limit)]
    assert says in capsys.readouterr().out


def test_deploy_makes_a_kubernetes_pool_when_told(recorder, capsys):
    from desra.pool import KubernetesJob

    assert cli.main(["deploy", "--pool-type", "kubernetes", "--image", "registry.example/desra-worker:1.0",
                     "--env", "AWS_ENDPOINT_URL=http://minio:9000", "--env-secret", "desra-s3"]) == 0
    assert recorder.pool_options == [{"pool_type": "kubernetes", "kubernetes": KubernetesJob(
        image="registry.example/desra-worker:1.0", env=(("AWS_ENDPOINT_URL", "http://minio:9000"),),
        env_secret="desra-s3")}]
    [(deploy, _, _)] = recorder.calls
    assert deploy[-1] == "--all"  # the deployments are the same; only the pool runs them differently
    out = capsys.readouterr().out
    assert "created work pool 'desra' (type kubernetes; image registry.example/desra-worker:1.0" in out, out
    assert "prefect worker start --pool desra --type kubernetes" in out, out
    assert cli.main(["deploy"]) == 0 and recorder.pool_options[-1] == {}  # process: ensure_pool as before


def test_deploy_refuses_kubernetes_options_on_a_process_pool(deploy_env, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", _never_run)
    assert cli.main(["deploy", "--image", "registry.example/desra-worker:1.0"]) == 2
    assert "--image only with a kubernetes pool" in capsys.readouterr().err


def test_deploy_refuses_a_negative_pool_limit(deploy_env, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", _never_run)
    assert cli.main(["deploy", "--pool-limit", "-1"]) == 2
    assert "--pool-limit" in capsys.readouterr().err


def test_deploy_needs_a_server(deploy_env, monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setattr(subprocess, "run", _never_run)
    import desra.pool

    monkeypatch.setattr(desra.pool, "ensure_pool", _never_run)
    # No URL in the settings either (an earlier test's ephemeral harness may have set one for the session).
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert cli.main(["deploy"]) == 2
    err = capsys.readouterr().err
    assert "PREFECT_API_URL" in err and "PREFECT_API_AUTH_STRING" in err


def test_deploy_says_how_to_authenticate_on_401(recorder, capsys):
    recorder.pool_error = RuntimeError("Client error '401 Unauthorized' for url 'http://127.0.0.1:9/api/work_pools/'")
    assert cli.main(["deploy"]) == 1
    err = capsys.readouterr().err
    assert "set PREFECT_API_AUTH_STRING to its PREFECT_SERVER_API_AUTH_STRING" in err
    assert recorder.calls == []  # nothing deployed


def test_deploy_keeps_what_the_user_set(recorder, monkeypatch):
    monkeypatch.setenv("DESRA_GAN_MODEL", "/weights/gan.pth")
    assert cli.main(["deploy"]) == 0
    env = recorder.calls[-1][2]
    assert env["DESRA_GAN_MODEL"] == "/weights/gan.pth"


def test_deploy_to_another_pool_deploys_each_deployment(recorder):
    assert cli.main(["deploy", "--pool", "gpu-a"]) == 0
    assert recorder.pools == [("gpu-a", 1)]
    deploys = [c for c, _, _ in recorder.calls]
    assert [c[c.index("--name") + 1] for c in deploys] == ["full", "on-drop", "desra-batch"]
    assert all(c[c.index("--pool") + 1] == "gpu-a" and "--all" not in c for c in deploys)


def test_deploy_returns_the_failing_command_exit_code(recorder, capsys):
    recorder.deploy_rc = 4
    assert cli.main(["deploy"]) == 4
    assert "error:" in capsys.readouterr().err


def test_deploy_without_the_prefect_file_says_where_it_looked(deploy_env, monkeypatch, capsys):
    missing = deploy_env / "site-packages" / "desra" / "deployments" / "prefect.yaml"  # a broken install
    monkeypatch.setattr(cli, "_prefect_file", lambda: missing)
    monkeypatch.setattr(subprocess, "run", _never_run)
    assert cli.main(["deploy"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "reinstall desra" in err
