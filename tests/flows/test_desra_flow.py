"""The `desra` flow in process: outputs, content caching on drops, failures per image, the final state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest

from desra.flows.full import desra
from tests.flows.conftest import write_lr


def _run(drop, out, models, **overrides):
    params = dict(input_dir=str(drop), output_dir=str(out), mse_model=models[0], gan_model=models[1],
                  segmenter=None, min_area=10, batch_size=2)
    params.update(overrides)
    return desra(**params, return_state=True)


def _latest_run(out: Path) -> pd.DataFrame:
    latest = max((out / "runs").glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    return pd.read_parquet(latest).set_index("stem")


def test_drop_outputs_and_reports(tmp_path, tiny_models, counted):
    drop, out = tmp_path / "drop", tmp_path / "out"
    for i in range(3):
        write_lr(drop / f"img{i}.png", i)
    state = _run(drop, out, tiny_models)
    assert state.is_completed(), state.message
    assert "3 ok, 0 failed" in state.message
    assert counted["upscale"] == 6  # 3 images × (MSE + GAN), in batches of 2
    for folder in ("masks", "pseudo_gt", "sr/mse", "sr/gan"):
        files = sorted(p.name for p in (out / folder).glob("*.png"))
        assert files == ["img0.png", "img1.png", "img2.png"], folder
    assert cv2.imread(str(out / "sr/gan/img0.png")).shape == (160, 160, 3)
    run = _latest_run(out)
    assert list(run.index) == ["img0", "img1", "img2"]
    assert (run["status"] == "ok").all() and not run["cached"].any()
    assert run["mse_model"].eq(tiny_models[0]).all() and run["config_hash"].nunique() == 1
    report = pd.read_parquet(out / "reports" / "img0.parquet")
    assert {"region_id", "x", "y", "w", "h", "area", "mean_adjusted", "artifact_fraction"} <= set(report.columns)
    assert (report["region_count"].iloc[0] == len(report)) or (report["region_count"].iloc[0] == 0)


def test_rerun_new_images_setting_and_model_changes_redo_only_what_depends(tmp_path, tiny_models, counted):
    drop, out = tmp_path / "drop", tmp_path / "out"
    for i in range(3):
        write_lr(drop / f"img{i}.png", i)
    assert _run(drop, out, tiny_models).is_completed()
    counted.update(upscale=0, detect=0)

    assert _run(drop, out, tiny_models).is_completed()  # unchanged drop: no model work at all
    assert counted == {"upscale": 0, "detect": 0}
    assert _latest_run(out)["cached"].all()

    write_lr(drop / "new0.png", 10)
    write_lr(drop / "new1.png", 11)
    assert _run(drop, out, tiny_models).is_completed()
    assert counted == {"upscale": 4, "detect": 2}  # only the two new images
    counted.update(upscale=0, detect=0)

    assert _run(drop, out, tiny_models, threshold=0.5).is_completed()
    assert counted == {"upscale": 0, "detect": 5}  # detection only
    counted.update(upscale=0, detect=0)

    changed = tmp_path / "gan_changed.pth"
    changed.write_bytes(Path(tiny_models[1]).read_bytes() + b"")  # same weights, new file: same digest
    assert _run(drop, out, (tiny_models[0], str(changed)), threshold=0.5).is_completed()
    assert counted == {"upscale": 0, "detect": 0}  # content, not paths, decides

    import torch

    from tests.core.models.test_sr import tiny_compact

    state_dict = tiny_compact()
    next(iter(state_dict.values())).add_(0.01)
    torch.save({"params": state_dict}, changed)
    assert _run(drop, out, (tiny_models[0], str(changed)), threshold=0.5).is_completed()
    assert counted == {"upscale": 5, "detect": 5}  # GAN SR for all five; MSE SR from the store


def test_a_bad_file_fails_its_own_row_and_the_rest_completes(tmp_path, tiny_models):
    drop, out = tmp_path / "drop", tmp_path / "out"
    for i in range(3):
        write_lr(drop / f"img{i}.png", i)
    (drop / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    state = _run(drop, out, tiny_models)
    assert state.is_failed()
    assert "3 ok, 1 failed of 4" in state.message and "broken" in state.message
    run = _latest_run(out)
    assert run.loc["broken", "status"] == "failed" and "broken.png" in run.loc["broken", "error"]
    assert (run.drop(index="broken")["status"] == "ok").all()
    assert (out / "reports" / "broken.parquet").exists() and not (out / "masks" / "broken.png").exists()


def test_bad_options_fail_before_any_work(tmp_path, tiny_models, counted):
    drop = tmp_path / "drop"
    write_lr(drop / "a.png", 0)
    state = _run(drop, tmp_path / "out", tiny_models, min_area_fraction=None, threshold=2.0)
    assert state.is_failed() and counted["upscale"] == 0



def test_finetune_option_validates_on_held_out_images_and_ships_no_worse_model(tmp_path, tiny_models):
    # Random tiny models and two steps cannot beat the original on the held-out image: the run says so and
    # ships no generator (the shipping rule itself is tested in tests/core/finetune and tests/cli).
    drop, out = tmp_path / "drop", tmp_path / "out"
    for i in range(3):
        write_lr(drop / f"img{i}.png", i)
    settings = {"iterations": 2, "batch": 2, "crop": 64, "perceptual": 0.0, "ema": 0.0, "validate_every": 1,
                "min_detail_ratio": 10.0,  # unreachable: no checkpoint may qualify
                "min_artifact_images": 1}  # the one held-out image is evidence enough to train and judge
    state = _run(drop, out, tiny_models, finetune=True, finetune_settings=settings)
    assert state.is_completed(), state.message
    assert "shipped no model" in state.message and "qualif" in state.message, state.message
    assert not list(out.glob("finetune/**/generator.safetensors"))
    (log_path,) = out.glob("finetune/**/train_log.parquet")
    log = pd.read_parquet(log_path)
    assert list(log["step"]) == [1, 2]
    (card_path,) = out.glob("finetune/**/model_card.json")
    card = json.loads(card_path.read_text())
    held_out = {i["stem"] for i in card["validation_images"]}
    trained = {i["stem"] for i in card["train_images"]}
    assert held_out and trained and not held_out & trained, card  # none is in both
    assert held_out | trained == {"img0", "img1", "img2"}  # every readable image, not only the flagged ones


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_or_trusting_partial_files(tmp_path, tiny_models):
    drop, out = tmp_path / "drop", tmp_path / "out"
    for i in range(8):
        write_lr(drop / f"img{i}.png", i, size=96)
    cmd = [sys.executable, "-m", "desra", "run", str(drop), "--out", str(out), "--mse-model", tiny_models[0],
           "--gan-model", tiny_models[1], "--no-semantic", "--min-area", "10", "--batch-size", "2"]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    store = out / ".desra" / "store"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and len(list((store / "detect").rglob("*.json"))) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    assert finished, "nothing was written before the kill"
    rc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stdout[-2000:] + rc.stderr[-2000:]
    for path, mtime in finished.items():
        if path.suffix != ".tmp" and not path.name.startswith("."):
            assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    for png in out.rglob("*.png"):
        if not png.name.startswith("."):  # a hidden temp file the kill left behind is never read
            assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED) is not None, f"{png} is not a whole PNG"
    assert (_latest_run(out)["status"] == "ok").sum() == 8
