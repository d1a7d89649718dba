"""The held-out split and the shipping rule (which validated checkpoint, if any, is written)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from desra_core import ConfigError
from desra_core.finetune.validation import Candidate, ValidationScore, choose_checkpoint, split_holdout


def _score(fraction: float, ratio: float) -> ValidationScore:
    return ValidationScore(fraction, ratio, ratio, {"a": (fraction, ratio)})


ORIGINAL = _score(0.02, 1.0)


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


def test_the_lowest_fraction_among_those_that_keep_detail_is_chosen():
    candidates = [Candidate(100, "trained", _score(0.010, 0.95)),
                  Candidate(100, "ema", _score(0.004, 0.85)),   # fewest artifacts, but loses detail
                  Candidate(200, "trained", _score(0.008, 0.91)),
                  Candidate(200, "ema", _score(0.008, 0.99))]   # a tie: the earlier one wins
    chosen, reason = choose_checkpoint(candidates, ORIGINAL)
    assert chosen is candidates[2]
    assert "step 200 (trained weights)" in reason and "3 of 4" in reason


def test_nothing_is_chosen_when_no_checkpoint_beats_the_original():
    candidates = [Candidate(100, "trained", _score(0.020, 1.0)),   # not below the original
                  Candidate(200, "trained", _score(0.001, 0.5))]   # wrecked detail
    chosen, reason = choose_checkpoint(candidates, ORIGINAL)
    assert chosen is None
    assert reason.startswith("none of 2 validated checkpoint(s) qualifies") and "0.0010 (step 200" in reason
    assert choose_checkpoint([], ORIGINAL)[0] is None
    assert choose_checkpoint(candidates, ORIGINAL, min_detail_ratio=0.4)[0] is candidates[1]
