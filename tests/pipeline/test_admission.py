"""The one admission (:mod:`desra.pipeline.admission`), without Prefect: each refusal is one sentence naming
what is wrong, comes before anything is created, and an admitted run carries its device resolved."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import desra.pipeline.admission as admission
from desra.pipeline.admission import admit, admit_finetuning
from desra.pipeline.settings import Settings
from desra_core import ConfigError, InputImageError, ModelLoadError
from tests.conftest import REPO, file_tree
from tests.core.models.test_sr import save_tiny_pair
from tests.flows.conftest import write_lr


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    return save_tiny_pair(tmp_path_factory.mktemp("models"))


@pytest.fixture
def drop(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("DESRA_ALLOWED_ROOTS", raising=False)
    write_lr(tmp_path / "drop" / "a.png", 0)
    return tmp_path / "drop"


def _options(models, **overrides) -> dict:
    return {"mse_model": models[0], "gan_model": models[1], "segmenter": None, "min_area": 10, **overrides}


def _refused(tmp_path, error: type, drop, out, options, **kwargs) -> str:
    """Admission refuses with ``error``, one sentence, and has created nothing under ``tmp_path``."""
    before = file_tree(tmp_path)
    with pytest.raises(error) as raised:
        admit(str(drop), str(out), options, **kwargs)
    sentence = str(raised.value)
    assert "\n" not in sentence and sentence.startswith("expected "), sentence
    assert file_tree(tmp_path) == before
    return sentence


def test_the_admission_imports_no_prefect():
    code = "import sys, desra.pipeline.admission; print(sorted(m for m in sys.modules if m.startswith('prefect')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_an_admitted_run_has_its_device_resolved_and_its_leftovers_swept(tmp_path, drop, models):
    out = tmp_path / "out"
    leftover = out / "masks" / ".a.png.0123abcd.tmp.png"  # what a killed writer leaves (leftovers.TEMP_NAME)
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    admitted = admit(str(drop), str(out), _options(models, threshold=0.8))
    here = "cuda" if torch.cuda.is_available() else "cpu"  # what auto means on this machine
    assert admitted.settings == Settings.from_options(**_options(models, threshold=0.8, device=here))
    assert admitted.device == here
    assert admitted.swept == 1 and not leftover.exists()
    assert set(admitted.models) == {"mse", "gan"} and admitted.models["gan"]["scale"] == 4


def test_admitted_settings_are_taken_whole(tmp_path, drop, models):
    settings = Settings.from_options(**_options(models, feather=2.0, device="cpu"))
    assert admit(str(drop), str(tmp_path / "out"), settings).settings == settings


def test_a_path_outside_the_allowed_roots_is_refused(tmp_path, drop, models, monkeypatch):
    monkeypatch.setenv("DESRA_ALLOWED_ROOTS", f"{drop}:{Path(models[0]).parent}")
    sentence = _refused(tmp_path, ConfigError, drop, tmp_path / "out", _options(models))
    assert sentence == (f"expected output_dir inside the allowed roots, DESRA_ALLOWED_ROOTS ({drop}, "
                        f"{Path(models[0]).parent}), got {tmp_path / 'out'}")
    extra = tmp_path / "elsewhere"  # a path that a command adds is confined too
    sentence = _refused(tmp_path, ConfigError, drop, drop / "out", _options(models), more_paths={"gan_dir": str(extra)})
    assert sentence.startswith("expected gan_dir inside the allowed roots") and str(extra) in sentence


def test_the_roots_of_a_deployment_apply_when_the_variable_is_unset(tmp_path, drop, models):
    from desra.pipeline.roots import Roots

    roots = Roots([drop, Path(models[0]).parent], "the folders that deployment desra/full was registered with")
    sentence = _refused(tmp_path, ConfigError, drop, tmp_path / "out", _options(models),
                        deployment_roots=lambda: roots)
    assert sentence.startswith("expected output_dir inside the allowed roots, the folders that deployment "
                               "desra/full was registered with")


def test_an_output_root_that_cannot_be_created_names_it_and_the_reason(tmp_path, drop, models):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    sentence = _refused(tmp_path, ConfigError, drop, out, _options(models))
    assert sentence == f"expected an output root that can be created, got Not a directory for {out}"


def test_an_output_root_that_cannot_be_written_names_it_and_the_reason(tmp_path, drop, models, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(admission.tempfile, "mkstemp", denied)  # as a read-only folder or file system answers
    with pytest.raises(ConfigError) as raised:
        admit(str(drop), str(out), _options(models))
    assert str(raised.value) == f"expected an output root that can be written, got Permission denied for {out}"


@pytest.mark.parametrize("device, expected", [
    ("bogus", "expected device auto, cpu, cuda or cuda:N, got 'bogus'"),
    ("cuda:99", "expected a device this worker has, got 'cuda:99', but "),
])
def test_a_bad_device_is_named_before_any_model_loads(tmp_path, drop, models, monkeypatch, device, expected):
    monkeypatch.setattr(admission, "check_models", lambda m: pytest.fail(f"loaded models for device {device}"))
    sentence = _refused(tmp_path, ConfigError, drop, tmp_path / "out", _options(models, device=device))
    assert sentence.startswith(expected) and "model" not in sentence


def test_a_bad_model_is_named_before_the_output_root_is_created(tmp_path, drop, models):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(models[1]).read_bytes()[:100])
    sentence = _refused(tmp_path, ModelLoadError, drop, tmp_path / "out", _options(models, gan_model=str(truncated)))
    assert str(truncated) in sentence


def test_a_missing_drop_is_one_sentence(tmp_path, drop, models):
    with pytest.raises(InputImageError, match="expected an existing folder of images"):
        admit(str(tmp_path / "no-such-drop"), str(tmp_path / "out"), _options(models))


def test_bad_options_are_refused_before_anything_else(tmp_path, drop, models):
    sentence = _refused(tmp_path, ConfigError, drop, tmp_path / "out", _options(models, tile=4, device="bogus"))
    assert "tile" in sentence


def test_fine_tuning_admits_only_what_it_adds(tmp_path, drop, models, monkeypatch):
    out = tmp_path / "out"
    admit(str(drop), str(out), _options(models))
    options = admit_finetuning(str(out), {"iterations": 3, "validate_dir": ""})
    assert options.iterations == 3 and options.validate_dir is None
    with pytest.raises(ConfigError, match=r"^expected options among iterations, .*, got an unknown option threshold$"):
        admit_finetuning(str(out), {"threshold": 0.5})
    with pytest.raises(ConfigError, match=r"^expected iterations at least 1, got 0$"):
        admit_finetuning(str(out), {"iterations": 0})
    outside = tmp_path / "outside"
    write_lr(outside / "v.png", 1)
    monkeypatch.setenv("DESRA_ALLOWED_ROOTS", f"{drop}:{out}:{Path(models[0]).parent}")
    with pytest.raises(ConfigError) as raised:
        admit_finetuning(str(out), {"validate_dir": str(outside)})
    assert str(raised.value).startswith(f"expected validate_dir inside the allowed roots, DESRA_ALLOWED_ROOTS ({drop}")
    monkeypatch.delenv("DESRA_ALLOWED_ROOTS")
    with pytest.raises(ConfigError, match="expected output_dir apart from validate_dir"):
        admit_finetuning(str(out), {"validate_dir": str(out / "masks")})


def test_models_need_admitted_settings(models):
    from desra.pipeline.models import Models

    with pytest.raises(ConfigError, match="expected settings with the device resolved"):
        Models(Settings.from_options(**_options(models)))
    assert Models(Settings.from_options(**_options(models, device="cpu"))).device == "cpu"


def test_the_device_is_resolved_in_one_place():
    """``auto`` is turned into a device by check_device alone, and only the admission calls it."""
    sources = {str(p.relative_to(REPO)): p.read_text() for folder in ("desra", "flows", "tasks", "pipeline")
               for p in (REPO / folder).rglob("*.py")}  # rglob does not follow the links desra/flows…
    calls = sorted(name for name, text in sources.items() if "check_device(" in text)
    assert calls == ["pipeline/admission.py", "pipeline/models.py"], calls  # the call and the definition
    resolving = sorted(name for name, text in sources.items()
                       if "resolve_device" in text or "cuda.is_available" in text)
    assert resolving == ["pipeline/models.py"], resolving
