"""Whether the Prefect server that ``desra deploy`` talks to has CSRF protection on.

Prefect's server hands out CSRF tokens at ``GET /api/csrf-token?client=…`` only when its setting
``PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED`` is true; otherwise it answers HTTP 422 "CSRF protection is
disabled." (Prefect's own client reads that answer the same way, and then sends no token). With protection
off, a page on another site can have a logged-in user's browser create flow runs or change deployments on
the server. Prefect's clients (the ``prefect`` CLI, workers, flow runs, ``desra``) fetch and send tokens as
long as ``PREFECT_CLIENT_CSRF_SUPPORT_ENABLED`` is true, its default.
"""

from __future__ import annotations

__all__ = ["CHECK_CLIENT", "csrf_protection", "csrf_warning"]

CHECK_CLIENT = "desra-deploy-csrf-check"  # one token row on the server, however often desra deploy runs


def csrf_protection(client) -> bool | None:
    """``True`` when the server behind the Prefect ``client`` (a sync client) hands out CSRF tokens, ``False``
    when it says that CSRF protection is disabled, ``None`` when it cannot tell (an older server without the
    endpoint, or another error)."""
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        response = client.request("GET", "/csrf-token", params={"client": CHECK_CLIENT})
    except PrefectHTTPStatusError as e:
        if e.response.status_code == 422 and "CSRF protection is disabled" in e.response.text:
            return False
        return None
    return response.status_code == 200 or None


def csrf_warning(api_url: str) -> str | None:
    """The warning for ``desra deploy`` when the server at ``api_url`` (the current Prefect client settings)
    has CSRF protection off; ``None`` when it is on or cannot be told."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        protected = csrf_protection(client)
    if protected is not False:
        return None
    return (f"the Prefect server at {api_url} has CSRF protection off, so a page on another site can make a "
            "logged-in user's browser create flow runs or change deployments there; start the server with "
            "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED=true (clients keep PREFECT_CLIENT_CSRF_SUPPORT_ENABLED "
            "at its default, true)")
