"""A disk that fills up during a ``desra`` run: the affected images fail with "No space left on device"
(naming the file), or the run fails saying so; nothing half-written is left where a later run would
trust it; and a re-run with space again completes every image, redoing only what was not finished."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from desra.flows.full import desra
from tests.conftest import unavailable
from tests.faults.conftest import ENOSPC_MESSAGE, DiskFull, latest_run, store_files, untrustworthy_files
from tests.flows.conftest import write_lr

IMAGES = 3


def _run(drop: Path, out: Path, models, **overrides):
    params = dict(input_dir=str(drop), output_dir=str(out), mse_model=models[0], gan_model=models[1],
                  segmenter=None, min_area=10, batch_size=IMAGES)
    return desra(**{**params, **overrides}, return_state=True)


def _drop(folder: Path) -> list[str]:
    stems = [f"img{i}" for i in range(IMAGES)]
    for i, stem in enumerate(stems):
        write_lr(folder / f"{stem}.png", i)
    return stems


def _in_store_step(step: str, suffix: str = ".png"):
    """The first write of a ``suffix`` file of store step ``step`` (``sr``, ``detect`` or ``pseudo_gt``) fails
    (``detect`` with ``.json``: its record, written after its mask)."""
    def fails(target: Path) -> bool:
        return target.suffix == suffix and target.parent.parent.name == step and target.parents[2].name == "store"
    first = []

    def once(target: Path) -> bool:
        if not first and fails(target):
            first.append(target)
            return True
        return False
    return once


def _rerun_completes(drop, out, tiny_models, counted, stems) -> None:
    before = store_files(out)
    counted.update(upscale=0, detect=0)
    state = _run(drop, out, tiny_models)
    assert state.is_completed(), state.message
    assert state.message == f"{IMAGES} ok, 0 failed of {IMAGES} image(s)"
    run = latest_run(out)
    assert sorted(run.index) == stems and (run["status"] == "ok").all(), run[["status", "error"]]
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was redone although it was finished"
    assert untrustworthy_files(out) == []
    for folder in ("masks", "pseudo_gt", "sr/mse", "sr/gan"):
        assert sorted(p.stem for p in (out / folder).glob("*.png")) == stems, folder


@pytest.mark.parametrize(("step", "suffix", "redo"), [("sr", ".png", {"upscale": 1, "detect": 1}),
                                                      ("detect", ".png", {"upscale": 0, "detect": 1}),
                                                      ("detect", ".json", {"upscale": 0, "detect": 1}),
                                                      ("pseudo_gt", ".png", {"upscale": 0, "detect": 0})])
def test_a_write_that_runs_out_of_space_fails_its_own_image(tmp_path, tiny_models, counted, monkeypatch,
                                                             step, suffix, redo):
    drop, out = tmp_path / "drop", tmp_path / "out"
    stems = _drop(drop)
    with monkeypatch.context() as patch:
        disk = DiskFull(patch, _in_store_step(step, suffix))
        state = _run(drop, out, tiny_models)
    (hit,) = disk.hits
    assert state.is_failed(), state.message
    assert f"{IMAGES - 1} ok, 1 failed of {IMAGES}" in state.message and ENOSPC_MESSAGE in state.message
    run = latest_run(out)
    failed = run[run["status"] != "ok"]
    assert len(failed) == 1, run[["status", "error"]]
    error = failed["error"].iloc[0]
    assert ENOSPC_MESSAGE in error and str(hit) in error, error
    assert not hit.exists(), "the entry whose write failed exists"
    assert untrustworthy_files(out) == []
    assert not (out / "masks" / f"{failed.index[0]}.png").exists()

    _rerun_completes(drop, out, tiny_models, counted, stems)
    assert counted == redo  # exactly the failed image's unfinished steps
    assert hit.is_file()


def test_a_disk_that_stays_full_fails_the_run_clearly_and_a_rerun_finishes(tmp_path, tiny_models, counted,
                                                                          monkeypatch):
    drop, out = tmp_path / "drop", tmp_path / "out"
    stems = _drop(drop)
    with monkeypatch.context() as patch:
        disk = DiskFull(patch, lambda target: disk.writes > 4)  # every write after the fourth
        state = _run(drop, out, tiny_models)
    assert disk.hits, "no write failed"
    assert state.is_failed(), state.message
    assert ENOSPC_MESSAGE in (state.message or ""), state.message
    assert untrustworthy_files(out) == []
    assert counted["upscale"] == 2 * IMAGES
    _rerun_completes(drop, out, tiny_models, counted, stems)
    assert 0 < counted["upscale"] < 2 * IMAGES  # what was finished before the disk filled up is kept


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs at ``tmp_path/tmpfs`` (root only; skipped where mounting is not permitted)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    name = f"desra-fault-{uuid.uuid4().hex[:8]}"
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", name, str(mount_point)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        unavailable(f"cannot run mount to make a small tmpfs: {e}")
    if done.returncode != 0:
        unavailable(f"mounting a tmpfs is not permitted here (uid {os.getuid()}): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        umount = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True, timeout=30)
        if umount.returncode != 0:  # something still holds it open: detach it now, free it when closed
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, text=True, timeout=30)


def test_a_real_full_tmpfs(tmp_path, tiny_models, counted, small_tmpfs):
    drop, out = tmp_path / "drop", small_tmpfs / "out"
    stems = _drop(drop)
    state = _run(drop, out, tiny_models)
    assert state.is_failed(), state.message
    message = state.message or ""
    if "failed of" not in message:  # the run itself failed (a report could not be written)
        assert ENOSPC_MESSAGE in message, message
    else:  # it finished with the images that hit the full disk as failed rows
        run = latest_run(out)
        failed = run[run["status"] != "ok"]
        assert len(failed) > 0 and failed["error"].str.contains(ENOSPC_MESSAGE).all(), failed["error"]
    assert untrustworthy_files(out) == []
    assert store_files(out), "the disk filled up before anything was stored: make the tmpfs larger"

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True, timeout=30)
    _rerun_completes(drop, out, tiny_models, counted, stems)
    assert counted["upscale"] < 2 * IMAGES
