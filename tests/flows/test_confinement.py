"""The ``desra``, ``desra-batch`` and ``finetune`` flows under ``DESRA_ALLOWED_ROOTS``, and the refusals
that every run makes before it touches an image (issue 10, items 3 and 5).

A refused run must end ``Failed`` with one sentence, log it at WARNING without a traceback, read
nothing (no file under the forbidden folder is opened or listed: an audit hook watches ``open`` and
``os.scandir``/``os.listdir``) and create nothing (the whole temporary tree is compared before and after).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from desra.flows.batch import desra_batch
from desra.flows.finetune import finetune
from desra.flows.full import desra
from tests.conftest import file_tree, unavailable
from tests.core.models.test_segmentation import ADE, CITYSCAPES, _save_tiny
from tests.flows.conftest import write_lr

# -- watching what a run reads, logs and creates ----------------------------------------------------------

_WATCHED: list[str] = []  # folders whose files must not be opened or listed; empty: the hook is idle
_TOUCHED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if not _WATCHED or event not in ("open", "os.scandir", "os.listdir"):
        return
    path = args[0] if args else None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, str | os.PathLike):
        resolved = os.path.realpath(os.fspath(path))
        if any(resolved == w or resolved.startswith(w + os.sep) for w in _WATCHED):
            _TOUCHED.append(f"{event} {path}")


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one does nothing while _WATCHED is empty




class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def prefect_logs():
    handler = _Records()
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def assert_refused_quietly(state, records, *expected: str, prefix: str = "refused: ") -> str:
    """The run ended Failed with one sentence containing ``expected``; a WARNING said it; no traceback."""
    assert state.is_failed(), (state.name, state.message)
    message = state.message
    assert message.startswith(prefix), message
    sentence = message[len(prefix):]
    assert "\n" not in message and "Traceback" not in message, message
    for text in expected:
        assert text in message, (text, message)
    warnings = [r for r in records if r.levelno == logging.WARNING and sentence in r.getMessage()]
    assert warnings, [r.getMessage() for r in records]
    with_traceback = [r.getMessage() for r in records if r.exc_info or "Traceback" in r.getMessage()]
    assert not with_traceback, with_traceback
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert not errors, errors
    return sentence


# -- DESRA_ALLOWED_ROOTS -----------------------------------------------------------------------------------

@pytest.fixture
def confined(tmp_path, tiny_models, monkeypatch):
    """``allowed/`` (with a drop of two images) and the models' folder are allowed; ``outside/`` holds a
    drop, label maps, a model copy and a segmenter folder that no run may read."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for i in range(2):
        write_lr(allowed / "drop" / f"in{i}.png", i)
        write_lr(outside / "drop" / f"secret{i}.png", 10 + i)
    (outside / "labels").mkdir()
    for i in range(2):
        shutil.copy(outside / "drop" / f"secret{i}.png", outside / "labels" / f"in{i}.png")
    shutil.copy(tiny_models[0], outside / "mse.pth")
    (outside / "segformer").mkdir()
    (outside / "segformer" / "config.json").write_text("{}")
    monkeypatch.setenv("DESRA_ALLOWED_ROOTS", f"{allowed}:{Path(tiny_models[0]).parent}")
    return allowed, outside


def _params(allowed: Path, tiny_models, **overrides) -> dict:
    params = dict(input_dir=str(allowed / "drop"), output_dir=str(allowed / "out"), mse_model=tiny_models[0],
                  gan_model=tiny_models[1], segmenter=None, min_area=10)
    params.update(overrides)
    return params


def _outside_cases(allowed: Path, outside: Path) -> dict[str, dict]:
    (allowed / "link").symlink_to(outside / "drop")
    return {
        "input_dir": {"input_dir": str(outside / "drop")},
        "output_dir": {"output_dir": str(outside / "out")},
        "labels_dir": {"labels_dir": str(outside / "labels")},
        "mse_model": {"mse_model": str(outside / "mse.pth")},
        "segmenter": {"segmenter": str(outside / "segformer")},
        "input_dir via a symlink": {"input_dir": str(allowed / "link")},
        "output_dir via ..": {"output_dir": f"{allowed}/drop/../../outside/out"},
        "output_dir sharing a prefix": {"output_dir": f"{allowed}2/out"},
    }


