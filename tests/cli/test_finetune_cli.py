"""`desra finetune` and `desra evaluate` end to end with tiny real-architecture models on CPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from spandrel import ModelLoader

from desra.cli import main
from tests.core.models.test_sr import tiny_compact, tiny_rrdbnet
from tests.flows.conftest import write_lr


def test_finetune_then_evaluate(tmp_path, capsys):
    images = tmp_path / "lr"
    for i in range(2):
        write_lr(images / f"im{i}.png", i, size=32)
    mse, gan = tmp_path / "mse.pth", tmp_path / "gan.pth"
    torch.save({"params_ema": tiny_rrdbnet()}, mse)
    torch.save({"params": tiny_compact()}, gan)
    out = tmp_path / "ft"
    rc = main(["finetune", "--gan", str(gan), "--mse", str(mse), "--images", str(images), "--no-semantic",
               "--out", str(out), "--iterations", "3", "--batch", "2", "--crop", "64", "--no-perceptual",
               "--ema", "0", "--threshold", "0.9", "--min-area", "10", "--device", "cpu"])
    assert rc == 0
    log = pd.read_parquet(out / "train_log.parquet")
    assert list(log["step"]) == [1, 2, 3]
    assert {"l1", "perceptual", "gan", "d_loss", "lr", "seconds"} <= set(log.columns)
    assert np.isfinite(log["l1"]).all()
    tuned = ModelLoader().load_from_file(out / "generator.safetensors")
    assert tuned.architecture.name == "RealESRGAN Compact" and tuned.scale == 4
    assert "2 training pair(s)" in capsys.readouterr().out

    ev = tmp_path / "ev"
    rc = main(["evaluate", "--mse", str(mse), "--gan", str(gan), "--gan", str(out / "generator.safetensors"),
               "--images", str(images), "--no-semantic", "--out", str(ev), "--threshold", "0.9", "--min-area", "10",
               "--device", "cpu"])
    assert rc == 0
    table = pd.read_parquet(ev / "evaluation.parquet")
    assert list(table.columns) == ["image", "model", "artifact_fraction", "detail_kept"]
    assert len(table) == 4 and set(table["model"]) == {str(gan), str(out / "generator.safetensors")}
    assert table["artifact_fraction"].between(0, 1).all()
    assert "mean per model" in capsys.readouterr().out
