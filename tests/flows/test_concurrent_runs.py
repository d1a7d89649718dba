"""Two runs on one drop and one output root at the same time: each entry is computed once, the store
stays sound, and both runs report every image."""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time

import numpy as np
import pandas as pd

from desra_core.image import read_image, read_mask
from tests.flows.conftest import write_lr

STEPS = ("sr/mse", "sr/gan", "detect", "pseudo_gt")


def _run(drop: str, out: str, mse: str, gan: str, ready, go, result) -> None:
    """One `desra run` in its own process with its own embedded API; SR made slow so the runs overlap."""
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="desra-concurrent-")
    import desra.pipeline.models as models
    import desra.tasks  # noqa: F401
    import desra_core.models.sr as sr
    from desra.flows.full import run_in_process

    real = sr.upscale

    def slow_upscale(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)

    models.upscale = slow_upscale
    from prefect import flow

    flow(name="warm-up")(lambda: None)()  # start the embedded API before the race
    ready.set()
    go.wait(120)
    start = time.time()
    state = run_in_process(input_dir=drop, output_dir=out, mse_model=mse, gan_model=gan, segmenter=None,
                           min_area=50, batch_size=4)
    result.put((state.name, start, time.time()))


def test_two_runs_on_one_drop_compute_each_entry_once(tmp_path, tiny_models):
    drop, out = tmp_path / "drop", tmp_path / "out"
    for i in range(6):
        write_lr(drop / f"img{i}.png", seed=i, size=40)
    ctx = mp.get_context("spawn")
    go, result = ctx.Event(), ctx.Queue()
    readies = [ctx.Event(), ctx.Event()]
    procs = [ctx.Process(target=_run, args=(str(drop), str(out), *tiny_models, r, go, result)) for r in readies]
    for p in procs:
        p.start()
    try:
        assert all(r.wait(300) for r in readies), "a run did not start its API"
        go.set()
        outcomes = [result.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    assert [o[0] for o in outcomes] == ["Completed", "Completed"]
    (a_start, a_end), (b_start, b_end) = [o[1:] for o in outcomes]
    assert a_start < b_end and b_start < a_end, "the runs did not overlap"

    runs = pd.read_parquet(out / "runs")
    assert sorted(runs["run_id"].value_counts().tolist()) == [6, 6]
    assert (runs["status"] == "ok").all()
    computed = runs["computed"].fillna("").str.split(",").explode()
    counts = computed[computed != ""].value_counts()
    assert {step: int(counts.get(step, 0)) for step in STEPS} == {step: 6 for step in STEPS}, counts

    # The store holds one finished entry per key and nothing half-written; the published files read back.
    leftovers = [p for p in (out / ".desra").rglob("*") if p.is_file() and ".tmp" in p.name]
    assert not leftovers
    assert len(list((out / ".desra/store/sr").rglob("*.png"))) == 12
    for stem in (f"img{i}" for i in range(6)):
        gan = read_image(out / "sr/gan" / f"{stem}.png").pixels
        assert gan.shape == (160, 160, 3)
        assert read_mask(out / "masks" / f"{stem}.png").shape == gan.shape[:2]
        assert np.array_equal(read_image(out / "pseudo_gt" / f"{stem}.png").pixels.shape, gan.shape)
