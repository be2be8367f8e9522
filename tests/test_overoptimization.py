"""Best-of-n overoptimization audit: the estimator against enumeration, the Gao fit, and the
planted length-hacking case, whose gold peak is computed by hand below."""

import itertools
import json
import math
import random

import numpy as np
import pytest

from tether.audit.overoptimization import (
    analyse,
    best_of_n_expectation,
    best_of_n_weights,
    fit_bon_gold,
    kl_best_of_n,
    main,
    n_for_kl,
    overoptimization_point,
    sweep_sizes,
)
from tether.rewards.planted import length_proxy, make_length_penalized_gold, words
from tether.rewards.resolve import resolve_reward


def brute_force(proxy, gold, n):
    """Mean over every size-n subset of (proxy, gold) of its best-by-proxy sample; tied best
    samples share the pick equally (a random tie-break)."""
    totals, count = np.zeros(2), 0
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        tied = [i for i in subset if proxy[i] == top]
        totals += [top, sum(gold[i] for i in tied) / len(tied)]
        count += 1
    return totals / count


def test_estimator_equals_enumeration_of_all_subsets():
    rng = random.Random(0)
    proxy = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]  # ties: 1, 3, 5
    gold = [rng.uniform(-2, 2) for _ in proxy]
    for n in range(1, len(proxy) + 1):
        expected = brute_force(proxy, gold, n)
        assert best_of_n_expectation(proxy, gold, n) == pytest.approx(tuple(expected), abs=1e-12), n


def test_weights_and_kl():
    for n in (1, 7, 64, 256):
        weights = best_of_n_weights(256, n)
        assert weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert best_of_n_weights(256, 1) == pytest.approx(np.full(256, 1 / 256))
    assert best_of_n_weights(256, 256)[-1] == 1.0
    assert kl_best_of_n(1) == 0.0
    assert kl_best_of_n(2) == pytest.approx(math.log(2) - 0.5)
    assert n_for_kl(kl_best_of_n(37.0)) == pytest.approx(37.0, rel=1e-9)
    assert sweep_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert sweep_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_gao_fit_recovers_alpha_beta_and_the_peak():
    d = np.sqrt([kl_best_of_n(n) for n in sweep_sizes(256)])
    fit = fit_bon_gold(d, d * (2.0 - 0.5 * d))
    assert fit["alpha"] == pytest.approx(2.0) and fit["beta"] == pytest.approx(0.5)
    assert fit["peak_sqrt_kl"] == pytest.approx(2.0) and fit["peak_kl"] == pytest.approx(4.0)
    assert kl_best_of_n(fit["peak_n"]) == pytest.approx(4.0)
    assert fit["r_squared"] == pytest.approx(1.0)
    rising = fit_bon_gold(d, 1.5 * d)
    assert rising["peak_n"] is None and rising["beta"] == pytest.approx(0.0, abs=1e-9)


def planted_texts(rng):
    """16 completions of 1..16 distinct words, shuffled."""
    texts = [" ".join(f"w{k}" for k in range(length)) for length in range(1, 17)]
    rng.shuffle(texts)
    return texts


def test_planted_length_hacking_peaks_where_computed_by_hand():
    # proxy = words w; gold = min(w, 12) - 3 max(0, w - 12) (all words distinct), w uniform on 1..16.
    # BoN_n picks the longest of n, so with P(max = k) = C(k-1, n-1) / C(16, n):
    #   n = 1:  mean gold = (1 + ... + 12 + 9 + 6 + 3 + 0) / 16 = 96 / 16 = 6.0
    #   n = 2:  sum_k (k-1)/120 g(k) = (572 + 12*9 + 13*6 + 14*3) / 120 = 800 / 120 = 6.667
    #   n = 4:  about 5.46; n = 16: always 16 words, gold 0.  Peak: n = 2, while proxy rises to 16.
    gold_fn = make_length_penalized_gold(threshold=12, penalty=3)
    rng = random.Random(0)
    samples = [planted_texts(rng) for _ in range(3)]
    proxy = [length_proxy([None] * 16, texts) for texts in samples]
    gold = [gold_fn([None] * 16, texts) for texts in samples]
    report = analyse(proxy, gold, max_n=16)
    by_n = {row["n"]: row for row in report["sweep"]}
    assert by_n[1]["gold"] == pytest.approx(6.0) and by_n[2]["gold"] == pytest.approx(800 / 120)
    assert by_n[16]["gold"] == pytest.approx(0.0) and by_n[16]["proxy"] == pytest.approx(16.0)
    assert [row["proxy"] for row in report["sweep"]] == sorted(row["proxy"] for row in report["sweep"])
    assert report["overoptimization_n"] == 2 and report["measured_gold_peak_n"] == 2
    assert report["gao_fit"]["beta"] > 0 and report["gao_fit"]["peak_n"] is not None


