"""Fine-tuning data from the pipeline (:mod:`desra.pipeline.pairs`), without Prefect: the pipeline's own steps
compute what the store lacks, once; images it fails on are left out with their errors; the split never
puts an image in both sets; a store entry gone missing is an error naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from desra.pipeline.pairs import prepare_finetuning, read_stored
from desra.pipeline.settings import Settings
from desra.pipeline.steps import entry_paths
from desra_core import DesraError
from desra_core.image import read_image, to_float32
from tests.core.models.test_sr import save_tiny_pair
from tests.flows.conftest import write_lr


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    mse, gan = save_tiny_pair(tmp_path_factory.mktemp("models"))
    return Settings.from_options(mse_model=mse, gan_model=gan, segmenter=None, min_area=10, feather=1.5,
                                 tile=32, overlap=8, device="cpu")


def _drop(folder: Path, n: int) -> Path:
    for i in range(n):
        write_lr(folder / f"img{i}.png", i)
    return folder


def test_first_call_computes_through_the_pipeline_the_second_reads_the_store(tmp_path, settings):
    drop, out = _drop(tmp_path / "drop", 4), tmp_path / "out"
    (drop / "broken.png").write_bytes(b"not an image")
    first = prepare_finetuning(settings, drop, out, run_id="one", holdout=0.25, seed=0)
    assert [r["stem"] for r in first.failed] == ["broken"] and "broken.png" in first.failed[0]["error"]
    assert all(r["computed"] for r in first.rows)  # nothing was stored: the pipeline's steps ran, once
    assert len(first.pairs) == 3 and len(first.validation) == 1
    assert not set(first.train_files) & set(first.validation_files)
    assert first.how == {"mode": "held-out", "share": 0.25, "seed": 0, "stems": list(first.validation_files)}
    for pair, score in zip(first.pairs, first.train_scores, strict=True):
        assert pair.name == score.image
        assert np.array_equal(pair.target, to_float32(read_image(out / "pseudo_gt" / f"{pair.name}.png").pixels))
        assert score.artifact_fraction == pytest.approx(pair.mask.mean())

    second = prepare_finetuning(settings, drop, out, run_id="two", holdout=0.25, seed=0)
    assert [r["computed"] for r in second.rows] == [""] * 4
    for a, b in zip(first.pairs, second.pairs, strict=True):
        assert np.array_equal(a.target, b.target) and np.array_equal(a.lr, b.lr)
    assert second.validation_original == first.validation_original

    # the training images as the validator scores them: the same stored pixels
    (image,) = [im for im in second.train_images() if im.name == second.pairs[0].name]
    assert np.array_equal(image.gan_sr, read_image(out / "sr" / "gan" / f"{image.name}.png").pixels)


def test_a_validation_folder_runs_under_its_own_root_and_a_missing_entry_is_named(tmp_path, settings):
    drop, val, out = _drop(tmp_path / "drop", 2), tmp_path / "val", tmp_path / "out"
    write_lr(val / "other.png", 9)
    data = prepare_finetuning(settings, drop, out, run_id="v", validate_dir=val)
    assert sorted(data.train_files) == ["img0", "img1"] and list(data.validation_files) == ["other"]
    assert data.how == {"mode": "folder", "folder": str(val)}
    assert (out / "validation" / "masks" / "other.png").is_file() and not (out / "masks" / "other.png").exists()

    run, ok = data._train
    item, row = ok[0]
    Path(entry_paths(run, item)["mask"]).unlink()
    with pytest.raises(DesraError, match=f"store entries of {item.stem}"):
        read_stored(run, item, row)


def test_nothing_usable_is_one_clear_error(tmp_path, settings):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.png").write_bytes(b"nope")
    with pytest.raises(DesraError, match=r"expected images to fine-tune on in .*drop, got none .*a\.png"):
        prepare_finetuning(settings, drop, tmp_path / "out", run_id="x")
