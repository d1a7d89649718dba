"""A drop attacked during a run (issue 16, item 1): files swapped for links, bytes rewritten, folders swapped.

Each attack is injected at the worst moment, deterministically: an audit hook (``sys.addaudithook``) acts on
the very ``open`` or listing that it sees, before it happens; a wrapper around :meth:`ImageJob.read` acts
between the input's read (its hash, its store keys) and its decoding. What must hold: no outside content
is published; the recorded ``input_sha256`` is the digest of the content whose results were published;
a swapped folder is never listed through the link.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from desra.flows.full import desra
from desra.pipeline.drop import drop_items
from desra.pipeline.models import Models
from desra.pipeline.settings import Settings
from desra.pipeline.steps import ImageJob, Run
from desra.pipeline.stream import process_images
from desra_core.image import read_image, read_image_bytes, write_image
from tests.flows.conftest import write_lr

# -- the attacker's hook -------------------------------------------------------------------------------------

_HOOKS: list[Callable[[str, tuple], None]] = []  # empty: the audit hook does nothing


def _audit(event: str, args: tuple) -> None:
    for hook in list(_HOOKS):
        hook(event, args)


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one is idle while _HOOKS is empty


@pytest.fixture
def hooks():
    yield _HOOKS
    _HOOKS.clear()


def _name(args: tuple) -> str | None:
    """The path an ``open``/listing event names (a name relative to a folder descriptor, too), or None."""
    path = args[0] if args else None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return os.fspath(path) if isinstance(path, str | os.PathLike) else None


_ATTACKING: list[bool] = []  # while the attacker itself works: its own opens are not the run's


def _opens_of(name: str, counter: list[int]) -> Callable[[str, tuple], None]:
    """Count the run's ``open``s of a file called ``name``."""
    def count(event: str, args: tuple) -> None:
        if event == "open" and (_name(args) or "").endswith(name) and not _ATTACKING:
            counter[0] += 1
    return count


def _swap_for_link(path: Path, target: Path) -> None:
    """Replace ``path`` by a symbolic link to ``target`` in one step (``rename`` of a fresh link over it)."""
    link = path.with_name(".swap-" + path.name)
    link.symlink_to(target)
    os.replace(link, path)


def _rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    st = path.stat()
    assert len(data) == st.st_size
    _ATTACKING.append(True)
    try:
        with open(path, "r+b") as f:
            f.write(data)
    finally:
        _ATTACKING.clear()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# -- the drop ------------------------------------------------------------------------------------------------

def _bmp(path: Path, seed: int) -> bytes:
    """A 40×40 BMP: every one has the same size, so one can be rewritten as another keeping size and mtime."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.resize(coarse, (40, 40), interpolation=cv2.INTER_CUBIC))
    return path.read_bytes()


@pytest.fixture
def scene(tmp_path, tiny_models):
    """``drop/x.bmp`` (content A), ``drop/y.bmp``, and ``outside/secret.bmp`` (content S, same size)."""
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    a = _bmp(drop / "x.bmp", 1)
    _bmp(drop / "y.bmp", 2)
    s = _bmp(outside / "secret.bmp", 3)
    settings = Settings.from_options(mse_model=tiny_models[0], gan_model=tiny_models[1], segmenter=None, min_area=10,
                                     device="cpu")
    return drop, outside, a, s, settings


def _run(drop: Path, out: Path, settings: Settings, run_id: str) -> dict[str, dict]:
    run = Run(settings=settings, output_dir=str(out), run_id=run_id, models=Models(settings))
    items = drop_items(str(drop), None, settings.labels_dir)
    return {row["stem"]: row for row in process_images(items, run, workers=1)}


def _gan(settings: Settings, data: bytes) -> np.ndarray:
    """What the run's GAN model makes of these bytes."""
    return Models(settings).super_resolve("gan", read_image_bytes(data, "x.bmp").pixels)


def _published(out: Path) -> np.ndarray:
    return read_image(out / "sr" / "gan" / "x.png").pixels


# -- a drop file ---------------------------------------------------------------------------------------------

def test_a_file_swapped_for_a_link_before_its_one_open_is_refused(tmp_path, scene, hooks):
    drop, outside, _, _, settings = scene
    opens = [0]
    swapped = []

    def attacker(event: str, args: tuple) -> None:  # just before the run first opens x.bmp
        if event == "open" and (_name(args) or "").endswith("x.bmp") and not swapped:
            swapped.append(True)
            _swap_for_link(drop / "x.bmp", outside / "secret.bmp")

    hooks += [attacker, _opens_of("x.bmp", opens)]
    out = tmp_path / "out"
    rows = _run(drop, out, settings, "r1")
    hooks.clear()
    assert swapped and rows["y"]["status"] == "ok"
    row = rows["x"]
    assert row["status"] == "failed" and "symbolic link" in row["error"] and "x.bmp" in row["error"], row
    assert not (out / "sr" / "gan" / "x.png").exists() and not (out / "masks" / "x.png").exists()
    assert sorted(p.name for p in (out / "sr" / "gan").iterdir()) == ["y.png"]
    assert opens[0] == 1  # opened once, by the run, after the swap


