"""Agreement and correlation functions cross-checked against independent implementations.

statsmodels for Fleiss' / Randolph's kappa, the `krippendorff` package for ordinal alpha, scipy and a
plain O(n^2) pair count for the rank correlations, on hand-built tables with ties, unanimous items,
missing ratings and items with fewer raters.
"""

from __future__ import annotations

import itertools
import math
import re

import krippendorff
import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from annotation import agreement as agr


def random_ratings(rng: np.random.Generator, items: int, raters: int, categories: int, p=None) -> np.ndarray:
    return rng.choice(categories, size=(items, raters), p=p)


def table_from(ratings: np.ndarray, categories: int) -> np.ndarray:
    table, _ = aggregate_raters(ratings, n_cat=categories)
    return table


@pytest.mark.parametrize("seed", range(6))
def test_kappas_match_statsmodels_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    raters = int(rng.integers(2, 6))
    ratings = random_ratings(rng, int(rng.integers(5, 40)), raters, 2, p=[0.7, 0.3])
    table = table_from(ratings, 2)
    assert agr.fleiss_kappa(table).value == pytest.approx(sm_fleiss_kappa(table, method="fleiss"))
    assert agr.randolph_kappa(table).value == pytest.approx(sm_fleiss_kappa(table, method="randolph"))
    # free-marginal kappa is never below the fixed-marginal one (Warrens 2010)
    assert agr.randolph_kappa(table).value >= agr.fleiss_kappa(table).value - 1e-12


def test_kappas_on_a_hand_built_table_with_unanimous_items():
    # 4 items x 3 raters, binary: two unanimous items, two split 2-1
    table = np.array([[3, 0], [0, 3], [2, 1], [1, 2]])
    # P_i = (sum n^2 - 3) / 6: 1, 1, 1/3, 1/3 -> P = 2/3; shares 0.5/0.5 -> Pe = 0.5; kappa = 1/3
    assert agr.fleiss_kappa(table).value == pytest.approx(1 / 3)
    assert agr.randolph_kappa(table).value == pytest.approx(1 / 3)
    assert agr.percent_agreement(table).value == pytest.approx(200 / 3)
    assert agr.unanimous_items(table) == 2
    assert agr.fleiss_kappa(table).value == pytest.approx(sm_fleiss_kappa(table))


def test_undefined_kappas_say_why():
    identical = np.array([[3, 0], [3, 0], [3, 0]])
    fleiss = agr.fleiss_kappa(identical)
    assert fleiss.value is None and "one category" in fleiss.reason
    assert np.isnan(sm_fleiss_kappa(identical))  # statsmodels would print NaN here
    assert agr.randolph_kappa(identical).value == pytest.approx(1.0)
    one_item = agr.fleiss_kappa(np.array([[2, 1]]))
    assert one_item.value is None and "at least 2 items" in one_item.reason
    unequal = agr.fleiss_kappa(np.array([[2, 1], [1, 1]]))
    assert unequal.value is None and "same number" in unequal.reason
    assert agr.fleiss_kappa(identical).to_json() == {"value": None, "reason": fleiss.reason, "ci_low": None,
                                                     "ci_high": None, "n": 3, "ci_note": None}


def test_kappa_rater_count_keeps_most_ratings():
    table = np.array([[3, 0], [1, 2], [2, 1], [1, 1], [1, 0], [0, 2]])  # raters 3,3,3,2,1,2
    assert agr.kappa_rater_count(table) == 3
    assert agr.kappa_rater_count(np.array([[1, 0], [0, 1]])) is None
    # a tie in item counts goes to the larger rater count (more ratings kept)
    assert agr.kappa_rater_count(np.array([[2, 0], [1, 1], [2, 1], [3, 0]])) == 3


def test_a_ci_is_withheld_when_many_resamples_are_undefined():
    from annotation.analysis import QCSettings, agreement_from_tables
    # two unanimous items and one split 2-1: about a quarter of the item resamples hold only unanimous items,
    # where kappa and alpha are undefined; an interval over the rest would leave out perfect agreement
    binary = np.array([[0, 3], [1, 2], [0, 3]])
    full = np.array([[0, 0, 0, 3], [0, 1, 0, 2], [0, 0, 0, 3]])
    out = agreement_from_tables(binary, full, np.random.default_rng(0), QCSettings(n_boot=1000))
    for name in ("fleiss_kappa_binary", "krippendorff_alpha_ordinal"):
        stat = out[name]
        assert stat["value"] is not None and stat["ci_low"] is None and stat["ci_high"] is None
        assert re.match(r"no CI: undefined in 2\d% of resamples, too few items", stat["ci_note"]), stat["ci_note"]
    few = np.array([*np.linspace(0, 1, 97), np.nan, np.nan, np.nan])  # 3% undefined: kept, and said
    low, high, note = agr.checked_ci(few)
    assert low is not None and high is not None and note == "3.0% of resamples undefined, left out"
    assert agr.checked_ci(np.linspace(0, 1, 100))[2] is None


