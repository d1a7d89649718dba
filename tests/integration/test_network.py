"""The stack on a network: credentials everywhere, a work pool whose runs cannot choose what the worker runs.

Against the session's real server (``conftest.py``: basic auth with a random auth string, CSRF protection on,
the pool created by ``desra deploy``): an anonymous or wrongly authenticated request is refused with 401;
``prefect deployment run`` without credentials starts nothing; a flow run that asks for another command, its
own environment or working folder is refused by the API (422), and one slipped in through an endpoint that
does not validate job variables runs the normal flow, and the injected command and environment never act.
The Kubernetes pool (``python -m desra.pool --type kubernetes``) is checked on the same server up to the job
that its worker would submit: no Kubernetes cluster exists here.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from desra.pool import LOCKED_JOB_VARIABLES, ensure_pool, is_locked
from tests.integration.conftest import POOL, POOL_LIMIT, Stack, _prefect_cli, make_drop

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 180.0


def _status(url: str, method: str = "GET", auth: str | None = None, body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_anonymous_and_wrong_credentials_get_401(stack: Stack):
    api = stack.api_url
    with stack.client() as client:
        full = client.read_deployment_by_name("desra/full")
    for path in (f"/work_pools/{POOL}", f"/deployments/{full.id}", "/flow_runs/count"):
        assert _status(f"{api}{path}") == 401, path
        assert _status(f"{api}{path}", auth="desra:wrong") == 401, path
        assert _status(f"{api}{path}", auth=stack.auth_string.upper()) == 401, path
    assert _status(f"{api}/work_pools/{POOL}", auth=stack.auth_string) == 200
    assert _status(f"{api}/health") == 200  # probes stay open (the compose healthcheck uses it)


def test_state_changing_requests_need_a_csrf_token_too(stack: Stack):
    """CSRF protection is on: a POST without the token is refused (403) even with the right credentials,
    and without credentials too; Prefect's own clients fetch a token first (every other test uses them)."""
    with stack.client() as client:
        full = client.read_deployment_by_name("desra/full")
        before = len(client.read_flow_runs())
    url = f"{stack.api_url}/deployments/{full.id}/create_flow_run"
    assert _status(url, "POST", body={}) in (401, 403)
    assert _status(url, "POST", auth=stack.auth_string, body={}) == 403
    with stack.client() as client:
        assert len(client.read_flow_runs()) == before


