"""A device the machine does not have is named as the problem, before any model loads."""

from __future__ import annotations

import pytest
import torch

import desra_core.models.sr
from desra.cli import main
from tests.core.models.test_sr import tiny_rrdbnet


@pytest.mark.parametrize("device", ["bogus", "meta"])
def test_upscale_with_an_unknown_device_names_the_device_not_the_weights(tmp_path, capsys, monkeypatch, device):
    model = tmp_path / "m.pth"
    torch.save({"params_ema": tiny_rrdbnet()}, model)
    (tmp_path / "in").mkdir()
    loads = []
    monkeypatch.setattr(desra_core.models.sr, "load_sr_model", lambda *a, **k: loads.append(a))
    rc = main(["upscale", "--model", str(model), str(tmp_path / "in"), str(tmp_path / "out"), "--device", device])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"expected device auto, cpu, cuda or cuda:N, got {device!r}" in err
    assert "weights" not in err and "m.pth" not in err
    assert loads == []  # refused before the model was loaded
