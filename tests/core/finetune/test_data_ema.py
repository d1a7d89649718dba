"""Fine-tuning data (pairs, aligned artifact-biased crops) and the EMA shadow model."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from desra_core import build_pseudo_gt
from desra_core.errors import ConfigError, ShapeError, ShapeMismatchError
from desra_core.finetune.data import CropConfig, PairSampler, TrainingPair, make_pair
from desra_core.finetune.ema import EMA


def _blocky_pair(h: int, w: int, scale: int, *, seed: int = 0, mask: np.ndarray | None = None,
                 name: str = "p") -> TrainingPair:
    """HR made of constant scale×scale blocks, so INTER_AREA downscaling gives exactly the LR."""
    rng = np.random.default_rng(seed)
    lr = rng.random((h, w, 3), dtype=np.float32)
    hr = np.kron(lr, np.ones((scale, scale, 1), np.float32))
    if mask is None:
        mask = np.zeros(hr.shape[:2], bool)
    return TrainingPair(lr=lr, target=hr, mask=mask, scale=scale, name=name)


def _area_down(hr: np.ndarray, scale: int) -> np.ndarray:
    h, w = hr.shape[:2]
    return cv2.resize(hr, (w // scale, h // scale), interpolation=cv2.INTER_AREA)


# --- TrainingPair / make_pair -------------------------------------------------------------------------

def test_training_pair_errors_name_the_pair():
    lr = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ShapeMismatchError, match=r"cat\.png"):
        TrainingPair(lr=lr, target=np.zeros((15, 16, 3), np.float32), mask=np.zeros((15, 16), bool),
                     scale=4, name="cat.png")
    with pytest.raises(ShapeMismatchError, match="dog"):
        TrainingPair(lr=lr, target=np.zeros((16, 16, 3), np.float32), mask=np.zeros((16, 15), bool),
                     scale=4, name="dog")
    with pytest.raises(ShapeError, match="eel"):
        TrainingPair(lr=lr.astype(np.float64), target=np.zeros((16, 16, 3), np.float32),
                     mask=np.zeros((16, 16), bool), scale=4, name="eel")


def test_make_pair_target_is_gan_outside_mse_inside():
    rng = np.random.default_rng(1)
    lr = rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    gan = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    mse = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    mask = rng.random((6, 10)) < 0.3
    pair = make_pair(lr, gan, mse, mask, name="x")
    assert pair.scale == 2 and pair.target.dtype == np.float32 and pair.lr.dtype == np.float32
    np.testing.assert_array_equal(pair.target[~mask], gan[~mask] / np.float32(255))
    np.testing.assert_array_equal(pair.target[mask], mse[mask] / np.float32(255))
    np.testing.assert_array_equal(pair.lr, lr / np.float32(255))


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_make_pair_feathered_target_is_the_pseudo_gt_at_the_results_bit_depth(dtype, top):
    # what the pipeline's pseudo-GT step writes for these results: the pair trains on exactly that image
    rng = np.random.default_rng(2)
    lr = rng.integers(0, top + 1, (8, 8, 3), dtype=dtype)
    gan = rng.integers(0, top + 1, (16, 16, 3), dtype=dtype)
    mse = rng.integers(0, top + 1, (16, 16, 3), dtype=dtype)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    written = build_pseudo_gt(gan, mse, mask, feather=1.5)
    pair = make_pair(lr, gan, mse, mask, name="f", feather=1.5)
    np.testing.assert_array_equal(pair.target, written.astype(np.float32) / np.float32(top))
    hard = build_pseudo_gt(gan, mse, mask)
    assert not np.array_equal(written, hard)  # the feather did blend across the edge


def test_make_pair_non_integer_scale_names_pair():
    lr = np.zeros((3, 3, 3), np.float32)
    sr = np.zeros((7, 6, 3), np.float32)
    with pytest.raises(ShapeMismatchError, match="odd"):
        make_pair(lr, sr, sr, np.zeros((7, 6), bool), name="odd")


# --- PairSampler --------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [4, 2])
def test_sampler_shapes_dtype_range(scale):
    pairs = [_blocky_pair(16, 20, scale, seed=0, name="a"), _blocky_pair(24, 16, scale, seed=1, name="b")]
    sampler = PairSampler(pairs, CropConfig(crop=8 * scale), seed=0)
    lr, hr, masks = sampler.sample(5, return_masks=True)
    assert lr.shape == (5, 3, 8, 8) and hr.shape == (5, 3, 8 * scale, 8 * scale)
    assert masks.shape == (5, 8 * scale, 8 * scale) and masks.dtype == torch.bool
    assert lr.dtype == hr.dtype == torch.float32
    assert 0.0 <= float(lr.min()) and float(hr.max()) <= 1.0
    assert len(sampler.sample(2)) == 2


@pytest.mark.parametrize(("flips", "rot90"), [(False, False), (True, True)])
def test_lr_crop_is_area_downscale_of_hr_crop(flips, rot90):
    scale = 4
    sampler = PairSampler([_blocky_pair(17, 13, scale)], CropConfig(crop=32, flips=flips, rot90=rot90), seed=3)
    lr, hr = sampler.sample(32)
    for i in range(lr.shape[0]):
        hr_np = hr[i].permute(1, 2, 0).numpy()
        lr_np = lr[i].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(_area_down(hr_np, scale), lr_np, atol=1e-6)


def test_augmentations_are_used():
    # A non-symmetric image: with flips/rotations on, several distinct crops of the one full-size window appear.
    sampler = PairSampler([_blocky_pair(4, 4, 2)], CropConfig(crop=8), seed=0)
    _, hr = sampler.sample(64)
    distinct = {hr[i].numpy().tobytes() for i in range(hr.shape[0])}
    assert len(distinct) == 8


def _corner_mask(size: int, corner: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[:corner, :corner] = True
    return mask


def test_artifact_fraction_one_always_contains_artifacts():
    scale, size = 4, 128
    pair = _blocky_pair(size // scale, size // scale, scale, mask=_corner_mask(size, 3))
    sampler = PairSampler([pair], CropConfig(crop=32, artifact_fraction=1.0), seed=7)
    _, _, masks = sampler.sample(200, return_masks=True)
    assert bool(masks.flatten(1).any(dim=1).all())


def test_artifact_fraction_zero_is_uniform():
    scale, size, crop = 4, 128, 32
    pair = _blocky_pair(size // scale, size // scale, scale, mask=_corner_mask(size, 3))
    sampler = PairSampler([pair], CropConfig(crop=crop, artifact_fraction=0.0), seed=7)
    _, _, masks = sampler.sample(2000, return_masks=True)
    hit = float(masks.flatten(1).any(dim=1).float().mean())
    # Only the window at (0, 0) of the 25 × 25 aligned positions holds the corner: 1/625 ≈ 0.0016.
    assert hit < 0.01


def test_artifact_fraction_zero_matches_area_fraction():
    # Artifacts fill the top half: a uniform aligned crop contains some when its top is in the top half.
    scale, size, crop = 2, 64, 16
    mask = np.zeros((size, size), bool)
    mask[: size // 2] = True
    pair = _blocky_pair(size // scale, size // scale, scale, mask=mask)
    sampler = PairSampler([pair], CropConfig(crop=crop, artifact_fraction=0.0), seed=11)
    _, _, masks = sampler.sample(3000, return_masks=True)
    hit = float(masks.flatten(1).any(dim=1).float().mean())
    expected = 16 / 25  # tops 0, 2, …, 30 of 0, 2, …, 48
    assert abs(hit - expected) < 0.05


def test_same_seed_same_batches_and_state_round_trip():
    pairs = [_blocky_pair(16, 16, 4, mask=_corner_mask(64, 5), name="a"), _blocky_pair(20, 16, 4, seed=2)]
    config = CropConfig(crop=32, artifact_fraction=0.5)
    a, b = PairSampler(pairs, config, seed=5), PairSampler(pairs, config, seed=5)
    for _ in range(3):
        for x, y in zip(a.sample(4), b.sample(4), strict=True):
            assert torch.equal(x, y)
    state = json.loads(json.dumps(a.state()))
    expected = a.sample(6)
    fresh = PairSampler(pairs, config, seed=999)
    fresh.set_state(state)
    for x, y in zip(fresh.sample(6), expected, strict=True):
        assert torch.equal(x, y)


def test_sampler_errors():
    pair = _blocky_pair(4, 4, 4, name="tiny")
    with pytest.raises(ShapeError, match="tiny"):
        PairSampler([pair], CropConfig(crop=32), seed=0)
    with pytest.raises(ConfigError):
        PairSampler([pair], CropConfig(crop=6), seed=0)
    with pytest.raises(ConfigError):
        PairSampler([], CropConfig(crop=8), seed=0)
    with pytest.raises(ConfigError):
        PairSampler([pair, _blocky_pair(8, 8, 2)], CropConfig(crop=8), seed=0)
    with pytest.raises(ConfigError):
        CropConfig(artifact_fraction=1.5)
    with pytest.raises(ConfigError):
        PairSampler([pair], CropConfig(crop=8), seed=0).set_state({"bit_generator": "nope"})


# --- EMA ----------------------------------------------------------------------------------------------

def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))


def test_ema_half_decay_hand_computed():
    model = _net()
    ema = EMA(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.shadow.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(dict(ema.shadow.named_parameters())[name], 0.5 * before[name] + 0.5 * p)
    assert torch.equal(ema.shadow[1].running_mean, torch.full((4,), 3.0))
    assert not ema.shadow.training
    assert all(not p.requires_grad for p in ema.shadow.parameters())


def test_ema_decay_zero_equals_model():
    model = _net()
    ema = EMA(model, decay=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-2.0)
    ema.update(model)
    for k, v in model.state_dict().items():
        assert torch.equal(ema.state_dict()[k], v)


def test_ema_state_dict_round_trip():
    model = _net()
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    ema.update(model)
    other = EMA(_net(), decay=0.9)
    other.load_state_dict(ema.state_dict())
    for k, v in ema.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_ema_bad_decay(decay):
    with pytest.raises(ConfigError):
        EMA(_net(), decay=decay)
