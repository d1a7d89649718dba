"""U-Net SN discriminator and fine-tuning losses: shapes, gradients, safe loading, hand-checked values."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import VGG19_Weights

from desra_core.errors import ConfigError, ModelLoadError, ShapeError, ShapeMismatchError
from desra_core.finetune.losses import (
    TEXTURE_MIN_SIDE,
    VGG19_LAYER_INDEX,
    LossWeights,
    PerceptualLoss,
    discriminator_loss,
    gan_loss_vanilla,
    texture_loss,
    vgg19_weights_available,
)
from desra_core.finetune.networks import UNetDiscriminatorSN, load_discriminator

# --------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("size", [64, 96])
def test_discriminator_output_shape(size):
    torch.manual_seed(0)
    net = UNetDiscriminatorSN(num_in_ch=3, num_feat=8)
    out = net(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1, size, size)
    assert torch.isfinite(out).all()


def test_discriminator_without_skips_and_bad_shapes():
    net = UNetDiscriminatorSN(num_feat=8, skip_connection=False)
    assert net(torch.rand(1, 3, 32, 40)).shape == (1, 1, 32, 40)
    with pytest.raises(ShapeError):
        net(torch.rand(1, 3, 30, 32))
    with pytest.raises(ShapeError):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ConfigError):
        UNetDiscriminatorSN(num_feat=0)


def test_discriminator_gradients_flow():
    torch.manual_seed(0)
    net = UNetDiscriminatorSN(num_feat=8)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    net(x).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_discriminator_real_esrgan_key_names():
    keys = set(UNetDiscriminatorSN(num_feat=8).state_dict())
    assert {"conv0.weight", "conv0.bias", "conv9.weight", "conv9.bias"} <= keys
    for i in range(1, 9):
        assert {f"conv{i}.weight_orig", f"conv{i}.weight_u", f"conv{i}.weight_v"} <= keys
        assert f"conv{i}.bias" not in keys


def test_spectral_norm_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    net = UNetDiscriminatorSN(num_feat=8)
    net(torch.rand(1, 3, 32, 32))  # one train-mode pass updates the power-iteration vectors u, v
    net.eval()
    path = tmp_path / "netD.pth"
    torch.save({"params": net.state_dict()}, path)

    loaded = load_discriminator(path)
    assert not loaded.training
    assert loaded.num_feat == 8 and loaded.num_in_ch == 3
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_load_discriminator_bare_and_module_prefixed(tmp_path: Path):
    net = UNetDiscriminatorSN(num_feat=4).eval()
    bare = tmp_path / "bare.pth"
    torch.save(net.state_dict(), bare)
    prefixed = tmp_path / "dp.pth"
    torch.save({"params_ema": {f"module.{k}": v for k, v in net.state_dict().items()}}, prefixed)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        for path in (bare, prefixed):
            torch.testing.assert_close(load_discriminator(path)(x), net(x))


def test_load_discriminator_corrupt_file(tmp_path: Path):
    path = tmp_path / "corrupt_netD.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelLoadError, match=r"corrupt_netD\.pth"):
        load_discriminator(path)
    with pytest.raises(ModelLoadError, match=r"missing_netD\.pth"):
        load_discriminator(tmp_path / "missing_netD.pth")


def test_load_discriminator_mismatched_keys(tmp_path: Path):
    state = UNetDiscriminatorSN(num_feat=8).state_dict()
    del state["conv5.weight_orig"]
    path = tmp_path / "mismatch_netD.pth"
    torch.save({"params": state}, path)
    with pytest.raises(ModelLoadError, match=r"mismatch_netD\.pth"):
        load_discriminator(path)

    other = tmp_path / "other_model.pth"
    torch.save({"params": torch.nn.Linear(2, 2).state_dict()}, other)
    with pytest.raises(ModelLoadError, match=r"other_model\.pth"):
        load_discriminator(other)

    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(ModelLoadError, match=r"tensor\.pth"):
        load_discriminator(not_a_dict)


# --------------------------------------------------------------------------- perceptual loss


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory) -> tuple[Path, torch.nn.Sequential]:
    """A randomly initialised torchvision vgg19 saved as a state dict (features only, to stay small)."""
    torch.manual_seed(0)
    vgg = torchvision.models.vgg19()
    state = {k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}
    path = tmp_path_factory.mktemp("vgg") / "vgg19_random.pth"
    torch.save(state, path)
    return path, vgg.features.eval()


def test_perceptual_zero_for_identical_positive_for_different(vgg_weights):
    path, _ = vgg_weights
    loss = PerceptualLoss(weights_path=path)
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    same = loss(a, a.clone())
    diff = loss(a, b)
    assert same.ndim == 0 and same.item() == 0.0
    assert torch.isfinite(diff) and diff.item() > 0
    assert PerceptualLoss(weights_path=path, criterion="l2")(a, b).item() > 0


def test_perceptual_gradients_reach_pred_and_vgg_frozen(vgg_weights):
    path, _ = vgg_weights
    loss = PerceptualLoss(weights_path=path)
    loss.train()
    assert not loss.vgg.training
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss(pred, torch.rand(1, 3, 32, 32)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in loss.parameters())
    assert all(p.grad is None for p in loss.vgg.parameters())


def test_perceptual_features_are_pre_activation(vgg_weights):
    path, features = vgg_weights
    loss = PerceptualLoss(weights_path=path, use_input_norm=False)
    assert len(loss.vgg) == VGG19_LAYER_INDEX["conv5_4"] + 1  # sliced: nothing after conv5_4 runs
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        got = loss.features(x)
        for name, k in (("conv1_2", 2), ("conv2_2", 7), ("conv3_4", 16), ("conv4_4", 25), ("conv5_4", 34)):
            expected = features[: k + 1](x.clone())
            torch.testing.assert_close(got[name], expected)
        assert (got["conv1_2"] < 0).any()  # a post-ReLU map would be non-negative


def test_perceptual_input_norm_and_weighting(vgg_weights):
    path, features = vgg_weights
    loss = PerceptualLoss(layer_weights={"conv1_2": 2.0}, weights_path=path)
    assert len(loss.vgg) == 3
    pred, target = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = 2.0 * F.l1_loss(features[:3]((pred - mean) / std), features[:3]((target - mean) / std))
        torch.testing.assert_close(loss(pred, target), expected)


def test_perceptual_config_and_shape_errors(vgg_weights):
    path, _ = vgg_weights
    with pytest.raises(ConfigError):
        PerceptualLoss(layer_weights={"conv9_9": 1.0}, weights_path=path)
    with pytest.raises(ConfigError):
        PerceptualLoss(layer_weights={"conv1_2": -1.0}, weights_path=path)
    with pytest.raises(ConfigError):
        PerceptualLoss(layer_weights={}, weights_path=path)
    with pytest.raises(ConfigError):
        PerceptualLoss(weights_path=path, criterion="l3")  # type: ignore[arg-type]
    loss = PerceptualLoss(layer_weights={"conv1_2": 1.0}, weights_path=path)
    with pytest.raises(ShapeMismatchError):
        loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 8, 8))
    with pytest.raises(ShapeError):
        loss(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))


def test_perceptual_bad_weights_file(tmp_path: Path):
    corrupt = tmp_path / "corrupt_vgg.pth"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"corrupt_vgg\.pth"):
        PerceptualLoss(weights_path=corrupt)
    wrong = tmp_path / "wrong_vgg.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ModelLoadError, match=r"wrong_vgg\.pth"):
        PerceptualLoss(weights_path=wrong)


@pytest.mark.parametrize("error", [urllib.error.URLError("unreachable"), OSError("offline")])
def test_perceptual_offline_default_explains_fixes(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", fail)
    with pytest.raises(ModelLoadError) as info:
        PerceptualLoss()
    message = str(info.value)
    assert "weights_path" in message
    assert "vgg19-dcbb9e9d.pth" in message
    assert torch.hub.get_dir() in message
    assert "perceptual=0" in message


# --------------------------------------------------------------------------- GAN losses and weights


def test_gan_losses_hand_checked():
    logits = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]]]])
    expected_real = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    expected_fake = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    torch.testing.assert_close(gan_loss_vanilla(logits, True), expected_real)
    torch.testing.assert_close(gan_loss_vanilla(logits, False), expected_fake)
    # By hand: softplus(-x) for real targets, softplus(x) for fake ones.
    by_hand = sum(torch.log1p(torch.exp(torch.tensor(-v))) for v in (2.0, -1.0, 0.0, 3.0)) / 4
    torch.testing.assert_close(gan_loss_vanilla(logits, True), by_hand)

    real, fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(
        discriminator_loss(real, fake),
        F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)),
    )


def test_loss_weights_defaults_and_validation():
    w = LossWeights()
    assert (w.l1, w.perceptual, w.gan, w.texture) == (1.0, 1.0, 0.1, 0.0)
    assert LossWeights(perceptual=0).perceptual == 0
    assert LossWeights(texture=2).texture == 2
    for bad in ({"l1": -0.1}, {"gan": float("nan")}, {"perceptual": float("inf")}, {"gan": "0.1"},
                {"texture": -1.0}, {"texture": float("nan")}, {"texture": True}):
        with pytest.raises(ConfigError):
            LossWeights(**bad)
    with pytest.raises(TypeError):
        LossWeights(1.0)  # type: ignore[misc]  # keyword-only
    with pytest.raises(AttributeError):
        w.l1 = 2.0  # type: ignore[misc]  # frozen


# --------------------------------------------------------------------------- texture loss


def _textured(seed: int = 0, size: int = 48) -> torch.Tensor:
    """Images with detail at several scales: noise plus stripes, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    stripes = (torch.arange(size) % 4 < 2).float().view(1, 1, 1, size).expand(2, 3, size, size)
    return (0.5 * torch.rand(2, 3, size, size, generator=g) + 0.5 * stripes).clamp(0, 1)


