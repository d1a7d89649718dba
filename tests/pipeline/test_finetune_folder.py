"""A fine-tuning run's folder (what resuming finds) changes with the objective that its automatic loss weights
resolve to: a checkpoint trained as L1 + texture is never resumed as the VGG19 recipe, or on CUDA with the GAN
term, once those become available."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from desra.pipeline.finetuning import finetune_folder
from desra.pipeline.settings import Settings
from desra_core.finetune.options import FinetuneOptions


def _folder(tmp_path, options: FinetuneOptions, device: str):
    image = tmp_path / "a.png"
    image.write_bytes(b"pixels")
    settings = Settings(mse_model="mse.safetensors", gan_model="gan.safetensors", segmenter=None, device=device)
    gan = SimpleNamespace(file_sha256=lambda: "0" * 64)
    data = SimpleNamespace(train_files={"a": str(image)}, validation_files={"a": str(image)})
    return finetune_folder(tmp_path / "out", settings, options, gan, data)


def test_the_folder_follows_the_resolved_objective(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    auto = FinetuneOptions()
    without_vgg = _folder(tmp_path, auto, "cpu")
    assert _folder(tmp_path, auto, "cpu") == without_vgg  # the same run finds its folder again
    assert _folder(tmp_path, auto, "cuda:0") == without_vgg  # no VGG19: the same objective on CUDA

    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / "vgg19-dcbb9e9d.pth").write_bytes(b"weights")
    with_vgg = _folder(tmp_path, auto, "cpu")
    assert with_vgg != without_vgg  # the recipe now: another run
    assert _folder(tmp_path, auto, "cuda:0") not in (with_vgg, without_vgg)  # and its GAN term on CUDA

    fixed = FinetuneOptions(perceptual=0.0, gan=0.0, texture=0.5)  # nothing automatic: one folder everywhere
    assert _folder(tmp_path, fixed, "cpu") == _folder(tmp_path, fixed, "cuda:0")
