"""The commands go through the one admission (:mod:`desra.pipeline.admission`): under ``DESRA_ALLOWED_ROOTS`` a
path outside the roots is refused with the sentence that names it (exit code 2) before anything is loaded or
created, as a flow run is; unconfined, the command runs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import desra_core.models.sr
from desra.cli import main
from tests.conftest import file_tree
from tests.core.models.test_sr import tiny_rrdbnet


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """``allowed/`` (a model, an input folder, SR result folders) is the one root; ``outside/`` holds copies."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for root in (allowed, outside):
        for sub in ("in", "mse", "gan"):
            (root / sub).mkdir(parents=True)
            cv2.imwrite(str(root / sub / "a.png"), np.random.default_rng(0).integers(0, 256, (24, 24, 3), np.uint8))
        torch.save({"params_ema": tiny_rrdbnet()}, root / "m.pth")
    monkeypatch.setenv("DESRA_ALLOWED_ROOTS", str(allowed))
    return allowed, outside


def _refused(tmp_path, capsys, argv: list[str], parameter: str, path: Path, allowed: Path) -> None:
    before = file_tree(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: expected {parameter} inside the allowed roots, DESRA_ALLOWED_ROOTS ({allowed}), got {path}" in err
    assert file_tree(tmp_path) == before  # nothing created, not even the output folder


@pytest.mark.parametrize("case", ["model", "in_dir", "out_dir"])
def test_upscale_is_confined(tmp_path, capsys, monkeypatch, folders, case):
    allowed, outside = folders
    loads = []
    monkeypatch.setattr(desra_core.models.sr, "load_sr_model", lambda *a, **k: loads.append(a))
    paths = {"model": allowed / "m.pth", "in_dir": allowed / "in", "out_dir": allowed / "out"}
    paths[case] = outside / paths[case].name
    _refused(tmp_path, capsys, ["upscale", "--model", str(paths["model"]), str(paths["in_dir"]), str(paths["out_dir"]),
                                "--device", "cpu"], {"in_dir": "input_dir", "out_dir": "output_dir"}.get(case, case),
             paths[case], allowed)
    assert loads == []


@pytest.mark.parametrize("case", ["mse", "gan", "out"])
def test_detect_is_confined(tmp_path, capsys, folders, case):
    allowed, outside = folders
    paths = {"mse": allowed / "mse", "gan": allowed / "gan", "out": allowed / "out"}
    paths[case] = outside / case
    _refused(tmp_path, capsys, ["detect", "--mse", str(paths["mse"]), "--gan", str(paths["gan"]), "--no-semantic",
                                "--out", str(paths["out"]), "--device", "cpu"],
             {"mse": "mse_dir", "gan": "gan_dir", "out": "output_dir"}[case], paths[case], allowed)


def test_inside_the_roots_the_commands_run(tmp_path, capsys, folders):
    allowed, _ = folders
    assert main(["upscale", "--model", str(allowed / "m.pth"), str(allowed / "in"), str(allowed / "out"), "--tile",
                 "16", "--overlap", "4", "--device", "cpu"]) == 0
    assert (allowed / "out" / "a.png").is_file()
    assert main(["detect", "--mse", str(allowed / "mse"), "--gan", str(allowed / "gan"), "--no-semantic", "--out",
                 str(allowed / "detected"), "--min-area", "10", "--device", "cpu"]) == 0
    assert (allowed / "detected" / "masks" / "a.png").is_file()


def test_an_output_folder_inside_the_input_folder_is_refused(tmp_path, capsys, folders, monkeypatch):
    allowed, _ = folders
    monkeypatch.delenv("DESRA_ALLOWED_ROOTS")
    assert main(["upscale", "--model", str(allowed / "m.pth"), str(allowed / "in"), str(allowed / "in" / "out"),
                 "--device", "cpu"]) == 2
    assert "error: expected output_dir apart from input_dir, neither inside the other" in capsys.readouterr().err
    assert not (allowed / "in" / "out").exists()


@pytest.mark.parametrize("case", ["out inside gan", "gan inside out", "out is mse"])
def test_detect_refuses_an_output_folder_overlapping_the_sr_folders_it_reads(tmp_path, capsys, folders, monkeypatch,
                                                                             case):
    allowed, _ = folders
    monkeypatch.delenv("DESRA_ALLOWED_ROOTS")
    mse, gan, out = allowed / "mse", allowed / "gan", allowed / "detected"
    name, relation = {"out inside gan": ("gan_dir", "lies inside"), "gan inside out": ("gan_dir", "contains"),
                      "out is mse": ("mse_dir", "is the same folder as")}[case]
    if case == "out inside gan":
        out = gan / "detected"
    elif case == "gan inside out":
        gan = out / "gan"
        gan.mkdir(parents=True)
        cv2.imwrite(str(gan / "a.png"), np.zeros((24, 24, 3), np.uint8))
    else:
        out = mse
    before = file_tree(tmp_path)
    assert main(["detect", "--mse", str(mse), "--gan", str(gan), "--no-semantic", "--out", str(out), "--min-area",
                 "10", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"error: expected output_dir apart from {name}, neither inside the other" in err and relation in err
    assert file_tree(tmp_path) == before  # nothing written into the folders it reads, not even the store