def _box_blur(x: torch.Tensor, side: int = 5) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (side // 2,) * 4, mode="replicate"), side, stride=1)


def _mean_local_std(x: torch.Tensor) -> float:
    """Mean local standard deviation over 5×5 boxes: an independent measure of local contrast."""
    return float((_box_blur(x * x) - _box_blur(x) ** 2).clamp(min=0).sqrt().mean())


def test_texture_loss_zero_for_identical_positive_for_blurred():
    sharp = _textured()
    assert float(texture_loss(sharp, sharp.clone())) == 0.0
    blurred = _box_blur(sharp)
    loss = float(texture_loss(blurred, sharp))
    assert loss > 0.01
    assert float(texture_loss(sharp, blurred)) > 0.01  # invented detail costs too
    assert float(texture_loss(_box_blur(blurred), sharp)) > loss  # more blur, more loss
    # L1 + texture: the texture term adds to L1 what a uniform brightness shift does not explain
    shifted = (sharp + 0.1).clamp(0, 1)
    assert float(texture_loss(shifted, sharp)) < loss


def test_texture_loss_gradient_restores_local_contrast():
    sharp = _textured(1)
    pred = _box_blur(sharp).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([pred], lr=0.01)
    std_before = _mean_local_std(pred.detach())
    loss = texture_loss(pred, sharp)
    before = loss.item()
    optimizer.zero_grad()
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    optimizer.step()
    assert texture_loss(pred, sharp).item() < before
    assert _mean_local_std(pred.detach()) > std_before


def test_texture_loss_target_is_a_constant_and_dtype_safe():
    sharp, blurred = _textured(2), _box_blur(_textured(2))
    pred, target = blurred.clone().requires_grad_(True), sharp.clone().requires_grad_(True)
    texture_loss(pred, target).backward()
    assert pred.grad is not None and target.grad is None
    reference = texture_loss(blurred, sharp)
    assert reference.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # computed in float32 whatever autocast would do
        under_autocast = texture_loss(blurred, sharp)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference)
    half = texture_loss(blurred.bfloat16(), sharp.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, reference, atol=0.01, rtol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_texture_loss_on_cuda_matches_the_cpu():
    sharp, blurred = _textured(3), _box_blur(_textured(3))
    reference = texture_loss(blurred, sharp)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        on_cuda = texture_loss(blurred.cuda(), sharp.cuda())
    assert on_cuda.dtype == torch.float32
    torch.testing.assert_close(on_cuda.cpu(), reference, atol=1e-5, rtol=1e-4)


def test_texture_loss_shape_errors():
    x = torch.rand(1, 3, TEXTURE_MIN_SIDE, TEXTURE_MIN_SIDE)
    assert torch.isfinite(texture_loss(x, torch.rand_like(x)))  # the smallest size works
    with pytest.raises(ShapeMismatchError):
        texture_loss(x, torch.rand(1, 3, TEXTURE_MIN_SIDE, TEXTURE_MIN_SIDE + 1))
    with pytest.raises(ShapeError):
        texture_loss(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    small = torch.rand(1, 3, TEXTURE_MIN_SIDE - 1, 32)
    with pytest.raises(ShapeError, match=str(TEXTURE_MIN_SIDE)):
        texture_loss(small, small)


def test_vgg19_weights_available_looks_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert vgg19_weights_available(None) is None
    assert vgg19_weights_available("my/vgg.pth") == "my/vgg.pth"  # given: used as given (checked on loading)
    cached = tmp_path / "hub" / "checkpoints" / Path(VGG19_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert vgg19_weights_available(None) == str(cached)
