"""The locked process-pool template of ``desra.pool``, through Prefect's own merging and validation code.

The worker builds a flow run's job from the pool's template and the run's job variables with
``ProcessJobConfiguration.from_template_and_values`` and ``prepare_for_flow_run``; the server validates a
deployment run's job variables against the template's variables schema. Both are run here on the locked
template and, as the control that shows each check can fail, on Prefect's default (open) one. The same on a
real server and worker: ``tests/integration/test_network.py``.
"""


import pytest

from desra.pool import LOCKED_JOB_VARIABLES, OPEN_JOB_VARIABLES, is_locked, locked_base_job_template
from desra_core import ConfigError
from tests.deployments.jobs import render_job

INJECTED = {"command": "sh -c 'id > /tmp/pwned'", "env": {"PYTHONPATH": "/tmp/evil"}, "working_dir": "/tmp/evil"}


@pytest.fixture(autouse=True)
def own_prefect_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))


def _default():
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def _job(template: dict, values: dict):
    """The job a process worker would start for a flow run with these job variables."""
    from prefect.workers.process import ProcessJobConfiguration

    return render_job(ProcessJobConfiguration, template, values)


def test_locked_template_keeps_only_harmless_variables():
    default, locked = _default(), locked_base_job_template()
    assert set(LOCKED_JOB_VARIABLES) <= set(default["variables"]["properties"])  # what Prefect exposes
    assert set(locked["variables"]["properties"]) == set(OPEN_JOB_VARIABLES)
    assert locked["variables"]["additionalProperties"] is False
    assert not set(LOCKED_JOB_VARIABLES) & set(locked["job_configuration"])
    assert locked["job_configuration"]["stream_output"] == "{{ stream_output }}"
    assert is_locked(locked) and not is_locked(default) and not is_locked({}) and not is_locked(None)
    assert _default() == default, "the builder changed its input"


def test_the_worker_ignores_injected_command_env_and_working_dir():
    import os

    open_job = _job(_default(), INJECTED)  # the control: Prefect's default template obeys the run
    assert open_job.command == INJECTED["command"]
    assert open_job.env["PYTHONPATH"] == "/tmp/evil" and str(open_job.working_dir) == "/tmp/evil"

    locked_job = _job(locked_base_job_template(), {**INJECTED, "stream_output": False})
    assert locked_job.command.endswith("-m prefect.engine"), locked_job.command  # the worker's own command
    assert locked_job.env.get("PYTHONPATH") == os.environ.get("PYTHONPATH")  # the worker's, not the run's
    assert locked_job.working_dir is None  # a fresh temporary folder
    assert locked_job.stream_output is False  # what a run may still choose


@pytest.mark.parametrize("variable", LOCKED_JOB_VARIABLES)
def test_the_server_schema_refuses_locked_variables(variable):
    """What the server runs on a deployment run's job variables (``_validate_work_pool_job_variables``)."""
    from prefect.utilities.schema_tools import ValidationError, validate

    kwargs = dict(raise_on_error=True, preprocess=True, ignore_required=False, allow_none_with_default=True)
    validate({variable: INJECTED[variable]}, _default()["variables"], **kwargs)  # the control: accepted
    with pytest.raises(ValidationError, match=variable):
        validate({variable: INJECTED[variable]}, locked_base_job_template()["variables"], **kwargs)
    validate({"stream_output": False, "labels": {"a": "b"}}, locked_base_job_template()["variables"], **kwargs)


def test_a_template_of_another_worker_type_is_refused():
    with pytest.raises(ConfigError, match="stream_output"):
        locked_base_job_template({"job_configuration": {"command": "{{ command }}"},
                                  "variables": {"properties": {"command": {}, "name": {}, "labels": {}}}})
    with pytest.raises(ConfigError, match="job_configuration"):
        locked_base_job_template({"variables": {}})


@pytest.mark.parametrize("limit", [0, -1, 1.5, "2"])
def test_a_bad_pool_limit_is_refused_before_any_api_call(limit):
    from desra.pool import ensure_pool

    class NoClient:
        def __getattr__(self, name):
            raise AssertionError(f"called the API ({name}) before checking the limit")

    with pytest.raises(ConfigError, match="limit"):
        ensure_pool("desra", limit=limit, client=NoClient())
