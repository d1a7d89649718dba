"""A scaled-out `desra` run gathers only the per-image reports that its own batch runs wrote.

`_gather` reads `reports/<stem>.parquet`, which any run over the same output folder rewrites. When this
run's batch run dies before publishing an image, the file still holds an earlier run's row, perhaps
computed with another threshold: reporting it as this run's `ok` would be a lie.
"""

from __future__ import annotations

import pandas as pd

from desra.flows.full import _gather, desra
from tests.flows.conftest import write_lr


def test_gather_reports_only_rows_this_run_wrote(tmp_path, tiny_models):
    drop, out = tmp_path / "drop", tmp_path / "out"
    for i in range(2):
        write_lr(drop / f"img{i}.png", i)
    state = desra(input_dir=str(drop), output_dir=str(out), mse_model=tiny_models[0], gan_model=tiny_models[1],
                  segmenter=None, min_area=10, threshold=0.9, return_state=True)
    assert state.is_completed(), state.message
    earlier = pd.read_parquet(next((out / "runs").glob("*.parquet")))
    earlier_run = earlier["run_id"].iloc[0]

    # The earlier run's own id: its rows are gathered as they were written.
    rows = _gather(str(out), ["img0", "img1"], earlier_run)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert {r["run_id"] for r in rows} == {earlier_run}

    # A later run (another id) whose batch died: the reports on disk are the earlier run's, not its own.
    rows = _gather(str(out), ["img0", "img1", "never"], "20261207T000000-deadbeef")
    assert [r["status"] for r in rows] == ["failed", "failed", "failed"]
    assert all(r["run_id"] == "20261207T000000-deadbeef" for r in rows)
    assert all("without a report from this run" in r["error"] for r in rows)
    assert all(r.get("artifact_fraction") is None for r in rows)
