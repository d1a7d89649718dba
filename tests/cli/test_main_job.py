"""The README's main job (`desra run` on the example drop), run as written except for the weights.

The README's command downloads the official weights; this machine is offline, so the test appends
``--mse-model`` / ``--gan-model`` pointing at the local weights in ``../shared/models`` (SPAN as the
MSE model, Real-ESRGAN x4plus as the GAN model: the models that made ``examples/drop/{mse,gan}``) and
``--out`` into a temporary folder. Everything else comes from the README line itself, so a change to
the README's options is tested here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from desra_core.image import read_image, read_mask
from tests.conftest import MODELS, REPO, unavailable

pytestmark = [pytest.mark.real_models, pytest.mark.slow]

MSE = MODELS / "span_x4_ch52.mse.safetensors"
GAN = MODELS / "realesrgan_x4plus.gan.safetensors"


def readme_main_job() -> list[str]:
    """The `desra ...` part of the README's first quick-start command, as arguments."""
    text = (REPO / "README.md").read_text()
    line = next(m.group(1) for m in re.finditer(r"&& \.venv/bin/desra (run .*)", text))
    return shlex.split(line)


def test_readme_main_job_is_desra_run_on_the_example_drop():
    args = readme_main_job()
    assert args[:2] == ["run", "examples/drop/lr"]
    assert "--out" in args and "--labels" in args


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    if not (MSE.is_file() and GAN.is_file()):
        unavailable(f"real weights not found in {MODELS} (needs ../shared/models)")
    out = tmp_path_factory.mktemp("main_job") / "out"
    args = readme_main_job()
    args[args.index("--out") + 1] = str(out)
    cmd = [sys.executable, "-m", "desra", *args, "--mse-model", str(MSE), "--gan-model", str(GAN)]
    runs = [subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900) for _ in range(2)]
    return out, runs


def test_main_job_completes_and_writes_the_documented_outputs(main_job):
    out, (first, _) = main_job
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    stems = sorted(p.stem for p in (REPO / "examples/drop/lr").glob("*.png"))
    for folder in ("sr/mse", "sr/gan", "masks", "pseudo_gt"):
        assert sorted(p.stem for p in (out / folder).glob("*.png")) == stems, folder
    assert sorted(p.stem for p in (out / "reports").glob("*.parquet")) == stems
    runs = pd.read_parquet(out / "runs")
    assert len(runs) == 2 * len(stems) and (runs["status"] == "ok").all()


def test_main_job_reproduces_the_example_results(main_job):
    """Our SR of the example drop matches the shipped SR results, and the masks match `desra detect`'s."""
    out, _ = main_job
    example = REPO / "examples/drop"
    detect_out = out.parent / "detect"
    cmd = [sys.executable, "-m", "desra", "detect", "--mse", str(example / "mse"), "--gan", str(example / "gan"),
           "--labels", str(example / "labels"), "--out", str(detect_out), "--threshold", "0.8", "--min-area", "500"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    flagged = 0
    for gan_path in sorted((example / "gan").glob("*.png")):
        stem = gan_path.stem
        ours = read_image(out / "sr/gan" / f"{stem}.png").pixels.astype(np.float64)
        assert np.abs(ours - read_image(gan_path).pixels).mean() < 1.0, stem
        mine, theirs = read_mask(out / "masks" / f"{stem}.png"), read_mask(detect_out / "masks" / f"{stem}.png")
        union = (mine | theirs).sum()
        assert union == 0 or (mine & theirs).sum() / union >= 0.95, stem
        flagged += int(mine.any())
    assert flagged >= 1  # the README's settings find artifacts in the example drop


def test_second_run_of_the_main_job_does_no_model_work(main_job):
    out, (_, second) = main_job
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs = pd.read_parquet(out / "runs")
    latest = runs[runs["run_id"] == sorted(runs["run_id"].unique())[-1]]
    assert latest["cached"].all() and (latest["sr_seconds"] == 0).all()
