"""The issue's case on real weights, on the CPU and small: ``desra finetune`` on four photos with the default
``--holdout 0.25`` keeps one photo for validation (camera_0: about 0.5 % artifacts under realesr-general-x4v3
against SPAN, threshold 0.8, min area 500, the README table's detection settings). One photo with so few
artifacts cannot show an improvement: the command refuses with the sentence that says what is missing, exit
code 3, and writes no generator; nothing is trained. Skipped without ``../shared`` (fails under ``CI=true``).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from desra.cli import main
from desra.finetuning import NO_BETTER_MODEL
from tests.conftest import MODELS, PARITY, unavailable

pytestmark = [pytest.mark.real_models]

GAN, MSE = MODELS / "realesr_general_x4v3.gan.safetensors", MODELS / "span_x4_ch52.mse.safetensors"
PHOTOS = ("astronaut_1", "brick_0", "camera_0", "coffee_1")  # sorted; split seed 0 holds out the third


def test_one_held_out_photo_with_few_artifacts_refuses_to_ship(tmp_path, capsys):
    if not (GAN.exists() and MSE.exists() and all((PARITY / c / "lr.png").exists() for c in PHOTOS)):
        unavailable(f"real weights or parity photos not found under {MODELS.parent}")
    images, labels, out = tmp_path / "photos", tmp_path / "labels", tmp_path / "out"
    images.mkdir()
    labels.mkdir()
    for c in PHOTOS:
        shutil.copyfile(PARITY / c / "lr.png", images / f"{c}.png")
        shutil.copyfile(PARITY / c / "labels.png", labels / f"{c}.png")
    # the defaults but detection (so the photo has a few artifacts) and a tiny training budget (never used)
    rc = main(["finetune", "--gan", str(GAN), "--mse", str(MSE), "--images", str(images), "--labels", str(labels),
               "--out", str(out), "--threshold", "0.8", "--min-area", "500", "--device", "cpu",
               "--iterations", "2", "--crop", "32", "--batch", "1", "--validate-every", "1"])
    err = capsys.readouterr().err
    assert rc == NO_BETTER_MODEL, err
    match = re.search(r"no fine-tuned generator written: (1 validation image with (0\.\d\d) % artifacts "
                      r"\((\d+) pixels, 1 with artifacts, [01] above the noise of validating the original model "
                      r"again\) cannot show an improvement: shipping needs at least 3 validation images whose "
                      r"artifacts exceed that noise; give --validate DIR \(validate_dir in the flows\) with at least "
                      r"3 photos that have artifacts)", err)
    assert match, err
    (folder,) = [p for p in (out / "finetune").iterdir() if p.name != "validation"]
    assert not (folder / "generator.safetensors").exists() and not (folder / "checkpoint.pt").exists()
    card = json.loads((folder / "model_card.json").read_text())
    assert [i["stem"] for i in card["validation_images"]] == ["camera_0"]
    evidence = card["evidence"]
    assert evidence["missing"] == match.group(1) and not evidence["sufficient"]
    assert evidence["validation_images"] == evidence["images_with_artifacts"] == 1
    fraction = evidence["per_image"]["camera_0"]["artifact_fraction"]
    assert 0 < fraction < 0.01, "camera_0 should have a few artifacts: the case would be another one"
    assert match.group(2) == f"{100 * fraction:.2f}" and int(match.group(3)) == evidence["artifact_pixels"]
    assert card["chosen"] is None and card["generator"] is None and card["checkpoints"] == []
