"""Temporary files of killed writers (issue 16): removed by the first process that attends an output root
when no other process works there; while another one does, only those untouched for a day."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from desra.pipeline.leftovers import STALE_AFTER, TEMP_NAME, attend
from desra_core.image import _temp_beside

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks")

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys
from desra.pipeline.leftovers import attend
attend(sys.argv[1])
print("attending", flush=True)
sys.stdin.read()  # until the test closes stdin
"""


def _leftover(folder: Path, target: str, age: float = 0.0) -> Path:
    """A temporary file as a writer killed inside ``atomic_path`` leaves it (atomic_path's own naming)."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = _temp_beside(folder / target)
    temp.write_bytes(b"half")
    if age:
        os.utime(temp, (time.time() - age, time.time() - age))
    return temp


def test_the_naming_matches_what_the_writers_use_and_nothing_else(tmp_path):
    assert TEMP_NAME.fullmatch(_leftover(tmp_path, "a.png").name)
    assert TEMP_NAME.fullmatch(_leftover(tmp_path, "runs.parquet").name)
    assert TEMP_NAME.fullmatch(".generator.safetensors.4242.tmp")  # the fine-tuning checkpoints' naming
    for name in ("a.png", "notes.tmp", ".hidden.png", "a.1234abcd.tmp.png", ".desra-write-probe-x1y2"):
        assert not TEMP_NAME.fullmatch(name), name


def test_alone_every_leftover_goes_and_nothing_else(tmp_path):
    root = tmp_path / "out"
    leftovers = [_leftover(root / "masks", "a.png"), _leftover(root / ".desra" / "store" / "sr" / "ab", "ab.png"),
                 _leftover(root / "runs", "r.parquet")]
    keep = [root / "masks" / "b.png", root / "notes.tmp", root / ".desra" / "locks" / "sr" / "k.lock"]
    for path in keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    removed = attend(root)
    assert sorted(removed) == sorted(leftovers)
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in keep)
    assert attend(root) == []  # once per process


def test_while_another_process_works_there_only_stale_leftovers_go(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "attending"
        fresh = _leftover(root / "masks", "a.png")  # could be the other process's write in progress
        stale = _leftover(root / "masks", "b.png", age=STALE_AFTER + 60)
        assert attend(root) == [stale]
        assert fresh.exists() and not stale.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
