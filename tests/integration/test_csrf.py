"""``desra deploy`` warns when the Prefect server has CSRF protection off, and says nothing when it is on
(issue 16). Each case starts a real server of its own with credentials (``Stack``), and the whole
``desra deploy`` (pool, deployments, automation) must succeed against it either way: Prefect's clients
fetch and send CSRF tokens (``PREFECT_CLIENT_CSRF_SUPPORT_ENABLED``, true by default)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

WARNING = "has CSRF protection off"


@pytest.mark.parametrize("csrf", [True, False], ids=["csrf-on", "csrf-off"])
def test_desra_deploy_warns_about_a_server_without_csrf_protection(tmp_path, csrf):
    stack = Stack(tmp_path)
    stack.env.update({"DESRA_DROP_DIR": str(tmp_path / "drop"),
                      "DESRA_OUTPUT_DIR": str(tmp_path / "out"), "DESRA_SEGMENTER": ""})
    server_env = stack.server_env
    stack.server_env = lambda: {**server_env(), "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": str(csrf).lower()}
    try:
        server = stack.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(stack.port),
                             "--no-scheduler", "--no-ui", "--analytics-off")
        stack.wait_healthy(server)
        # What the finding was: with protection off, an authenticated POST without a token is accepted.
        post = httpx.post(f"{stack.api_url}/flows/", json={"name": "csrf-probe"}, timeout=30,
                          auth=tuple(stack.auth_string.split(":", 1)))
        assert post.status_code == (403 if csrf else 201), (post.status_code, post.text)

        done = stack.desra("deploy", "--no-zombie-automation")
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{output}\n{stack.logs()}"
        assert "registered from" in done.stdout and "desra/full" in done.stdout
        if csrf:
            assert WARNING not in output
        else:
            assert (f"warning: the Prefect server at {stack.api_url} has CSRF protection off, so a page on another "
                    "site can make a logged-in user's browser create flow runs or change deployments there; start "
                    "the server with PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED=true") in done.stderr
    finally:
        stack.stop_all()
