"""`desra finetune` and `desra evaluate` end to end with tiny real-architecture models on CPU.

The MSE model is a tiny Compact whose residual branch is zeroed (its result is the nearest-neighbour
upscale: smooth, no invented texture); the GAN model is the same network with a random residual branch
(texture everywhere, which detection flags). Fine-tuning on the pseudo-GT can then really remove what
detection finds, or, with a wrecking learning rate, really destroy the model.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from spandrel import ModelLoader

from desra.cli import main
from desra.finetuning import NO_BETTER_MODEL
from desra_core.finetune.trainer import VALIDATION_COLUMNS
from tests.core.models.test_sr import tiny_compact
from tests.flows.conftest import write_lr


@pytest.fixture
def setup(tmp_path):
    images = tmp_path / "lr"
    for i in range(3):
        write_lr(images / f"im{i}.png", i, size=32)
    gan_state = tiny_compact()
    last = max(int(k.split(".")[1]) for k in gan_state if k.startswith("body."))
    mse_state = {k: (torch.zeros_like(v) if k.startswith(f"body.{last}.") else v) for k, v in gan_state.items()}
    mse, gan = tmp_path / "mse.pth", tmp_path / "gan.pth"
    torch.save({"params_ema": mse_state}, mse)
    torch.save({"params": gan_state}, gan)
    return images, mse, gan


def _finetune(images, mse, gan, out, *extra):
    return main(["finetune", "--gan", str(gan), "--mse", str(mse), "--images", str(images), "--no-semantic",
                 "--out", str(out), "--iterations", "20", "--batch", "2", "--crop", "64", "--no-perceptual", "--no-gan",
                 "--ema", "0", "--threshold", "0.9", "--min-area", "10", "--device", "cpu", "--validate-every", "5",
                 *extra])


def test_finetune_ships_the_best_validated_checkpoint_then_evaluate(tmp_path, capsys, setup):
    images, mse, gan = setup
    out = tmp_path / "ft"
    rc = _finetune(images, mse, gan, out, "--lr", "1e-2", "--min-detail-ratio", "0")
    captured = capsys.readouterr().out
    assert rc == 0, captured
    log = pd.read_parquet(out / "train_log.parquet")
    assert list(log["step"]) == list(range(1, 21))
    assert {"l1", "perceptual", "gan", "d_loss", "lr", "seconds", *VALIDATION_COLUMNS} <= set(log.columns)
    validated = log.dropna(subset=["val_artifact_fraction"])
    assert list(validated["step"]) == [5, 10, 15, 20]
    assert log["ema_val_artifact_fraction"].isna().all()  # EMA off

    card = json.loads((out / "model_card.json").read_text())
    original = card["validation"]["artifact_fraction"]["original"]
    best = validated.loc[validated["val_artifact_fraction"].idxmin()]
    assert best["val_artifact_fraction"] < original  # the fine-tuning really removed what detection finds
    assert card["chosen"]["step"] == int(best["step"]) and card["chosen"]["weights"] == "trained"
    assert card["validation"]["artifact_fraction"]["fine_tuned"] == pytest.approx(best["val_artifact_fraction"])
    assert card["base_model"]["file"] == str(gan) and len(card["base_model"]["sha256"]) == 64
    stems = [i["stem"] for i in card["train_images"]] + [i["stem"] for i in card["validation_images"]]
    assert sorted(stems) == ["im0", "im1", "im2"] and len(card["validation_images"]) == 1
    assert card["validation_split"]["mode"] == "held-out" and card["validation_split"]["seed"] == 0
    assert card["settings"]["training"]["lr"] == 1e-2 and card["settings"]["detection"]["threshold"] == 0.9
    assert set(card["train"]["per_image"]) == {i["stem"] for i in card["train_images"]}
    assert "fine_tuned" in next(iter(card["train"]["per_image"].values()))
    page = (out / "report.html").read_text()
    assert f"step {card['chosen']['step']} (trained weights)" in page and page.count('class="compare-range"') == 1
    assert "chosen: step" in captured and "1 with artifacts" not in captured

    tuned = ModelLoader().load_from_file(out / "generator.safetensors")
    assert tuned.architecture.name == "RealESRGAN Compact" and tuned.scale == 4

    ev = tmp_path / "ev"
    rc = main(["evaluate", "--mse", str(mse), "--gan", str(gan), "--gan", str(out / "generator.safetensors"),
               "--images", str(images), "--no-semantic", "--out", str(ev), "--threshold", "0.9", "--min-area", "10",
               "--device", "cpu"])
    assert rc == 0
    table = pd.read_parquet(ev / "evaluation.parquet")
    assert list(table.columns) == ["image", "model", "artifact_fraction", "detail_kept"]
    assert len(table) == 6 and set(table["model"]) == {str(gan), str(out / "generator.safetensors")}
    val_stem = card["validation_images"][0]["stem"]
    row = table[(table["image"] == val_stem) & (table["model"] == str(out / "generator.safetensors"))]
    # evaluate re-detects exactly what validation measured for the shipped weights
    assert row["artifact_fraction"].iloc[0] == pytest.approx(card["chosen"]["validation_artifact_fraction"])
    assert "mean per model" in capsys.readouterr().out


def test_no_qualifying_checkpoint_writes_no_generator(tmp_path, capsys, setup):
    images, mse, gan = setup
    out = tmp_path / "ft"
    out.mkdir()
    (out / "generator.safetensors").write_bytes(b"left by an earlier run")
    rc = _finetune(images, mse, gan, out, "--lr", "10")  # wrecks the model
    captured = capsys.readouterr()
    assert rc == NO_BETTER_MODEL == 3
    assert not (out / "generator.safetensors").exists()
    assert "no fine-tuned generator written: none of 4 validated checkpoint(s) qualifies" in captured.err
    log = pd.read_parquet(out / "train_log.parquet")
    assert len(log) == 20 and log["val_artifact_fraction"].notna().sum() == 4
    card = json.loads((out / "model_card.json").read_text())
    assert card["chosen"] is None and card["generator"] is None and len(card["checkpoints"]) == 4
    for c in card["checkpoints"]:  # each fails the rule: detail below 0.9 of the original's, or no fewer artifacts
        assert (c["validation_detail_ratio"] or 0) < 0.9 or \
            c["validation_artifact_fraction"] >= card["validation"]["artifact_fraction"]["original"]
    assert "none: no generator written" in (out / "report.html").read_text()


def test_validate_folder_and_holdout_errors(tmp_path, capsys, setup):
    images, mse, gan = setup
    one = tmp_path / "one"
    write_lr(one / "solo.png", 5, size=32)
    rc = _finetune(one, mse, gan, tmp_path / "a", "--lr", "1e-3")
    assert rc == 2 and "at least 2 images to hold one out" in capsys.readouterr().err
    rc = _finetune(images, mse, gan, tmp_path / "b", "--lr", "1e-2", "--min-detail-ratio", "0", "--validate", str(one),
                   "--iterations", "5")
    assert rc in (0, NO_BETTER_MODEL)
    card = json.loads((tmp_path / "b" / "model_card.json").read_text())
    assert [i["stem"] for i in card["validation_images"]] == ["solo"]
    assert [i["stem"] for i in card["train_images"]] == ["im0", "im1", "im2"]
    assert card["validation_split"] == {"mode": "folder", "folder": str(one)}
    assert np.isfinite(card["validation"]["artifact_fraction"]["original"])
