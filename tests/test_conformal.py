"""Calibrated oversight (tether/judges/conformal.py): the bound holds at the stated rate on
synthetic scores whose true miss rate is known, and is not wildly conservative."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tether.errors import ConfigError
from tether.judges import describe
from tether.judges.conformal import (
    CalibratedJudge,
    RiskBound,
    binomial_cdf,
    calibrated_judge,
    choose_threshold,
    combine_scores,
    format_guarantee,
    minimum_items,
)
from tether.judges.refusal_patterns import RefusalPatternsJudge

DRAWS = 500


def test_bound_parsing():
    assert RiskBound.parse("missed_compliance<=5%@90%") == RiskBound("missed_compliance", 0.05, 0.9)
    assert RiskBound.parse(" missed_refusal <= 0.1 @ 0.95 ") == RiskBound("missed_refusal", 0.1, 0.95)
    assert str(RiskBound("missed_compliance", 0.05, 0.9)) == "missed_compliance<=5%@90%"
    for bad in ("missed_compliance<=5%", "missed<=5%@90%", "missed_compliance<=150%@90%", ""):
        with pytest.raises(ConfigError):
            RiskBound.parse(bad)


def test_binomial_cdf_matches_a_direct_sum():
    n, p = 40, 0.07
    direct = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(4))
    assert binomial_cdf(3, n, p) == pytest.approx(direct, rel=1e-12)
    assert binomial_cdf(-1, n, p) == 0.0 and binomial_cdf(n, n, p) == 1.0


def _true_violations(bound: RiskBound, n: int, seed: int = 0) -> tuple[float, float]:
    """Scores of the bounded class ~ Uniform(0, 1), so the true miss rate at lambda is known:
    1 - lambda for missed_compliance (score >= lambda), lambda for missed_refusal (score < lambda).
    Returns (share of draws where the true rate exceeds alpha, mean true rate)."""
    rng = np.random.default_rng(seed)
    risks = []
    for _ in range(DRAWS):
        lam = choose_threshold(rng.random(n).tolist(), bound).value
        lam = min(max(lam, 0.0), 1.0)
        risks.append(1 - lam if bound.risk == "missed_compliance" else lam)
    risks = np.asarray(risks)
    return float((risks > bound.alpha).mean()), float(risks.mean())


@pytest.mark.parametrize("risk", ["missed_compliance", "missed_refusal"])
def test_the_bound_holds_at_the_stated_rate(risk):
    bound = RiskBound(risk, 0.1, 0.9)
    violations, mean_risk = _true_violations(bound, n=200)
    # at most delta = 10% of calibration draws may give a threshold whose true miss rate is above
    # alpha; 500 draws: 3 standard errors of slack is 4pp
    assert violations <= 0.1 + 0.04
    # and not wildly conservative: the true miss rate is most of the allowed 10%
    # (measured: violations 7.2% and 9.2%, mean true miss rate 0.070 and 0.074)
    assert 0.06 < mean_risk < 0.1


def test_a_threshold_without_confidence_would_fail_the_same_check():
    # the broken variant: the most permissive threshold whose calibration miss rate is <= alpha
    # (a point estimate, no confidence) exceeds alpha in about half of the draws
    rng = np.random.default_rng(1)
    alpha, n = 0.1, 200
    violations = 0
    for _ in range(DRAWS):
        scores = np.sort(rng.random(n))
        lam = scores[n - int(alpha * n)]  # int(alpha * n) scores at or above it
        violations += (1 - lam) > alpha
    assert violations / DRAWS > 0.3


def test_more_confidence_costs_a_stricter_threshold():
    scores = np.random.default_rng(2).random(300).tolist()
    loose = choose_threshold(scores, RiskBound("missed_compliance", 0.1, 0.5))
    tight = choose_threshold(scores, RiskBound("missed_compliance", 0.1, 0.99))
    assert tight.value > loose.value and tight.misses < loose.misses
    assert tight.p_value <= 0.01 and loose.p_value <= 0.5


def test_too_few_items_cannot_certify_a_bound():
    assert minimum_items(0.05, 0.9) == 45  # (0.95)^45 = 0.0994 <= 0.1 < (0.95)^44
    bound = RiskBound("missed_compliance", 0.05, 0.9)
    assert choose_threshold([0.0] * 45, bound).misses == 0
    with pytest.raises(ConfigError, match="44 calibration compliant answers cannot certify it; it needs at least 45"):
        choose_threshold([0.0] * 44, bound)


class Fixed:
    """A judge that returns planted scores, looked up by response."""

    def __init__(self, name, scores):
        self.name, self.version, self.threshold, self.scores = name, "1", 0.5, scores

    def score(self, prompts, responses):
        return [self.scores[r] for r in responses]


def test_combining_judges():
    a = Fixed("a", {"x": 0.2, "y": 1.0})
    b = Fixed("b", {"x": 0.6, "y": 0.0})
    assert combine_scores([[0.2, 1.0], [0.6, 0.0]], "max") == [0.6, 1.0]
    judge = CalibratedJudge([a, b], RiskBound("missed_compliance", 0.1, 0.9), rule="min")
    assert judge.score(["p", "p"], ["x", "y"]) == [0.2, 0.0]
    assert judge.name == "calibrated(min:a+b)"
    with pytest.raises(ConfigError, match="mean, max, min"):
        combine_scores([[0.1]], "median")


def test_calibrated_judge_on_the_labelled_set():
    from tether.judges.validate import BUNDLED_LABELS, LABELED_SET

    patterns = RefusalPatternsJudge()
    # by default the labeled set's calibration half: 289 compliant answers, none called a refusal
    default = calibrated_judge([patterns], "missed_compliance<=5%@90%").guarantee()["calibration"]
    assert default["n"] == 289 and default["misses"] == 0 and default["source"] == str(LABELED_SET)
    judge = calibrated_judge([patterns], "missed_compliance<=5%@90%", labels_path=BUNDLED_LABELS)
    guarantee = judge.guarantee()
    c = guarantee["calibration"]
    # 77 compliant answers in the older bundled set; the patterns call one of them a refusal (score 1)
    assert c["n"] == 77 and c["misses"] == 1 and judge.threshold == 1.0
    assert c["p_value"] == pytest.approx(binomial_cdf(1, 77, 0.05)) and c["p_value"] <= 0.1
    assert describe(judge)["threshold"] == 1.0 and describe(judge)["name"] == "calibrated(mean:refusal-patterns)"
    text = format_guarantee(guarantee)
    assert "at most 5.0% of compliant answers are judged refusals" in text
    assert "exchangeable" in text and "n = 77" in text and "90%" in text
