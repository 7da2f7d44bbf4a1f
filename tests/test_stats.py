"""Statistics helpers against hand-computed answers, and the verdict on constructed cases."""
from __future__ import annotations

import math

import pytest

from daelab.stats import NO_DIFFERENCE, mean_ci, paired_difference, verdict

T_975_DF4 = 2.7764451051977987  # Student t, 97.5% quantile, 4 degrees of freedom (from tables)


def test_mean_ci_matches_hand_computed_t_interval():
    result = mean_ci([1, 2, 3, 4, 5])
    std = math.sqrt(2.5)  # sum of squared deviations 10, over n - 1 = 4
    half = T_975_DF4 * std / math.sqrt(5)
    assert result["n"] == 5
    assert result["mean"] == pytest.approx(3.0)
    assert result["std"] == pytest.approx(std)
    assert result["lo"] == pytest.approx(3.0 - half)
    assert result["hi"] == pytest.approx(3.0 + half)
    assert set(result) == {"mean", "std", "lo", "hi", "n"}


def test_mean_ci_level_widens_interval():
    narrow, wide = mean_ci([0.1, 0.4, 0.2], level=0.8), mean_ci([0.1, 0.4, 0.2], level=0.99)
    assert wide["lo"] < narrow["lo"] < narrow["mean"] < narrow["hi"] < wide["hi"]


def test_mean_ci_single_value_has_zero_width():
    assert mean_ci([0.875]) == {"mean": 0.875, "std": 0.0, "lo": 0.875, "hi": 0.875, "n": 1}


def test_mean_ci_rejects_empty_and_bad_level():
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1.0, 2.0], level=1.0)


def test_paired_difference_uses_pairs_not_groups():
    # Large seed-to-seed spread, constant +0.01 advantage: unpaired intervals would overlap,
    # the paired interval must collapse onto +0.01.
    a = [0.80, 0.85, 0.90, 0.83]
    b = [0.79, 0.84, 0.89, 0.82]
    diff = paired_difference(a, b)
    assert diff["differences"] == pytest.approx([0.01] * 4)
    assert diff["mean"] == pytest.approx(0.01)
    assert diff["std"] == pytest.approx(0.0, abs=1e-12)
    assert diff["lo"] == pytest.approx(0.01) and diff["hi"] == pytest.approx(0.01)
    assert verdict(diff) == "codes better"


def test_paired_difference_hand_computed():
    diff = paired_difference([3, 5, 4, 6, 7], [2, 3, 3, 4, 3])  # differences 1, 2, 1, 2, 4
    mean, std = 2.0, math.sqrt(3.0 / 2.0)  # squared deviations 1 + 0 + 1 + 0 + 4 = 6, over 4
    half = T_975_DF4 * std / math.sqrt(5)
    assert diff["mean"] == pytest.approx(mean)
    assert diff["lo"] == pytest.approx(mean - half) and diff["hi"] == pytest.approx(mean + half)


def test_paired_difference_rejects_unequal_lengths():
    with pytest.raises(ValueError):
        paired_difference([1, 2, 3], [1, 2])


@pytest.mark.parametrize("a, b, expected", [
    ([0.90, 0.91, 0.92], [0.85, 0.86, 0.86], "codes better"),
    ([0.85, 0.86, 0.86], [0.90, 0.91, 0.92], "raw better"),
    ([0.8752, 0.8801, 0.8700], [0.8764, 0.8760, 0.8750], NO_DIFFERENCE),
])
def test_verdict_follows_the_interval(a, b, expected):
    diff = paired_difference(a, b)
    assert verdict(diff, "codes", "raw") == expected
    if expected == NO_DIFFERENCE:
        assert diff["lo"] <= 0 <= diff["hi"]


def test_verdict_refuses_to_call_a_single_pair():
    # The study's own comparison: one run each. A zero-width interval must not become a verdict.
    assert verdict(paired_difference([0.8752], [0.8764])).startswith("undetermined")


def test_verdict_uses_the_given_names():
    diff = {"lo": -0.02, "hi": -0.01, "n": 5}
    assert verdict(diff, "pca", "raw") == "raw better"
