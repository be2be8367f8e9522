import math

import torch

from tether.losses.sft import sft_loss


def test_sft_loss_counts_only_labelled_tokens():
    # Vocabulary of 2, uniform logits: every labelled token costs log 2.
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[-100, -100, 1, 0]])  # positions 2 and 3 are labelled
    loss, num_tokens = sft_loss(logits, labels)
    assert num_tokens == 2
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)


def test_sft_loss_uses_the_shifted_prediction():
    # Position 0 predicts token 1. Put all mass on class 1 at position 0 only.
    logits = torch.tensor([[[0.0, 10.0], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1]])
    loss, _ = sft_loss(logits, labels)
    expected = -torch.log_softmax(torch.tensor([0.0, 10.0]), 0)[1].item()  # ~4.5e-5
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_sft_loss_without_labels_is_zero():
    loss, num_tokens = sft_loss(torch.randn(2, 3, 5), torch.full((2, 3), -100))
    assert num_tokens == 0 and loss.item() == 0.0
