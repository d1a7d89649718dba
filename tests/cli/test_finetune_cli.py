"""`desra finetune` and `desra evaluate` end to end with tiny real-architecture models on CPU.

The MSE model is a tiny Compact whose residual branch is zeroed (its result is the nearest-neighbour
upscale: smooth, no invented texture); the GAN model is the same network with a random residual branch
(texture everywhere, which detection flags). Fine-tuning on the pseudo-GT can then really remove what
detection finds, or, with a wrecking learning rate, really destroy the model.
"""

from __future__ import annotations

import dataclasses
import html
import json

import numpy as np
import pandas as pd
import pytest
from prefect.utilities.callables import get_parameter_defaults
from spandrel import ModelLoader

from desra.cli import build_parser, main
from desra.finetuning import NO_BETTER_MODEL, finetune_options
from desra_core.finetune.options import DEFAULTS, FinetuneOptions
from desra_core.finetune.trainer import VALIDATION_COLUMNS, FinetuneConfig
from tests.flows.conftest import finetune_job, write_lr


@pytest.fixture
def setup(tmp_path):
    return finetune_job(tmp_path)


def _folder(out):
    """The run's folder, ``OUT/finetune/<gan>-<key>`` (the one folder there besides ``validation``)."""
    (folder,) = [p for p in (out / "finetune").iterdir() if p.name != "validation"]
    return folder


def _finetune(images, mse, gan, out, *extra):
    return main(["finetune", "--gan", str(gan), "--mse", str(mse), "--images", str(images), "--no-semantic",
                 "--out", str(out), "--iterations", "20", "--batch", "2", "--crop", "64", "--no-perceptual", "--no-gan",
                 "--ema", "0", "--threshold", "0.9", "--min-area", "10", "--device", "cpu", "--validate-every", "5",
                 *extra])


