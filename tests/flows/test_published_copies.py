"""Published files are copies of the store's entries, not hard links (issue 16): editing a published mask in
place must not change the store entry that a later run computes from."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from desra.flows.full import desra
from desra_core.image import read_image
from tests.flows.conftest import write_lr


def _run(drop: Path, out: Path, tiny_models, feather: float):
    state = desra(input_dir=str(drop), output_dir=str(out), mse_model=tiny_models[0], gan_model=tiny_models[1],
                  segmenter=None, min_area=10, feather=feather, return_state=True)
    assert state.is_completed(), state.message
    return pd.read_parquet(max((out / "runs").glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns))


def test_editing_a_published_mask_in_place_leaves_the_store_and_later_runs_alone(tmp_path, tiny_models):
    drop, out, reference = tmp_path / "drop", tmp_path / "out", tmp_path / "reference"
    write_lr(drop / "a.png", 0)
    _run(drop, out, tiny_models, feather=0.0)
    (stored,) = (out / ".desra" / "store" / "detect").rglob("*.png")
    stored_bytes = stored.read_bytes()
    published = out / "masks" / "a.png"
    inode = published.stat().st_ino
    edited = np.full(cv2.imread(str(published), cv2.IMREAD_GRAYSCALE).shape, 255, np.uint8)  # all "artifact"
    ok, png = cv2.imencode(".png", edited)
    assert ok
    with open(published, "r+b") as fh:  # in place: the same file, as an editor that saves in place does
        fh.truncate(0)
        fh.write(png.tobytes())
    assert published.stat().st_ino == inode
    assert stored.read_bytes() == stored_bytes  # the store entry did not change with it

    # A later run with another feather computes a new pseudo-GT from the stored mask: it must be the one a
    # fresh output root gives, not one built from the edited (all-artifact) mask.
    later = _run(drop, out, tiny_models, feather=2.0)
    fresh = _run(drop, reference, tiny_models, feather=2.0)
    assert "pseudo_gt" in later.loc[0, "computed"]
    assert np.array_equal(read_image(out / "pseudo_gt" / "a.png").pixels,
                          read_image(reference / "pseudo_gt" / "a.png").pixels)
    assert later.loc[0, "artifact_fraction"] == fresh.loc[0, "artifact_fraction"]
    assert stored.read_bytes() == stored_bytes
