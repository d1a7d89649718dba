"""`desra run`'s settings: no heartbeat thread on the embedded API, Prefect's own setting against a server."""

from __future__ import annotations

import pytest
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import get_current_settings

import desra.flows.full


@pytest.fixture
def probe(monkeypatch):
    seen = {}

    def fake_flow(**parameters):
        settings = get_current_settings()
        seen.update(heartbeat=settings.flows.heartbeat_frequency, url=settings.api.url, parameters=parameters)
        return "state"

    monkeypatch.setattr(desra.flows.full, "desra", fake_flow)
    return seen


def _with_api_url(url):
    context = get_settings_context()
    api = context.settings.api.model_copy(update={"url": url})
    return SettingsContext(profile=context.profile, settings=context.settings.model_copy(update={"api": api}))


def test_embedded_api_runs_without_heartbeats(probe):
    with _with_api_url(None):
        assert desra.flows.full.run_in_process(input_dir="in") == "state"
    assert probe["heartbeat"] is None and probe["parameters"] == {"input_dir": "in", "return_state": True}
    assert get_current_settings().flows.heartbeat_frequency is not None  # only inside the run


def test_a_real_server_keeps_prefects_heartbeat_setting(probe):
    with _with_api_url("http://127.0.0.1:4200/api"):
        expected = get_current_settings().flows.heartbeat_frequency
        desra.flows.full.run_in_process(input_dir="in")
    assert probe["heartbeat"] == expected and probe["url"] == "http://127.0.0.1:4200/api"
