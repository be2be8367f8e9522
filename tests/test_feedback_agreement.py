"""Agreement statistics: Krippendorff's alpha against the textbook example, kappa and the rest by hand."""

import math

import pytest

from tether.feedback.agreement import (
    ai_human_agreement,
    cohen_kappa,
    gold_accuracy,
    inconsistency_note,
    inconsistent_pairs,
    krippendorff_alpha,
    left_bias,
    median_seconds,
    pairwise_kappas,
    quality_report,
    raw_agreement,
    reliability_data,
)
from tether.feedback.records import Candidate, FeedbackItem, Judgment

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", example C: 4 observers,
# 12 units, values 1-5, missing data (None). Published: nominal .743, ordinal .815, interval .849.
TEXTBOOK = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def units(rows):
    data = {}
    for observer, row in enumerate(rows):
        for unit, value in enumerate(row):
            if value is not None:
                data.setdefault(unit, {})[f"obs{observer}"] = value
    return data


@pytest.mark.parametrize("level, published", [("nominal", 0.743), ("ordinal", 0.815),
                                              ("interval", 0.849)])
def test_alpha_matches_krippendorffs_worked_example(level, published):
    assert krippendorff_alpha(units(TEXTBOOK), level) == pytest.approx(published, abs=5e-4)


def test_alpha_matches_the_krippendorff_package_on_random_data_with_gaps():
    krippendorff = pytest.importorskip("krippendorff")
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(3)
    for _ in range(4):
        matrix = rng.integers(1, 5, size=(3, 25)).astype(float)
        matrix[rng.random(matrix.shape) < 0.3] = np.nan
        rows = [[None if math.isnan(v) else int(v) for v in row] for row in matrix]
        for level in ("nominal", "ordinal", "interval"):
            expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement=level)
            assert krippendorff_alpha(units(rows), level) == pytest.approx(expected, abs=1e-12)


def test_alpha_and_kappa_by_hand():
    # A: x x y y, B: x y y y. Coincidences: o[x,x]=2, o[x,y]=o[y,x]=1, o[y,y]=4; n_x=3, n_y=5, n=8.
    # D_o = 2/8; D_e = 2*3*5/(8*7) = 30/56; alpha = 1 - (2/8)/(30/56) = 8/15.
    data = {0: {"A": "x", "B": "x"}, 1: {"A": "x", "B": "y"}, 2: {"A": "y", "B": "y"},
            3: {"A": "y", "B": "y"}, 4: {"A": "x"}}  # unit 4 has one value: not pairable
    assert krippendorff_alpha(data) == pytest.approx(8 / 15)
    # kappa: p_o = 3/4, p_e = .5*.25 + .5*.75 = .5 -> (0.75 - 0.5) / 0.5 = 0.5
    assert cohen_kappa(["x", "x", "y", "y"], ["x", "y", "y", "y"]) == pytest.approx(0.5)
    assert pairwise_kappas(data) == [{"a": "A", "b": "B", "shared": 4, "agreement": 0.75,
                                      "kappa": pytest.approx(0.5)}]


def test_undefined_statistics_are_none():
    assert krippendorff_alpha({0: {"A": 1, "B": 1}, 1: {"A": 1, "B": 1}}) is None  # no variation
    assert krippendorff_alpha({0: {"A": 1}, 1: {"B": 2}}) is None  # nothing pairable
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None
    assert raw_agreement({0: {"A": 1}}) is None
    with pytest.raises(ValueError, match="unknown level"):
        krippendorff_alpha({0: {"A": 1, "B": 2}}, "ratio")


def test_raw_agreement_counts_pairs_within_units():
    # unit 0: x x y -> 3 pairs, 1 agrees; unit 1: x x -> 1 pair, agrees: 2 / 4
    assert raw_agreement({0: {"A": "x", "B": "x", "C": "y"}, 1: {"A": "x", "B": "x"}}) == 0.5


def item(item_id, gold=None, k=2):
    return FeedbackItem(id=item_id, prompt="p", gold=gold,
                        candidates=[Candidate(id=f"c{i}", text=f"t{i}", model=f"m{i}") for i in range(k)])


def pairwise(item_id, annotator, winner, left="c0", seconds=None, source="human", reason=None):
    return Judgment(item_id=item_id, task="pairwise", verdict={"winner": winner}, source=source,
                    annotator=annotator, shown_left=left, seconds=seconds, reason=reason)


def test_per_annotator_numbers():
    items = {"g": item("g", gold={"winner": "c1"}), "h": item("h", gold={"winner": "c0"}), "u": item("u")}
    judgments = [pairwise("g", "ann", "c1", left="c1", seconds=4.0),
                 pairwise("h", "ann", "c1", left="c1", seconds=10.0),
                 pairwise("u", "ann", "tie", seconds=7.0),
                 pairwise("u", "bob", "c0", left="c1")]
    assert gold_accuracy(judgments, items) == {
        "ann": {"gold_judged": 2, "gold_correct": 1, "gold_accuracy": 0.5}}
    assert left_bias(judgments) == pytest.approx(2 / 3)  # ties excluded: c1/c1, c1/c1, c0/c1
    assert median_seconds(judgments) == 7.0
    assert median_seconds([pairwise("u", "bob", "c0")]) is None


