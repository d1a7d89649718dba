"""Fine-tuning loop on CPU with tiny real architectures: it learns, resumes exactly, saves loadable weights."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torchvision
from spandrel import ModelLoader
from spandrel.architectures.Compact import Compact

from desra_core import ConfigError, DetectionConfig
from desra_core.finetune.data import make_pair
from desra_core.finetune.losses import LossWeights
from desra_core.finetune.trainer import CHECKPOINT_NAME, VALIDATION_COLUMNS, FinetuneConfig, finetune, save_generator
from desra_core.finetune.validation import Candidate, ValidationImage, Validator, choose_checkpoint
from desra_core.image import to_bit_depth
from desra_core.models.sr import load_sr_model, upscale


def _generator(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Compact(num_feat=8, num_conv=2, upscale=4)


def _pairs(n: int = 2):
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        lr = rng.random((24, 24, 3), dtype=np.float32)
        gan = np.clip(np.kron(lr, np.ones((4, 4, 1), np.float32)) + rng.normal(0, 0.2, (96, 96, 3)), 0, 1)
        mse = np.kron(lr, np.ones((4, 4, 1), np.float32))
        mask = np.zeros((96, 96), bool)
        mask[20:60, 30:70] = True
        pairs.append(make_pair(lr, gan.astype(np.float32), mse, mask, name=f"p{i}"))
    return pairs


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg19_random.pth"
    torch.manual_seed(1)
    features = {k: v for k, v in torchvision.models.vgg19().state_dict().items() if k.startswith("features.")}
    torch.save(features, path)
    return str(path)


def _config(**kw):
    # the Real-ESRGAN recipe's loss terms (the defaults are L1 only), and a rule that can ship on two images
    base = dict(iterations=4, batch=2, crop=32, checkpoint_every=2, discriminator_warmup=1, ema=0.9,
                weights=LossWeights(), min_artifact_images=1)
    return FinetuneConfig(**{**base, **kw})


def test_steps_change_the_generator_and_losses_are_finite(tmp_path, vgg_file):
    gen = _generator()
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    result = finetune(gen, _pairs(), _config(vgg_weights_path=vgg_file), work_dir=tmp_path)
    assert len(result.log) == 4
    for rec in result.log:
        assert all(math.isfinite(rec[k]) for k in ("l1", "perceptual", "gan", "d_loss"))
    assert result.log[0]["gan"] == 0.0 and result.log[1]["gan"] > 0  # adversarial term after the warm-up
    assert any(not torch.equal(before[k], v) for k, v in gen.state_dict().items())
    assert (tmp_path / CHECKPOINT_NAME).exists()
    assert result.generator is not gen  # the EMA copy


def test_l1_only_lowers_the_loss(tmp_path):
    cfg = _config(iterations=40, checkpoint_every=40, ema=0.0, lr=3e-3, weights=LossWeights(perceptual=0, gan=0))
    result = finetune(_generator(), _pairs(), cfg, work_dir=tmp_path)
    first, last = np.mean([r["l1"] for r in result.log[:5]]), np.mean([r["l1"] for r in result.log[-5:]])
    assert last < first
    assert all(math.isnan(r["d_loss"]) for r in result.log)


def _textured() -> torch.nn.Module:
    """A tiny Compact whose residual branch paints visible texture (what detection flags against its twin)."""
    gen = _generator()
    torch.manual_seed(3)
    for p in gen.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return gen


@pytest.fixture(scope="module")
def validator(tmp_path_factory):
    """A real validator: the generator's own weights as the GAN model, its smooth twin (residual branch zeroed:
    a nearest-neighbour upscale) as the MSE model, on smooth images."""
    folder = tmp_path_factory.mktemp("models")
    gan_state = _textured().state_dict()
    mse_state = {k: (torch.zeros_like(v) if k.startswith("body.6.") else v) for k, v in gan_state.items()}
    torch.save({"params": gan_state}, folder / "gan.pth")
    torch.save({"params": mse_state}, folder / "mse.pth")
    gan, mse = load_sr_model(folder / "gan.pth"), load_sr_model(folder / "mse.pth")
    rng = np.random.default_rng(5)
    images = [to_bit_depth(cv2.resize(rng.random((5, 5, 3), dtype=np.float32), (24, 24),
                                      interpolation=cv2.INTER_CUBIC), 8) for _ in range(2)]
    prepared = [ValidationImage(name=f"v{i}", lr=lr, mse_sr=upscale(mse, lr, out_dtype=np.uint8),
                                gan_sr=upscale(gan, lr, out_dtype=np.uint8), labels=None)
                for i, lr in enumerate(images)]
    return Validator(gan, prepared, DetectionConfig(threshold=0.9, min_area=10))


def test_validator_scores_the_original_weights_as_the_original(validator):
    same = validator(_textured())
    assert same.artifact_fraction == validator.original.artifact_fraction > 0
    assert same.detail_ratio == pytest.approx(1.0)
    other = validator(Compact(num_feat=8, num_conv=2, upscale=4))  # other random weights paint other texture
    assert other.per_image != validator.original.per_image


def test_evidence_measures_the_noise_of_the_unchanged_model_which_never_ships(validator):
    evidence = validator.evidence()
    assert evidence is validator.evidence()  # measured once
    assert set(evidence.noise) == {"v0", "v1"} and evidence.pixels == {"v0": 96 * 96, "v1": 96 * 96}
    assert all(0.0 <= n <= 1.0 for n in evidence.noise.values()) and 0.0 <= evidence.mean_noise <= 1.0
    assert evidence.with_artifacts == ["v0", "v1"]
    # the jittered validation is a real re-measurement: it moves the figures of at least one image
    assert any(n > 0 for n in evidence.noise.values())
    same = Candidate(1, "trained", validator(_textured()))
    chosen, reason = choose_checkpoint([same], evidence, min_detail_ratio=0.0, min_artifact_images=1)
    assert chosen is None and "improve beyond their noise" in reason


def test_one_validation_image_refuses_whatever_the_training_does(tmp_path, validator):
    """Tiny models: the validation holds one image; however well a checkpoint does there, nothing ships."""
    single = Validator(load_sr_model(validator._model.path), validator.images[:1], validator.detection)
    cfg = _config(iterations=2, validate_every=1, lr=3e-3, ema=0.0, min_detail_ratio=0.0, min_artifact_images=3,
                  weights=LossWeights(perceptual=0, gan=0))
    result = finetune(_textured(), _pairs(), cfg, work_dir=tmp_path, validator=single)
    assert len(result.candidates) == 2 and result.chosen is None and result.chosen_generator is None
    assert result.reason.startswith("1 validation image with ")
    assert result.reason.endswith("cannot show an improvement: shipping needs at least 3 validation images whose "
                                  "artifacts exceed that noise; give --validate DIR (validate_dir in the flows) "
                                  "with at least 3 photos that have artifacts")
    assert result.evidence is single.evidence()


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_resume_follows_the_same_trajectory(tmp_path, vgg_file, validator):
    cfg = dict(vgg_weights_path=vgg_file, validate_every=2, lr=3e-3, min_detail_ratio=0.0)
    whole = finetune(_textured(), _pairs(), _config(**cfg), work_dir=tmp_path / "a", validator=validator)
    finetune(_textured(), _pairs(), _config(**{**cfg, "iterations": 2}), work_dir=tmp_path / "b", validator=validator)
    resumed = finetune(_textured(), _pairs(), _config(**cfg), work_dir=tmp_path / "b", validator=validator)
    assert [r["step"] for r in resumed.log] == [1, 2, 3, 4]
    for a, b in zip(whole.log, resumed.log, strict=True):
        for k in ("l1", "perceptual", "gan", "d_loss", *VALIDATION_COLUMNS):
            assert _same(a[k], b[k]), (a["step"], k, a[k], b[k])
    assert [r["step"] for r in whole.log if not math.isnan(r["val_artifact_fraction"])] == [2, 4]
    assert all(not math.isnan(r["ema_val_artifact_fraction"]) for r in whole.log if r["step"] in (2, 4))
    for (k, va), vb in zip(whole.generator.state_dict().items(), resumed.generator.state_dict().values(),
                           strict=True):
        assert torch.allclose(va, vb, atol=1e-6), k
    assert [(c.step, c.weights) for c in whole.candidates] == [(c.step, c.weights) for c in resumed.candidates] \
        == [(2, "trained"), (2, "ema"), (4, "trained"), (4, "ema")]
    assert (whole.chosen is None) == (resumed.chosen is None)
    if whole.chosen is not None:
        assert (whole.chosen.step, whole.chosen.weights) == (resumed.chosen.step, resumed.chosen.weights)
        for (k, va), vb in zip(whole.chosen_generator.state_dict().items(),
                               resumed.chosen_generator.state_dict().values(), strict=True):
            assert torch.allclose(va, vb, atol=1e-6), k


def test_chosen_checkpoint_follows_the_rule_and_holds_its_weights(tmp_path, validator):
    cfg = _config(iterations=6, validate_every=2, lr=3e-3, ema=0.5, min_detail_ratio=0.0,
                  weights=LossWeights(perceptual=0, gan=0))
    result = finetune(_textured(), _pairs(), cfg, work_dir=tmp_path, validator=validator)
    assert len(result.candidates) == 6 and result.original is validator.original
    expected, _ = choose_checkpoint(result.candidates, validator.evidence(), min_detail_ratio=0.0,
                                    min_artifact_images=1)
    assert result.chosen is expected
    if result.chosen is not None:  # the kept weights are the ones that were scored
        again = validator(result.chosen_generator)
        assert again.artifact_fraction == result.chosen.score.artifact_fraction


def test_the_texture_term_is_logged_and_trains(tmp_path):
    textured = _config(iterations=3, checkpoint_every=3, ema=0.0, lr=3e-3,
                       weights=LossWeights(perceptual=0, gan=0, texture=1.0))
    plain = _config(iterations=3, checkpoint_every=3, ema=0.0, lr=3e-3, weights=LossWeights(perceptual=0, gan=0))
    with_texture = finetune(_generator(), _pairs(), textured, work_dir=tmp_path / "texture")
    without = finetune(_generator(), _pairs(), plain, work_dir=tmp_path / "plain")
    assert all(math.isfinite(r["texture"]) and r["texture"] > 0 for r in with_texture.log)
    assert all(r["texture"] == 0.0 for r in without.log)
    assert with_texture.log[0]["l1"] == without.log[0]["l1"]  # same start, same first batch
    trained = [dict(m.named_parameters()) for m in (with_texture.generator, without.generator)]
    assert any(not torch.equal(v, trained[1][k]) for k, v in trained[0].items())  # the term moved the weights


def test_saved_generator_loads_with_spandrel_like_the_original(tmp_path):
    cfg = _config(iterations=2, weights=LossWeights(perceptual=0), ema=0.0)
    result = finetune(_generator(), _pairs(), cfg, work_dir=tmp_path)
    path = save_generator(result.generator, tmp_path / "generator.safetensors")
    descriptor = ModelLoader().load_from_file(path)
    assert descriptor.architecture.name == "RealESRGAN Compact" and descriptor.scale == 4
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(descriptor.model.eval()(x), result.generator(x), atol=1e-6)


def test_config_validation():
    for kw in ({"iterations": 0}, {"batch": 0}, {"lr": 0.0}, {"discriminator_warmup": -1},
               {"crop": 8, "weights": LossWeights(texture=1.0)}):
        with pytest.raises(ConfigError):
            FinetuneConfig(**kw)