def reliability_matrix(ratings: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """raters x units with NaN for missing ratings, as the krippendorff package wants it."""
    data = ratings.astype(float).T.copy()
    data[missing.T] = np.nan
    return data


def table_with_missing(ratings: np.ndarray, missing: np.ndarray, categories: int) -> np.ndarray:
    table = np.zeros((ratings.shape[0], categories), dtype=int)
    for i, j in itertools.product(range(ratings.shape[0]), range(ratings.shape[1])):
        if not missing[i, j]:
            table[i, ratings[i, j]] += 1
    return table


@pytest.mark.parametrize("seed", range(8))
def test_ordinal_alpha_matches_krippendorff_package_with_missing_ratings(seed):
    rng = np.random.default_rng(100 + seed)
    items, raters = int(rng.integers(4, 30)), int(rng.integers(2, 6))
    # correlated raters: a latent item level plus noise, on a 4-point scale
    latent = rng.integers(0, 4, size=items)
    ratings = np.clip(latent[:, None] + rng.integers(-1, 2, size=(items, raters)), 0, 3)
    missing = rng.random((items, raters)) < 0.25  # missing ratings, some items end with 0 or 1 rater
    table = table_with_missing(ratings, missing, 4)
    expected = krippendorff.alpha(reliability_data=reliability_matrix(ratings, missing),
                                  level_of_measurement="ordinal", value_domain=[0, 1, 2, 3])
    assert agr.krippendorff_alpha_ordinal(table).value == pytest.approx(expected)


def test_ordinal_alpha_differs_from_nominal_and_handles_degenerate_cases():
    # disagreements between neighbours cost less under the ordinal metric than far ones
    near = np.array([[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 2, 1], [1, 0, 0, 2]])
    matrix = np.array([[0, 0, 1], [1, 1, 2], [2, 2, 3], [3, 3, 0]]).T.astype(float)
    assert agr.krippendorff_alpha_ordinal(near).value == pytest.approx(
        krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal", value_domain=[0, 1, 2, 3]))
    assert agr.krippendorff_alpha_ordinal(near).value != pytest.approx(
        krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal", value_domain=[0, 1, 2, 3]))
    same = agr.krippendorff_alpha_ordinal(np.array([[0, 3, 0, 0], [0, 2, 0, 0]]))
    assert same.value is None and "identical" in same.reason
    lonely = agr.krippendorff_alpha_ordinal(np.array([[1, 0, 0, 0], [0, 0, 1, 0]]))
    assert lonely.value is None and "two or more" in lonely.reason
    perfect = np.array([[3, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 3]])
    assert agr.krippendorff_alpha_ordinal(perfect).value == pytest.approx(1.0)


def test_percent_agreement_ignores_single_rater_items():
    table = np.array([[2, 0], [1, 1], [1, 0]])  # third item has one rater
    assert agr.percent_agreement(table).value == pytest.approx(50.0)
    assert agr.percent_agreement(table).n == 2
    assert agr.unanimous_items(table) == 1
    assert agr.percent_agreement(np.array([[1, 0]])).value is None


def naive_kendall_tau_b(x, y) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx * dy > 0:
            concordant += 1
        else:
            discordant += 1
    return (concordant - discordant) / math.sqrt((concordant + discordant + ties_x) *
                                                 (concordant + discordant + ties_y))


@pytest.mark.parametrize("seed", range(5))
def test_rank_correlations_with_ties_match_scipy_and_pair_counts(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    human = rng.integers(0, 4, size=n) / 3  # few distinct values: many ties, like item scores
    auto = np.round(human * 50 + rng.normal(0, 20, size=n))
    assert agr.spearman(human, auto) == pytest.approx(scipy_stats.spearmanr(human, auto).statistic)
    assert agr.kendall(human, auto) == pytest.approx(naive_kendall_tau_b(human, auto))
    assert agr.kendall(human, auto) == pytest.approx(scipy_stats.kendalltau(human, auto).statistic)


def test_correlations_undefined_when_constant_or_too_short():
    assert agr.spearman([1, 1, 1, 1], [1, 2, 3, 4]) is None
    assert agr.kendall([1, 2], [2, 1]) is None
    assert agr.correlation_undefined_reason(np.array([1.0, 2.0]), np.array([1.0, 2.0])).startswith("needs at least 3")
    assert "automatic" in agr.correlation_undefined_reason(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0]))


def test_bootstrap_means_are_seeded_and_centred():
    values = np.arange(50, dtype=float)
    first = agr.bootstrap_means(values, 2000, np.random.default_rng(3), chunk_elements=1000)
    again = agr.bootstrap_means(values, 2000, np.random.default_rng(3))
    np.testing.assert_allclose(first, again)  # chunking does not change the stream
    assert first.mean() == pytest.approx(values.mean(), abs=0.5)
    assert first.std() == pytest.approx(values.std() / math.sqrt(50), rel=0.1)
    low, high = agr.percentile_ci(first)
    assert low < values.mean() < high
    assert agr.percentile_ci(np.array([np.nan, np.nan])) == (None, None)


@pytest.mark.parametrize("seed", range(3))
def test_fast_bootstrap_spearman_equals_spearman_of_each_resample(seed):
    rng = np.random.default_rng(seed)
    n = 40
    human = rng.integers(0, 4, size=n) / 3
    auto = np.round(rng.normal(size=n), 1)  # ties in both
    idx = rng.integers(0, n, size=(25, n))
    fast = agr.bootstrap_spearman(human, auto, idx, chunk_elements=300)
    slow = [scipy_stats.spearmanr(human[row], auto[row]).statistic for row in idx]
    np.testing.assert_allclose(fast, slow, rtol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_numpy_kendall_and_ranks_equal_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(3, 120))
        x = rng.integers(0, int(rng.integers(2, 8)), size=n) / 9
        y = np.round(rng.normal(size=n), int(rng.integers(0, 2)))
        np.testing.assert_allclose(agr.rankdata(y), scipy_stats.rankdata(y))
        if len(set(x)) > 1 and len(set(y)) > 1:
            assert agr.kendall_tau_b(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic, abs=1e-12)
    assert agr.count_inversions(np.array([3, 1, 2, 0])) == 5


@pytest.mark.parametrize("seed", range(3))
def test_bootstrap_kendall_equals_kendall_of_each_resample(seed):
    rng = np.random.default_rng(seed)
    n = 50
    human = rng.integers(0, 10, size=n) / 9          # few levels: the draw-count path
    auto = np.round(rng.normal(size=n), 1)
    idx = rng.integers(0, n, size=(30, n))
    slow = [scipy_stats.kendalltau(human[row], auto[row]).statistic for row in idx]
    np.testing.assert_allclose(agr.bootstrap_kendall(human, auto, idx), slow, rtol=1e-9)
    np.testing.assert_allclose(agr.bootstrap_kendall(auto, human, idx), slow, rtol=1e-9)
    many = rng.normal(size=n)                          # many levels on both sides: one by one
    slow = [scipy_stats.kendalltau(many[row], auto[row]).statistic for row in idx]
    np.testing.assert_allclose(agr.bootstrap_kendall(many, auto, idx), slow, rtol=1e-9)


def test_bootstrap_agreement_equals_the_statistics_of_each_resample():
    rng = np.random.default_rng(5)
    ratings = random_ratings(rng, 40, 3, 4)
    full = table_from(ratings, 4)
    full[::7] = full[::7] - np.eye(4, dtype=int)[ratings[::7, 0]]   # some items with 2 raters
    binary = np.stack([full[:, :2].sum(axis=1), full[:, 2:].sum(axis=1)], axis=1)
    idx = rng.integers(0, 40, size=(25, 40))
    samples = agr.bootstrap_agreement(binary, full, 3, agr.resample_weights(idx, 40))
    for b, row in enumerate(idx):
        kappa_table = binary[row][binary[row].sum(axis=1) == 3]
        assert samples["fleiss"][b] == pytest.approx(agr.fleiss_kappa(kappa_table).value)
        assert samples["randolph"][b] == pytest.approx(agr.randolph_kappa(kappa_table).value)
        assert samples["alpha"][b] == pytest.approx(agr.krippendorff_alpha_ordinal(full[row]).value)
    by_type = agr.bootstrap_agreement_resamples(binary, full, 3, 4000, np.random.default_rng(1))
    by_index = agr.bootstrap_agreement(binary, full, 3, agr.resample_weights(
        np.random.default_rng(2).integers(0, 40, size=(4000, 40)), 40))
    for name in ("fleiss", "randolph", "alpha"):   # the same sampling distribution
        assert np.nanmean(by_type[name]) == pytest.approx(np.nanmean(by_index[name]), abs=0.01)
        assert np.nanstd(by_type[name]) == pytest.approx(np.nanstd(by_index[name]), rel=0.08)