def test_ordinal_pairwise_values_are_sides_of_the_first_candidate():
    items = {"a": item("a")}
    judgments = [pairwise("a", "x", "c0"), pairwise("a", "y", "tie"), pairwise("a", "z", "c1")]
    assert reliability_data(judgments, items, level="ordinal") == {"a": {"x": 1, "y": 0, "z": -1}}
    assert reliability_data(judgments, items) == {"a": {"x": "c0", "y": "tie", "z": "c1"}}


def test_rankings_are_units_per_candidate():
    judgments = [Judgment(item_id="r", task="ranking", verdict={"ranks": {"c0": 1, "c1": 2}}, annotator="a"),
                 Judgment(item_id="r", task="ranking", verdict={"not_rankable": True}, annotator="b")]
    assert reliability_data(judgments, task="ranking") == {("r", "c0"): {"a": 1}, ("r", "c1"): {"a": 2}}


def test_quality_report_shape_and_values():
    items = [item("a"), item("b"), item("c"), item("g", gold={"winner": "c0"})]
    judgments = [pairwise("a", "ann", "c0", seconds=2.0), pairwise("a", "bob", "c0", seconds=4.0),
                 pairwise("b", "ann", "c1"), pairwise("b", "bob", "c0"),
                 pairwise("c", "ann", "c1"), pairwise("c", "bob", "c1"),
                 pairwise("g", "ann", "c0")]
    report = quality_report(judgments, items)
    assert report["judgments"] == 7 and report["items_judged"] == 4 and report["annotators"] == 2
    task = report["tasks"]["pairwise"]
    assert task["units"] == 3
    assert task["raw_agreement"] == pytest.approx(2 / 3)
    # ann: c0 c1 c1, bob: c0 c0 c1 -> o[c0,c0]=2, o[c1,c1]=2, o[c0,c1]=o[c1,c0]=1; n=6, n_c=3 each
    # D_o = 2/6, D_e = 2*9/30 -> alpha = 1 - (1/3)/(3/5) = 4/9
    assert task["alpha_nominal"] == pytest.approx(4 / 9)
    assert task["alpha_ordinal"] == pytest.approx(4 / 9)  # two values: ordinal == nominal
    # p_o = 2/3; p_e = (1/3)(2/3) + (2/3)(1/3) = 4/9 -> (2/3 - 4/9) / (5/9) = 2/5
    assert task["kappa"][0]["kappa"] == pytest.approx(2 / 5)
    ann = report["per_annotator"][0]
    assert ann == {"annotator": "ann", "judgments": 4, "left_bias": 0.5, "median_seconds": 2.0,
                   "gold_judged": 1, "gold_correct": 1, "gold_accuracy": 1.0}
    assert report["per_annotator"][1]["gold_accuracy"] is None


def test_ai_human_agreement_pairs_each_human_vote_with_the_ai_verdict():
    ai = [pairwise("a", "ai", "c0"), pairwise("b", "ai", "c1"),
          pairwise("c", "ai", "tie", source="ai", reason=inconsistency_note([("c1", "c0")]) + "\n..."),
          pairwise("z", "ai", "c0")]
    human = [pairwise("a", "h1", "c0"), pairwise("a", "h2", "c1"), pairwise("b", "h1", "c1"),
             pairwise("c", "h1", "both_bad"), pairwise("q", "h1", "c0")]
    report = ai_human_agreement(ai, human)
    assert report["shared_items"] == 3 and report["comparisons"] == 4
    assert report["agreement"] == 0.75  # a/h1, b/h1, c/h1 (both_bad reads as tie) agree
    assert report["confusion"] == {"c0": {"c0": 1, "c1": 1}, "c1": {"c1": 1}, "tie": {"tie": 1}}
    assert report["ai_inconsistent"] == 1
    # ai c0 c0 c1 tie / human c0 c1 c1 tie: p_o = 3/4, p_e = (2*1 + 1*2 + 1*1)/16 = 5/16
    assert report["kappa"] == pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16))


def test_inconsistent_pairs_are_read_back_from_ai_reasons_only():
    note = inconsistency_note([("c1", "c0"), ("c0", "c2")])
    assert note == 'inconsistent pairs: [["c0", "c1"], ["c0", "c2"]]'
    ai = pairwise("a", "ai", "tie", source="ai", reason=note + "\nraw outputs")
    assert inconsistent_pairs(ai) == {("c0", "c1"), ("c0", "c2")}
    assert inconsistent_pairs(pairwise("a", "h", "tie", reason=note)) == set()  # people: no marker
    assert inconsistent_pairs(pairwise("a", "ai", "tie", source="ai")) == set()
