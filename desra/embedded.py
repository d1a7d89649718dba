"""Prefect's embedded API server for ``desra run``, tied to the life of the process that starts it.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server in a subprocess the first time a client
needs one, and stops it from an ``atexit`` handler. A ``desra run`` killed with SIGKILL runs no handler, so
that server (about 200 MB) would live on, orphaned. :func:`start_embedded_server` starts it first, from the
main thread, as the instance that Prefect's clients then find and reuse, with one difference: on Linux the
server process asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``, between fork and exec) to be killed
when the thread that started it ends, i.e. when ``desra run`` ends however it ends. (The main thread is used
because the signal follows the starting *thread*, not the process.) The server's database is SQLite, which a
SIGKILL leaves consistent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from prefect.server.api import server as prefect_server

__all__ = ["GuardedServer", "start_embedded_server"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int, prctl: Any) -> None:
    """In the forked child, before exec: be SIGKILLed when the starting thread ends; exit at once if the
    parent is already gone (it died between fork and prctl)."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class _PopenDyingWithParent:
    """Stands in for the ``subprocess`` module inside Prefect's server module while it starts the server: its
    ``Popen`` adds the parent-death signal; everything else is the real module's."""

    def __init__(self) -> None:
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
        self._parent = os.getpid()

    def _preexec(self) -> None:
        _die_with_parent(self._parent, self._prctl)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs["preexec_fn"] = self._preexec
        return subprocess.Popen(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)


class GuardedServer(prefect_server.SubprocessASGIServer):
    """Prefect's ``SubprocessASGIServer`` whose process dies with the thread that started it (Linux)."""

    def _run_uvicorn_command(self) -> subprocess.Popen:
        if not sys.platform.startswith("linux"):
            return super()._run_uvicorn_command()
        with _module_subprocess(_PopenDyingWithParent()):
            return super()._run_uvicorn_command()


_SWAP = threading.Lock()


@contextlib.contextmanager
def _module_subprocess(replacement: Any):
    """``subprocess`` as Prefect's server module sees it, replaced for the ``with`` block (that module only)."""
    with _SWAP:
        real = prefect_server.subprocess
        prefect_server.subprocess = replacement
        try:
            yield
        finally:
            prefect_server.subprocess = real


def start_embedded_server() -> str | None:
    """When this process would use Prefect's embedded API (no ``PREFECT_API_URL``), start it now as a
    :class:`GuardedServer` and return its API URL; else ``None``. Call it from the main thread."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:  # as Prefect's get_client decides
        return None
    server = GuardedServer()  # registered under Prefect's default key: its clients reuse it
    server.start()
    return server.api_url
