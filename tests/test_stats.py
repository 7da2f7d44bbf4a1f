"""Statistics helpers against hand-computed answers, and the verdict on constructed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from daelab.stats import (
    NO_DIFFERENCE,
    bootstrap_verdict,
    hierarchical_bootstrap,
    mean_ci,
    paired_difference,
    scope,
    size_verdict,
    verdict,
)

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


# ------------------------------------------------------------------------- hierarchical bootstrap
def _correct(rng, shape, p):
    return rng.random(shape) < p


def test_bootstrap_estimate_is_the_mean_difference_and_scope_is_stated():
    rng = np.random.default_rng(0)
    a, b = _correct(rng, (3, 5, 400), 0.8), _correct(rng, (1, 5, 400), 0.7)
    result = hierarchical_bootstrap(a, b, n_boot=300)
    assert result["mean"] == pytest.approx(a.mean() - b.mean())
    assert result["lo"] < result["mean"] < result["hi"]
    over = result["interval_over"]
    assert {k: v for k, v in over.items() if k not in ("method", "components")} == {
        "dae_seeds": 3, "classifier_seeds": 5, "test_images": 400,
        "resampled": ["dae_seeds", "classifier_seeds", "test_images"], "n_boot": 300, "seed": 0}
    assert set(over["components"]) == {"dae_seeds", "classifier_seeds", "test_images"}
    assert result["se"] == pytest.approx(math.sqrt(sum(over["components"].values())))
    assert "Satterthwaite" in over["method"]
    percentile = hierarchical_bootstrap(a, b, n_boot=300, method="percentile")
    assert [percentile["lo"], percentile["hi"]] == percentile["percentile"] == result["percentile"]
    assert "crossed paired bootstrap" in percentile["interval_over"]["method"]
    one = hierarchical_bootstrap(a[:1], b, n_boot=300)["interval_over"]
    assert one["resampled"] == ["classifier_seeds", "test_images"] and one["dae_seeds"] == 1


def test_bootstrap_is_seeded_and_a_shared_side_broadcasts():
    rng = np.random.default_rng(1)
    a, b = _correct(rng, (2, 3, 300), 0.8), _correct(rng, (3, 300), 0.8)
    first = hierarchical_bootstrap(a, b, n_boot=200, seed=4)
    assert hierarchical_bootstrap(a, b, n_boot=200, seed=4) == first
    assert hierarchical_bootstrap(a, np.stack([b, b]).astype(np.uint8), n_boot=200, seed=4) == first
    assert hierarchical_bootstrap(a, b, n_boot=200, seed=5)["percentile"] != first["percentile"]


def test_a_certain_difference_has_a_zero_width_interval():
    ones, zeros = np.ones((2, 3, 50), bool), np.zeros((1, 3, 50), bool)
    result = hierarchical_bootstrap(ones, zeros, n_boot=100)
    assert result["mean"] == result["lo"] == result["hi"] == 1.0 and result["std"] == 0.0


def test_images_only_bootstrap_matches_the_standard_error_of_a_paired_mean():
    rng = np.random.default_rng(2)
    a, b = _correct(rng, (1, 1, 4000), 0.85), _correct(rng, (1, 1, 4000), 0.85)
    result = hierarchical_bootstrap(a, b, n_boot=2000)
    differences = a[0, 0].astype(float) - b[0, 0]
    assert result["interval_over"]["resampled"] == ["test_images"]
    assert result["std"] == pytest.approx(differences.std() / math.sqrt(4000), rel=0.08)


def test_one_level_gives_the_t_interval_over_its_units():
    # a deterministic probe on one DAE: the interval over test images is paired_difference's over images
    rng = np.random.default_rng(5)
    a, b = _correct(rng, (1, 1, 500), 0.8), _correct(rng, (1, 1, 500), 0.75)
    result, reference = hierarchical_bootstrap(a, b, n_boot=50), paired_difference(a[0, 0], b[0, 0])
    assert result["df"] == pytest.approx(499)
    assert result["lo"] == pytest.approx(reference["lo"]) and result["hi"] == pytest.approx(reference["hi"])
    # every image right in 3 of 4 classifier seeds (seed s wrong on its own block of images), b always right:
    # the images do not differ, so the interval is the t-interval over the seeds' accuracy differences
    seeds_a = np.ones((1, 4, 100), bool)
    for s, (start, stop) in enumerate(((0, 30), (30, 55), (55, 80), (80, 100))):
        seeds_a[0, s, start:stop] = False
    seeds_b = np.ones((1, 4, 100), bool)
    seeds = hierarchical_bootstrap(seeds_a, seeds_b, n_boot=50)
    reference = paired_difference(seeds_a[0].mean(axis=1), seeds_b[0].mean(axis=1))
    assert seeds["interval_over"]["components"]["test_images"] == 0.0
    assert seeds["df"] == pytest.approx(3)
    assert seeds["lo"] == pytest.approx(reference["lo"]) and seeds["hi"] == pytest.approx(reference["hi"])


def test_pairing_by_image_narrows_the_interval():
    # a and b agree on every image but 30 of 1000, which a gets right: +0.03, clearly above zero only when
    # the same images are drawn for both sides (unpaired, the interval would be about +-0.03 wide)
    b = np.random.default_rng(3).random((1, 1, 1000)) < 0.8
    a = b.copy()
    a[0, 0, np.flatnonzero(~b[0, 0])[:30]] = True
    result = hierarchical_bootstrap(a, b, n_boot=1000)
    assert result["mean"] == pytest.approx(0.03)
    assert 0.01 < result["lo"] < 0.03 < result["hi"] < 0.05
    assert bootstrap_verdict(result) == "codes better for this one trained DAE"


def test_dae_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(4)
    raw = _correct(rng, (1, 5, 2000), 0.85)
    good, bad = _correct(rng, (1, 5, 2000), 0.88), _correct(rng, (1, 5, 2000), 0.82)
    alone = hierarchical_bootstrap(good, raw, n_boot=500)
    both = hierarchical_bootstrap(np.concatenate([good, bad]), raw, n_boot=500)
    assert alone["lo"] > 0  # one DAE, taken alone, looks better than raw ...
    assert both["lo"] < 0 < both["hi"]  # ... but the other DAE seed says the opposite
    assert both["hi"] - both["lo"] > 2 * (alone["hi"] - alone["lo"])
    assert bootstrap_verdict(both) == f"{NO_DIFFERENCE} over 2 trained DAEs"


def test_bootstrap_rejects_what_does_not_pair():
    ones = np.ones((2, 3, 10), bool)
    with pytest.raises(ValueError, match="do not pair"):
        hierarchical_bootstrap(ones, np.ones((2, 4, 10), bool))
    with pytest.raises(ValueError, match="do not pair"):
        hierarchical_bootstrap(ones, np.ones((3, 3, 10), bool))
    with pytest.raises(ValueError, match="0/1"):
        hierarchical_bootstrap(ones, np.full((2, 3, 10), 0.5))
    with pytest.raises(ValueError, match="shape"):
        hierarchical_bootstrap(np.ones(10), np.ones(10))
    with pytest.raises(ValueError, match="level"):
        hierarchical_bootstrap(ones, ones, level=1.5)
    with pytest.raises(ValueError, match="valid: t, percentile"):
        hierarchical_bootstrap(ones, ones, method="bca")


@pytest.mark.parametrize("lo, hi, expected", [
    (0.001, 0.01, "codes better"), (-0.01, -0.001, "raw better"), (-0.01, 0.01, NO_DIFFERENCE)])
def test_bootstrap_verdict_wording_follows_the_scope(lo, hi, expected):
    over = {"dae_seeds": 1, "resampled": ["classifier_seeds", "test_images"]}
    interval = {"lo": lo, "hi": hi, "interval_over": over}
    assert bootstrap_verdict(interval) == f"{expected} for this one trained DAE"
    assert bootstrap_verdict(interval, scoped=False) == expected
    interval["interval_over"] = {"dae_seeds": 3, "resampled": ["dae_seeds", "classifier_seeds", "test_images"]}
    assert bootstrap_verdict(interval) == f"{expected} over 3 trained DAEs"
    assert bootstrap_verdict({"lo": 0.1, "hi": 0.1, "interval_over": {"dae_seeds": 1, "resampled": []}},
                             scoped=False).startswith("undetermined")
    assert scope({"dae_seeds": 1}) == "for this one trained DAE"
    assert scope({"dae_seeds": 1, "depends_on_dae": False}) == "(neither side depends on the DAE)"


@pytest.mark.parametrize("lo, hi, expected", [
    (-0.0003, 0.0065, "codes and raw within ±0.01"), (0.0006, 0.0071, "codes and raw within ±0.01"),
    (-0.01, 0.01, "codes and raw within ±0.01"), (0.012, 0.03, "codes better by more than 0.01"),
    (-0.03, -0.0101, "raw better by more than 0.01"), (0.004, 0.016, "a difference beyond ±0.01 not ruled out"),
    (-0.02, 0.02, "a difference beyond ±0.01 not ruled out")])
def test_size_verdict_places_the_interval_against_the_margin(lo, hi, expected):
    over = {"dae_seeds": 3, "resampled": ["dae_seeds", "classifier_seeds", "test_images"]}
    assert size_verdict({"lo": lo, "hi": hi, "interval_over": over}, 0.01) == expected
    assert size_verdict({"lo": lo, "hi": hi}, 0.01, "a", "b") == expected.replace("codes", "a").replace("raw", "b")


def test_size_verdict_is_stable_where_the_significance_verdict_flips():
    # the 3-DAE intervals of the study on four CPUs (README): two exclude 0 and two do not, all lie within +-0.01
    intervals = [(-0.0003, 0.0065), (-0.0013, 0.0055), (0.00005, 0.0059), (0.0006, 0.0071)]
    over = {"dae_seeds": 3, "resampled": ["dae_seeds", "classifier_seeds", "test_images"]}
    verdicts = {bootstrap_verdict({"lo": lo, "hi": hi, "interval_over": over}, scoped=False) for lo, hi in intervals}
    sizes = {size_verdict({"lo": lo, "hi": hi, "interval_over": over}, 0.01) for lo, hi in intervals}
    assert verdicts == {"codes better", NO_DIFFERENCE} and sizes == {"codes and raw within ±0.01"}
    assert size_verdict({"lo": 0.1, "hi": 0.1, "interval_over": {"resampled": []}}, 0.01).startswith("undetermined")
    with pytest.raises(ValueError, match="margin"):
        size_verdict({"lo": 0.0, "hi": 0.0}, 0.0)
