"""``benchmarks/scale_out.py --quick`` runs end to end: worker processes on a local root and on a moto S3 bucket,
and a markdown table with every column and numbers that make sense (not the issue's goals: 2 images on a busy
test machine say nothing about scaling)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("moto.moto_server.threaded_moto_server", reason="needs the dev extra (moto[server])")
pytest.importorskip("obstore", reason="needs the s3 extra (obstore)")

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["storage", "split", "workers", "images", "wall s", "images/s", "× one worker", "CPU core-s/image",
           "server CPU core-s/image", "model calls", "requests/image", "ok"]


def _table(output: str) -> list[dict[str, str]]:
    lines = [line for line in output.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == COLUMNS, output
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]


@pytest.mark.slow
def test_quick_mode_prints_the_table_for_both_storages(needs_parity, tmp_path):
    env = {**os.environ, "DESRA_SHARED": str(needs_parity.parent), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale_out.py"), "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = _table(done.stdout)
    assert [(r["storage"], r["split"], r["workers"]) for r in rows] == [
        ("local", "batch", "1"), ("local", "batch", "2"), ("s3", "batch", "1"), ("s3", "batch", "2")]
    for r in rows:
        assert r["images"] == "2" and r["ok"] == "2/2", r
        assert r["model calls"] == "6", r  # MSE-SR, GAN-SR, segmentation of each image, once across the workers
        wall, ips = float(r["wall s"]), float(r["images/s"])
        assert 0 < wall < 120 and ips == pytest.approx(2 / wall, rel=0.02), r
        assert 0 < float(r["CPU core-s/image"]) < 30, r
        assert float(r["× one worker"]) > 0, r
        requests = float(r["requests/image"])
        assert (requests > 5) if r["storage"] == "s3" else (requests == 0), r
    assert [r["× one worker"] for r in rows if r["workers"] == "1"] == ["1.00", "1.00"]
    assert float(rows[2]["server CPU core-s/image"]) > 0  # the moto server did the S3 run's requests
    assert "PASS  every entry computed once" in done.stdout
    for goal in ("one worker on S3 ≥ 0.9× its local throughput", "CPU per image on S3 within +15 % of local"):
        assert goal in done.stdout  # printed with PASS or FAIL; 2 images decide nothing


def _benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale_out", REPO / "benchmarks" / "scale_out.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(storage, workers, round_, ips, cpu):
    return {"storage": storage, "split": "batch", "workers": workers, "round": round_, "ips": ips,
            "cpu_per_image": cpu}


def test_repeated_rounds_judge_each_goal_on_the_median_round_and_print_the_worst():
    # --repeat N: one noisy pair must neither pass nor fail a goal alone; each round's figure comes from its own
    # rows (S3 over local of the same round), the median decides, the worst is printed beside it
    bench = _benchmark()
    rows = [_row("local", 1, 0, 0.33, 0.200), _row("s3", 1, 0, 0.33, 0.250),   # +25 %
            _row("local", 1, 1, 0.33, 0.220), _row("s3", 1, 1, 0.32, 0.242),   # +10 %
            _row("local", 1, 2, 0.33, 0.230), _row("s3", 1, 2, 0.33, 0.253)]   # +10 %
    goals = dict(bench.goals(rows))
    [(cpu, met)] = [(text, ok) for text, ok in goals.items() if text.startswith("CPU per image")]
    assert met and "+10.0%" in cpu and "worst +25.0%" in cpu, cpu
    rows[3]["cpu_per_image"] = 0.264  # round 2 now +20 %: the median round fails
    [(cpu, met)] = [(t, ok) for t, ok in bench.goals(rows) if t.startswith("CPU per image")]
    assert not met and "+20.0%" in cpu, cpu
    [(throughput, met)] = [(t, ok) for t, ok in bench.goals(rows) if t.startswith("one worker on S3")]
    assert met and "worst 0.97×" in throughput, throughput


def test_one_round_reads_as_before():
    bench = _benchmark()
    rows = [_row("local", 1, 0, 0.33, 0.200), _row("s3", 1, 0, 0.33, 0.240),
            _row("local", 3, 0, 0.99, 0.200), _row("s3", 3, 0, 0.80, 0.300)]
    goals = dict(bench.goals(rows))
    assert goals["CPU per image on S3 within +15 % of local, 1 worker(s): +20.0%"] is False
    assert goals["local: 3 workers ≥ 2.5× one worker: 3.00×"] is True
    assert goals["s3: 3 workers ≥ 2.5× one worker: 2.42×"] is False


def test_rounds_without_one_worker_have_no_scaling_baseline_but_their_cpu_goals():
    # --workers 2,3 measures no one-worker row: the table shows no scaling figure, the CPU goals still judge
    bench = _benchmark()
    rows = [{**_row("local", 2, 0, 0.66, 0.200), "wall": 27.2, "images": 18, "server_cpu_per_image": 0.0, "calls": 54,
             "requests_per_image": 0.0, "ok": 18, "rows": 18},
            {**_row("s3", 2, 0, 0.65, 0.250), "wall": 27.6, "images": 18, "server_cpu_per_image": 0.1, "calls": 54,
             "requests_per_image": 24.6, "ok": 18, "rows": 18}]
    baselines = bench.one_worker_baselines(rows)
    assert baselines == {}
    assert all("| n/a |" in line for line in bench.table(rows, baselines)[2:])
    goals = dict(bench.goals(rows))
    assert goals == {"CPU per image on S3 within +15 % of local, 2 worker(s): +25.0%": False}
    rows.append(_row("s3", 1, 0, 0.32, 0.2))
    assert bench.one_worker_baselines(rows) == {"s3": 0.32}
