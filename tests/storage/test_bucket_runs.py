# ruff: noqa: F811  (pytest fixtures imported from tests.flows.conftest are arguments here)
"""Whole runs over a drop in a bucket into an output root in a bucket, against moto's S3 server on loopback.

The bucket run must give what a local run of the same images gives (the same bytes for every published
image, the same report rows but for where the input was and when), keep every object whole, and come back
to an unchanged bucket drop without model work and without downloading its images, on this worker or on
another one whose local copy is empty.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.flows.conftest import counted, prefect_api, tiny_models, write_lr  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("prefect_api")

# Columns that say where the input was, which run wrote the row, and when: they differ between the runs.
_VARIABLE = {"input_path", "run_id", "sr_seconds", "detect_seconds", "cached", "computed"}


def _drop(folder: Path) -> dict[str, bytes]:
    """Four 8-bit images, two 16-bit ones and a file that is not an image: name → bytes."""
    for i in range(4):
        write_lr(folder / f"img{i}.png", seed=i, size=40)
    for i in range(2):
        rng = np.random.default_rng(100 + i)
        coarse = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
        assert cv2.imwrite(str(folder / f"deep{i}.png"), cv2.resize(coarse, (40, 40), interpolation=cv2.INTER_CUBIC))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _upload(client: Any, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)


def _run(input_dir: str, output_dir: str, models: tuple[str, str]) -> Any:
    from desra.flows.full import run_in_process

    mse, gan = models
    return run_in_process(input_dir=input_dir, output_dir=output_dir, mse_model=str(mse), gan_model=str(gan),
                          segmenter=None, min_area=50, threshold=0.9)


def _objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return {k.removeprefix(prefix + "/"): client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    keep = [c for c in frame.columns if c not in _VARIABLE and not c.endswith(("_started_at", "_finished_at"))]
    return frame[keep].sort_values(["stem", "region_id"]).astype(object).where(frame[keep].notna(), None) \
        .to_dict("records")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This worker's own cache (its local copies of bucket output roots live under it)."""
    folder = tmp_path / "worker-cache"
    monkeypatch.setenv("DESRA_CACHE", str(folder))
    return folder


def test_a_bucket_run_publishes_what_a_local_run_does(tmp_path, s3_env, s3_client, s3_bucket_name, tiny_models,
                                                       cache, counted):
    files = _drop(tmp_path / "drop")
    _upload(s3_client, s3_bucket_name, "drops/one", files)

    local = _run(str(tmp_path / "drop"), str(tmp_path / "out"), tiny_models)
    upscales_local = counted["upscale"]
    remote = _run(f"s3://{s3_bucket_name}/drops/one", f"s3://{s3_bucket_name}/out", tiny_models)
    assert local.name == remote.name == "Failed"  # the broken file fails alone, in both
    assert counted["upscale"] == 2 * upscales_local > 0  # the bucket run did all its own model work

    objects = _objects(s3_client, s3_bucket_name, "out")
    for folder in ("masks", "pseudo_gt", "sr/mse", "sr/gan"):
        local_files = {p.name: p.read_bytes() for p in (tmp_path / "out" / folder).iterdir()}
        assert len(local_files) == 6  # every image but the broken one
        for name, data in local_files.items():
            assert objects[f"{folder}/{name}"] == data, f"{folder}/{name} differs from the local run's"
    assert not [k for k in objects if k.endswith(".tmp") or "/." in k.replace(".desra/", "")]  # nothing half-written

    local_reports = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "out" / "reports").iterdir()))
    remote_reports = pd.concat(pd.read_parquet(io.BytesIO(objects[k])) for k in sorted(objects)
                               if k.startswith("reports/"))
    # the same rows, but that an error names the object's URL where the local run names the file
    local_reports["error"] = local_reports["error"].str.replace(str(tmp_path / "drop"),
                                                                f"s3://{s3_bucket_name}/drops/one", regex=False)
    assert _rows(local_reports) == _rows(remote_reports)
    broken = remote_reports[remote_reports["stem"] == "broken"].iloc[0]
    assert broken["status"] == "failed" and f"s3://{s3_bucket_name}/drops/one/broken.png" in broken["error"]
    assert broken["input_path"] == f"s3://{s3_bucket_name}/drops/one/broken.png"

    runs = [k for k in objects if k.startswith("runs/")]
    assert len(runs) == 1 and "report.html" in objects
    # pandas reads the runs straight from the bucket, as the README says
    storage = {"client_kwargs": {"endpoint_url": s3_env.endpoint}}
    read_back = pd.read_parquet(f"s3://{s3_bucket_name}/out/runs", storage_options=storage)
    assert sorted(read_back["stem"]) == sorted(Path(n).stem for n in files)
    # each published image's bytes are in the bucket once: the store holds references to them, not copies
    store_images = [k for k in objects if k.startswith(".desra/store/") and k.endswith(".png")]
    assert store_images == []
    assert len([k for k in objects if k.endswith(".png.ref")]) == 6 * 4
    # claims only on the SR results: what is derived from them (mask, pseudo-GT) is covered by those claims
    claims = sorted(k.split("/")[2] for k in objects if k.startswith(".desra/claims/"))
    assert claims == ["sr"] * (6 * 2)
    # and each image's SR results are published after what is derived from them, so no other run can find the
    # results in the bucket and not yet the rest
    puts = [s.path.split("/out/", 1)[1] for s in s3_env.app.log if s.method == "PUT" and "/out/" in s.path]
    for stem in (Path(n).stem for n in files if n != "broken.png"):
        order = [p.rsplit("/", 1)[0] for p in puts if p.endswith(f"/{stem}.png")]
        assert sorted(order, key=lambda folder: folder.startswith("sr/")) == order and order[-2:] == \
            ["sr/mse", "sr/gan"], f"{stem}: published in the order {order}"


