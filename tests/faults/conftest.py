"""Fault injection for the ``desra`` flow: a disk that fills up, a worker killed mid-task, a Prefect server
that restarts during a run.

In-process runs use the session's ephemeral Prefect API and the tiny models of ``tests/flows``; the
server tests build their own server (and workers) per test with the helpers of ``tests/integration``,
each on a free port with its own ``PREFECT_HOME``, and stop everything they started.
"""

from __future__ import annotations

import contextlib
import errno
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pandas as pd
import pytest
from PIL import Image

import desra.pipeline.report
import desra.pipeline.store
import desra_core.image
from tests.flows.conftest import counted, prefect_api, tiny_models  # noqa: F401
from tests.integration.conftest import Stack

ENOSPC_MESSAGE = "No space left on device"


def store_files(out: Path) -> dict[Path, int]:
    """Every finished store entry (temporary files excluded) and its mtime. A detection's mask is finished only
    with its record beside it: the record is written last, so a run killed between the two leaves an entry that
    the next run computes again."""
    store = out / ".desra" / "store"
    files = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file() and ".tmp" not in p.name}
    return {p: mtime for p, mtime in files.items()
            if not (p.parent.parent.name == "detect" and p.suffix == ".png" and p.with_suffix(".json") not in files)}


def latest_run(out: Path) -> pd.DataFrame:
    latest = max((out / "runs").glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    return pd.read_parquet(latest).set_index("stem")


def untrustworthy_files(out: Path, *, temp_allowed: bool = False) -> list[str]:
    """Files under ``out`` that a later run could trust although they are not whole.

    A temporary file (``*.tmp*``, hidden) is a problem unless ``temp_allowed`` (a SIGKILL leaves the
    one being written; nothing ever reads it). Every other file must be non-empty (lock files are empty
    by design), every PNG must decode with OpenCV and pass Pillow's chunk-by-chunk check, every Parquet
    file must load with pandas and every JSON file must parse.
    """
    problems = []
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(out)
        if ".tmp" in path.name:
            if not (temp_allowed and path.name.startswith(".")):
                problems.append(f"{rel}: a temporary file was left behind")
            continue
        if rel.parts[:2] == (".desra", "locks"):
            continue
        if path.stat().st_size == 0:
            problems.append(f"{rel}: empty")
        elif path.suffix == ".png":
            if cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is None:
                problems.append(f"{rel}: OpenCV cannot decode it")
            else:
                try:
                    with Image.open(path) as image:
                        image.verify()
                except Exception as e:
                    problems.append(f"{rel}: truncated or corrupt PNG ({e})")
        elif path.suffix == ".parquet":
            try:
                pd.read_parquet(path)
            except Exception as e:
                problems.append(f"{rel}: pandas cannot read it ({type(e).__name__}: {e})")
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except ValueError as e:
                problems.append(f"{rel}: not JSON ({e})")
    return problems


class DiskFull:
    """Writes through ``desra_core.image.atomic_path`` (every image, Parquet report, store record and
    marker) that ``fails(target)`` picks write half their bytes and then raise ENOSPC naming the target,
    the way a full disk fails a write part-way through; the real ``atomic_path`` then cleans up."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fails: Callable[[Path], bool]) -> None:
        self.hits: list[Path] = []
        self.writes = 0
        self._lock = threading.Lock()
        real = desra_core.image.atomic_path

        @contextlib.contextmanager
        def atomic_path(path) -> Iterator[Path]:
            target = Path(path)
            with real(target) as temp:
                yield temp
                with self._lock:
                    self.writes += 1
                    hit = fails(target)
                    if hit:
                        self.hits.append(target)
                if hit:
                    with open(temp, "r+b") as fh:
                        fh.truncate(temp.stat().st_size // 2)
                    raise OSError(errno.ENOSPC, ENOSPC_MESSAGE, str(target))

        # atomic_write_bytes and write_image look atomic_path up in desra_core.image; the pipeline imported it.
        for module in (desra_core.image, desra.pipeline.report):
            monkeypatch.setattr(module, "atomic_path", atomic_path)


@pytest.fixture
def server_stack(tmp_path, tiny_models) -> Iterator[Stack]:  # noqa: F811
    """A Prefect server of this test's own (free port, own PREFECT_HOME, scheduler off); stopped after."""
    (tmp_path / "stack").mkdir()
    stack = Stack(tmp_path / "stack")
    stack.env.update({"DESRA_DROP_DIR": str(tmp_path / "drop"),
                      "DESRA_OUTPUT_DIR": str(tmp_path / "out"), "DESRA_MSE_MODEL": tiny_models[0],
                      "DESRA_GAN_MODEL": tiny_models[1], "DESRA_SEGMENTER": ""})
    try:
        stack.server = start_server(stack)
        yield stack
    finally:
        stack.stop_all()


def start_server(stack: Stack, name: str = "server"):
    server = stack.start(name, "server", "start", "--host", "127.0.0.1", "--port", str(stack.port),
                         "--no-scheduler", "--no-ui", "--analytics-off")
    stack.wait_healthy(server)
    return server
