"""`desra detect` prints a failed image's name and error as one inert line (issue 16, item 4)."""

from __future__ import annotations

import cv2
import numpy as np

from desra.cli import main

FORGED = ("g\n\n# All images OK, nothing failed\n\n[open report](javascript:alert(1)) "
          "<img src=x onerror=alert(1)>\x1b[2J\u202eevil.png")
SPELLED = "# [x](javascript:alert(1)) <img src=x onerror=alert(1)>.png"


def test_detect_prints_forged_names_as_one_inert_line_each(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for side in ("mse", "gan"):
        (tmp_path / side).mkdir()
        assert cv2.imwrite(str(tmp_path / side / "fine.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        (tmp_path / side / FORGED).write_bytes(b"refused for its name")
        (tmp_path / side / SPELLED).write_bytes(b"not an image")
    code = main(["detect", "--mse", str(tmp_path / "mse"), "--gan", str(tmp_path / "gan"),
                 "--out", str(tmp_path / "out"), "--no-semantic", "--min-area", "10"])
    out, err = capsys.readouterr()
    assert code == 1 and "1 ok, 2 failed" in out
    lines = err.splitlines()
    failed = [line for line in lines if line.startswith("failed: ")]
    assert len(failed) == 2, err
    assert not [line for line in lines if line.lstrip().startswith("#")], err  # no forged line
    assert "\x1b" not in err and "\u202e" not in err and "<img" not in err and "](javascript:" not in err, err
    forged = next(line for line in failed if "All images OK" in line)
    assert "\\n\\n# All images OK, nothing failed\\n\\n[open report]\\(javascript:alert(1))" in forged
    assert "&lt;img src=x onerror=alert(1)>\\x1b[2J\\u202eevil.png" in forged
    assert "failed: \\# [x]\\(javascript:alert(1)) &lt;img src=x onerror=alert(1)>: " in err