def test_an_unchanged_bucket_drop_costs_no_model_work_and_no_download(tmp_path, s3_env, s3_server, s3_client,
                                                                      s3_bucket_name, tiny_models, cache,
                                                                      counted, monkeypatch):
    files = _drop(tmp_path / "drop")
    del files["broken.png"]
    _upload(s3_client, s3_bucket_name, "drops/two", files)
    drop, out = f"s3://{s3_bucket_name}/drops/two", f"s3://{s3_bucket_name}/out"
    assert _run(drop, out, tiny_models).name == "Completed"
    first = counted["upscale"]
    assert first > 0

    for worker in ("same worker", "another worker"):
        if worker == "another worker":  # an empty local copy: everything it knows comes from the bucket
            monkeypatch.setenv("DESRA_CACHE", str(tmp_path / "second-worker-cache"))
        start = len(s3_server.app.log)
        runs_before = {k for k in _objects(s3_client, s3_bucket_name, "out") if k.startswith("runs/")}
        state = _run(drop, out, tiny_models)
        assert state.name == "Completed", worker
        assert counted["upscale"] == first, f"{worker}: model work on an unchanged drop"
        image_reads = [s for s in s3_server.app.log[start:]
                       if s.method == "GET" and "/drops/two/" in s.path and s.status in (200, 206)]
        assert image_reads == [], f"{worker} downloaded the drop's images: {[s.path for s in image_reads]}"
        objects = _objects(s3_client, s3_bucket_name, "out")
        (new_run,) = {k for k in objects if k.startswith("runs/")} - runs_before
        frame = pd.read_parquet(io.BytesIO(objects[new_run]))
        assert frame["cached"].all() and (frame["computed"].fillna("") == "").all(), worker


def test_a_changed_object_is_computed_again(tmp_path, s3_env, s3_client, s3_bucket_name, tiny_models, cache,
                                            counted):
    files = _drop(tmp_path / "drop")
    del files["broken.png"]
    _upload(s3_client, s3_bucket_name, "drops/three", files)
    drop, out = f"s3://{s3_bucket_name}/drops/three", f"s3://{s3_bucket_name}/out3"
    assert _run(drop, out, tiny_models).name == "Completed"
    before = counted["upscale"]
    old = s3_client.get_object(Bucket=s3_bucket_name, Key="out3/sr/gan/img0.png")["Body"].read()
    write_lr(tmp_path / "new.png", seed=77, size=40)
    s3_client.put_object(Bucket=s3_bucket_name, Key="drops/three/img0.png", Body=(tmp_path / "new.png").read_bytes())
    assert _run(drop, out, tiny_models).name == "Completed"
    assert counted["upscale"] == before + 2  # img0 only, both models
    new = s3_client.get_object(Bucket=s3_bucket_name, Key="out3/sr/gan/img0.png")["Body"].read()
    assert new != old  # published again, from the new content


