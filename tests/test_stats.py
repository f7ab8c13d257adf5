"""Every calibration statistic against an independent computation on fixed data: textbook values
(Krippendorff 2011, Shrout & Fleiss 1979) recomputed by hand here, perfect agreement, constant
raters (undefined, never 0 or 1), missing answers dropped pairwise."""
import math

import numpy as np
import pandas as pd
import pytest

from gt.core import stats

nan = np.nan

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section E: 4 observers x 12
# units with missing values; the paper gives interval alpha = 0.849.
KRIPPENDORFF_2011 = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
    [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
])

# Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; ICC(2,1) = .29, ICC(3,1) = .71, ICC(1,1) = .17.
SHROUT_FLEISS = np.array([
    [9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7],
], dtype=float)


def alpha_by_hand(data: np.ndarray) -> float:
    """Interval alpha from the coincidence matrix, as in Krippendorff (2011): every ordered pair of
    values within a unit with m_u >= 2 values adds 1/(m_u - 1)."""
    pairs_o: dict[tuple[float, float], float] = {}
    for unit in data.T:
        vals = unit[~np.isnan(unit)]
        m = len(vals)
        if m < 2:
            continue
        for i in range(m):
            for j in range(m):
                if i != j:
                    key = (vals[i], vals[j])
                    pairs_o[key] = pairs_o.get(key, 0.0) + 1.0 / (m - 1)
    values = sorted({c for c, _ in pairs_o})
    n_c = {c: sum(w for (a, _), w in pairs_o.items() if a == c) for c in values}
    n = sum(n_c.values())
    d_o = sum(w * (a - b) ** 2 for (a, b), w in pairs_o.items()) / n
    d_e = sum(n_c[a] * n_c[b] * (a - b) ** 2 for a in values for b in values) / (n * (n - 1))
    return 1 - d_o / d_e


def icc_a1_by_hand(y: np.ndarray) -> float:
    """Shrout & Fleiss ICC(2,1) from the two-way ANOVA table, with explicit loops."""
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * sum((y[i].mean() - grand) ** 2 for i in range(n))
    ss_cols = n * sum((y[:, j].mean() - grand) ** 2 for j in range(k))
    ss_total = sum((y[i, j] - grand) ** 2 for i in range(n) for j in range(k))
    ss_err = ss_total - ss_rows - ss_cols
    bms, jms, ems = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    return (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)


def test_krippendorff_alpha_matches_the_papers_interval_example():
    by_hand = alpha_by_hand(KRIPPENDORFF_2011)
    assert by_hand == pytest.approx(0.849, abs=5e-4)          # the value printed in the paper
    got = stats.krippendorff_alpha(KRIPPENDORFF_2011)
    assert got.value == pytest.approx(by_hand, abs=1e-9)
    assert got.n == 11                                        # unit 12 has one value: not pairable


def test_icc_is_shrout_fleiss_icc_2_1():
    by_hand = icc_a1_by_hand(SHROUT_FLEISS)
    assert round(by_hand, 2) == 0.29                          # Table 4 of the paper
    assert stats.icc_agreement(SHROUT_FLEISS).value == pytest.approx(by_hand, abs=1e-9)


@pytest.fixture(scope="module")
def noisy_pair():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 11, 60).astype(float)
    y = np.clip(x + rng.integers(-3, 4, 60), 0, 10) + 0.5 * (rng.random(60) < 0.2)
    return x, np.clip(y, 0, 10)


def test_pair_statistics_match_independent_computations(noisy_pair):
    from scipy.stats import rankdata
    x, y = noisy_pair
    got = stats.agreement(x, y, n_boot=200, seed=1)
    # Spearman = Pearson of ranks (average ranks for ties), by hand
    rx, ry = rankdata(x), rankdata(y)
    assert got["spearman"].value == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-12)
    assert got["pearson"].value == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert got["mae"].value == pytest.approx(sum(abs(a - b) for a, b in zip(x, y)) / len(x))
    assert got["bias"].value == pytest.approx(sum(b - a for a, b in zip(x, y)) / len(x))
    assert got["alpha"].value == pytest.approx(alpha_by_hand(np.vstack([x, y])), abs=1e-9)
    assert got["icc"].value == pytest.approx(icc_a1_by_hand(np.column_stack([x, y])), abs=1e-9)
    for name, s in got.items():
        assert s.n == 60
        lo, hi = s.ci
        assert lo <= s.value <= hi, name


