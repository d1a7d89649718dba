"""Process environment for Prefect, applied before Prefect is imported.

Telemetry stays off (the server would otherwise try to reach the internet) and the embedded
(ephemeral) API server gets a start-up timeout that a cold start on a small machine meets. Values the
user set are kept.
"""

import os

__all__ = ["DEFAULTS", "configure"]

DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
}


def configure() -> None:
    """Set the defaults above for every variable the user has not set."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
