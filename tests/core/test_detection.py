"""detect_artifacts end to end on synthetic pairs: semantics, regions, notes, errors."""

from __future__ import annotations

import numpy as np
import pytest

from desra_core import (
    ConfigError,
    DetectionConfig,
    LabelMapError,
    ShapeError,
    ShapeMismatchError,
    detect_artifacts,
)

SKY, TREE, WALL = 2, 4, 0


def _pair(h=96, w=96, box=(20, 60, 30, 80), amplitude=60, seed=0):
    """A flat MSE image and a GAN image with painted stripes inside ``box`` (y0, y1, x0, x1)."""
    rng = np.random.default_rng(seed)
    mse = np.full((h, w, 3), 120, np.uint8) + rng.integers(0, 2, (h, w, 3), dtype=np.uint8)
    gan = mse.copy()
    y0, y1, x0, x1 = box
    stripes = np.zeros((y1 - y0, x1 - x0, 3), np.int16)
    stripes[:, 1::2] = amplitude
    gan[y0:y1, x0:x1] = np.clip(gan[y0:y1, x0:x1].astype(np.int16) + stripes - amplitude // 2, 0, 255)
    return mse, gan


def test_detects_painted_texture():
    mse, gan = _pair()
    det = detect_artifacts(mse, gan, None, DetectionConfig(min_area=500))
    assert det.mask.shape == (96, 96) and det.mask.dtype == bool
    assert len(det.regions) == 1
    region = det.regions[0]
    x, y, w, h = region.bbox
    # The region covers the painted box, grown by the dilation, never past the 5-pixel border.
    assert x <= 30 and y <= 20 and x + w >= 80 and y + h >= 60
    assert x >= 5 and y >= 5 and x + w <= 91 and y + h <= 91
    assert region.area == int(det.mask.sum())
    assert region.classes == ()
    assert 0.0 <= region.mean_adjusted < 0.7
    assert det.artifact_fraction == pytest.approx(det.mask.mean())


def test_border_is_never_flagged_and_maps_are_one_there():
    mse, gan = _pair(box=(0, 96, 0, 96))
    det = detect_artifacts(mse, gan, None, DetectionConfig(min_area=0))
    assert det.mask[5:-5, 5:-5].all()
    for border in (det.mask[:5], det.mask[-5:], det.mask[:, :5], det.mask[:, -5:]):
        assert not border.any()
    assert (det.similarity[:5] == 1.0).all() and (det.adjusted[:, -5:] == 1.0).all()
    assert det.similarity[5:-5, 5:-5].max() < 0.7


def test_semantic_weight_can_veto_an_artifact():
    # Choose a texture whose similarity is ~0.6: an artifact in the sky (weight 1), not in a tree (4/3).
    mse = np.full((64, 64, 3), 100, np.uint8)
    mse[:, 1::2] = 112
    gan = np.full((64, 64, 3), 100, np.uint8)
    gan[:, 1::2] = 140
    sky = np.full((64, 64), SKY, np.uint8)
    tree = np.full((64, 64), TREE, np.uint8)
    config = DetectionConfig(min_area=100)
    det_sky, det_tree = detect_artifacts(mse, gan, sky, config), detect_artifacts(mse, gan, tree, config)
    c = det_sky.similarity[32, 32]
    assert 0.7 * 15 / 20 < c < 0.7  # flagged at weight 1, not at weight 4/3
    assert det_sky.mask[5:-5, 5:-5].all()
    assert not det_tree.mask.any()
    assert det_tree.adjusted[32, 32] == pytest.approx(min(c * 20 / 15, 1.0), rel=1e-6)
    unlabeled = detect_artifacts(mse, gan, np.full((64, 64), 255, np.uint8), config)
    assert np.array_equal(unlabeled.mask, det_sky.mask)
    assert det_sky.regions[0].classes[0].name == "sky"
    assert det_sky.regions[0].classes[0].fraction == 1.0


def test_dominant_classes_are_ranked():
    mse, gan = _pair(box=(10, 86, 10, 86))
    labels = np.full((96, 96), WALL, np.uint8)
    labels[:60] = SKY
    det = detect_artifacts(mse, gan, labels, DetectionConfig(min_area=500))
    (region,) = det.regions
    names = [c.name for c in region.classes]
    assert names == ["sky", "wall"]
    assert region.classes[0].fraction > region.classes[1].fraction
    assert sum(c.fraction for c in region.classes) == pytest.approx(1.0)


def test_float_and_uint8_inputs_agree():
    mse, gan = _pair(seed=3)
    a = detect_artifacts(mse, gan, None, DetectionConfig(min_area=500))
    b = detect_artifacts(mse.astype(np.float32) / 255, gan.astype(np.float32) / 255, None,
                         DetectionConfig(min_area=500))
    assert np.array_equal(a.mask, b.mask)
    assert np.abs(a.similarity - b.similarity).max() < 1e-5


def test_paper_area_limit_ignores_small_images_unless_relative():
    mse, gan = _pair(h=64, w=64, box=(10, 54, 10, 54))
    det = detect_artifacts(mse, gan, None)  # paper default: 4000 pixels
    assert not det.mask.any()
    assert det.min_area == 4000
    assert any("too small" in n for n in det.notes)
    rel = detect_artifacts(mse, gan, None, DetectionConfig(min_area_fraction=0.05))
    assert rel.min_area == int(0.05 * 64 * 64)
    assert rel.mask.any() and not rel.notes


def test_config_validation():
    for kwargs in ({"threshold": 1.5}, {"min_area": -1}, {"min_area": 2.5}, {"window": 10}, {"sigma": 0},
                   {"min_area_fraction": 1.0}):
        with pytest.raises(ConfigError):
            DetectionConfig(**kwargs)
    with pytest.raises(TypeError):
        DetectionConfig(0.7)  # keyword-only
    assert DetectionConfig().to_dict()["threshold"] == 0.7


def test_config_to_dict_holds_every_scalar_in_field_order_and_the_table_as_its_k_values():
    # these dicts key the store and the config hash: the same keys, in the same order, for every release
    config = DetectionConfig(threshold=0.8, min_area=500, min_area_fraction=0.01, window=7, sigma=2.0)
    assert list(config.to_dict().items()) == [("threshold", 0.8), ("min_area", 500), ("min_area_fraction", 0.01),
                                              ("window", 7), ("sigma", 2.0),
                                              ("class_table_k", ",".join(map(str, config.class_table.k)))]
    assert config.to_dict()["class_table_k"].startswith("1,4,0,1,5")  # wall 1, building 4, sky 0 (paper's table)


@pytest.mark.parametrize(
    ("mse", "gan", "labels", "error", "match"),
    [
        (np.zeros((40, 40, 3), np.uint8), np.zeros((40, 41, 3), np.uint8), None, ShapeMismatchError, "same shape"),
        (np.zeros((8, 40, 3), np.uint8), np.zeros((8, 40, 3), np.uint8), None, ShapeError, "at least"),
        (np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint8), None, ShapeError, r"\(H, W, 3\)"),
        (np.full((40, 40, 3), 2.0, np.float32), np.zeros((40, 40, 3), np.float32), None, ShapeError, r"\[0, 1\]"),
        (np.full((40, 40, 3), np.nan, np.float32), np.zeros((40, 40, 3), np.float32), None, ShapeError, "nan"),
        (np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 3), np.uint8), np.zeros((40, 39), np.uint8),
         LabelMapError, "size"),
        (np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 3), np.uint8), np.full((40, 40), 151, np.uint8),
         LabelMapError, "151"),
    ],
)
def test_errors(mse, gan, labels, error, match):
    with pytest.raises(error, match=match):
        detect_artifacts(mse, gan, labels)
