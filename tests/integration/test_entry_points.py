"""One pipeline, three entry points: ``desra run``, the ``desra`` flow under a real worker, ``desra detect``.

One small drop (8-bit and 16-bit PNG inputs and one file that is no image) goes through (a) ``desra run``
(the CLI in a subprocess, Prefect's embedded API), (b) a run of the ``desra/full`` deployment on the
session's real server and workers (``conftest.py``) with the same parameters, and (c) ``desra detect`` over
the ``sr/mse`` and ``sr/gan`` folders that (a) wrote. Tiny random SR models, no segmenter, a small area
limit so that masks are not empty, and a non-default feather. The masks and pseudo-GT files must be the
same bytes everywhere, the 16-bit image's pseudo-GT 16-bit everywhere, the run reports must agree on what
they say about each image, and the bad file must be a failed row naming it in all three.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.integration.conftest import REPO, Stack, write_lr

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 300.0
THRESHOLD, MIN_AREA, FEATHER = 0.7, 10, 1.5
COMPARED = ["stem", "status", "artifact_fraction", "region_count", "height", "width", "min_area", "notes"]
GOOD = ["eight_a", "eight_b", "sixteen"]
BAD = "broken"
BAD_BYTES = b"\x89PNG\r\n\x1a\n this is not an image"


def _write_drop(drop: Path) -> None:
    write_lr(drop / "eight_a.png", 1)
    write_lr(drop / "eight_b.png", 2)
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    sixteen = cv2.resize(coarse, (40, 40), interpolation=cv2.INTER_CUBIC).astype(np.int32)
    sixteen = np.clip(sixteen + rng.integers(-5000, 5001, sixteen.shape), 0, 65535).astype(np.uint16)
    assert cv2.imwrite(str(drop / "sixteen.png"), sixteen)
    assert cv2.imread(str(drop / "sixteen.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    (drop / f"{BAD}.png").write_bytes(BAD_BYTES)


def _desra(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "desra", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT, start_new_session=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"`desra {' '.join(args)}` did not finish in {RUN_TIMEOUT:.0f} s\n{e.stdout}\n{e.stderr}")


def _run_report(out: Path) -> pd.DataFrame:
    runs = sorted((out / "runs").glob("*.parquet"))
    assert len(runs) == 1, f"expected one run report in {out / 'runs'}, got {[p.name for p in runs]}"
    return pd.read_parquet(runs[0]).set_index("stem", drop=False).sort_index()


def _plain(value):
    """A report value as plain Python, every kind of missing as None (NaN, pd.NA, None)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _wait_final(stack: Stack, flow_run_id: str):
    def final():
        with stack.client() as client:
            run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    return stack.wait_for(f"flow run {flow_run_id} to finish", final, RUN_TIMEOUT)


def test_run_flow_and_detect_give_the_same_outputs(stack: Stack, tiny_models, tmp_path):
    drop = tmp_path / "drop"
    _write_drop(drop)
    outs = {"run": tmp_path / "out-run", "flow": tmp_path / "out-flow", "detect": tmp_path / "out-detect"}
    options = ["--no-semantic", "--threshold", str(THRESHOLD), "--min-area", str(MIN_AREA), "--feather", str(FEATHER)]

    # (a) desra run: the CLI in a subprocess, on Prefect's embedded API (no server URL, a home of its own).
    embedded = {k: v for k, v in stack.env.items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    embedded["PREFECT_HOME"] = str(tmp_path / "prefect-home-run")
    done = _desra(["run", str(drop), "--out", str(outs["run"]), "--mse-model", tiny_models["mse"],
                   "--gan-model", tiny_models["gan"], *options], embedded)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # the bad file failed
    assert "3 ok, 1 failed of 4 image(s)" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]

    # (b) the desra flow under a real worker: a run of the desra/full deployment with the same parameters
    # (its models are the deployment's defaults, the same tiny files; its segmenter "" means none).
    flow_run_id = stack.run_deployment("desra/full", {
        "input_dir": str(drop), "output_dir": str(outs["flow"]), "mse_model": tiny_models["mse"],
        "gan_model": tiny_models["gan"], "segmenter": None, "threshold": THRESHOLD, "min_area": MIN_AREA,
        "feather": FEATHER})
    run = _wait_final(stack, flow_run_id)
    assert run.state.is_failed() and run.state.message.startswith("3 ok, 1 failed of 4 image(s)"), (
        f"{run.state.name}: {run.state.message}\n{stack.run_logs(flow_run_id)}")

    # (c) desra detect over the SR results that (a) published, with the bad file on both sides.
    given = outs["run"] / "sr"
    for side in ("mse", "gan"):
        (given / side / f"{BAD}.png").write_bytes(BAD_BYTES)
    done = _desra(["detect", "--mse", str(given / "mse"), "--gan", str(given / "gan"), "--out",
                   str(outs["detect"]), *options], embedded)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"failed: {BAD}: " in done.stderr and "3 ok, 1 failed" in done.stdout, done.stdout + done.stderr

    # Masks and pseudo-GT: the same files, byte for byte, from every entry point.
    for folder in ("masks", "pseudo_gt"):
        names = {name: sorted(p.name for p in (out / folder).glob("*.png")) for name, out in outs.items()}
        assert all(found == [f"{s}.png" for s in GOOD] for found in names.values()), (folder, names)
        for stem in GOOD:
            reference = (outs["run"] / folder / f"{stem}.png").read_bytes()
            for name in ("flow", "detect"):
                assert (outs[name] / folder / f"{stem}.png").read_bytes() == reference, (folder, stem, name)
    masks = [cv2.imread(str(outs["run"] / "masks" / f"{s}.png"), cv2.IMREAD_UNCHANGED) for s in GOOD]
    assert any(m.any() for m in masks), "every mask is empty: the comparison would prove little"
    for name, out in outs.items():
        pseudo = cv2.imread(str(out / "pseudo_gt" / "sixteen.png"), cv2.IMREAD_UNCHANGED)
        assert pseudo.dtype == np.uint16 and pseudo.shape == (160, 160, 3), (name, pseudo.dtype, pseudo.shape)
        assert cv2.imread(str(out / "pseudo_gt" / "eight_a.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint8, name

    # The run reports agree on every image; the bad file is a failed row naming it in all three.
    reports = {name: _run_report(out) for name, out in outs.items()}
    for name, report in reports.items():
        assert list(report.index) == sorted([*GOOD, BAD]), (name, list(report.index))
        assert (report.loc[GOOD, "status"] == "ok").all(), (name, report[["status", "error"]])
        assert report.loc[BAD, "status"] == "failed" and f"{BAD}.png" in report.loc[BAD, "error"], \
            (name, report.loc[BAD, "error"])
        assert (report.loc[GOOD, "min_area"] == MIN_AREA).all(), name
    expected = {stem: [_plain(reports["run"].loc[stem, c]) for c in COMPARED] for stem in reports["run"].index}
    for name in ("flow", "detect"):
        found = {stem: [_plain(reports[name].loc[stem, c]) for c in COMPARED] for stem in reports[name].index}
        assert found == expected, (name, COMPARED, found, expected)
    assert (reports["run"].loc[GOOD, "region_count"] > 0).any()
    # desra detect keeps report.parquet: the same rows as its run report
    assert pd.read_parquet(outs["detect"] / "report.parquet").equals(pd.read_parquet(
        next((outs["detect"] / "runs").glob("*.parquet"))))
