"""tether's DPO losses give TRL's loss, gradients and reward metrics on the same model and batch.

TRL is driven through its public trainer: a real ``trl.DPOTrainer`` is built on a tiny Llama, a
frozen reference with other weights, and a three-pair conversational dataset; TRL tokenizes and
collates the batch (``trainer.data_collator``) and computes the loss with
``trainer.compute_loss(model, batch)`` (its fused-LM-head log-probs, not ours). tether scores the
same collated tensors with ``completion_logps`` + ``dpo_loss`` on separate copies of the models.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from tether.losses.dpo import dpo_loss, dpo_metrics  # noqa: E402
from tether.losses.logprobs import completion_logps  # noqa: E402
from tether.models.tiny import tiny_llama, tiny_tokenizer  # noqa: E402

POLICY_SEED, REF_SEED = 0, 1  # the reference differs from the policy, so log-ratios are not zero
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
# transformers 5 renamed gradient checkpointing; TRL 1.16 still uses the old names.
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")

PAIRS = [
    ("What is 12 plus 7?", "The answer is 19.", "I can't help with that."),
    ("How do I kill a Python process?", "Use kill with the process id.", "Sure!"),
    ("Hello, how are you today?", "I am fine, thank you for asking.", "The quick brown fox."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def dataset():
    return datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": prompt}],
         "chosen": [{"role": "assistant", "content": chosen}],
         "rejected": [{"role": "assistant", "content": rejected}]}
        for prompt, chosen, rejected in PAIRS
    ])


def _trl_trainer(tmp_path, tokenizer, dataset, **config):
    torch.manual_seed(0)
    policy, _ = tiny_llama(POLICY_SEED, tokenizer=tokenizer)
    ref, _ = tiny_llama(REF_SEED, tokenizer=tokenizer)
    args = trl.DPOConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True,
                         gradient_checkpointing=False, per_device_train_batch_size=len(PAIRS),
                         logging_strategy="no", save_strategy="no", **config)
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset,
                             processing_class=tokenizer)
    trainer.model.train()
    return trainer


def _collate(trainer, rows):
    return trainer.data_collator([trainer.train_dataset[i] for i in rows])


def _trl_loss_and_grads(trainer, batches):
    """Mean of TRL's loss over ``batches`` (each weighted equally), its gradients, and TRL's metrics."""
    trainer.model.zero_grad()
    total = 0.0
    for batch in batches:
        loss = trainer.compute_loss(trainer.model, batch) / len(batches)
        loss.backward()
        total += loss.item()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters()}
    metrics = {k: v for k, v in trainer._metrics["train"].items() if k.startswith("rewards/")}
    return total, grads, metrics


def _tether_loss_and_grads(tokenizer, batch, *, average=False, **loss_kwargs):
    policy, _ = tiny_llama(POLICY_SEED, tokenizer=tokenizer)
    ref, _ = tiny_llama(REF_SEED, tokenizer=tokenizer)
    policy.train()
    inputs = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])  # rows: [chosen; rejected]
    policy_chosen, policy_rejected = completion_logps(policy, *inputs, average=average).chunk(2)  # (B,), (B,)
    with torch.no_grad():
        ref_chosen, ref_rejected = completion_logps(ref, *inputs, average=average).chunk(2)
    out = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, **loss_kwargs)
    loss = out.losses.mean()
    loss.backward()
    grads = {name: p.grad for name, p in policy.named_parameters()}
    return loss.item(), grads, out


def _assert_same_grads(ours, theirs):
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")


# The batch's log-ratio differences h are about [0.13, 0.50, -1.54]: beta 0.5 puts sigmoid in its
# curved region, and beta 3 leaves one hinge pair past the margin (zero loss) and two inside it.
@pytest.mark.parametrize("loss_type, beta, label_smoothing", [
    ("sigmoid", 0.5, 0.0),
    ("hinge", 3.0, 0.0),
    ("ipo", 0.1, 0.0),  # TRL's IPO length-averages: tether gets the same with average=True
    ("robust", 0.5, 0.2),
])
def test_loss_gradients_and_metrics_match_trl(tmp_path, tokenizer, dataset, loss_type, beta, label_smoothing):
    trainer = _trl_trainer(tmp_path, tokenizer, dataset, loss_type=loss_type, beta=beta,
                           label_smoothing=label_smoothing)
    batch = _collate(trainer, range(len(PAIRS)))
    trl_loss, trl_grads, trl_metrics = _trl_loss_and_grads(trainer, [batch])

    ours, our_grads, out = _tether_loss_and_grads(tokenizer, batch, average=loss_type == "ipo", beta=beta,
                                                  loss_type=loss_type, label_smoothing=label_smoothing)

    assert ours == pytest.approx(trl_loss, rel=1e-5, abs=1e-5)
    _assert_same_grads(our_grads, trl_grads)
    assert any(g.abs().max() > 0 for g in our_grads.values())  # the comparison is not between zeros
    if loss_type != "ipo":  # TRL logs rewards from summed log-probs; our IPO inputs are averaged
        # Rewards are beta * log-ratio; compare the log-ratios, summed over ~10 tokens in float32, to 1e-5 nats.
        for name, value in dpo_metrics(out).items():
            assert value / beta == pytest.approx(trl_metrics[name][-1] / beta, abs=1e-5), name


def test_sigmoid_label_smoothing_matches_trl_conservative_formula(tmp_path, tokenizer, dataset):
    # TRL 1.16 ignores label_smoothing for "sigmoid"; its cDPO formula, -(1-eps) log sigma(beta d)
    # - eps log sigma(-beta d), lives in "aot", where d = sort_batch(policy log-ratios) -
    # sort_batch(reference log-ratios). Over a batch of ONE pair the sorts are the identity and
    # d = h, so TRL's "aot" on each pair alone, averaged, is exactly smoothed sigmoid DPO.
    beta, eps = 0.5, 0.2
    trainer = _trl_trainer(tmp_path, tokenizer, dataset, loss_type="aot", beta=beta, label_smoothing=eps)
    single_pairs = [_collate(trainer, [i]) for i in range(len(PAIRS))]
    trl_loss, trl_grads, _ = _trl_loss_and_grads(trainer, single_pairs)

    batch = _collate(trainer, range(len(PAIRS)))
    ours, our_grads, _ = _tether_loss_and_grads(tokenizer, batch, beta=beta, loss_type="sigmoid",
                                                label_smoothing=eps)

    assert ours == pytest.approx(trl_loss, rel=1e-5, abs=1e-5)
    _assert_same_grads(our_grads, trl_grads)
    # And smoothing changed the loss: plain sigmoid DPO on the same batch differs.
    plain, _, _ = _tether_loss_and_grads(tokenizer, batch, beta=beta, loss_type="sigmoid")
    assert abs(plain - ours) > 1e-3
