"""The automatic objective: the Real-ESRGAN recipe where VGG19 weights are available, else L1 + texture; numbers
given for a weight are kept, and the choice is said in one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import VGG19_Weights

from desra_core import ConfigError
from desra_core.finetune.losses import TEXTURE_MIN_SIDE, LossWeights
from desra_core.finetune.options import DEFAULTS, TEXTURE_DEFAULT, FinetuneOptions
from desra_core.finetune.trainer import FinetuneConfig


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub folder in place of the user's."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def _cache_vgg(hub: Path) -> Path:
    cached = hub / "checkpoints" / Path(VGG19_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"not read: only its presence counts")
    return cached


def _weights(options: FinetuneOptions, device: str = "cpu") -> tuple[float, float, float]:
    w = options.config(device=device).weights
    return w.perceptual, w.gan, w.texture


def test_the_weights_default_to_auto():
    assert (DEFAULTS.perceptual, DEFAULTS.gan, DEFAULTS.texture) == (None, None, None)


def test_without_vgg19_weights_l1_and_texture(hub):
    assert _weights(DEFAULTS) == (0.0, 0.0, TEXTURE_DEFAULT)
    assert _weights(DEFAULTS, "cuda") == (0.0, 0.0, TEXTURE_DEFAULT)  # no GAN term without the recipe
    objective = DEFAULTS.objective("cpu")
    assert objective == {"perceptual": 0.0, "gan": 0.0, "texture": TEXTURE_DEFAULT, "why": objective["why"]}
    assert "no VGG19 weights" in objective["why"] and "texture" in objective["why"]
    assert DEFAULTS.config().weights.l1 == 1.0


def test_vgg19_weights_in_the_cache_give_the_recipe(hub):
    cached = _cache_vgg(hub)
    assert _weights(DEFAULTS) == (1.0, 0.0, 0.0)  # the CPU: no adversarial term
    assert _weights(DEFAULTS, "cuda") == (1.0, 0.1, 0.0)
    assert _weights(DEFAULTS, "cuda:1") == (1.0, 0.1, 0.0)
    why = DEFAULTS.objective("cuda")["why"]
    assert str(cached) in why and "cache" in why and "Real-ESRGAN" in why


def test_given_vgg_weights_give_the_recipe(hub):
    options = DEFAULTS.replace(vgg_weights="/models/vgg19.pth")
    assert _weights(options, "cuda") == (1.0, 0.1, 0.0)
    assert _weights(options) == (1.0, 0.0, 0.0)
    assert "/models/vgg19.pth" in options.objective("cpu")["why"]
    assert options.config().vgg_weights_path == "/models/vgg19.pth"


def test_a_given_weight_overrides_only_its_own(hub):
    assert _weights(DEFAULTS.replace(texture=0.0)) == (0.0, 0.0, 0.0)  # L1 only
    assert _weights(DEFAULTS.replace(texture=2.5)) == (0.0, 0.0, 2.5)
    _cache_vgg(hub)
    assert _weights(DEFAULTS.replace(gan=0.0), "cuda") == (1.0, 0.0, 0.0)
    assert _weights(DEFAULTS.replace(perceptual=0.5, texture=0.3), "cuda") == (0.5, 0.1, 0.3)
    assert "given: perceptual 0.5, texture 0.3" in DEFAULTS.replace(perceptual=0.5, texture=0.3).objective()["why"]
    every = DEFAULTS.replace(perceptual=0, gan=0, texture=0)
    assert _weights(every, "cuda") == (0.0, 0.0, 0.0)
    assert every.objective("cuda")["why"].startswith("weights as given")


def test_bounds_still_apply_to_numbers():
    for name in ("perceptual", "gan", "texture"):
        with pytest.raises(ConfigError, match=name):
            FinetuneOptions(**{name: -0.1})
        assert getattr(FinetuneOptions(**{name: 0}), name) == 0


def test_the_texture_term_needs_a_crop_it_can_pyramid(hub):
    with pytest.raises(ConfigError, match="crop"):
        DEFAULTS.replace(crop=8).config()
    assert DEFAULTS.replace(crop=8, texture=0).config().crop == 8
    assert DEFAULTS.replace(crop=TEXTURE_MIN_SIDE).config().weights.texture == TEXTURE_DEFAULT


def test_the_trainer_defaults_are_the_auto_ones_on_the_cpu(hub):
    assert FinetuneConfig().weights == LossWeights(perceptual=0.0, gan=0.0, texture=TEXTURE_DEFAULT)
    _cache_vgg(hub)
    assert FinetuneConfig().weights == LossWeights(perceptual=1.0, gan=0.0, texture=0.0)
    assert DEFAULTS.config() == FinetuneConfig()