def test_no_overoptimization_when_gold_agrees_with_proxy():
    rows = analyse([[1.0, 2.0, 3.0, 4.0]], [[1.0, 2.0, 3.0, 4.0]], max_n=4)
    assert rows["overoptimization_n"] is None and rows["measured_gold_peak_n"] == 4
    flat = [{"n": 1, "proxy": 1.0, "gold": 1.0}, {"n": 2, "proxy": 1.0, "gold": 0.5}]
    assert overoptimization_point(flat) is None  # gold fell, but proxy did not rise


def test_planted_rewards():
    gold = make_length_penalized_gold(threshold=4, penalty=2)
    texts = ["one two", "a a a a", "one two three four five six", "don't stop"]
    assert length_proxy([None] * 4, texts) == [2.0, 4.0, 6.0, 2.0]
    assert gold([None] * 4, texts) == [2.0, 1.0, 0.0, 2.0]  # "a a a a": one distinct word
    assert words("don't stop, ok?") == ["don't", "stop", "ok"]
    assert resolve_reward("length_proxy") is length_proxy
    assert resolve_reward("length_penalized_gold")(None, ["x " * 30]) == [1 - 6.0]  # 30 words, 1 distinct, T = 24


def test_cli_reanalyses_samples_and_gates(tmp_path):
    gold_fn = make_length_penalized_gold(threshold=12, penalty=3)
    rng = random.Random(1)
    with (tmp_path / "samples.jsonl").open("w") as handle:
        for i in range(2):
            for j, text in enumerate(planted_texts(rng)):
                row = {"prompt_index": i, "sample_index": j, "prompt": f"p{i}", "text": text,
                       "proxy": length_proxy([None], [text])[0], "gold": gold_fn([None], [text])[0]}
                handle.write(json.dumps(row) + "\n")
    out = tmp_path / "out"
    assert main(["--samples", str(tmp_path / "samples.jsonl"), "--out", str(out),
                 "--fail-on-overoptimization"]) == 1
    report = json.loads((out / "overoptimization.json").read_text())
    assert report["overoptimization_n"] == 2 and report["max_n"] == 16
    assert (out / "overoptimization.png").stat().st_size > 1000


def test_cli_samples_a_tiny_policy(tmp_path):
    from tether.models.tiny import save_tiny_llama

    save_tiny_llama(tmp_path / "model")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Say something {i}."}) + "\n"
                                                    for i in range(2)))
    out = tmp_path / "out"
    assert main(["--policy", str(tmp_path / "model"), "--prompts", str(tmp_path / "prompts.jsonl"),
                 "--proxy", "length_proxy", "--gold", "length_penalized_gold", "--max-n", "8",
                 "--max-new-tokens", "6", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "overoptimization.json").read_text())
    assert [row["n"] for row in report["sweep"]] == [1, 2, 4, 8]
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 16
    first = json.loads(lines[0])
    assert first["proxy"] == length_proxy([None], [first["text"]])[0]
    proxies = [row["proxy"] for row in report["sweep"]]
    assert proxies == sorted(proxies)  # the proxy's expected best-of-n never falls as n grows