def test_the_cli_without_credentials_starts_no_run(stack: Stack):
    with stack.client() as client:
        full = client.read_deployment_by_name("desra/full")
        before = len(client.read_flow_runs())
    env = {k: v for k, v in stack.env.items() if k != "PREFECT_API_AUTH_STRING"}
    done = subprocess.run([*_prefect_cli(), "deployment", "run", "desra/full"], cwd=stack.root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout
    assert "401" in done.stdout + done.stderr or "Unauthorized" in done.stdout + done.stderr, done
    with stack.client() as client:
        assert len(client.read_flow_runs()) == before
        assert client.read_deployment(full.id).id == full.id


def test_deploy_made_a_locked_pool_with_a_limit_and_said_what_it_registered(stack: Stack, tiny_models):
    with stack.client() as client:
        pool = client.read_work_pool(POOL)
    assert is_locked(pool.base_job_template), pool.base_job_template
    assert not set(LOCKED_JOB_VARIABLES) & set(pool.base_job_template["variables"]["properties"])
    assert pool.concurrency_limit == POOL_LIMIT
    out = stack.deploy_output
    assert f"created work pool {POOL!r}" in out, out
    for expected in (f"drop (input_dir):         {stack.drop_dir}", f"output root (output_dir): {stack.output_dir}",
                     f"MSE model:                {tiny_models['mse']}",
                     f"GAN model:                {tiny_models['gan']}",
                     "segmenter:                none (no semantic adjustment)",
                     f"pool limit:               {POOL_LIMIT} flow run(s) at once in pool {POOL!r}",
                     "heartbeat:                every 30 s",
                     "flow runs without a heartbeat for 90 s are marked Crashed",
                     "PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 prefect worker start --pool desra --limit 1"):
        assert expected in out, f"{expected!r} not in:\n{out}"


def _injections(marker_dir: Path) -> dict[str, dict]:
    """Job variables that would run code under Prefect's default process template: a command that writes a
    marker, an environment whose PYTHONPATH makes every Python process write one (sitecustomize), a working
    folder holding such a module."""
    site = marker_dir / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(
        f"import pathlib, os\npathlib.Path({str(marker_dir / 'from-env')!r}).write_text(str(os.getpid()))\n")
    return {
        "command": {"command": f"sh -c 'id > {marker_dir / 'from-command'}'"},
        "env": {"env": {"PYTHONPATH": str(site)}},
        "working_dir": {"working_dir": str(site)},
    }


@pytest.mark.parametrize("variable", LOCKED_JOB_VARIABLES)
def test_a_run_that_sets_a_locked_job_variable_is_refused(stack: Stack, tmp_path, variable):
    from prefect.exceptions import PrefectHTTPStatusError

    injection = _injections(tmp_path / "markers")[variable]
    with stack.client() as client:
        full = client.read_deployment_by_name("desra/full")
        before = len(client.read_flow_runs())
        with pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run_from_deployment(full.id, job_variables=injection)
        assert refused.value.response.status_code == 422, refused.value
        assert variable in refused.value.response.text, refused.value.response.text
        assert len(client.read_flow_runs()) == before
    assert not (tmp_path / "markers" / "from-command").exists()


def test_a_run_slipped_past_validation_runs_the_normal_command(stack: Stack, tiny_models, tmp_path):
    """``POST /flow_runs/`` does not validate job variables: the worker must still ignore them."""
    from prefect.states import Scheduled

    markers = tmp_path / "markers"
    injections = _injections(markers)
    drop, out = tmp_path / "drop", tmp_path / "out"
    make_drop(drop, 1, seed=40)
    with stack.client() as client:
        full = client.read_deployment_by_name("desra/full")
        parameters = {**full.parameters, "input_dir": str(drop), "output_dir": str(out), "min_area": 10}
        body = {"flow_id": str(full.flow_id), "deployment_id": str(full.id), "name": "injected",
                "parameters": parameters, "work_pool_name": POOL, "work_queue_name": "default",
                "state": Scheduled().model_dump(mode="json", include={"type", "name", "state_details"}),
                "job_variables": {**injections["command"], **injections["env"], **injections["working_dir"]}}
        response = client.request("POST", "/flow_runs/", json=body)
        assert response.status_code in (200, 201), response.text
        run_id = response.json()["id"]
        assert client.read_flow_run(run_id).job_variables["command"].startswith("sh -c")  # stored as sent
    run = stack.wait_for_flow_run(run_id, RUN_TIMEOUT)
    assert run.state.message == "1 ok, 0 failed of 1 image(s)"  # the flow ran: the normal command
    assert sorted(p.name for p in markers.iterdir()) == ["site"], "an injected command or environment ran"
    logs = stack.run_logs(run_id, lines=1000)
    assert "Worker '" in logs and "submitting flow run" in logs, logs


def test_an_open_pool_is_locked_by_ensure_pool(stack: Stack):
    stack.cli("work-pool", "create", "desra-open", "--type", "process")  # Prefect's default, open template
    with stack.client() as client:
        assert not is_locked(client.read_work_pool("desra-open").base_job_template)
        first = ensure_pool("desra-open", limit=3, client=client)
        second = ensure_pool("desra-open", limit=3, client=client)
        pool = client.read_work_pool("desra-open")
    # the same from a shell (`python -m desra.pool`), as an operator without desra deploy would run it
    again = subprocess.run([sys.executable, "-m", "desra.pool", "--name", "desra-open", "--limit", "3"],
                           cwd=stack.root, env=stack.env, capture_output=True, text=True, timeout=120)
    with stack.client() as client:
        client.delete_work_pool("desra-open")
    assert first.status == "updated", first
    assert "open base job template replaced (runs could set command, env, working_dir)" in first.summary()
    assert "concurrency limit None → 3" in first.summary()
    assert second.status == "unchanged", second
    assert is_locked(pool.base_job_template) and pool.concurrency_limit == 3
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == ("work pool 'desra-open' already locked (runs cannot set command, env, "
                                    "working_dir; at most 3 flow run(s) at once)"), again.stdout


K8S_INJECTIONS = {"image": "evil.example/miner:latest", "command": "sh -c 'id'", "env": {"LD_PRELOAD": "/tmp/evil.so"},
                  "service_account_name": "cluster-admin", "namespace": "kube-system"}


def test_a_kubernetes_pool_is_locked_on_the_server(stack: Stack):
    """The Kubernetes pool on a real server. No cluster exists here: what the worker would submit is the job
    configuration that prefect-kubernetes's ``resolve_for_flow_run`` builds from the server's pool, deployment
    and flow run (the worker's own path up to the Kubernetes API call)."""
    import asyncio

    from prefect import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.states import Scheduled
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    from desra.pool import GPU_RESOURCE, KubernetesJob, locked_kubernetes_job_template

    image = "registry.example/desra-worker:1.0"
    created = subprocess.run([sys.executable, "-m", "desra.pool", "--name", "desra-k8s", "--type", "kubernetes",
                              "--image", image, "--limit", "2"],
                             cwd=stack.root, env=stack.env, capture_output=True, text=True, timeout=120)
    deployment_id = None
    try:
        assert created.returncode == 0, created.stderr
        assert created.stdout.startswith(f"created work pool 'desra-k8s' (type kubernetes; image {image}"), created
        with stack.client() as client:
            pool = client.read_work_pool("desra-k8s")
            assert pool.type == "kubernetes" and pool.concurrency_limit == 2 and is_locked(pool.base_job_template)
            assert pool.base_job_template == locked_kubernetes_job_template(KubernetesJob(image=image))
            full = client.read_deployment_by_name("desra/full")
            common = dict(flow_id=full.flow_id, work_pool_name="desra-k8s", work_queue_name="default",
                          entrypoint=full.entrypoint, parameters=full.parameters, pull_steps=full.pull_steps)
            with pytest.raises(PrefectHTTPStatusError) as refused:  # a deployment that names an image
                client.create_deployment(name="k8s-evil", job_variables={"image": "evil"}, **common)
            assert refused.value.response.status_code == 422, refused.value
            deployment_id = client.create_deployment(name="k8s", **common)
            before = len(client.read_flow_runs())
            for variable, value in K8S_INJECTIONS.items():
                with pytest.raises(PrefectHTTPStatusError) as refused:
                    client.create_flow_run_from_deployment(deployment_id, job_variables={variable: value})
                assert refused.value.response.status_code == 422, (variable, refused.value)
                assert variable in refused.value.response.text, refused.value.response.text
            assert len(client.read_flow_runs()) == before
            # one slipped past validation (POST /flow_runs/ does not validate job variables)
            body = {"flow_id": str(full.flow_id), "deployment_id": str(deployment_id), "name": "injected-k8s",
                    "parameters": full.parameters, "work_pool_name": "desra-k8s", "work_queue_name": "default",
                    "state": Scheduled().model_dump(mode="json", include={"type", "name", "state_details"}),
                    "job_variables": K8S_INJECTIONS}
            response = client.request("POST", "/flow_runs/", json=body)
            assert response.status_code in (200, 201), response.text
            run = client.read_flow_run(response.json()["id"])
            assert run.job_variables["image"] == K8S_INJECTIONS["image"]  # stored as sent

        async def resolve():
            async with get_client() as async_client:
                return await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
                    run, client=async_client, work_pool=pool, worker_name="k8s-worker")

        with stack.settings():
            job = asyncio.run(resolve())
        [container] = job.job_manifest["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image and container["resources"] == {"limits": {GPU_RESOURCE: 1}}
        assert container["args"] == ["prefect", "flow-run", "execute"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "LD_PRELOAD" not in env and env["PREFECT__FLOW_RUN_ID"] == str(run.id)
        assert "serviceAccountName" not in job.job_manifest["spec"]["template"]["spec"]
        assert job.namespace == "default" == job.job_manifest["metadata"]["namespace"]
    finally:
        with stack.client() as client:
            for flow_run in client.read_flow_runs():
                if flow_run.work_pool_name == "desra-k8s":
                    client.delete_flow_run(flow_run.id)
            if deployment_id is not None:
                client.delete_deployment(deployment_id)
            client.delete_work_pool("desra-k8s")


def test_deploy_brings_the_crash_window_to_the_heartbeat(stack: Stack):
    """An automation with another window (e.g. made for Prefect's 180-s heartbeat) is updated, not kept."""
    from desra.automations import ZOMBIE_AUTOMATION_NAME, ensure_zombie_automation

    def window() -> float:
        with stack.client() as client:
            [automation] = client.read_automations_by_name(ZOMBIE_AUTOMATION_NAME)
        return automation.trigger.within.total_seconds()

    assert window() == 90  # what desra deploy created for the session's 30-s heartbeat
    with stack.settings():
        longer = ensure_zombie_automation(540)
        assert longer.status == "updated" and window() == 540, longer
        assert ensure_zombie_automation(540).status == "present"
    done = stack.desra("deploy", "--pool-limit", str(POOL_LIMIT))  # as an operator would put it right
    assert done.returncode == 0, done.stderr
    assert f"updated automation {ZOMBIE_AUTOMATION_NAME!r}: flow runs without a heartbeat for 90 s" in done.stdout
    assert f"work pool {POOL!r} already locked" in done.stdout, done.stdout
    assert window() == 90