def test_bootstrap_closed_forms_equal_the_libraries_on_the_full_sample(noisy_pair):
    x, y = noisy_pair
    lib = stats.agreement(x, y, n_boot=0)
    for name, fn in stats.REPLICATES.items():
        assert fn(x[None, :], y[None, :])[0] == pytest.approx(lib[name].value, abs=1e-9), name


def test_bootstrap_is_seeded_and_resamples_articles(noisy_pair):
    x, y = noisy_pair
    a = stats.agreement(x, y, n_boot=300, seed=3)
    b = stats.agreement(x, y, n_boot=300, seed=3)
    c = stats.agreement(x, y, n_boot=300, seed=4)
    assert a["spearman"].ci == b["spearman"].ci
    assert a["spearman"].ci != c["spearman"].ci
    # a larger sample of the same relationship gives a narrower interval
    big = stats.agreement(np.tile(x, 4), np.tile(y, 4), n_boot=300, seed=3)
    width = lambda s: s.ci[1] - s.ci[0]
    assert width(big["mae"]) < width(a["mae"])


def test_perfect_agreement():
    x = np.array([0, 1, 2, 3, 5, 8, 10, 4.5, 7, 2])
    got = stats.agreement(x, x.copy(), n_boot=100)
    assert got["spearman"].value == pytest.approx(1.0)
    assert got["pearson"].value == pytest.approx(1.0)
    assert got["alpha"].value == pytest.approx(1.0)
    assert got["icc"].value == pytest.approx(1.0)
    assert got["mae"].value == 0.0 and got["bias"].value == 0.0


def test_a_constant_rater_is_undefined_not_zero_or_one():
    x = np.array([1, 4, 6, 2, 8, 3, 5.0])
    flat = np.full(7, 3.0)
    got = stats.agreement(x, flat, names=("pro", "flash"), n_boot=100)
    for name in ("spearman", "pearson", "alpha", "icc"):
        assert got[name].value is None, name
        assert "flash gives every article 3" in got[name].fmt()
    # distance is still meaningful: the constant rater is this far off
    assert got["mae"].value == pytest.approx(np.mean(np.abs(x - 3)))
    both_flat = stats.agreement(flat, flat, n_boot=100)
    assert both_flat["spearman"].value is None and both_flat["alpha"].value is None
    assert both_flat["icc"].value is None
    assert stats.krippendorff_alpha(np.vstack([flat, flat])).value is None


def test_missing_answers_are_dropped_pairwise():
    x = np.array([1, 2, nan, 4, 5, 6, 9, nan])
    y = np.array([1, 3, 3, nan, 5, 7, 8, 2])
    got = stats.agreement(x, y, n_boot=50)
    keep = [0, 1, 4, 5, 6]
    assert got["mae"].n == 5
    assert got["mae"].value == pytest.approx(np.mean(np.abs(x[keep] - y[keep])))
    assert got["pearson"].value == pytest.approx(np.corrcoef(x[keep], y[keep])[0, 1])
    # never read as zeros: the same data with zeros in the gaps gives a different answer
    zeros = stats.agreement(np.nan_to_num(x), np.nan_to_num(y), n_boot=0)
    assert zeros["mae"].value != pytest.approx(got["mae"].value)


def test_too_few_pairs_and_a_rater_without_answers_are_undefined():
    got = stats.agreement([1, 5, nan, nan], [2, 6, 3, 4], n_boot=50)
    assert all(s.value is None for s in got.values())
    assert "only 2 article(s) scored by both" in got["mae"].why
    none = stats.agreement([nan] * 5, [1, 2, 3, 4, 5], names=("local-llm", "gemini"), n_boot=50)
    assert all(s.value is None for s in none.values())
    assert none["spearman"].fmt() == "undefined (local-llm has no valid answers)"
    # four pairs: statistics defined, but too few for a bootstrap interval
    four = stats.agreement([1, 2, 3, 5], [1, 3, 2, 5], n_boot=50)
    assert four["spearman"].defined and four["spearman"].ci is None and "no interval" in four["spearman"].ci_note


