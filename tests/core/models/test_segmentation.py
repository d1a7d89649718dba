"""Segmentation: SegFormer loading and class-order checks, mmsegmentation-style slide inference, registry.

Every model here is a tiny random SegFormer saved with ``save_pretrained`` in a temporary folder and
loaded back through the same loaders users call; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

from desra_core.errors import ConfigError, ModelLoadError, ShapeError
from desra_core.models import segmentation as seg_module
from desra_core.models.segmentation import (
    DEFAULT_SEGMENTER,
    SEGMENTERS,
    Segmenter,
    load_segformer,
    load_segmenter,
    prepare,
    segment,
)
from desra_core.semantic import default_class_table

ADE = list(default_class_table().names)
CITYSCAPES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
              "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
              "bicycle"]
RNG = np.random.default_rng(42)


def _save_tiny(folder: Path, names: list[str], *, processor: SegformerImageProcessor | None = None,
               seed: int = 0) -> Path:
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        num_attention_heads=[1, 1], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=16,
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(seed)
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ade_folder(tmp_path_factory) -> Path:
    names = [n + " " if i % 37 == 7 else n for i, n in enumerate(ADE)]  # "bed " like the real checkpoints
    return _save_tiny(tmp_path_factory.mktemp("ade"), names,
                      processor=SegformerImageProcessor(size={"height": 64, "width": 64}))


@pytest.fixture(scope="module")
def seg(ade_folder) -> Segmenter:
    return load_segmenter(str(ade_folder))


def _image(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_slide(segmenter: Segmenter, image: np.ndarray) -> np.ndarray:
    """mmsegmentation's slide_inference, one window at a time, full-size logits, no chunking."""
    x = prepare(segmenter, image)
    _, _, h, w = x.shape
    crop, stride = segmenter.crop, segmenter.crop * 2 // 3
    preds = torch.zeros(segmenter.to_ade20k.size, h, w)
    count = torch.zeros(1, h, w)
    with torch.inference_mode():
        for hi in range(max(h - crop + stride - 1, 0) // stride + 1):
            for wi in range(max(w - crop + stride - 1, 0) // stride + 1):
                y2, x2 = min(hi * stride + crop, h), min(wi * stride + crop, w)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                window = x[:, :, y1:y2, x1:x2]
                logits = segmenter.model(pixel_values=window).logits
                preds[:, y1:y2, x1:x2] += F.interpolate(logits, size=window.shape[2:], mode="bilinear",
                                                        align_corners=False)[0]
                count[:, y1:y2, x1:x2] += 1
        preds = preds / count
        full = F.interpolate(preds[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    return segmenter.to_ade20k[full.argmax(0).numpy()]


# ---------------------------------------------------------------- loading


def test_load_reads_processor_and_accepts_padded_ade_names(seg, ade_folder):
    assert seg.crop == 64 and seg.stride == 42
    assert seg.pixel_scale == pytest.approx(1 / 255)
    assert seg.mean == pytest.approx((0.485, 0.456, 0.406)) and seg.std == pytest.approx((0.229, 0.224, 0.225))
    np.testing.assert_array_equal(seg.to_ade20k, np.arange(150))
    assert seg.name == str(ade_folder) and not seg.model.training
    assert not any(p.requires_grad for p in seg.model.parameters())
    assert DEFAULT_SEGMENTER == "nvidia/segformer-b5-finetuned-ade-640-640"


def test_folder_without_processor_uses_segformer_defaults(tmp_path):
    seg = load_segformer(str(_save_tiny(tmp_path, ADE)))
    assert seg.crop == 512 and seg.stride == 341
    assert seg.mean == pytest.approx((0.485, 0.456, 0.406))


def test_custom_processor_settings_are_used(tmp_path):
    processor = SegformerImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.5] * 3, image_std=[0.25] * 3,
                                        do_rescale=False)
    seg = load_segformer(str(_save_tiny(tmp_path, ADE, processor=processor)))
    assert (seg.crop, seg.pixel_scale, seg.mean, seg.std) == (48, 1.0, (0.5,) * 3, (0.25,) * 3)
    x = prepare(seg, np.full((48, 48, 3), 2, np.uint8))
    assert torch.allclose(x, torch.full_like(x, (2 - 0.5) / 0.25))


def test_processor_settings_that_are_not_numbers_are_refused_naming_the_folder(tmp_path):
    folder = _save_tiny(tmp_path, ADE, processor=SegformerImageProcessor(size={"height": 32, "width": 32}))
    config = folder / "preprocessor_config.json"
    config.write_text(config.read_text().replace('"image_std": [', '"image_std": ["wide", '))
    with pytest.raises(ModelLoadError, match=r"expected a number for the image processor's image_std, got 'wide'"
                       ) as info:
        load_segformer(str(folder))
    assert str(folder) in str(info.value)


def test_shuffled_classes_are_refused_without_mapping(tmp_path):
    order = np.random.default_rng(3).permutation(150)
    folder = _save_tiny(tmp_path, [ADE[i] for i in order])
    with pytest.raises(ModelLoadError, match=r"ADE20K order.*class_mapping") as info:
        load_segmenter(str(folder))
    assert str(folder) in str(info.value)
    by_name = load_segmenter(str(folder), class_mapping={ADE[i]: ADE[i] for i in order})
    np.testing.assert_array_equal(by_name.to_ade20k, order)
    by_id = load_segmenter(str(folder), class_mapping={j: int(i) for j, i in enumerate(order)})
    np.testing.assert_array_equal(by_id.to_ade20k, order)
    all_sky = load_segmenter(str(folder), class_mapping={name: "sky" for name in ADE})
    labels = segment(all_sky, _image(40, 70))
    assert labels.shape == (40, 70) and (labels == 2).all()


def test_cityscapes_like_model_needs_a_mapping(tmp_path):
    folder = _save_tiny(tmp_path, CITYSCAPES, processor=SegformerImageProcessor(size={"height": 32, "width": 32}))
    with pytest.raises(ModelLoadError, match="19 classes"):
        load_segmenter(str(folder))
    seg = load_segmenter(str(folder), class_mapping={"road": "road", "vegetation": "tree", "sky": 2, 13: 20})
    expected = np.full(19, 255, np.uint8)
    expected[[0, 8, 10, 13]] = [6, 4, 2, 20]
    np.testing.assert_array_equal(seg.to_ade20k, expected)
    labels = segment(seg, _image(30, 50))
    assert set(np.unique(labels)) <= {6, 4, 2, 20, 255}


@pytest.mark.parametrize("mapping, message", [
    ({"no such class": "sky"}, "keys"),
    ({19: "sky"}, "keys"),
    ({"road": "spaceship"}, "values"),
    ({"road": 150}, "values"),
    ({"road": -1}, "values"),
])
def test_invalid_class_mapping_is_refused(tmp_path, mapping, message):
    folder = _save_tiny(tmp_path, CITYSCAPES)
    with pytest.raises(ModelLoadError, match=message):
        load_segformer(str(folder), class_mapping=mapping)


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "no" / "such" / "segformer"
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_segmenter(str(missing))
    assert str(missing) in str(info.value)


def test_folder_that_is_not_a_segformer_is_refused(tmp_path):
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="model_type 'bert'"):
        load_segformer(str(tmp_path))


def test_config_without_weights_is_refused(tmp_path):
    SegformerConfig(num_labels=150, id2label=dict(enumerate(ADE))).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="loadable SegFormer") as info:
        load_segformer(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_offline_hub_id_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("DESRA_OFFLINE", "1")

    def no_network(*args, **kwargs):  # offline means no connection attempt (and so no waiting on time-outs)
        pytest.fail(f"tried to connect offline: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ModelLoadError, match="huggingface-cli download") as info:
        load_segmenter("nvidia/segformer-b5-finetuned-ade-640-640-not-cached")
    assert "nvidia/segformer-b5-finetuned-ade-640-640-not-cached" in str(info.value)


# ---------------------------------------------------------------- registry


def test_registry_backend_prefix_and_unknown_backend(ade_folder):
    seg = load_segmenter(f"segformer:{ade_folder}")
    assert seg.name == str(ade_folder) and seg.to_ade20k.size == 150
    with pytest.raises(ModelLoadError, match=r"\['segformer'\].*'nope'"):
        load_segmenter("nope:x")
    assert SEGMENTERS["segformer"] is load_segformer


class _ConstantLogits(torch.nn.Module):
    """A stand-in backend: logits at 1/4 resolution where class 1 always wins."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 3, (x.shape[2] + 3) // 4, (x.shape[3] + 3) // 4)
        logits[:, 1] = 1.0
        return logits


def test_custom_backend_from_an_injected_registry():
    calls = []

    def load_constant(target: str, *, device: str = "cpu") -> Segmenter:
        calls.append((target, device))
        return Segmenter(model=_ConstantLogits(), name=target, to_ade20k=np.array([0, 2, 4]), crop=32)

    seg = load_segmenter("const:anything", registry={"const": load_constant}, device="cpu")
    assert calls == [("anything", "cpu")]
    labels = segment(seg, _image(45, 100))
    assert labels.shape == (45, 100) and (labels == 2).all()
    with pytest.raises(ModelLoadError, match="const"):
        load_segmenter("plain/id", registry={"const": load_constant})  # no default backend in this registry


@pytest.mark.parametrize("changes", [{"to_ade20k": np.array([0, 200])}, {"crop": 0}, {"batch_size": 0},
                                     {"std": (1.0, 0.0, 1.0)}])
def test_segmenter_validates_its_fields(changes):
    fields = {"model": _ConstantLogits(), "name": "x", "to_ade20k": np.array([0, 1, 2])} | changes
    with pytest.raises(ConfigError):
        Segmenter(**fields)


# ---------------------------------------------------------------- inference


@pytest.mark.parametrize("shape, resized", [((50, 130), (64, 166)), ((200, 90), (142, 64)), ((30, 20), (96, 64))])
def test_keep_ratio_rescale_and_output_shape(seg, shape, resized):
    image = _image(*shape)
    assert tuple(prepare(seg, image).shape) == (1, 3, *resized)
    labels = segment(seg, image)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert labels.max() <= 149


def test_long_side_limit_gives_windows_smaller_than_the_crop(seg):
    narrow = dataclasses.replace(seg, long_side=128)
    image = _image(20, 200)
    assert tuple(prepare(narrow, image).shape) == (1, 3, 13, 128)
    labels = segment(narrow, image)
    assert labels.shape == (20, 200)
    np.testing.assert_array_equal(labels, _reference_slide(narrow, image))


def test_float_input_and_determinism(seg):
    image = _image(50, 130).astype(np.float32) / 255
    first = segment(seg, image)
    assert first.shape == (50, 130) and first.dtype == np.uint8 and first.max() <= 149
    np.testing.assert_array_equal(first, segment(seg, image))


def test_normalisation_matches_the_image_processor(seg):
    image = _image(64, 64)
    expected = SegformerImageProcessor(do_resize=False)(image, return_tensors="pt").pixel_values
    torch.testing.assert_close(prepare(seg, image), expected, rtol=0, atol=1e-5)


def test_one_crop_image_equals_a_single_forward_pass(seg):
    image = _image(64, 64)
    x = prepare(seg, image)
    with torch.inference_mode():
        logits = seg.model(pixel_values=x).logits
        expected = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)[0].argmax(0)
    np.testing.assert_array_equal(segment(seg, image), expected.numpy().astype(np.uint8))


@pytest.mark.parametrize("shape", [(100, 300), (300, 140), (64, 150)])
def test_slide_matches_a_reference_implementation(seg, shape):
    one_by_one = dataclasses.replace(seg, batch_size=1)
    image = _image(*shape)
    expected = _reference_slide(one_by_one, image)
    np.testing.assert_array_equal(segment(one_by_one, image), expected)
    # a one-class-at-a-time memory budget changes nothing
    np.testing.assert_array_equal(segment(dataclasses.replace(one_by_one, chunk_bytes=1), image), expected)


def test_batched_windows_match_single_windows(seg):
    x = prepare(seg, _image(100, 300))
    boxes = seg_module._windows(x.shape[2], x.shape[3], seg.crop, seg.stride)
    assert len(boxes) == 5
    with torch.inference_mode():
        batched = seg_module._window_logits(dataclasses.replace(seg, batch_size=3), x, boxes)
        single = seg_module._window_logits(dataclasses.replace(seg, batch_size=1), x, boxes)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6 * float(single.abs().max()))


def test_window_grid_matches_mmsegmentation():
    assert seg_module._windows(64, 192, 64, 42) == [(0, 64, 0, 64), (0, 64, 42, 106), (0, 64, 84, 148),
                                                    (0, 64, 126, 190), (0, 64, 128, 192)]
    paper = seg_module._windows(640, 2048, 640, 426)  # SegFormer-B5 640 on a 2048×640 rescaled image
    assert [b[2] for b in paper] == [0, 426, 852, 1278, 1408]
    assert seg_module._windows(13, 50, 64, 42) == [(0, 13, 0, 50)]  # smaller than the crop: clipped, not padded


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 3 * (23 * 31 + 70 * 45 + 23 * 31), 1 << 30])
def test_chunked_upsample_argmax_equals_interpolate(chunk_bytes):
    logits = torch.randn(1, 11, 23, 31, generator=torch.Generator().manual_seed(5))
    logits[0, 4, :3] = logits[0, 7, :3] = 10.0  # exact ties: the first class must win, as in argmax
    labels = seg_module._slide_argmax(logits, [(0, 23, 0, 31)], (23, 31), (70, 45), chunk_bytes)
    expected = F.interpolate(logits, size=(70, 45), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(labels, expected)
    assert (labels[:8] == 4).any()


@pytest.mark.parametrize("image, message", [
    (np.zeros((10, 10), np.uint8), "shape"),
    (np.zeros((10, 10, 4), np.uint8), "shape"),
    (np.zeros((0, 10, 3), np.uint8), "shape"),
    (np.zeros((10, 10, 3), np.uint16), "uint8 or float32"),
    (np.full((10, 10, 3), 255.0, np.float32), r"\[0, 1\]"),
    (np.full((10, 10, 3), np.nan, np.float32), r"\[0, 1\]"),
])
def test_bad_images_raise_shape_error(seg, image, message):
    with pytest.raises(ShapeError, match=message):
        segment(seg, image)


def test_backend_with_wrong_logits_is_reported():
    seg = Segmenter(model=_ConstantLogits(), name="const", to_ade20k=np.arange(5), crop=32)
    with pytest.raises(ShapeError, match=r"expected logits \(B, 5"):
        segment(seg, _image(20, 20))
