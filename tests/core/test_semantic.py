"""Eq. 9 semantic weights and the paper's class table."""

from __future__ import annotations

import numpy as np
import pytest

from desra_core import ClassTable, ConfigError, LabelMapError, apply_semantic_weights, default_class_table
from desra_core.semantic import validate_labels
from tests.conftest import SHARED, unavailable


def test_table_has_the_papers_values():
    t = default_class_table()
    assert len(t.names) == 150
    assert t.names[:5] == ("wall", "building", "sky", "floor", "tree")
    k = dict(zip(t.names, t.k, strict=True))
    assert (k["sky"], k["building"], k["tree"], k["tower"], k["bulletin board"]) == (0, 4, 5, 9, 11)
    assert t.weights[2] == 1.0
    assert t.weights[4] == pytest.approx(20 / 15)


def test_table_matches_shared_reference():
    names_file = SHARED / "reference" / "ade20k_classes.txt"
    table_file = SHARED / "reference" / "desra_class_table.txt"
    if not (names_file.exists() and table_file.exists()):
        unavailable(f"reference data not found under {SHARED / 'reference'}")
    order = names_file.read_text().splitlines()
    k_by_name = dict(line.rsplit("--", 1) for line in table_file.read_text().splitlines() if line.strip())
    expected = ClassTable.from_mapping(order, {n: int(k) for n, k in k_by_name.items()})
    assert default_class_table() == expected


def test_from_mapping_strips_names_and_rejects_missing():
    t = ClassTable.from_mapping(["sky ", "tree"], {"sky": 0, "tree ": 5})
    assert t.names == ("sky", "tree")
    with pytest.raises(ConfigError, match="got none for"):
        ClassTable.from_mapping(["sky", "lava"], {"sky": 0})
    with pytest.raises(ConfigError, match=r"0\.\.19"):
        ClassTable(("x",), (20,))


def test_weights_hand_computed():
    sim = np.array([[0.6, 0.6, 0.6], [0.9, 0.3, 0.0]], np.float32)
    labels = np.array([[2, 4, 255], [4, 28, 2]], np.uint8)  # sky, tree, unlabeled / tree, painting(k=6)…
    t = default_class_table()
    got = apply_semantic_weights(sim, labels)
    w = {2: 1.0, 4: 20 / 15, 255: 1.0, 28: 20 / (20 - t.k[28])}
    expected = np.array([[0.6, 0.6 * w[4], 0.6], [min(0.9 * w[4], 1.0), 0.3 * w[28], 0.0]], np.float32)
    assert np.allclose(got, expected, atol=1e-6)
    assert got[1, 0] == 1.0  # clipped


def test_no_labels_only_clips():
    sim = np.array([[0.2, 1.2]], np.float32)
    assert np.array_equal(apply_semantic_weights(sim, None), np.array([[0.2, 1.0]], np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.uint16])
def test_validate_labels_accepts_and_converts(dtype):
    labels = np.array([[0, 149], [255, 7]], dtype=dtype)
    out = validate_labels(labels, (2, 2))
    assert out.dtype == np.uint8
    assert np.array_equal(out, labels.astype(np.uint8))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([[0, 150]], np.uint8), "got 150"),
        (np.array([[0, 254]], np.uint8), "got 254"),
        (np.array([[-1, 3]], np.int32), "got -1"),
        (np.array([[1000, 3]], np.int32), "got 1000"),
        (np.zeros((1, 3), np.uint8), "size"),
        (np.zeros((1, 2, 3), np.uint8), "shape"),
        (np.zeros((1, 2), np.float32), "integer"),
    ],
)
def test_validate_labels_errors(labels, match):
    with pytest.raises(LabelMapError, match=match):
        validate_labels(labels, (1, 2), path="x/labels.png")
    with pytest.raises(LabelMapError, match=r"x/labels\.png"):
        validate_labels(labels, (1, 2), path="x/labels.png")
