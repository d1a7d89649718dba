"""Fine-tuning takes its data from the pipeline and its store, with the run's exact settings: after a
``desra`` run it super-resolves and detects nothing again, and its pairs' targets are the run's published
pseudo-GT pixels (with non-default area rule, feather and tiling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from desra.flows.finetune import finetune
from desra.flows.full import desra
from desra.pipeline import finetuning as pipeline_finetuning
from desra.pipeline.settings import Settings
from desra_core import build_pseudo_gt
from desra_core.image import read_image, read_mask, to_float32
from tests.flows.conftest import write_lr

# not the defaults: a relative area rule, a feathered pseudo-GT, small overlapping tiles
RUN = dict(segmenter=None, threshold=0.7, min_area_fraction=0.002, feather=2.0, tile=24, overlap=8, device="cpu")
TRAINING = dict(iterations=2, batch=2, crop=64, validate_every=1, holdout=0.34)


@pytest.fixture
def spied(monkeypatch):
    """The data each fine-tuning run hands to delivery (what it trains and validates on)."""
    seen = []
    real = pipeline_finetuning.finetune_and_deliver

    def spy(**kwargs):
        seen.append(kwargs["data"])
        return real(**kwargs)

    monkeypatch.setattr(pipeline_finetuning, "finetune_and_deliver", spy)
    return seen


def _drop(tmp_path, n=3):
    drop = tmp_path / "drop"
    for i in range(n):
        write_lr(drop / f"img{i}.png", i)
    return drop


def _check_against_published(data, out, settings: Settings) -> None:
    """Every pair is the run's published pseudo-GT and mask, and nothing was computed for it."""
    assert data.settings == settings
    assert data.pairs and data.validation and not data.failed
    assert [r["computed"] for r in data.rows] == [""] * len(data.rows)  # every entry came from the store
    feathered = False
    for pair in data.pairs:
        published = read_image(out / "pseudo_gt" / f"{pair.name}.png").pixels
        assert np.array_equal(pair.target, to_float32(published)), pair.name
        assert np.array_equal(pair.mask, read_mask(out / "masks" / f"{pair.name}.png")), pair.name
        gan = read_image(out / "sr" / "gan" / f"{pair.name}.png").pixels
        mse = read_image(out / "sr" / "mse" / f"{pair.name}.png").pixels
        feathered |= not np.array_equal(published, build_pseudo_gt(gan, mse, pair.mask))  # feather 2 ≠ a hard cut
    assert feathered, "no training image had an artifact region: the feather check would be empty"
    for image in data.validation:
        assert np.array_equal(image.gan_sr, read_image(out / "sr" / "gan" / f"{image.name}.png").pixels)


def test_finetuning_after_a_run_computes_nothing_and_trains_on_its_pseudo_gt(tmp_path, tiny_models, counted, spied):
    drop, out = _drop(tmp_path), tmp_path / "out"
    params = dict(mse_model=tiny_models[0], gan_model=tiny_models[1], **RUN)
    state = desra(input_dir=str(drop), output_dir=str(out), **params, return_state=True)
    assert state.is_completed(), state.message
    assert counted == {"upscale": 6, "detect": 3}  # 3 images × (MSE + GAN), 3 detections
    settings = Settings.from_options(**params)

    counted.update(upscale=0, detect=0)
    result = finetune(input_dir=str(drop), output_dir=str(out), **settings.options(), **TRAINING)
    assert counted == {"upscale": 0, "detect": 0}  # no SR, no detection: the pairs came from the store
    assert result["pairs"] == 2 and result["reason"]
    (data,) = spied
    _check_against_published(data, out, settings)

    # other settings are other store entries: the same call with another feather computes its pseudo-GT,
    # but neither SR nor detection (their keys do not depend on it)
    spied.clear()
    finetune(input_dir=str(drop), output_dir=str(out), **settings.replace(feather=0.0).options(), **TRAINING)
    assert counted == {"upscale": 0, "detect": 0}
    assert {r["computed"] for r in spied[0].rows} == {"pseudo_gt"}


def test_desra_finetune_passes_the_run_settings_on(tmp_path, tiny_models, counted, spied):
    drop, out = _drop(tmp_path), tmp_path / "out"
    params = dict(mse_model=tiny_models[0], gan_model=tiny_models[1], **RUN)
    training = {k: v for k, v in TRAINING.items() if k != "holdout"}
    state = desra(input_dir=str(drop), output_dir=str(out), **params, finetune=True, finetune_settings=training,
                  return_state=True)
    assert state.is_completed(), state.message
    assert "fine-tun" in state.message, state.message
    assert counted == {"upscale": 6, "detect": 3}  # the run's SR and detection only, none for fine-tuning
    (data,) = spied
    _check_against_published(data, out, Settings.from_options(**params))


def test_fine_tuning_after_a_run_takes_the_admitted_settings_without_admitting_them_again(tmp_path, tiny_models,
                                                                                          counted, spied, monkeypatch):
    import desra.pipeline.admission as admission  # not `import desra.…`: that would hide the flow desra

    checked = []  # output roots whose device, models and segmenter were checked (once per admission)
    real = admission.check_run
    monkeypatch.setattr(admission, "check_run",
                        lambda settings, out, sr=True: checked.append(out) or real(settings, out, sr))
    drop, out = _drop(tmp_path), tmp_path / "out"
    params = dict(mse_model=tiny_models[0], gan_model=tiny_models[1], **{**RUN, "device": "auto"})
    training = {k: v for k, v in TRAINING.items() if k != "holdout"}
    state = desra(input_dir=str(drop), output_dir=str(out), **params, finetune=True, finetune_settings=training,
                  return_state=True)
    assert state.is_completed(), state.message
    assert checked == [str(out)]  # the run's admission only: fine-tuning did not admit the settings again
    (data,) = spied
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert data.settings == Settings.from_options(**{**params, "device": here})  # admitted: auto resolved here


def test_fine_tuning_paths_after_a_run_are_still_confined(tmp_path, tiny_models, counted, monkeypatch):
    drop, out, outside = _drop(tmp_path), tmp_path / "out", tmp_path / "outside"
    write_lr(outside / "v.png", 9)
    monkeypatch.setenv("DESRA_ALLOWED_ROOTS", f"{drop}:{out}:{tmp_path / 'models'}:{Path(tiny_models[0]).parent}")
    params = dict(mse_model=tiny_models[0], gan_model=tiny_models[1], **RUN)
    state = desra(input_dir=str(drop), output_dir=str(out), **params, finetune=True,
                  finetune_settings={"validate_dir": str(outside), "iterations": 1}, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("refused: expected validate_dir inside the allowed roots, DESRA_ALLOWED_ROOTS"), \
        state.message
    assert counted == {"upscale": 0, "detect": 0} and not out.exists()  # refused before the run did anything
