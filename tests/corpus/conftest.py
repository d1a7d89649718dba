"""The flow fixtures (a session Prefect API, tiny real SR models) for the corpus tests."""

from tests.flows.conftest import prefect_api, tiny_models  # noqa: F401
