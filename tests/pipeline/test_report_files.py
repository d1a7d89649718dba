"""Per-image reports: one schema for every file, so `reports/` and `runs/` read as one dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from desra.pipeline.report import IMAGE_COLUMNS, REGION_COLUMNS, publish_image


def test_reports_of_ok_clean_and_failed_images_share_one_schema(tmp_path):
    ok = {"stem": "ok", "status": "ok", "artifact_fraction": np.float64(0.25), "region_count": 2, "height": 8,
          "width": 8, "min_area": 4, "cached": np.bool_(False), "computed": "sr/mse,detect"}
    regions = [{"id": i, "x": np.int64(i), "y": 0, "w": 2, "h": 2, "area": np.int64(4), "classes": "[]",
                "mean_adjusted": 0.5} for i in (1, 2)]
    clean = {**ok, "stem": "clean", "artifact_fraction": 0.0, "region_count": 0}
    failed = {"stem": "failed", "status": "failed", "error": "expected an image, got text (file: x.png)",
              "cached": False}
    publish_image(ok, {}, regions, str(tmp_path))
    publish_image(clean, {}, [], str(tmp_path))
    publish_image(failed, {}, [], str(tmp_path))

    schemas = {p.stem: pq.read_schema(p) for p in (tmp_path / "reports").glob("*.parquet")}
    assert len(schemas) == 3 and len({str(s) for s in schemas.values()}) == 1
    assert schemas["failed"].field("region_id").type == schemas["ok"].field("region_id").type  # int64, not null
    assert str(schemas["ok"].field("error").type) in ("string", "large_string")

    frame = pd.read_parquet(tmp_path / "reports")  # the folder as one dataset
    assert list(frame.columns) == IMAGE_COLUMNS + REGION_COLUMNS
    assert sorted(frame["stem"]) == ["clean", "failed", "ok", "ok"]
    assert str(frame["region_count"].dtype) == "Int64" and frame["artifact_fraction"].dtype == np.float64
    by_stem = frame.set_index("stem")
    assert pd.isna(by_stem.loc["failed", "region_count"]) and "got text" in by_stem.loc["failed", "error"]
    assert sorted(by_stem.loc["ok", "area"]) == [4, 4]