CASES = ["input_dir", "output_dir", "labels_dir", "mse_model", "segmenter", "input_dir via a symlink",
         "output_dir via ..", "output_dir sharing a prefix"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("flow", ["desra", "desra-batch", "finetune"])
def test_a_path_outside_the_roots_is_refused_before_anything_is_read_or_created(
        tmp_path, tiny_models, confined, counted, prefect_logs, case, flow):
    allowed, outside = confined
    override = _outside_cases(allowed, outside)[case]
    parameter = next(iter(override))
    params = _params(allowed, tiny_models, **override)
    if flow == "finetune":
        params.update(iterations=1, batch=1, crop=16)
    run = {"desra": desra, "desra-batch": desra_batch, "finetune": finetune}[flow]
    before = file_tree(tmp_path)
    _WATCHED[:] = [os.path.realpath(outside), os.path.realpath(f"{allowed}2")]
    try:
        state = run(**params, return_state=True)
    finally:
        _WATCHED.clear()
    assert_refused_quietly(state, prefect_logs, f"expected {parameter} inside the allowed roots, "
                           f"DESRA_ALLOWED_ROOTS ({allowed}, {Path(tiny_models[0]).parent}), got ")
    assert not _TOUCHED, _TOUCHED  # nothing under the forbidden folders was opened or listed
    _TOUCHED.clear()
    assert counted["upscale"] == 0 and counted["detect"] == 0
    assert file_tree(tmp_path) == before  # nothing created anywhere: not even the output root


def test_a_run_inside_the_roots_completes(tmp_path, tiny_models, confined):
    allowed, _ = confined
    (allowed / "models").mkdir()
    mse = shutil.copy(tiny_models[0], allowed / "models" / "mse.pth")  # a model file given as a path inside
    state = desra(**_params(allowed, tiny_models, mse_model=str(mse)), return_state=True)
    assert state.is_completed(), state.message
    assert sorted(p.name for p in (allowed / "out" / "masks").iterdir()) == ["in0.png", "in1.png"]


def test_without_the_variable_desra_run_is_not_confined(tmp_path, tiny_models, monkeypatch):
    monkeypatch.delenv("DESRA_ALLOWED_ROOTS", raising=False)
    write_lr(tmp_path / "anywhere" / "a.png", 0)
    state = desra(**_params(tmp_path, tiny_models, input_dir=str(tmp_path / "anywhere"),
                            output_dir=str(tmp_path / "elsewhere")), return_state=True)
    assert state.is_completed(), state.message


# -- item 5: fail fast, fail clearly -----------------------------------------------------------------------

@pytest.fixture
def drop(tmp_path, monkeypatch):
    monkeypatch.delenv("DESRA_ALLOWED_ROOTS", raising=False)
    write_lr(tmp_path / "drop" / "a.png", 0)
    return tmp_path / "drop"


def _run(drop: Path, out: Path, tiny_models, **overrides):
    return desra(**{**_params(drop.parent, tiny_models, output_dir=str(out)), **overrides}, return_state=True)


@pytest.mark.parametrize("output_dir, expected", [
    ("/proc/desra-cannot-be-here", "expected an output root that can be created, got No such file or directory "
                                   "for /proc/desra-cannot-be-here"),
    ("FILE", "expected output_dir to be a folder, got a file that is not one"),
])
def test_an_output_root_that_cannot_be_created_is_one_sentence(tmp_path, drop, tiny_models, counted, prefect_logs,
                                                               output_dir, expected):
    if output_dir == "FILE":
        output_dir = str(tmp_path / "a-file")
        Path(output_dir).write_text("not a folder")
    state = _run(drop, Path(output_dir), tiny_models)
    assert_refused_quietly(state, prefect_logs, expected)
    assert counted["upscale"] == 0


def test_an_output_root_that_cannot_be_written_is_one_sentence(tmp_path, drop, tiny_models, prefect_logs):
    out = tmp_path / "read-only"
    out.mkdir()
    if os.geteuid() != 0:  # a folder without write permission
        out.chmod(0o555)
        reason = "Permission denied"
    else:  # root writes into any folder: a read-only file system stops it
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "desra-ro", str(out)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            unavailable(f"cannot mount a read-only tmpfs as root: {done.stderr.strip()}")
        reason = "Read-only file system"
    try:
        state = _run(drop, out, tiny_models)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(out)], check=True, timeout=30)
        else:
            out.chmod(0o755)
    assert_refused_quietly(state, prefect_logs, f"expected an output root that can be written, got {reason} "
                                                f"for {out}")


@pytest.mark.parametrize("device, expected", [
    ("bogus", "expected device auto, cpu, cuda or cuda:N, got 'bogus'"),
    ("cuda:99", "expected a device this worker has, got 'cuda:99', but "),
    ("meta", "expected device auto, cpu, cuda or cuda:N, got 'meta'"),
])
def test_an_unknown_device_is_one_sentence_not_a_model_problem(tmp_path, drop, tiny_models, counted, prefect_logs,
                                                               device, expected):
    out = tmp_path / "out"
    state = _run(drop, out, tiny_models, device=device)
    assert_refused_quietly(state, prefect_logs, expected)
    assert "model" not in state.message
    assert counted["upscale"] == 0 and not out.exists()