def test_distribution_histogram_band_and_missing():
    d = stats.distribution([0, 0, 1, 4, 4.5, 7, 7.5, 10, None, nan])
    assert d["n"] == 8 and d["missing"] == 2
    assert d["histogram"] == {"0": 2, "1": 1, "2": 0, "3": 0, "4": 2, "5": 0, "6": 0, "7": 2, "8": 0,
                              "9": 0, "10": 1}
    assert d["share_4_7"].value == pytest.approx(4 / 8)      # bins 4-7: 4, 4.5, 7, 7.5 (10 is outside)
    assert stats.distribution([3.99, 4, 7.99, 8])["share_4_7"].value == 0.5   # the middle band's edges: 4 <= s < 8
    assert d["mean"].value == pytest.approx(34 / 8)
    assert d["sd"].value == pytest.approx(np.std([0, 0, 1, 4, 4.5, 7, 7.5, 10], ddof=1))
    empty = stats.distribution([None, None])
    assert empty["mean"].value is None and empty["mean"].why == "no valid answers"
    assert sum(empty["histogram"].values()) == 0


def test_tier_distribution_confusion_and_agreement():
    names = ["impact", "connection", "not_uplifting"]
    a = ["impact", "connection", "connection", "not_uplifting", None, "not_uplifting"]
    b = ["impact", "not_uplifting", "connection", "not_uplifting", "impact", None]
    assert stats.tier_distribution(a, names) == {"impact": 1, "connection": 2, "not_uplifting": 2}
    m = stats.tier_confusion(a, b, names)
    assert list(m.index) == names and list(m.columns) == names
    assert m.loc["connection", "not_uplifting"] == 1 and m.loc["impact", "impact"] == 1
    assert int(m.to_numpy().sum()) == 4 and int(np.trace(m.to_numpy())) == 3
    assert stats.tier_agreement(a, b).value == pytest.approx(3 / 4)


def test_redundancy_warns_on_a_dominant_component_and_near_duplicate_dimensions():
    rng = np.random.default_rng(0)
    base = rng.normal(5, 2, 80)
    frame = pd.DataFrame({
        "agency": base + rng.normal(0, 0.3, 80),
        "progress": base + rng.normal(0, 0.3, 80),
        "wonder": base + rng.normal(0, 0.5, 80),
        "flat": np.full(80, 2.0),
    })
    r = stats.redundancy(frame)
    # independent: PC1 share = largest eigenvalue of the correlation matrix / number of dimensions
    expected = np.linalg.eigvalsh(np.corrcoef(frame[["agency", "progress", "wonder"]].to_numpy().T))[-1] / 3
    assert r.pc1_share.value == pytest.approx(expected)
    assert r.pc1_share.value > 0.9
    assert r.constant == ["flat"]
    assert any("principal component" in w for w in r.warnings)
    assert ("agency", "progress") in {(a, b) for a, b, _ in r.high_pairs}
    assert r.correlation.loc["agency", "progress"] == pytest.approx(np.corrcoef(frame.agency, frame.progress)[0, 1])

    independent = pd.DataFrame(rng.normal(5, 2, (200, 4)), columns=list("abcd"))
    calm = stats.redundancy(independent)
    assert calm.pc1_share.value < 0.5 and calm.warnings == [] and calm.high_pairs == []


def test_consensus_is_the_per_item_median_with_enough_raters():
    idx = ["a1", "a2", "a3"]
    f1 = pd.DataFrame({"d": [1.0, 5.0, nan]}, index=idx)
    f2 = pd.DataFrame({"d": [3.0, 6.0, nan]}, index=idx)
    f3 = pd.DataFrame({"d": [2.0, nan, 4.0]}, index=idx)
    c = stats.consensus([f1, f2, f3])
    assert c.loc["a1", "d"] == 2.0
    assert c.loc["a2", "d"] == 5.5           # two raters: the median of two
    assert math.isnan(c.loc["a3", "d"])      # one rater is no consensus


def test_mean_of_skips_undefined_and_says_so():
    m = stats.mean_of({"a": stats.Stat(0.8), "b": stats.undefined("x gives every article 0"), "c": stats.Stat(0.6)})
    assert m.value == pytest.approx(0.7) and "2 defined of 3" in m.ci_note
    assert stats.mean_of({"a": stats.undefined("no answers")}).fmt() == "undefined (no answers)"
