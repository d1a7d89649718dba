"""A scaled-out `desra` run gathers only the per-image rows that its own batch runs wrote.

`_gather` reads `reports/<stem>.parquet`, which a run rewrites for every image it publishes, and the rows its
batches recorded (an image taken whole from the store is not published again, so its report still names the
run that computed it). When this run's batch run dies before it gets to an image, the report holds an earlier
run's row, perhaps computed with another threshold: reporting it as this run's `ok` would be a lie.
"""

from __future__ import annotations

import pandas as pd

from desra.flows.full import _gather, desra
from desra.pipeline.report import write_batch_rows
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

    # A later run whose batch took both images from the store: its batch recorded their rows, so they count,
    # with this run's id, though the reports still name the earlier run; an image of a dead batch does not.
    later = "20261207T000001-cafef00d"
    first = earlier[earlier["stem"] == "img0"]
    recorded = [{**row, "run_id": later, "cached": True, "computed": ""}
                for row in first.astype(object).where(first.notna(), None).to_dict("records")]
    write_batch_rows(recorded, str(out), later, "batch-1")
    rows = _gather(str(out), ["img0", "img1"], later)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[0]["run_id"] == later and rows[0]["cached"]
    assert rows[0]["artifact_fraction"] == earlier[earlier["stem"] == "img0"]["artifact_fraction"].iloc[0]


def test_batch_rows_names_cannot_leave_the_output_root(tmp_path):
    import pytest

    from desra_core.errors import ConfigError

    for run_id, batch in (("../x", "b"), ("r", "../../etc"), ("r/s", "b"), (".hidden", "b"), ("r", "")):
        with pytest.raises(ConfigError, match="expected"):
            write_batch_rows([], str(tmp_path), run_id, batch)
    assert not any(tmp_path.iterdir())
