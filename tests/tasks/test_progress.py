"""The progress artifact (``desra.tasks.progress``) outside its one intended place, synchronous code. No server
here: inside an event loop Prefect's ``create_progress_artifact`` only returns a coroutine, and nothing is sent."""

from __future__ import annotations

import asyncio
import warnings

import pytest

from desra.tasks.progress import Progress


def test_progress_refuses_to_be_made_inside_an_event_loop():
    async def make() -> Progress:
        return Progress("images")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine it was handed is closed, never left un-awaited
        with pytest.raises(RuntimeError, match="expected Progress to be created from synchronous code"):
            asyncio.run(make())
