"""The generalization benchmark's design holds what the README's fine-tuning figures claim: the photos that are
reported on take no part in any choice, splits are by photo, every photo has a recorded licence and kind, and
each split validates on a photo without artifacts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("finetune_generalization",
                                                  REPO / "benchmarks" / "finetune_generalization.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_at_least_twelve_photos_each_with_kind_and_licence(bench):
    assert len(bench.PHOTOS) >= 12
    for stem, (file, kind, licence) in bench.PHOTOS.items():
        assert file and kind and licence, stem
        assert any(word in licence.lower() for word in ("public domain", "cc0", "no known copyright")), stem


def test_report_photos_never_take_part_in_a_choice(bench):
    assert set(bench.CHOICE) | set(bench.REPORT) == set(bench.PHOTOS)
    assert not set(bench.CHOICE) & set(bench.REPORT)
    for split_seed in bench.SPLITS:
        train, validation = bench.split(split_seed)
        assert not set(train) & set(validation)
        assert set(train) | set(validation) == set(bench.CHOICE)
        assert not (set(train) | set(validation)) & set(bench.REPORT)
        assert set(bench.ALWAYS_VALIDATED) <= set(validation)
        assert len(validation) == bench.VALIDATION_SIZE


def test_at_least_three_distinct_splits_and_seeds(bench):
    assert len(bench.SEEDS) >= 3
    splits = {tuple(bench.split(s)[1]) for s in bench.SPLITS}
    assert len(splits) >= 3


def test_summary_takes_the_photos_with_artifacts_the_worst_detail_and_the_clean_gain(bench):
    report = {"a": {"before": 0.1, "after": 0.05, "detail": 0.95}, "b": {"before": 0.0, "after": 0.002, "detail": 0.97},
              "c": {"before": 0.3, "after": 0.15, "detail": 0.91}}
    figures = bench.summarize({"report": report})
    assert figures["change"] == pytest.approx((0.05 + 0.15) / 2 / ((0.1 + 0.3) / 2) - 1)
    assert figures["worst_detail"] == pytest.approx(0.91)
    assert figures["clean_gain"] == pytest.approx(0.002)
