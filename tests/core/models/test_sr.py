"""SR loading through spandrel (tiny real architectures saved as users get them) and tiled inference."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DnCNN import DnCNN
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.SwinIR import SwinIR

from desra_core import ConfigError, ModelLoadError, ShapeError
from desra_core.models.sr import check_same_scale, load_sr_model, upscale


def _state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def tiny_rrdbnet(scale: int = 4) -> dict[str, torch.Tensor]:
    return _state(ESRGAN(num_filters=8, num_blocks=1, scale=scale), 0)


def tiny_compact() -> dict[str, torch.Tensor]:
    return _state(Compact(num_feat=8, num_conv=2, upscale=4), 1)


def save_tiny_pair(folder: Path, mse_name: str = "mse_tiny.pth", gan_name: str = "gan_tiny.pth") -> tuple[str, str]:
    """A tiny RRDBNet (as the MSE model) and a tiny Compact (as the GAN model), saved as ``.pth`` in ``folder``."""
    mse, gan = folder / mse_name, folder / gan_name
    torch.save({"params_ema": tiny_rrdbnet()}, mse)
    torch.save({"params": tiny_compact()}, gan)
    return str(mse), str(gan)


def tiny_swinir() -> dict[str, torch.Tensor]:
    net = SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                 upsampler="pixelshuffle", mlp_ratio=2.0)
    return _state(net, 2)


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    import cv2

    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


@pytest.fixture
def rrdb_pth(tmp_path):
    path = tmp_path / "RRDB_tiny_x4.pth"
    torch.save({"params_ema": tiny_rrdbnet()}, path)
    return path


def test_loads_rrdbnet_from_pth_and_safetensors(tmp_path, rrdb_pth):
    st_path = tmp_path / "rrdb.safetensors"
    save_file(tiny_rrdbnet(), st_path)
    a, b = load_sr_model(rrdb_pth), load_sr_model(st_path, expected_scale=4)
    assert (a.scale, a.architecture, b.architecture) == (4, "ESRGAN", "ESRGAN")
    img = _smooth_image(20, 24)
    out_a, out_b = upscale(a, img, tile=None), upscale(b, img, tile=None)
    assert out_a.shape == (80, 96, 3) and out_a.dtype == np.float32
    assert 0.0 <= out_a.min() and out_a.max() <= 1.0
    assert np.array_equal(out_a, out_b)
    assert len(a.file_sha256()) == 64


def test_loads_compact_with_params_wrapper(tmp_path):
    path = tmp_path / "compact.pth"
    torch.save({"params": tiny_compact()}, path)
    m = load_sr_model(path)
    assert (m.scale, m.architecture) == (4, "RealESRGAN Compact")
    assert upscale(m, _smooth_image(16, 16)).shape == (64, 64, 3)


def test_loads_swinir_and_pads_to_its_window(tmp_path):
    path = tmp_path / "swinir.pth"
    torch.save({"params": tiny_swinir()}, path)
    m = load_sr_model(path)
    assert (m.scale, m.architecture) == (2, "SwinIR")
    img = _smooth_image(18, 13)  # not a multiple of the window: spandrel pads and crops
    assert upscale(m, img, tile=None).shape == (36, 26, 3)
    tiled = upscale(m, img, tile=8, overlap=4)
    assert tiled.shape == (36, 26, 3)


def test_scale_checks(tmp_path, rrdb_pth):
    with pytest.raises(ModelLoadError, match="x2 model, got x4"):
        load_sr_model(rrdb_pth, expected_scale=2)
    path = tmp_path / "x2.pth"
    torch.save(tiny_rrdbnet(scale=2), path)
    with pytest.raises(ModelLoadError, match="same scale"):
        check_same_scale(load_sr_model(rrdb_pth), load_sr_model(path))


def test_refuses_a_restoration_model(tmp_path):
    path = tmp_path / "dncnn.pth"
    torch.save(_state(DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R"), 3), path)
    with pytest.raises(ModelLoadError, match="super-resolution model, got a Restoration") as e:
        load_sr_model(path)
    assert "dncnn.pth" in str(e.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("unknown.pth", None),  # a state dict of no known architecture
        ("truncated.pth", "truncate"),
        ("text.safetensors", b"definitely not safetensors"),
        ("empty.pth", b""),
    ],
)
def test_refuses_bad_files(tmp_path, rrdb_pth, name, content):
    path = tmp_path / name
    if content is None:
        torch.save({"foo.weight": torch.zeros(3, 3)}, path)
    elif content == "truncate":
        data = rrdb_pth.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError) as e:
        load_sr_model(path)
    assert name in str(e.value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"params": _Evil(marker)}, f)
    with pytest.raises(ModelLoadError, match=r"evil\.pth"):
        load_sr_model(path)
    assert not marker.exists()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="missing"):
        load_sr_model(tmp_path / "nope.pth")


def test_tiled_matches_untiled(rrdb_pth):
    m = load_sr_model(rrdb_pth)
    img = _smooth_image(72, 60, seed=5)
    whole = upscale(m, img, tile=None)
    tiled = upscale(m, img, tile=32, overlap=16, batch_size=3)
    assert np.abs(tiled - whole).max() <= 2 / 255
    # No tiling artefact on the tile grid: errors along window edges are no larger than elsewhere.
    assert np.abs(tiled - whole).mean() < 0.2 / 255


def test_batching_and_repeats_are_deterministic(rrdb_pth):
    m = load_sr_model(rrdb_pth)
    img = _smooth_image(50, 70, seed=6)
    a = upscale(m, img, tile=24, overlap=8, batch_size=1)
    b = upscale(m, img, tile=24, overlap=8, batch_size=5)
    c = upscale(m, img, tile=24, overlap=8, batch_size=5)
    assert np.array_equal(b, c)
    assert np.abs(a - b).max() < 1e-5  # batch composition only reorders float sums


def test_integer_inputs(rrdb_pth):
    m = load_sr_model(rrdb_pth)
    img8 = (np.random.default_rng(7).random((16, 16, 3)) * 255).astype(np.uint8)
    img16 = img8.astype(np.uint16) * 257
    ref = upscale(m, img8.astype(np.float32) / 255, tile=None)
    assert np.abs(upscale(m, img8, tile=None) - ref).max() < 1e-6
    assert np.abs(upscale(m, img16, tile=None) - ref).max() < 1e-6
    with pytest.raises(ShapeError):
        upscale(m, img8[..., 0])


def test_option_errors(rrdb_pth):
    m = load_sr_model(rrdb_pth)
    img = _smooth_image(16, 16)
    for kwargs in ({"tile": 8, "overlap": 8}, {"tile": 0}, {"batch_size": 0}, {"precision": "fp8"}):
        with pytest.raises(ConfigError):
            upscale(m, img, **kwargs)


def _whole_image_reference(m, img: np.ndarray, tile: int, overlap: int) -> np.ndarray:
    """The straightforward blend: a float32 sum of the weighted windows and a weight map over the whole
    output, divided at the end (how ``upscale`` worked before it streamed its output)."""
    from desra_core.models.sr import _ramp, _windows

    s, (h, w) = m.scale, img.shape[:2]
    windows = _windows(h, w, tile, overlap)
    acc = np.zeros((h * s, w * s, 3), np.float32)
    weight = np.zeros((h * s, w * s), np.float32)
    for y, x, th, tw in windows:
        lr = torch.from_numpy(np.ascontiguousarray(img[y:y + th, x:x + tw].transpose(2, 0, 1)))[None]
        with torch.inference_mode():
            patch = m.descriptor(lr)[0].numpy().transpose(1, 2, 0)
        wt = (_ramp(th * s, overlap * s, y > 0, y + th < h)[:, None]
              * _ramp(tw * s, overlap * s, x > 0, x + tw < w)[None, :])
        acc[y * s:(y + th) * s, x * s:(x + tw) * s] += patch * wt[..., None]
        weight[y * s:(y + th) * s, x * s:(x + tw) * s] += wt
    if len(windows) > 1:
        acc /= weight[..., None]
    return np.clip(acc, 0.0, 1.0)


@pytest.mark.parametrize(("shape", "tile", "overlap"), [
    ((20, 20), 32, 8),   # one window
    ((20, 70), 24, 8),   # one row of windows
    ((70, 20), 24, 8),   # one column
    ((50, 61), 24, 8),   # a grid
    ((45, 45), 16, 12),  # overlap > tile / 2: three windows cover some pixels on each axis
])
def test_streamed_output_equals_the_whole_image_blend(rrdb_pth, shape, tile, overlap):
    # Pixels are finished as soon as no later window covers them, straight into the output dtype; the
    # values must be those of the whole-image float32 blend, bit for bit, at every output dtype.
    from desra_core.image import to_bit_depth

    m = load_sr_model(rrdb_pth)
    img = _smooth_image(*shape, seed=sum(shape))
    ref = _whole_image_reference(m, img, tile, overlap)
    got = {dt: upscale(m, img, tile=tile, overlap=overlap, batch_size=1, out_dtype=dt)  # as the reference
           for dt in (np.float32, np.uint8, np.uint16)}
    assert {a.dtype for a in got.values()} == {np.dtype(np.float32), np.dtype(np.uint8), np.dtype(np.uint16)}
    assert got[np.float32].shape == got[np.uint8].shape == (shape[0] * 4, shape[1] * 4, 3)
    assert np.array_equal(got[np.float32], ref), np.abs(got[np.float32] - ref).max()
    assert np.array_equal(got[np.uint8], to_bit_depth(ref, 8))
    assert np.array_equal(got[np.uint16], to_bit_depth(ref, 16))


def test_integer_output_needs_no_whole_image_float_buffer(rrdb_pth):
    # The old path held a float32 sum (12 B) and weight map (4 B) per output pixel, then a float32
    # result: about 34 B/px. Streaming keeps the uint8 output (3 B/px) plus tile-sized buffers.
    import tracemalloc

    m = load_sr_model(rrdb_pth)
    img = (_smooth_image(160, 160, seed=3) * 255).astype(np.uint8)
    upscale(m, img[:40, :40], tile=32, overlap=8, out_dtype=np.uint8)  # warm-up
    tracemalloc.start()
    out = upscale(m, img, tile=32, overlap=8, out_dtype=np.uint8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    per_pixel = peak / (out.shape[0] * out.shape[1])
    assert out.dtype == np.uint8 and per_pixel < 8, f"{per_pixel:.2f} B per output pixel"


def test_out_dtype_is_checked(rrdb_pth):
    m = load_sr_model(rrdb_pth)
    with pytest.raises(ConfigError, match="out_dtype"):
        upscale(m, _smooth_image(16, 16), out_dtype=np.float64)