def test_models_given_as_bucket_urls_are_the_same_models(tmp_path, s3_env, s3_client, s3_bucket_name, tiny_models,
                                                         cache, counted):
    """A worker that shares nothing with the others takes its SR models from the bucket too: the run with model
    URLs finds every entry that the same files given as paths computed (the store keys hold the files' digests),
    so it does no model work, and a worker with an empty cache fetches each model once."""
    files = _drop(tmp_path / "drop")
    del files["broken.png"]
    _upload(s3_client, s3_bucket_name, "drops/four", files)
    mse, gan = (Path(p) for p in tiny_models)
    for path in (mse, gan):
        s3_client.put_object(Bucket=s3_bucket_name, Key=f"models/{path.name}", Body=path.read_bytes())
    drop, out = f"s3://{s3_bucket_name}/drops/four", f"s3://{s3_bucket_name}/out4"
    assert _run(drop, out, tiny_models).name == "Completed"
    first = counted["upscale"]
    urls = (f"s3://{s3_bucket_name}/models/{mse.name}", f"s3://{s3_bucket_name}/models/{gan.name}")
    start = len(s3_env.app.log)
    assert _run(drop, out, urls).name == "Completed"
    assert counted["upscale"] == first  # the same models: every entry came from the store
    fetched = [r for r in s3_env.app.log[start:] if r.method == "GET" and "/models/" in r.path]
    assert sorted(r.path.rsplit("/", 1)[1] for r in fetched) == sorted([mse.name, gan.name])
    copies = sorted(p.name for p in (cache / "models").rglob("*") if p.is_file())
    assert copies == sorted([mse.name, gan.name])
    objects = _objects(s3_client, s3_bucket_name, "out4")
    (last,) = [k for k in sorted(objects) if k.startswith("runs/")][-1:]
    frame = pd.read_parquet(io.BytesIO(objects[last]))
    assert set(frame["mse_model"]) == {urls[0]} and set(frame["gan_model"]) == {urls[1]}  # not the local copies


def test_the_review_page_shows_images_that_other_workers_published(tmp_path, s3_env, s3_client, s3_bucket_name,
                                                                   tiny_models, cache, monkeypatch):
    """In a scaled-out run the parent writes the page from its own local copy, which holds none of the images that
    other workers published: it fetches what it lacks from the bucket, so no picture is missing."""
    from desra.pipeline.objects import Bucket
    from desra.pipeline.remote import work_root
    from desra.pipeline.report import write_run_files

    files = _drop(tmp_path / "drop")
    del files["broken.png"]
    _upload(s3_client, s3_bucket_name, "drops/five", files)
    out = f"s3://{s3_bucket_name}/out5"
    assert _run(f"s3://{s3_bucket_name}/drops/five", out, tiny_models).name == "Completed"  # "another worker"
    objects = _objects(s3_client, s3_bucket_name, "out5")
    (runs,) = [k for k in objects if k.startswith("runs/")]
    table = pd.read_parquet(io.BytesIO(objects[runs]))
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)

    monkeypatch.setenv("DESRA_CACHE", str(tmp_path / "parent-cache"))  # the parent: an empty local copy
    local = work_root(out)
    Path(local).mkdir(parents=True)
    _, page = write_run_files(rows, local, "parent-run", title="parent", remote=Bucket.at(out))
    html = Path(page).read_text()
    assert 'class="missing"' not in html
    pictures = {k for k in _objects(s3_client, s3_bucket_name, "out5") if k.startswith("report-files/")}
    shown = {f"report-files/{name}" for name in re.findall(r'src="report-files/([^"]+)"', html)}
    assert len(shown) >= 6 * 4 and shown <= pictures  # every image's panels, each in the bucket beside the page