@pytest.mark.parametrize("kind", ["character device", "FIFO", "directory"])
@pytest.mark.parametrize("role", ["mse_model", "gan_model"])
def test_a_model_path_that_is_not_a_regular_file_is_named_for_what_it_is(tmp_path, drop, tiny_models, counted,
                                                                         prefect_logs, kind, role):
    path = {"character device": "/dev/zero", "FIFO": str(tmp_path / "fifo.pth"),
            "directory": str(tmp_path / "folder.pth")}[kind]
    if kind == "FIFO":
        os.mkfifo(path)  # opening it would block for ever
    elif kind == "directory":
        os.mkdir(path)
    out = tmp_path / "out"
    state = _run(drop, out, tiny_models, **{role: path})
    words = {"character device": "a character device", "FIFO": "a FIFO (named pipe)", "directory": "a directory"}
    assert_refused_quietly(state, prefect_logs, f"expected a regular model file, got {words[kind]} (file: {path})",
                           prefix="refused the models: ")
    assert counted["upscale"] == 0 and not out.exists()


def test_a_missing_input_folder_is_one_sentence(tmp_path, drop, tiny_models, prefect_logs):
    state = _run(drop, tmp_path / "out", tiny_models, input_dir=str(tmp_path / "no-such-drop"))
    assert_refused_quietly(state, prefect_logs, "expected an existing folder of images, got a path that does not exist")


def test_the_segmenter_is_checked_with_the_models_before_any_image(tmp_path, drop, tiny_models, counted,
                                                                   prefect_logs, monkeypatch):
    wrong = _save_tiny(tmp_path / "cityscapes", CITYSCAPES)  # a SegFormer with another label set
    out = tmp_path / "out"
    state = _run(drop, out, tiny_models, segmenter=str(wrong))
    assert_refused_quietly(state, prefect_logs, str(wrong), "ADE20K", prefix="refused the models: ")
    assert counted["upscale"] == 0 and not out.exists()

    monkeypatch.setenv("DESRA_OFFLINE", "1")  # a hub id that is not in the local cache, offline
    state = _run(drop, out, tiny_models, segmenter="desra-tests/no-such-segformer")
    assert_refused_quietly(state, prefect_logs, "desra-tests/no-such-segformer", prefix="refused the models: ")
    assert counted["upscale"] == 0 and not out.exists()


def test_a_good_segmenter_is_checked_once_then_remembered(tmp_path, drop, tiny_models, monkeypatch):
    import desra.pipeline.admission

    folder = _save_tiny(tmp_path / "ade", ADE)
    loads = []
    real = desra.pipeline.admission._segmenter

    def counting(spec, device):
        loads.append(spec)
        return real(spec, device)

    monkeypatch.setattr(desra.pipeline.admission, "_segmenter", counting)
    out = tmp_path / "out"
    for _ in range(2):
        state = _run(drop, out, tiny_models, segmenter=str(folder))
        assert state.is_completed(), state.message
    assert loads == [str(folder)]  # the second run found the verdict in the store
    (run,) = [pd.read_parquet(p) for p in sorted((out / "runs").glob("*.parquet"))[:1]]
    assert run["segmenter"].tolist() == [str(folder)]


@pytest.mark.parametrize("empty", ["", None])
def test_an_empty_segmenter_means_no_semantic_adjustment(tmp_path, drop, tiny_models, monkeypatch, empty):
    import desra.pipeline.admission

    monkeypatch.setattr(desra.pipeline.admission, "_segmenter", lambda *a: pytest.fail(f"loaded a segmenter: {a}"))
    out = tmp_path / "out"
    state = _run(drop, out, tiny_models, segmenter=empty)
    assert state.is_completed(), state.message
    (report,) = [pd.read_parquet(p) for p in (out / "runs").glob("*.parquet")]
    assert report["segmenter"].isna().all() and not (out / "labels").exists()


def test_desra_run_exits_non_zero_with_the_sentence_and_no_traceback(tmp_path, drop, tiny_models, capsys):
    from desra.cli import main

    code = main(["run", str(drop), "--out", "/proc/desra-cannot-be-here", "--mse-model", tiny_models[0],
                 "--gan-model", tiny_models[1], "--no-semantic"])
    out, err = capsys.readouterr()
    assert code == 1
    assert ("desra run: Failed: refused: expected an output root that can be created, got No such file or "
            "directory for /proc/desra-cannot-be-here") in out
    assert "Traceback" not in out + err
    code = main(["run", str(drop), "--out", str(tmp_path / "out"), "--mse-model", "/dev/zero",
                 "--gan-model", tiny_models[1], "--no-semantic", "--device", "bogus"])
    out, err = capsys.readouterr()
    assert code == 1 and "refused: expected device auto, cpu, cuda or cuda:N, got 'bogus'" in out
    assert "Traceback" not in out + err and not (tmp_path / "out").exists()


