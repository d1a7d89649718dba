"""The claim, measured with real weights on CPU (≈15 min; skipped without ../shared):
fine-tuning realesr-general-x4v3 on SPAN pseudo-GT removes most detected artifacts and keeps detail."""

from __future__ import annotations

import numpy as np
import pytest

from desra_core import DetectionConfig
from desra_core.finetune.losses import LossWeights
from desra_core.finetune.pipeline import build_pairs, evaluate_models
from desra_core.finetune.trainer import FinetuneConfig, finetune
from desra_core.models.sr import SRModel, load_sr_model
from tests.conftest import MODELS, PARITY, read_rgb

pytestmark = [pytest.mark.real_models, pytest.mark.slow]

CASES = ("hubble_0", "coffee_1", "rocket_0", "motorcycle_1")


def test_finetuning_removes_artifacts_and_keeps_detail(tmp_path):
    gan_path, mse_path = MODELS / "realesr_general_x4v3.gan.safetensors", MODELS / "span_x4_ch52.mse.safetensors"
    if not (gan_path.exists() and mse_path.exists() and all((PARITY / c / "lr.png").exists() for c in CASES)):
        pytest.skip(f"real weights or parity photos not found under {MODELS.parent}")
    images = {c: read_rgb(PARITY / c / "lr.png") for c in CASES}
    detection = DetectionConfig(threshold=0.8, min_area=500)
    no_labels = lambda stem, gan_sr: None  # noqa: E731
    gan, mse = load_sr_model(gan_path), load_sr_model(mse_path, expected_scale=4)
    pairs, _ = build_pairs(images, mse, gan, no_labels, detection)
    config = FinetuneConfig(iterations=1000, batch=8, crop=192, ema=0.0, checkpoint_every=250,
                            weights=LossWeights(perceptual=0.0, gan=0.0))
    result = finetune(gan.descriptor.model, pairs, config, work_dir=tmp_path)
    tuned = SRModel(descriptor=gan.descriptor, source="finetuned", path=gan.path)  # trained in place
    original = load_sr_model(gan_path)
    scores = evaluate_models(images, mse, [original, tuned], no_labels, detection)
    frac = {m: np.mean([s.artifact_fraction for s in scores if s.model == m]) for m in (str(gan_path), "finetuned")}
    detail = {m: np.mean([s.detail_kept for s in scores if s.model == m]) for m in (str(gan_path), "finetuned")}
    drop = 1 - frac["finetuned"] / frac[str(gan_path)]
    print(f"\nartifact fraction {frac[str(gan_path)]:.4f} -> {frac['finetuned']:.4f} ({-drop:+.0%}); "
          f"detail kept {detail[str(gan_path)]:.4f} -> {detail['finetuned']:.4f}; final L1 {result.log[-1]['l1']:.4f}")
    assert frac[str(gan_path)] > 0.01, "the original model shows no artifacts here: the check would be empty"
    assert drop >= 0.40
    assert detail["finetuned"] >= 0.8 * detail[str(gan_path)]
