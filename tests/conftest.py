"""Shared fixtures: where the read-only ../shared data lives, and skips when it is absent."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# Each test session gets its own Prefect home (database, settings) and no telemetry; set before any
# test module imports Prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="desra-prefect-home-")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DESRA_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"
MODELS = SHARED / "models"


def parity_cases() -> list[Path]:
    """Case folders of ../shared/parity (empty when absent)."""
    if not PARITY.is_dir():
        return []
    return sorted(p for p in PARITY.iterdir() if p.is_dir() and (p / "gan.png").exists())


def parity_configs() -> dict[str, dict]:
    path = PARITY / "configs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def read_rgb(path: Path) -> np.ndarray:
    """An 8-bit image as RGB, the way the parity data was made (OpenCV, BGR → RGB)."""
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def unavailable(reason: str) -> None:
    """Skip a test whose data, tool or privilege is missing here, with ``reason``; under ``CI=true`` (where
    ``.ci/run`` provides ``../shared``, root and the tools) fail instead, so that a claim the README makes
    cannot pass CI untested."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this must run, not skip)")
    pytest.skip(reason)


@pytest.fixture
def needs_parity() -> Path:
    if not parity_cases():
        unavailable(f"parity data not found at {PARITY} (set DESRA_SHARED to the shared folder)")
    return PARITY


def file_tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (links not followed) with its size and mtime: compare two snapshots to
    see that nothing was created, removed or changed."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (st.st_size, st.st_mtime_ns)
    return found