def test_finetune_ships_the_best_validated_checkpoint_then_evaluate(tmp_path, capsys, setup):
    images, mse, gan = setup
    out = tmp_path / "ft"
    rc = _finetune(images, mse, gan, out, "--lr", "1e-2", "--min-detail-ratio", "0", "--min-artifact-images", "1")
    captured = capsys.readouterr().out
    assert rc == 0, captured
    run = _folder(out)
    log = pd.read_parquet(run / "train_log.parquet")
    assert list(log["step"]) == list(range(1, 21))
    assert {"l1", "perceptual", "gan", "d_loss", "lr", "seconds", *VALIDATION_COLUMNS} <= set(log.columns)
    validated = log.dropna(subset=["val_artifact_fraction"])
    assert list(validated["step"]) == [5, 10, 15, 20]
    assert log["ema_val_artifact_fraction"].isna().all()  # EMA off

    card = json.loads((run / "model_card.json").read_text())
    original = card["validation"]["artifact_fraction"]["original"]
    best = validated.loc[validated["val_artifact_fraction"].idxmin()]
    assert best["val_artifact_fraction"] < original  # the fine-tuning really removed what detection finds
    assert card["chosen"]["step"] == int(best["step"]) and card["chosen"]["weights"] == "trained"
    assert card["validation"]["artifact_fraction"]["fine_tuned"] == pytest.approx(best["val_artifact_fraction"])
    assert card["base_model"]["file"] == str(gan) and len(card["base_model"]["sha256"]) == 64
    val_stem = card["validation_images"][0]["stem"]
    stems = [i["stem"] for i in card["train_images"]] + [i["stem"] for i in card["validation_images"]]
    assert sorted(stems) == ["im0", "im1", "im2"] and len(card["validation_images"]) == 1
    assert card["validation_split"]["mode"] == "held-out" and card["validation_split"]["seed"] == 0
    assert card["settings"]["training"]["lr"] == 1e-2 and card["settings"]["detection"]["threshold"] == 0.9
    objective = card["settings"]["objective"]  # the automatic weights as resolved for the run's device, and why
    assert {k: card["settings"]["training"]["weights"][k] for k in ("perceptual", "gan", "texture")} == \
        {k: objective[k] for k in ("perceptual", "gan", "texture")}
    assert (objective["perceptual"], objective["gan"]) == (0.0, 0.0) and objective["why"]
    assert "texture" in log.columns and (log["texture"] > 0).all() == (objective["texture"] > 0)
    assert set(card["train"]["per_image"]) == {i["stem"] for i in card["train_images"]}
    assert "fine_tuned" in next(iter(card["train"]["per_image"].values()))
    evidence = card["evidence"]  # what the validation could tell, and the noise it measured
    assert evidence["sufficient"] and evidence["validation_images"] == evidence["images_with_artifacts"] == 1
    assert evidence["artifact_pixels"] > 0 and evidence["mean_noise"] < original
    assert evidence["min_artifact_images"] == 1
    assert card["chosen"]["validation_worst_detail_image"] == val_stem == card["chosen"]["improved_images"][0]
    page = (run / "report.html").read_text()
    assert f"step {card['chosen']['step']} (trained weights)" in page and page.count('class="compare-range"') == 1
    assert "Worst detail (chosen)" in page and f"{val_stem} keeps " in page and "enough to judge" in page
    assert f"texture {objective['texture']:g}" in page and html.escape(objective["why"], quote=True) in page
    assert "chosen: step" in captured and "1 with artifacts" not in captured
    assert f"fine-tuned generator: {run / 'generator.safetensors'}" in captured

    tuned = ModelLoader().load_from_file(run / "generator.safetensors")
    assert tuned.architecture.name == "RealESRGAN Compact" and tuned.scale == 4

    ev = tmp_path / "ev"
    rc = main(["evaluate", "--mse", str(mse), "--gan", str(gan), "--gan", str(run / "generator.safetensors"),
               "--images", str(images), "--no-semantic", "--out", str(ev), "--threshold", "0.9", "--min-area", "10",
               "--device", "cpu"])
    assert rc == 0
    table = pd.read_parquet(ev / "evaluation.parquet")
    assert list(table.columns) == ["image", "model", "artifact_fraction", "detail_kept"]
    assert len(table) == 6 and set(table["model"]) == {str(gan), str(run / "generator.safetensors")}
    row = table[(table["image"] == val_stem) & (table["model"] == str(run / "generator.safetensors"))]
    # evaluate re-detects exactly what validation measured for the shipped weights
    assert row["artifact_fraction"].iloc[0] == pytest.approx(card["chosen"]["validation_artifact_fraction"])
    assert "mean per model" in capsys.readouterr().out


def test_no_qualifying_checkpoint_writes_no_generator(tmp_path, capsys, setup):
    images, mse, gan = setup
    out = tmp_path / "ft"
    rc = _finetune(images, mse, gan, out, "--lr", "10", "--min-artifact-images", "1")  # wrecks the model
    captured = capsys.readouterr()
    assert rc == NO_BETTER_MODEL == 3
    run = _folder(out)
    assert not (run / "generator.safetensors").exists()
    assert "no fine-tuned generator written: none of 4 validated checkpoint(s) qualifies" in captured.err
    log = pd.read_parquet(run / "train_log.parquet")
    assert len(log) == 20 and log["val_artifact_fraction"].notna().sum() == 4
    card = json.loads((run / "model_card.json").read_text())
    assert card["chosen"] is None and card["generator"] is None and len(card["checkpoints"]) == 4
    original = card["validation"]["artifact_fraction"]["original"]
    noise = card["evidence"]["mean_noise"]
    for c in card["checkpoints"]:  # each fails the rule: detail lost on the image, or no clear drop in artifacts
        assert (c["validation_worst_detail_ratio"] or 0) < 0.9 or not c["improved_images"] or \
            c["validation_artifact_fraction"] >= original - noise
    assert "none: no generator written" in (run / "report.html").read_text()

    # a generator left in the folder (say by an older desra) is removed when the same run, resumed, ships nothing
    (run / "generator.safetensors").write_bytes(b"left by an earlier run")
    assert _finetune(images, mse, gan, out, "--lr", "10", "--min-artifact-images", "1") == NO_BETTER_MODEL
    assert _folder(out) == run and not (run / "generator.safetensors").exists()
    assert len(pd.read_parquet(run / "train_log.parquet")) == 20  # resumed at the end: nothing trained again