@pytest.mark.parametrize("attack", ["link", "rewrite"])
def test_a_file_changed_between_its_read_and_its_decoding_changes_nothing(tmp_path, scene, hooks, monkeypatch,
                                                                          attack):
    # The worst moment: the input has been read and hashed (its store keys are made), and is about to be
    # decoded. Before issue 16 the decoding opened the file again: the swapped-in picture was published as
    # x.png, stored under A's key and served to every later image with A's content.
    drop, outside, a, s, settings = scene
    opens = [0]
    real_read = ImageJob.read

    def read(self):
        if self.item.stem == "x":
            if attack == "link":
                _swap_for_link(drop / "x.bmp", outside / "secret.bmp")
            else:
                _rewrite_keeping_size_and_mtime(drop / "x.bmp", s)
        return real_read(self)

    monkeypatch.setattr(ImageJob, "read", read)
    hooks.append(_opens_of("x.bmp", opens))
    out = tmp_path / "out"
    rows = _run(drop, out, settings, "r1")
    row = rows["x"]
    assert row["status"] == "ok", row
    assert row["input_sha256"] == hashlib.sha256(a).hexdigest()  # the content that was decoded…
    assert np.array_equal(_published(out), _gan(settings, a))  # …is the content whose result is published
    assert not np.array_equal(_published(out), _gan(settings, s))
    assert opens[0] == 1
    monkeypatch.setattr(ImageJob, "read", real_read)

    if attack == "rewrite":
        # The same process runs again, on the rewritten file (same size, same mtime): nothing remembers A's
        # digest for it, so S is hashed, computed and published as what it is.
        again = _run(drop, out, settings, "r2")["x"]
        assert again["status"] == "ok" and again["input_sha256"] == hashlib.sha256(s).hexdigest()
        assert not again["cached"] and np.array_equal(_published(out), _gan(settings, s))


def test_a_label_map_is_opened_once_and_never_through_a_link(tmp_path, scene, hooks):
    drop, outside, _, _, settings = scene
    labels = tmp_path / "labels"
    for stem in ("x", "y"):
        write_image(labels / f"{stem}.png", np.zeros((160, 160), np.uint8))  # ADE20K index 0 everywhere
    write_image(outside / "labels.png", np.full((160, 160), 7, np.uint8))
    opens = [0]
    swapped = []

    def attacker(event: str, args: tuple) -> None:  # just before the run first opens labels/x.png
        if event == "open" and _name(args) in ("x.png", str(labels / "x.png")) and not swapped:
            swapped.append(True)
            _swap_for_link(labels / "x.png", outside / "labels.png")

    def count(event: str, args: tuple) -> None:  # through the folder's descriptor, or by path
        if event == "open" and _name(args) in ("x.png", str(labels / "x.png")):
            opens[0] += 1

    hooks += [attacker, count]
    out = tmp_path / "out"
    rows = _run(drop, out, settings.replace(labels_dir=str(labels)), "r1")
    hooks.clear()
    assert swapped and rows["y"]["status"] == "ok", rows["y"]
    row = rows["x"]
    assert row["status"] == "failed" and "symbolic link" in row["error"] and str(labels / "x.png") in row["error"]
    assert opens[0] == 1


# -- an event's folder ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("moment", ["before it is opened", "after it is opened"])
def test_a_folder_swapped_for_a_link_after_the_check_is_never_listed_through_it(tmp_path, tiny_models, hooks,
                                                                                monkeypatch, moment):
    # A desra.drop.landed event names allowed/drop/new, which lies inside the allowed roots. After the run's
    # paths were checked, the attacker swaps it for a link to a folder outside them.
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    event_folder = allowed / "drop" / "new"
    for i in range(2):
        write_lr(event_folder / f"in{i}.png", i)
        write_lr(outside / f"secret{i}.png", 10 + i)
    monkeypatch.setenv("DESRA_ALLOWED_ROOTS", f"{allowed}:{Path(tiny_models[0]).parent}")
    touched, swapped = [], []

    def attacker(event: str, args: tuple) -> None:
        name = _name(args)
        if event in ("open", "os.scandir", "os.listdir") and name is not None and "secret" in name:
            touched.append(f"{event} {name}")  # outside files named through a descriptor, too
        if event == "open" and name is not None and os.path.realpath(name).startswith(str(outside)):
            touched.append(f"{event} {name}")
        if swapped:
            return
        first_touch = event in ("open", "os.scandir", "os.listdir") and name == str(event_folder)
        listing = event in ("os.scandir", "os.listdir") and (args[0] is None or isinstance(args[0], int)
                                                               or name == str(event_folder))
        if (moment == "before it is opened" and first_touch) or (moment == "after it is opened" and listing):
            swapped.append(event)
            os.rename(event_folder, allowed / "drop" / "moved")
            event_folder.symlink_to(outside, target_is_directory=True)

    hooks.append(attacker)
    out = allowed / "out"
    state = desra(input_dir=str(event_folder), output_dir=str(out), mse_model=tiny_models[0],
                  gan_model=tiny_models[1], segmenter=None, min_area=10, return_state=True)
    hooks.clear()
    assert swapped, "the attack never ran"
    assert not touched, touched  # nothing outside was listed or opened
    if moment == "before it is opened":  # the descriptor is checked, not the path: refused
        assert state.is_failed() and state.message.startswith("refused: expected input_dir inside the allowed roots")
        assert str(outside) in state.message and "changed after it was checked" in state.message, state.message
        assert not (out / "sr").exists()
    else:  # listed and read through the folder that was opened and checked: the original images
        assert state.is_completed(), state.message
        run = pd.read_parquet(next((out / "runs").glob("*.parquet"))).set_index("stem")
        assert sorted(run.index) == ["in0", "in1"] and (run["status"] == "ok").all()
        assert sorted(p.name for p in (out / "sr" / "gan").iterdir()) == ["in0.png", "in1.png"]
