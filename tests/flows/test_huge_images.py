"""Images too large to upscale: refused from the header with a clear row; the rest of the drop runs.

Also: per-image errors after the SR step name the input file and the input's own size.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import desra_core.image
from desra.flows.full import desra
from desra_core.folder import MAX_INPUT_VARIABLE
from desra_core.models.sr import MAX_OUTPUT_VARIABLE
from tests.flows.conftest import write_lr

REPO = Path(__file__).resolve().parents[2]
# Runs a command and prints its children's peak RSS. A child's own ru_maxrss, read from a large parent, starts at
# the parent's peak: Linux keeps the high-water mark of the address space an exec replaces, and Python spawns
# with vfork, so that is the parent's (measured: a child `python -c pass` of a 1.5 GB parent "peaks" at 1.5 GB).
_PEAK_LAUNCHER = ("import resource, subprocess, sys\n"
                  "code = subprocess.run(sys.argv[1:]).returncode\n"
                  "print(f'peak-rss-kib={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', flush=True)\n"
                  "sys.exit(code)\n")


def png_claiming(path: Path, width: int, height: int) -> None:
    """A valid RGB PNG of zeros (every chunk and CRC correct), deflated row by row: a few hundred KB on
    disk for 12000×12000, and no image-sized buffer to make it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))

    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    row = bytes(1 + 3 * width)  # filter byte 0 and black pixels
    body = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _desra_run(tmp_path: Path, drop: Path, out: Path, tiny_models) -> tuple[int, str, int]:
    """``desra run`` on ``drop`` in its own process: ``(exit code, log, peak RSS in bytes)``."""
    env = {k: v for k, v in os.environ.items()
           if k not in (MAX_OUTPUT_VARIABLE, MAX_INPUT_VARIABLE) and not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    command = [sys.executable, "-m", "desra", "run", str(drop), "--out", str(out), "--mse-model", tiny_models[0],
               "--gan-model", tiny_models[1], "--no-semantic", "--min-area", "10"]
    # Through the small launcher: measured from this pytest process, the peak would be at least this process's own.
    proc = subprocess.run([sys.executable, "-c", _PEAK_LAUNCHER, *command], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    log, _, peak_line = proc.stdout.rstrip("\n").rpartition("\n")
    assert peak_line.startswith("peak-rss-kib="), proc.stdout
    return proc.returncode, log, int(peak_line.split("=")[1]) * 1024


def _latest_run(out: Path) -> pd.DataFrame:
    latest = max((out / "runs").glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    return pd.read_parquet(latest).set_index("stem")


def test_a_png_claiming_12000_squared_gets_a_row_and_the_drop_runs_in_bounded_memory(tmp_path, tiny_models):
    # The probe: a ~420 KB PNG whose header says 12000×12000 (144 Mpx: under the 268 Mpx
    # decoding limit) would need 48000×48000 outputs from two models. Under the default
    # DESRA_MAX_OUTPUT_MPIX it is refused from its header; `desra run` (its own process, so that its
    # peak RSS is its own) processes the other images and stays far below 2 GB.
    drop, out = tmp_path / "drop", tmp_path / "out"
    png_claiming(drop / "huge.png", 12000, 12000)
    assert (drop / "huge.png").stat().st_size < 500_000
    write_lr(drop / "a.png", 1)
    write_lr(drop / "b.png", 2)
    returncode, log, peak = _desra_run(tmp_path, drop, out, tiny_models)
    assert returncode == 1, log  # a failed image makes the run Failed, with the count
    assert "2 ok, 1 failed of 3" in log, log
    run = _latest_run(out)
    assert run.loc["a", "status"] == "ok" and run.loc["b", "status"] == "ok"
    error = run.loc["huge", "error"]
    assert run.loc["huge", "status"] == "failed"
    for part in ("huge.png", "12000×12000", "48000×48000", "megapixels of output per image", MAX_OUTPUT_VARIABLE,
                 "refused before decoding"):
        assert part in error, error
    assert sorted(p.name for p in (out / "sr" / "gan").glob("*.png")) == ["a.png", "b.png"]
    # Measured: 1200 MiB, the same as `desra run` on the two small images alone (embedded Prefect server,
    # torch); decoding the huge image alone would add 432 MB, upscaling it about 78 GB per model before.
    print(f"\npeak RSS of `desra run` and its children: {peak / 2**20:.0f} MiB")
    assert peak < 2 * 2**30, f"peak RSS of `desra run`: {peak / 2**20:.0f} MiB"


def test_a_sparse_3_gb_file_and_a_2_gb_padded_png_are_failed_rows_in_bounded_memory(tmp_path, tiny_models):
    # Issue 16: reading used to take a whole file into memory before any check (a 3 GB sparse .png took
    # `desra run` to 4–6 GB RSS) and a 2 GB PNG of zeros after its IEND was processed as ok. Both files are
    # made with truncate (sparse: no disk), and must cost the run nothing: refused from fstat, unread.
    clean, attacked = tmp_path / "clean", tmp_path / "attacked"
    for drop in (clean, attacked):
        write_lr(drop / "a.png", 1)
        write_lr(drop / "b.png", 2)
    with open(attacked / "sparse.png", "wb") as f:
        f.truncate(3 * 2**30)
    write_lr(attacked / "padded.png", 3)
    with open(attacked / "padded.png", "r+b") as f:
        f.truncate(2 * 2**30)  # the small PNG, then zeros after its IEND up to 2 GiB
    code, log, baseline = _desra_run(tmp_path, clean, tmp_path / "out-clean", tiny_models)
    assert code == 0, log
    code, log, peak = _desra_run(tmp_path, attacked, tmp_path / "out-attacked", tiny_models)
    assert code == 1 and "2 ok, 2 failed of 4" in log, log
    run = _latest_run(tmp_path / "out-attacked")
    assert (run.loc[["a", "b"], "status"] == "ok").all()
    for stem, size in (("sparse", 3 * 2**30), ("padded", 2 * 2**30)):
        error = run.loc[stem, "error"]
        assert run.loc[stem, "status"] == "failed"
        for part in (f"{stem}.png", "at most 64 MiB", MAX_INPUT_VARIABLE, f"got {size} bytes",
                     "refused before reading"):
            assert part in error, error
    print(f"\npeak RSS of `desra run`: {baseline / 2**20:.0f} MiB without them, {peak / 2**20:.0f} MiB with them")
    assert peak - baseline < 300 * 2**20, (baseline, peak)


def test_just_over_the_limit_is_refused_without_decoding_and_at_the_limit_runs(tmp_path, tiny_models, monkeypatch):
    # The limit counts output pixels (input × scale²). Tiny x4 models: 40×40 → 160×160 = 25 600 pixels.
    drop, out = tmp_path / "drop", tmp_path / "out"
    write_lr(drop / "at.png", 1)  # 40×40: exactly at the limit
    rng = np.random.default_rng(0)
    assert cv2.imwrite(str(drop / "over.png"), rng.integers(0, 256, (40, 41, 3), dtype=np.uint8))  # 41 wide
    monkeypatch.setenv(MAX_OUTPUT_VARIABLE, "0.0256")
    decoded = []
    real_decode = desra_core.image._decode

    def decode(src, error):
        decoded.append(Path(src.path).name)
        return real_decode(src, error)

    monkeypatch.setattr(desra_core.image, "_decode", decode)
    state = desra(input_dir=str(drop), output_dir=str(out), mse_model=tiny_models[0], gan_model=tiny_models[1],
                  segmenter=None, min_area=10, return_state=True)
    assert not state.is_completed() and "1 ok, 1 failed of 2" in state.message, state.message
    run = _latest_run(out)
    assert run.loc["at", "status"] == "ok"
    error = run.loc["over", "error"]
    assert run.loc["over", "status"] == "failed"
    for part in ("over.png", "41×40", "164×160", "0.0256 megapixels", MAX_OUTPUT_VARIABLE):
        assert part in error, error
    assert "over.png" not in decoded and "at.png" in decoded  # refused from the header alone
    assert not (out / "sr" / "mse" / "over.png").exists()


def test_an_invalid_limit_is_a_clear_error(monkeypatch):
    from desra_core import ConfigError
    from desra_core.models.sr import DEFAULT_MAX_OUTPUT_MPIX, max_output_pixels

    assert max_output_pixels({}) == int(DEFAULT_MAX_OUTPUT_MPIX * 1e6)
    assert max_output_pixels({MAX_OUTPUT_VARIABLE: " 2.5 "}) == 2_500_000
    for bad in ("0", "-1", "lots", "nan", "inf"):
        with pytest.raises(ConfigError, match=MAX_OUTPUT_VARIABLE):
            max_output_pixels({MAX_OUTPUT_VARIABLE: bad})


def test_a_too_small_image_is_reported_with_its_own_file_and_size(tmp_path, tiny_models):
    # A 1×1 input becomes 4×4: smaller than detection's 11×11 window. The error used to give only the
    # upscaled size ("… got 4×4"); the row must name the input file and the input's own size.
    drop, out = tmp_path / "drop", tmp_path / "out"
    write_lr(drop / "fine.png", 3)
    assert cv2.imwrite(str(drop / "tiny.png"), np.full((1, 1, 3), 128, np.uint8))
    state = desra(input_dir=str(drop), output_dir=str(out), mse_model=tiny_models[0], gan_model=tiny_models[1],
                  segmenter=None, min_area=10, return_state=True)
    assert "1 ok, 1 failed of 2" in state.message, state.message
    run = _latest_run(out)
    error = run.loc["tiny", "error"]
    assert run.loc["fine", "status"] == "ok"
    assert str(drop / "tiny.png") in error and "1×1 pixels" in error, error
    assert "11×11" in error, error  # the reason itself is kept
