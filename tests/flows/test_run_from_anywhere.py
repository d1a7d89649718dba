"""``desra run`` works from any working folder: the installed command, started in ``/``, imports the
installed package (nothing of this checkout on its path) and writes where it is told."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.flows.conftest import write_lr

pytestmark = pytest.mark.slow  # its own process with its own embedded Prefect server


def _desra_command() -> list[str]:
    """The ``desra`` console script of this environment, as a user types it (``python -m desra`` without one)."""
    script = Path(sys.executable).with_name("desra")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "desra"]


def test_desra_run_from_the_root_folder(tmp_path, tiny_models):
    drop, out = tmp_path / "drop", tmp_path / "out"
    stems = [f"img{i}" for i in range(2)]
    for i, stem in enumerate(stems):
        write_lr(drop / f"{stem}.png", i)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "PYTHONPATH"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    done = subprocess.run([*_desra_command(), "run", str(drop), "--out", str(out), "--mse-model", tiny_models[0],
                           "--gan-model", tiny_models[1], "--no-semantic", "--min-area", "10", "--batch-size", "2"],
                          cwd="/", env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "desra run: Completed: 2 ok, 0 failed" in done.stdout, done.stdout
    for folder in ("sr/mse", "sr/gan", "masks", "pseudo_gt"):
        assert sorted(p.stem for p in (out / folder).glob("*.png")) == stems, folder
    runs = pd.read_parquet(out / "runs")
    assert sorted(runs["stem"]) == stems and (runs["status"] == "ok").all(), runs[["stem", "status", "error"]]
    assert (out / "report.html").is_file()
