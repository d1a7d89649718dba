"""`desra detect` and `desra metrics` on folders: outputs, report rows, bad input, exit codes.

`desra detect` runs the pipeline's steps from detection on (:mod:`desra.pipeline.stream`), so its outputs are the
flows': ``masks/``, ``pseudo_gt/``, ``reports/<stem>.parquet``, ``runs/<run>.parquet``, ``report.html``, and
``report.parquet`` (the run's rows, in the run report's schema)."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from desra.cli import main
from desra.pipeline.report import IMAGE_COLUMNS

SKY = 2


def _write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _pair(h=96, w=96, painted=True, seed=0):
    rng = np.random.default_rng(seed)
    mse = (120 + rng.integers(0, 2, (h, w, 3))).astype(np.uint8)
    gan = mse.copy()
    if painted:
        gan[20:76, 20:76, :][:, 1::2] = 200
    return mse, gan


@pytest.fixture
def drop(tmp_path):
    """mse/, gan/, labels/ with two good pairs: one with a painted artifact, one clean."""
    for stem, painted in (("painted", True), ("clean", False)):
        mse, gan = _pair(painted=painted)
        _write_rgb(tmp_path / "mse" / f"{stem}.png", mse)
        _write_rgb(tmp_path / "gan" / f"{stem}.png", gan)
        (tmp_path / "labels").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "labels" / f"{stem}.png"), np.full((96, 96), SKY, np.uint8))
    return tmp_path


def _detect(drop, *extra, labels=True):
    out = drop / "out"
    args = ["detect", "--mse", str(drop / "mse"), "--gan", str(drop / "gan"), "--out", str(out),
            "--min-area", "500", *extra]
    args += ["--labels", str(drop / "labels")] if labels else ["--no-semantic"]
    rc = main(args)
    report = pd.read_parquet(out / "report.parquet")
    return rc, out, report.set_index("stem")


def test_detect_writes_masks_pseudo_gt_and_report(drop, capsys):
    rc, out, report = _detect(drop)
    assert rc == 0
    assert set(report.index) == {"painted", "clean"}
    assert (report["status"] == "ok").all() and report["error"].isna().all()
    assert report.loc["painted", "region_count"] == 1 and report.loc["clean", "region_count"] == 0
    assert 0.2 < report.loc["painted", "artifact_fraction"] < 0.6
    assert (report["height"] == 96).all() and (report["width"] == 96).all()
    assert (report["min_area"] == 500).all() and report["segmenter"].isna().all()
    assert report["input_path"].tolist() == [str(drop / "gan" / f"{s}.png") for s in report.index]
    runs = list((out / "runs").glob("*.parquet"))
    assert len(runs) == 1 and pd.read_parquet(runs[0]).set_index("stem").equals(report)
    assert list(report.columns) == [c for c in IMAGE_COLUMNS if c != "stem"]
    for stem in ("painted", "clean"):
        per_image = pd.read_parquet(out / "reports" / f"{stem}.parquet")
        assert (per_image["stem"] == stem).all() and (per_image["status"] == "ok").all()
    assert len(pd.read_parquet(out / "reports" / "painted.parquet")) == 1  # one row per region
    assert (out / "report.html").is_file() and not (out / "sr").exists()  # the SR results stay where they are
    mask = cv2.imread(str(out / "masks" / "painted.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (96, 96) and set(np.unique(mask)) == {0, 255}
    assert mask.mean() / 255 == pytest.approx(report.loc["painted", "artifact_fraction"])
    mse, gan = _pair(painted=True)
    pseudo = cv2.cvtColor(cv2.imread(str(out / "pseudo_gt" / "painted.png")), cv2.COLOR_BGR2RGB)
    inside = mask > 0
    assert np.array_equal(pseudo[inside], mse[inside]) and np.array_equal(pseudo[~inside], gan[~inside])
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    assert "2 ok, 0 failed" in capsys.readouterr().out


def test_no_semantic_option(drop):
    rc, out, report = _detect(drop, labels=False)
    assert rc == 0 and report["segmenter"].isna().all() and not (out / "labels").exists()
    assert report.loc["painted", "region_count"] == 1


def _break(drop):
    """Add one broken input of each kind beside the good pairs; return stem → expected error text."""
    good_mse, good_gan = _pair(seed=1)
    labels = np.full((96, 96), SKY, np.uint8)

    def add(stem, mse=good_mse, gan=good_gan, lab=labels):
        for sub, img in (("mse", mse), ("gan", gan)):
            if isinstance(img, bytes):
                (drop / sub / f"{stem}.png").write_bytes(img)
            elif img is not None:
                _write_rgb(drop / sub / f"{stem}.png", img)
        if lab is not None:
            cv2.imwrite(str(drop / "labels" / f"{stem}.png"), lab)

    png = cv2.imencode(".png", good_gan)[1].tobytes()
    add("corrupt", gan=b"\x89PNG\r\n\x1a\n this is not an image")
    add("empty", mse=b"")
    add("truncated", gan=png[: len(png) // 2])
    add("mismatch", gan=np.zeros((96, 80, 3), np.uint8))
    add("tiny", mse=good_mse[:8, :8], gan=good_gan[:8, :8], lab=labels[:8, :8])
    add("badlabels_size", lab=labels[:90])
    add("badlabels_value", lab=np.full((96, 96), 200, np.uint8))
    add("no_gan", gan=None)
    add("no_labels", lab=None)
    return {
        "corrupt": "gan/corrupt.png", "empty": "mse/empty.png", "truncated": "gan/truncated.png",
        "mismatch": "one size", "tiny": "at least 11×11", "badlabels_size": "labels/badlabels_size.png",
        "badlabels_value": "200", "no_gan": "GAN result with stem 'no_gan'", "no_labels": "label map with stem",
    }


def test_bad_inputs_become_rows_and_the_rest_still_runs(drop, capsys):
    expected = _break(drop)
    rc, out, report = _detect(drop)
    assert rc == 1
    assert set(report.index) == {"painted", "clean", *expected}
    assert (report.loc[["painted", "clean"], "status"] == "ok").all()
    for stem, text in expected.items():
        assert report.loc[stem, "status"] == "failed", stem
        assert text in report.loc[stem, "error"], (stem, report.loc[stem, "error"])
        assert not (out / "masks" / f"{stem}.png").exists()
    assert (out / "masks" / "painted.png").exists()
    err = capsys.readouterr().err
    assert "failed: corrupt:" in err


def test_rerun_with_a_broken_file_keeps_earlier_outputs(drop):
    rc, out, _ = _detect(drop)
    assert rc == 0
    before = (out / "masks" / "painted.png").read_bytes()
    (drop / "gan" / "painted.png").write_bytes(b"")
    rc, out, report = _detect(drop)
    assert rc == 1 and report.loc["painted", "status"] == "failed"
    assert (out / "masks" / "painted.png").read_bytes() == before


def test_second_run_over_unchanged_files_redoes_nothing(drop, monkeypatch):
    import desra.pipeline.steps

    rc, out, first = _detect(drop)
    assert rc == 0 and not first["cached"].any() and (first["computed"] == "detect,pseudo_gt").all()

    def no_detection(*args, **kwargs):
        raise AssertionError("detection ran again over unchanged files")

    monkeypatch.setattr(desra.pipeline.steps, "detect_artifacts", no_detection)
    rc, out, second = _detect(drop)
    assert rc == 0 and second["cached"].all() and (second["computed"] == "").all()
    assert second["artifact_fraction"].equals(first["artifact_fraction"])
    assert len(list((out / "runs").glob("*.parquet"))) == 2  # one run report per run; report.parquet: the last


def test_min_area_fraction_option(drop):
    out = drop / "out_frac"
    rc = main(["detect", "--mse", str(drop / "mse"), "--gan", str(drop / "gan"), "--no-semantic",
               "--out", str(out), "--min-area-fraction", "0.6"])
    report = pd.read_parquet(out / "report.parquet").set_index("stem")
    assert rc == 0
    assert report.loc["painted", "min_area"] == int(0.6 * 96 * 96)
    assert report.loc["painted", "region_count"] == 0  # the painted region grows to ~68×68 = 4624 px


def test_usage_errors(drop, capsys):
    with pytest.raises(SystemExit) as e:
        main(["detect", "--mse", str(drop / "mse"), "--gan", str(drop / "gan"), "--out", str(drop / "o")])
    assert e.value.code == 2  # neither --labels nor --no-semantic
    rc = main(["detect", "--mse", str(drop / "nope"), "--gan", str(drop / "gan"), "--no-semantic",
               "--out", str(drop / "o")])
    assert rc != 0 and "nope" in capsys.readouterr().err
    rc = main(["detect", "--mse", str(drop / "mse"), "--gan", str(drop / "gan"), "--no-semantic",
               "--out", str(drop / "o"), "--threshold", "3"])
    assert rc == 2 and "threshold" in capsys.readouterr().err


def test_metrics_command(tmp_path, capsys):
    for sub in ("pred", "gt"):
        (tmp_path / sub).mkdir()
    gt = np.zeros((40, 40), np.uint8)
    gt[10:20, 10:20] = 255
    pred = np.zeros((40, 40), np.uint8)
    pred[10:20, 10:15] = 255
    cv2.imwrite(str(tmp_path / "gt" / "a.png"), gt)
    cv2.imwrite(str(tmp_path / "pred" / "a.png"), pred)
    cv2.imwrite(str(tmp_path / "pred" / "only_pred.png"), pred)
    rc = main(["metrics", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")])
    captured = capsys.readouterr()
    assert rc == 0
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result == {"iou": 0.5, "precision": 1.0, "recall": 1.0}
    assert "only_pred" in captured.err


def test_unsafe_names_and_links_out_of_the_folder_become_rows(drop, tmp_path, capsys):
    """Refused entries get a failed row under a safe stem; nothing is written outside --out."""
    outside = tmp_path / "elsewhere"  # beside mse/ and gan/, outside both
    mse, gan = _pair(seed=3)
    _write_rgb(outside / "elsewhere.png", gan)
    for sub, img in (("mse", mse), ("gan", gan)):
        for name in (b"caf\xe9.png", b"..%2f..%2fetc.png", b"link.png"):
            path = os.path.join(os.fsencode(drop / sub), name)
            with open(path, "wb") as fh:
                fh.write(cv2.imencode(".png", img)[1].tobytes())
    os.remove(drop / "gan" / "link.png")
    (drop / "gan" / "link.png").symlink_to(outside / "elsewhere.png")
    (drop / "gan" / "dir.png").mkdir()
    _write_rgb(drop / "mse" / "dir.png", mse)
    rc, out, report = _detect(drop, labels=False)
    assert rc == 1
    expected = {"caf%E9": r"not valid UTF-8; rename the file (file: ", "%2E%2E%2f..%2fetc": "starting with '.'",
                "link": "got a symbolic link", "dir": "got a directory"}
    err = capsys.readouterr().err
    for stem, text in expected.items():
        assert report.loc[stem, "status"] == "failed" and text in report.loc[stem, "error"], report.loc[stem, "error"]
        assert f"failed: {stem}: " in err
    assert "caf\\xe9.png" in report.loc["caf%E9", "input_path"]
    assert (report.loc[["painted", "clean"], "status"] == "ok").all()
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["clean.png", "painted.png"]
    assert not list(outside.parent.glob("etc*")) and sorted(p.name for p in outside.iterdir()) == ["elsewhere.png"]
