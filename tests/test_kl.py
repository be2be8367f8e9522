from __future__ import annotations

import math

import pytest
import torch

from tether.losses.kl import kl_estimate, masked_mean

# Three tokens: logps [-1, -1, -2], ref_logps [-1, -2, -1]  ->  log r = ref - logps = [0, -1, 1]
LOGPS = torch.tensor([-1.0, -1.0, -2.0])
REF_LOGPS = torch.tensor([-1.0, -2.0, -1.0])


def test_k1_is_the_log_ratio():
    # k1 = -log r = [0, 1, -1]: unbiased but negative on the third token
    torch.testing.assert_close(kl_estimate(LOGPS, REF_LOGPS, "k1"), torch.tensor([0.0, 1.0, -1.0]))


def test_k2_is_half_the_squared_log_ratio():
    # k2 = (log r)^2 / 2 = [0, 0.5, 0.5]
    torch.testing.assert_close(kl_estimate(LOGPS, REF_LOGPS, "k2"), torch.tensor([0.0, 0.5, 0.5]))


def test_k3():
    # k3 = r - 1 - log r = [1 - 1 - 0, e^-1 - 1 + 1, e - 1 - 1] = [0, e^-1, e - 2] = [0, 0.367879, 0.718282]
    expected = torch.tensor([0.0, math.exp(-1), math.e - 2])
    torch.testing.assert_close(kl_estimate(LOGPS, REF_LOGPS), expected)
    torch.testing.assert_close(kl_estimate(LOGPS, REF_LOGPS), torch.tensor([0.0, 0.367879, 0.718282]))


def test_k1_and_k3_are_unbiased_and_k2_is_not():
    # Exact expectations over every outcome x of q = [0.5, 0.3, 0.2], with p = [0.2, 0.3, 0.5]:
    # KL(q || p) = 0.5 ln(2.5) + 0.3 ln(1) + 0.2 ln(0.4) = 0.458145 - 0.183258 = 0.274887
    q = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    kl = 0.5 * math.log(2.5) + 0.2 * math.log(0.4)
    assert kl == pytest.approx(0.274887, abs=1e-6)
    expectation = {kind: (q * kl_estimate(q.log(), p.log(), kind)).sum().item() for kind in ("k1", "k2", "k3")}
    assert expectation["k1"] == pytest.approx(kl, rel=1e-12)
    assert expectation["k3"] == pytest.approx(kl, rel=1e-12)
    # k2: 0.5 * (0.5 ln(2.5)^2 + 0.2 ln(0.4)^2) = 0.5 * (0.419794 + 0.167918) = 0.293856, above the KL
    assert expectation["k2"] == pytest.approx(0.293856, abs=1e-6)


def test_k3_is_accurate_for_tiny_log_ratios_float64():
    # log r = +-1e-8: k3 = (log r)^2 / 2 + (log r)^3 / 6 + ... = 5.0000000167e-17 and 4.9999999833e-17.
    # Written as exp(log r) - log r - 1 it gives -1.1e-16 and 0 in float64: all rounding error.
    for log_ratio in (1e-8, -1e-8):
        expected = log_ratio**2 / 2 + log_ratio**3 / 6
        value = kl_estimate(torch.tensor([0.0], dtype=torch.float64), torch.tensor([log_ratio], dtype=torch.float64))
        assert value.item() == pytest.approx(expected, rel=1e-6, abs=0)  # approx adds abs=1e-12 by default


def test_k3_is_accurate_for_small_log_ratios_float32():
    # log r = 1e-4 in float32: k3 = 5.0001667e-9. exp(log r) - log r - 1 gives 0 here (exp rounds to a
    # float32 within 6e-8 of 1); expm1 keeps the value to about 3e-4 relative.
    value = kl_estimate(torch.tensor([0.0]), torch.tensor([1e-4]))
    assert value.item() == pytest.approx(1e-8 / 2 + 1e-12 / 6, rel=1e-3, abs=0)


def test_k3_is_never_negative():
    log_ratios = torch.linspace(-1e-3, 1e-3, 2001)  # float32, the precision a policy is trained in
    assert (kl_estimate(torch.zeros_like(log_ratios), log_ratios) >= 0).all()


def test_estimates_keep_the_shape():
    logps, ref_logps = torch.zeros(2, 5), torch.full((2, 5), -0.5)
    for kind in ("k1", "k2", "k3"):
        assert kl_estimate(logps, ref_logps, kind).shape == (2, 5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(LOGPS, REF_LOGPS, "k4")
    with pytest.raises(ValueError, match="same shape"):
        kl_estimate(LOGPS, REF_LOGPS[:2])


# masked_mean over x = [[1, 2, 3], [4, 5, 6]] with mask [[1, 1, 0], [0, 0, 0]]
X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [0, 0, 0]])


def test_masked_mean_over_everything_and_per_row():
    # everything: (1 + 2) / 2 = 1.5; per row: [1.5, 0] (a row with no valid entry gives 0, not NaN)
    assert masked_mean(X, MASK).item() == 1.5
    torch.testing.assert_close(masked_mean(X, MASK, dim=-1), torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(masked_mean(X, MASK.bool(), dim=1), torch.tensor([1.5, 0.0]))


def test_masked_mean_ignores_inf_and_nan_under_the_mask():
    x = X.clone().requires_grad_(True)
    garbage = torch.tensor([[0.0, 0.0, float("nan")], [float("inf"), 0.0, 0.0]])
    masked_mean(x + garbage, MASK).backward()
    # d/dx of (x00 + x01) / 2 = 0.5 on the two valid entries, 0 elsewhere, and no NaN leaks back
    torch.testing.assert_close(x.grad, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))


def test_masked_mean_broadcasts_one_value_per_row():
    # (2, 1) values over a (2, 3) mask: row means are the values themselves, or 0 for the empty row
    torch.testing.assert_close(masked_mean(torch.tensor([[7.0], [9.0]]), MASK, dim=-1), torch.tensor([7.0, 0.0]))