def test_too_little_evidence_refuses_before_training(tmp_path, capsys, setup):
    """The defaults on three images hold one out: one validation image cannot show an improvement."""
    images, mse, gan = setup
    out = tmp_path / "ft"
    rc = _finetune(images, mse, gan, out, "--lr", "1e-2", "--min-detail-ratio", "0")
    err = capsys.readouterr().err
    assert rc == NO_BETTER_MODEL
    run = _folder(out)
    assert not (run / "generator.safetensors").exists() and not (run / "checkpoint.pt").exists()  # nothing trained
    assert len(pd.read_parquet(run / "train_log.parquet")) == 0
    card = json.loads((run / "model_card.json").read_text())
    sentence = card["evidence"]["missing"]
    assert sentence.startswith("1 validation image with ") and "cannot show an improvement" in sentence
    assert sentence.endswith("give --validate DIR (validate_dir in the flows) with at least 3 photos that have "
                             "artifacts")
    assert f"no fine-tuned generator written: {sentence}" in err and card["reason"] == sentence
    assert not card["evidence"]["sufficient"] and card["checkpoints"] == [] and card["chosen"] is None
    assert "not enough: 1 validation image with" in (run / "report.html").read_text()


def test_validate_folder_and_holdout_errors(tmp_path, capsys, setup):
    images, mse, gan = setup
    one = tmp_path / "one"
    write_lr(one / "solo.png", 5, size=32)
    rc = _finetune(one, mse, gan, tmp_path / "a", "--lr", "1e-3")
    assert rc == 2 and "at least 2 images to hold one out" in capsys.readouterr().err
    rc = _finetune(images, mse, gan, tmp_path / "b", "--lr", "1e-2", "--min-detail-ratio", "0", "--validate", str(one),
                   "--iterations", "5", "--min-artifact-images", "1")
    assert rc in (0, NO_BETTER_MODEL)
    card = json.loads((_folder(tmp_path / "b") / "model_card.json").read_text())
    assert [i["stem"] for i in card["validation_images"]] == ["solo"]
    assert [i["stem"] for i in card["train_images"]] == ["im0", "im1", "im2"]
    assert card["validation_split"] == {"mode": "folder", "folder": str(one)}
    assert np.isfinite(card["validation"]["artifact_fraction"]["original"])


def test_the_command_and_the_flow_take_the_same_options_with_one_set_of_defaults():
    from desra.flows.finetune import finetune

    defaults = get_parameter_defaults(finetune.fn)  # as Prefect reads them (a Field default carries the help)
    for option in dataclasses.fields(FinetuneOptions):  # seed, vgg_weights, discriminator… in the flow too
        assert option.name in defaults, option.name
        assert defaults[option.name] == getattr(DEFAULTS, option.name), option.name
    args = build_parser().parse_args(["finetune", "--gan", "g", "--mse", "m", "--images", "i", "--no-semantic",
                                      "--out", "o"])
    assert finetune_options(args) == DEFAULTS
    assert DEFAULTS.config() == FinetuneConfig()  # the trainer's defaults are the same ones
    args = build_parser().parse_args(["finetune", "--gan", "g", "--mse", "m", "--images", "i", "--no-semantic",
                                      "--out", "o", "--seed", "7", "--vgg-weights", "v.pth", "--discriminator",
                                      "d.pth", "--perceptual", "--adversarial", "--min-artifact-images", "5"])
    assert finetune_options(args) == DEFAULTS.replace(seed=7, vgg_weights="v.pth", discriminator="d.pth",
                                                      perceptual=1.0, gan=0.1, min_artifact_images=5)
