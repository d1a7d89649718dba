"""Fine-tuning loop on CPU with tiny real architectures: it learns, resumes exactly, saves loadable weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from spandrel import ModelLoader
from spandrel.architectures.Compact import Compact

from desra_core import ConfigError
from desra_core.finetune.data import make_pair
from desra_core.finetune.losses import LossWeights
from desra_core.finetune.trainer import CHECKPOINT_NAME, FinetuneConfig, finetune, save_generator


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
    base = dict(iterations=4, batch=2, crop=32, checkpoint_every=2, discriminator_warmup=1, ema=0.9)
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


def test_resume_follows_the_same_trajectory(tmp_path, vgg_file):
    whole = finetune(_generator(), _pairs(), _config(vgg_weights_path=vgg_file), work_dir=tmp_path / "a")
    gen = _generator()
    finetune(gen, _pairs(), _config(iterations=2, vgg_weights_path=vgg_file), work_dir=tmp_path / "b")
    resumed = finetune(_generator(), _pairs(), _config(vgg_weights_path=vgg_file), work_dir=tmp_path / "b")
    assert [r["step"] for r in resumed.log] == [1, 2, 3, 4]
    for a, b in zip(whole.log, resumed.log, strict=True):
        for k in ("l1", "perceptual", "gan", "d_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)
    for (k, va), vb in zip(whole.generator.state_dict().items(), resumed.generator.state_dict().values(),
                           strict=True):
        assert torch.allclose(va, vb, atol=1e-6), k


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
    for kw in ({"iterations": 0}, {"batch": 0}, {"lr": 0.0}, {"discriminator_warmup": -1}):
        with pytest.raises(ConfigError):
            FinetuneConfig(**kw)