def test_under_the_worker_entry_point_a_refusal_logs_no_traceback(tmp_path, drop, tiny_models, prefect_logs):
    """Workers run flows through ``run_flow(…, error_logger=…)``, which re-raises a returned Failed state and
    logs it as an unexpected exception: desra drops that traceback (and only that one)."""
    from prefect.exceptions import FailedRun
    from prefect.flow_engine import run_flow
    from prefect.logging.loggers import get_logger

    params = {**_params(drop.parent, tiny_models, output_dir="/proc/desra-cannot-be-here")}
    with pytest.raises(FailedRun, match="refused: expected an output root that can be created"):
        run_flow(desra, parameters=params, error_logger=get_logger("prefect.flow_runs"))
    assert [r for r in prefect_logs if r.levelno == logging.WARNING and "refused: " in r.getMessage()]
    assert not [r.getMessage() for r in prefect_logs if r.exc_info or r.levelno >= logging.ERROR]

    from desra.tasks.preflight import ReturnedFailedState

    def record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1,
                                 "Engine execution exited with unexpected exception", None,
                                 (type(error), error, None))

    assert not ReturnedFailedState().filter(record(FailedRun("refused: …")))
    assert ReturnedFailedState().filter(record(ZeroDivisionError("a bug")))  # a bug keeps its traceback


# -- issue 16: the output root apart from the folders a run reads ------------------------------------------

def _overlap_cases(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """Case → (parameter overrides, the words of the refusal)."""
    drop = tmp_path / "drop"
    (tmp_path / "drop-link").symlink_to(drop)
    return {
        "output_dir inside input_dir": ({"output_dir": str(drop / "out")},
                                        f"lies inside input_dir {drop}"),
        "output_dir inside input_dir via a symlink": ({"output_dir": str(tmp_path / "drop-link" / "out")},
                                                      f"(resolves to {drop / 'out'}), which lies inside input_dir"),
        "input_dir inside output_dir": ({"output_dir": str(tmp_path)}, f"which contains input_dir {drop}"),
        "the same folder": ({"output_dir": f"{drop}/../drop"}, "which is the same folder as input_dir"),
        "labels_dir inside output_dir": ({"output_dir": str(tmp_path / "out"),
                                          "labels_dir": str(tmp_path / "out" / "labels")},
                                         f"which contains labels_dir {tmp_path / 'out' / 'labels'}"),
    }


@pytest.mark.parametrize("case", ["output_dir inside input_dir", "output_dir inside input_dir via a symlink",
                                  "input_dir inside output_dir", "the same folder", "labels_dir inside output_dir"])
@pytest.mark.parametrize("flow", ["desra", "desra-batch", "finetune"])
def test_an_output_root_overlapping_an_input_folder_is_refused_before_anything_is_created(
        tmp_path, drop, tiny_models, counted, prefect_logs, case, flow):
    override, words = _overlap_cases(tmp_path)[case]
    (tmp_path / "out" / "labels").mkdir(parents=True)
    params = {**_params(tmp_path, tiny_models), **override}
    if flow == "finetune":
        params.update(iterations=1, batch=1, crop=16)
    run = {"desra": desra, "desra-batch": desra_batch, "finetune": finetune}[flow]
    before = file_tree(tmp_path)
    state = run(**params, return_state=True)
    name = "labels_dir" if "labels_dir" in override else "input_dir"
    assert_refused_quietly(state, prefect_logs, f"expected output_dir apart from {name}, neither inside the other, "
                           "got output_dir ", words, "; choose an output root outside the folders that a run reads")
    assert counted["upscale"] == 0 and counted["detect"] == 0
    assert file_tree(tmp_path) == before  # not even the output root or its store


def test_folders_that_only_share_a_name_prefix_do_not_overlap(tmp_path, drop, tiny_models):
    state = desra(**_params(tmp_path, tiny_models, output_dir=f"{drop}2"), return_state=True)  # …/drop2
    assert state.is_completed(), state.message


def test_desra_run_refuses_an_output_root_inside_the_drop(tmp_path, drop, tiny_models, capsys):
    from desra.cli import main

    code = main(["run", str(drop), "--out", str(drop / "out"), "--mse-model", tiny_models[0],
                 "--gan-model", tiny_models[1], "--no-semantic"])
    out, err = capsys.readouterr()
    assert code == 1
    assert (f"desra run: Failed: refused: expected output_dir apart from input_dir, neither inside the other, got "
            f"output_dir {drop / 'out'}, which lies inside input_dir {drop}; choose an output root outside the "
            "folders that a run reads") in out
    assert "Traceback" not in out + err and not (drop / "out").exists()
