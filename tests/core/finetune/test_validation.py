"""The held-out split and the shipping rule (which validated checkpoint, if any, is written): enough
evidence, improvements beyond the measured noise on a majority of the images with artifacts, and the detail
kept on every validation image."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from desra_core import ConfigError
from desra_core.finetune.validation import (
    Candidate,
    Evidence,
    ValidationScore,
    choose_checkpoint,
    evidence_gap,
    improved_images,
    split_holdout,
    worst_detail,
)


def _score(per_image: dict[str, tuple[float, float]], base: dict[str, tuple[float, float]] | None = None
           ) -> ValidationScore:
    """A score as the Validator builds it: means over the images, the detail ratio of the means."""
    fraction = sum(f for f, _ in per_image.values()) / len(per_image)
    detail = sum(d for _, d in per_image.values()) / len(per_image)
    ratio = 1.0 if base is None else detail / (sum(d for _, d in base.values()) / len(base))
    return ValidationScore(fraction, detail, ratio, per_image)


# three photos with artifacts, one without; each image's noise is a tenth of its artifact fraction
BASE = {"a": (0.020, 1.0), "b": (0.030, 1.0), "c": (0.010, 1.0), "clean": (0.0, 1.0)}
EVIDENCE = Evidence(original=_score(BASE), noise={"a": 0.002, "b": 0.003, "c": 0.001, "clean": 0.0005},
                    mean_noise=0.001, pixels=dict.fromkeys(BASE, 10_000))


def _candidate(step: int, weights: str = "trained", **changes: tuple[float, float]) -> Candidate:
    return Candidate(step, weights, _score({**BASE, **changes}, BASE))


def test_split_is_seeded_and_holds_out_the_share():
    stems = [f"s{i}" for i in range(8)]
    train, val = split_holdout(stems, 0.25, seed=0)
    assert len(val) == 2 and sorted(train + val) == sorted(stems) and not set(train) & set(val)
    assert split_holdout(list(reversed(stems)), 0.25, seed=0) == (train, val)  # the order given does not matter
    assert any(split_holdout(stems, 0.25, seed=s)[1] != val for s in range(1, 10))  # the seed does


@given(st.integers(2, 40), st.floats(0.01, 0.99), st.integers(0, 2**32 - 1))
def test_split_keeps_at_least_one_on_each_side(n, share, seed):
    train, val = split_holdout([f"x{i:02d}" for i in range(n)], share, seed)
    assert len(val) >= 1 and len(train) >= 1 and len(train) + len(val) == n
    assert train == sorted(train) and val == sorted(val)


@pytest.mark.parametrize("stems, share", [(["a"], 0.5), ([], 0.5), (["a", "b"], 0.0), (["a", "b"], 1.0)])
def test_split_refuses_what_leaves_nothing(stems, share):
    with pytest.raises(ConfigError):
        split_holdout(stems, share, 0)


def test_the_lowest_fraction_among_those_that_qualify_is_chosen():
    candidates = [_candidate(100, a=(0.010, 0.95), b=(0.010, 0.95)),
                  _candidate(100, "ema", a=(0.0, 0.85), b=(0.0, 0.85), c=(0.0, 0.85)),  # fewest, loses detail
                  _candidate(200, a=(0.005, 0.91), b=(0.010, 0.92), c=(0.005, 0.93)),
                  _candidate(200, "ema", a=(0.005, 0.99), b=(0.010, 0.99), c=(0.005, 0.99))]  # a tie: earlier wins
    chosen, reason = choose_checkpoint(candidates, EVIDENCE, min_artifact_images=3)
    assert chosen is candidates[2]
    assert "step 200 (trained weights)" in reason and "3 of 4" in reason and "improves 3 of 3" in reason
    assert "worst: a, 0.910" in reason


def test_nothing_is_chosen_when_no_checkpoint_beats_the_original():
    candidates = [_candidate(100),                                                     # the original itself
                  _candidate(200, a=(0.0, 0.5), b=(0.0, 0.5), c=(0.0, 0.5))]          # wrecked detail
    chosen, reason = choose_checkpoint(candidates, EVIDENCE)
    assert chosen is None
    assert reason.startswith("none of 2 validated checkpoint(s) qualifies") and "0.0000 (step 200" in reason
    assert "a keeps 0.500 of its detail" in reason
    assert choose_checkpoint([], EVIDENCE)[0] is None
    assert choose_checkpoint(candidates, EVIDENCE, min_detail_ratio=0.4)[0] is candidates[1]


def test_one_image_that_loses_detail_ships_nothing_though_the_mean_keeps_it():
    # "clean" has no artifacts: that is where blurring shows. It keeps half its detail; the others gain.
    blurred = _candidate(100, a=(0.0, 1.2), b=(0.0, 1.2), c=(0.0, 1.2), clean=(0.0, 0.5))
    assert blurred.score.detail_ratio == pytest.approx(1.025) and blurred.score.detail_ratio >= 0.9  # the mean
    assert worst_detail(blurred.score, EVIDENCE.original) == ("clean", pytest.approx(0.5))
    chosen, reason = choose_checkpoint([blurred], EVIDENCE, min_detail_ratio=0.9)
    assert chosen is None and "clean keeps 0.500 of its detail" in reason
    kept = _candidate(100, a=(0.0, 1.2), b=(0.0, 1.2), c=(0.0, 1.2), clean=(0.0, 0.9))
    assert choose_checkpoint([kept], EVIDENCE, min_detail_ratio=0.9)[0] is kept


def test_a_minority_of_improved_images_ships_nothing_however_large_the_mean_drop():
    # b, the image with most artifacts, is cleaned; a and c do not move: the mean falls by half
    one = _candidate(100, b=(0.0, 1.0))
    assert one.score.artifact_fraction < EVIDENCE.original.artifact_fraction - EVIDENCE.mean_noise
    assert improved_images(one.score, EVIDENCE) == ["b"]
    chosen, reason = choose_checkpoint([one], EVIDENCE)
    assert chosen is None and "1 of 3 image(s) with artifacts improve beyond their noise" in reason
    two = _candidate(100, b=(0.0, 1.0), a=(0.0, 1.0))
    assert choose_checkpoint([one, two], EVIDENCE)[0] is two


def test_changes_within_the_measured_noise_ship_nothing():
    # every image a little lower, but by less than its own noise and the mean by less than the mean's
    within = _candidate(100, a=(0.019, 1.0), b=(0.0285, 1.0), c=(0.0095, 1.0))
    assert within.score.artifact_fraction < EVIDENCE.original.artifact_fraction  # the old rule shipped this
    assert improved_images(within.score, EVIDENCE) == []
    chosen, reason = choose_checkpoint([within], EVIDENCE)
    assert chosen is None and "not below the original's by more than the noise 0.0010" in reason


def test_one_validation_image_with_few_artifacts_cannot_show_an_improvement():
    base = {"camera": (0.0031, 1.0)}
    evidence = Evidence(original=_score(base), noise={"camera": 0.0004}, mean_noise=0.0004,
                        pixels={"camera": 640 * 640})
    perfect = Candidate(200, "trained", _score({"camera": (0.0, 1.0)}, base))  # no artifact left, detail kept
    gap = evidence_gap(evidence, 3)
    assert gap == ("1 validation image with 0.31 % artifacts (1270 pixels, 1 with artifacts, 1 above the noise of "
                   "validating the original model again) cannot show an improvement: shipping needs at least 3 "
                   "validation images whose artifacts exceed that noise; give --validate DIR (validate_dir in the "
                   "flows) with at least 3 photos that have artifacts")
    assert choose_checkpoint([perfect], evidence) == (None, gap)
    assert choose_checkpoint([perfect], evidence, min_artifact_images=1)[0] is perfect  # asked for less: it ships
    # an image whose artifacts are within their own noise is no evidence either
    noisy = Evidence(original=evidence.original, noise={"camera": 0.0031}, mean_noise=0.0031,
                     pixels=evidence.pixels)
    assert evidence.above_noise == ["camera"] and noisy.above_noise == []
    assert "0 above the noise" in evidence_gap(noisy, 1)
