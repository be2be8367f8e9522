import math

import torch

from tether.losses.sft import labelled_positions, next_token_loss, sft_loss


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


def _loss_and_grads(model, inputs, labels, skip_prompts):
    model.zero_grad()
    if skip_prompts:
        positions = labelled_positions(labels)
        logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits
        assert logits.shape[1] == len(positions) < labels.shape[1] - 1  # the prompts' logits were skipped
        loss, count = next_token_loss(logits, labels[:, positions + 1])
    else:
        loss, count = sft_loss(model(**inputs, use_cache=False).logits, labels)
    loss.backward()
    return loss.detach(), count, {name: p.grad.clone() for name, p in model.named_parameters()}


def test_logits_only_at_labelled_positions_give_the_same_loss_and_gradients(tiny):
    model, _ = tiny
    ids = torch.randint(4, 300, (3, 14), generator=torch.Generator().manual_seed(0))
    padded_labels = ids.clone()
    padded_labels[0, :6], padded_labels[1, :9], padded_labels[2, :4] = -100, -100, -100  # prompts
    padded_labels[2, 11:] = -100  # right padding
    attention_mask = (torch.arange(14) < torch.tensor([[14], [14], [11]])).long()
    packed_labels = ids[:1].clone()
    packed_labels[0, :3], packed_labels[0, 7:10] = -100, -100  # two packed sequences, prompts masked
    position_ids = torch.tensor([list(range(7)) + list(range(7))])
    for inputs, labels in [({"input_ids": ids, "attention_mask": attention_mask}, padded_labels),
                           ({"input_ids": ids[:1], "position_ids": position_ids}, packed_labels)]:
        full_loss, full_count, full_grads = _loss_and_grads(model, inputs, labels, skip_prompts=False)
        loss, count, grads = _loss_and_grads(model, inputs, labels, skip_prompts=True)
        assert count == full_count
        torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, full_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_labelled_positions_are_where_some_row_labels_the_next_token():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    assert labelled_positions(labels).tolist() == [0, 1, 2]
    assert labelled_positions(torch.full((2, 4), -100)).tolist() == []
