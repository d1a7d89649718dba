"""Flow tests run against one ephemeral Prefect API for the session, with tiny real SR models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tests.core.models.test_sr import save_tiny_pair, tiny_compact


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("models"))


def finetune_job(folder, images: int = 3, size: int = 32):
    """``images`` small LR images in ``folder/lr`` and a model pair to fine-tune: a textured tiny Compact as
    the GAN model and its smooth twin (last residual branch zeroed) as the MSE model, so that detection
    finds texture to remove. Returns ``(images_dir, mse_path, gan_path)``."""
    from pathlib import Path

    folder = Path(folder)
    for i in range(images):
        write_lr(folder / "lr" / f"im{i}.png", i, size=size)
    gan_state = tiny_compact()
    last = max(int(k.split(".")[1]) for k in gan_state if k.startswith("body."))
    mse_state = {k: (torch.zeros_like(v) if k.startswith(f"body.{last}.") else v) for k, v in gan_state.items()}
    mse, gan = folder / "mse.pth", folder / "gan.pth"
    torch.save({"params_ema": mse_state}, mse)
    torch.save({"params": gan_state}, gan)
    return folder / "lr", mse, gan


def write_lr(path, seed: int, size: int = 40) -> None:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC))


@pytest.fixture
def counted(monkeypatch):
    """Count the SR inference and detection calls that the pipeline's steps make."""
    import desra.pipeline.models
    import desra.pipeline.steps

    calls = {"upscale": 0, "detect": 0}
    real_upscale, real_detect = desra.pipeline.models.upscale, desra.pipeline.steps.detect_artifacts

    def upscale(*a, **k):
        calls["upscale"] += 1
        return real_upscale(*a, **k)

    def detect(*a, **k):
        calls["detect"] += 1
        return real_detect(*a, **k)

    monkeypatch.setattr(desra.pipeline.models, "upscale", upscale)
    monkeypatch.setattr(desra.pipeline.steps, "detect_artifacts", detect)
    return calls
