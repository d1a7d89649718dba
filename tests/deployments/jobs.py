"""What a worker would run for a flow run: a job configuration rendered from a base job template and a run's
job variables by the worker type's own Prefect code, with no API to ask (the templates hold no block or
variable references)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any


class NoAPI:
    """A client that fails any question: rendering must need none."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the job configuration asked the API for {name}")


def render_job(configuration: Any, template: dict, values: dict, *, run_name: str = "x") -> Any:
    """``configuration`` (e.g. ``ProcessJobConfiguration``) from ``template`` and ``values``, prepared for a flow
    run as the worker prepares it before it starts the job."""
    from prefect.client.schemas.objects import FlowRun

    config = asyncio.run(configuration.from_template_and_values(template, values, client=NoAPI()))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name=run_name))
    return config
