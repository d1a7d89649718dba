"""Bad model files given to the `desra` flow: refused with ModelLoadError before any image is touched,
and a checkpoint that would run code when unpickled never runs it."""

from __future__ import annotations

import pickle

import pytest
import torch

from desra.flows.full import desra
from desra.pipeline import models as pipeline_models
from tests.core.models.test_sr import tiny_rrdbnet
from tests.flows.conftest import write_lr


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creating the marker file proves the pickle ran


def _bad_model(kind: str, folder, good: str, marker) -> str:
    path = folder / f"{kind}.pth"
    if kind == "truncated":
        data = open(good, "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_sr":
        torch.save({"classifier.weight": torch.zeros(10, 3), "classifier.bias": torch.zeros(10)}, path)
    elif kind == "scale_x2":
        torch.save({"params_ema": tiny_rrdbnet(scale=2)}, path)
    elif kind == "runs_code_torch":
        torch.save({"params": _RunsCode(marker)}, path)
    elif kind == "runs_code_pickle":
        with open(path, "wb") as f:
            pickle.dump({"params": _RunsCode(marker)}, f)
    return str(path)


@pytest.mark.parametrize("role", ["mse", "gan"])
@pytest.mark.parametrize("kind", ["truncated", "not_sr", "scale_x2", "runs_code_torch", "runs_code_pickle"])
def test_a_bad_model_is_refused_before_any_image_is_touched(tmp_path, tiny_models, counted, kind, role):
    drop, out, marker = tmp_path / "drop", tmp_path / "out", tmp_path / "code-ran"
    write_lr(drop / "a.png", 0)
    models = dict(zip(("mse", "gan"), tiny_models, strict=True))
    models[role] = _bad_model(kind, tmp_path, models[role], marker)
    state = desra(input_dir=str(drop), output_dir=str(out), mse_model=models["mse"], gan_model=models["gan"],
                  segmenter=None, min_area=10, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("refused the models: ")
    if kind == "scale_x2":
        assert "same scale" in state.message and f"{kind}.pth" in state.message
    else:
        assert f"{kind}.pth" in state.message
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert counted["upscale"] == 0 and not out.exists()


def test_check_models_raises_model_load_error_for_a_bad_file(tmp_path, tiny_models):
    from desra_core import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"truncated\.pth"):
        truncated = _bad_model("truncated", tmp_path, tiny_models[0], None)
        pipeline_models.check_models({"mse": pipeline_models.model_digest(truncated),
                                     "gan": pipeline_models.model_digest(tiny_models[1])})
