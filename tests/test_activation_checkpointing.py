"""train.gradient_checkpointing: same loss and gradients, layers recomputed, less peak memory."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from tether.algorithms.sft import SFTConfig
from tether.config import load_config
from tether.engine.activation_checkpointing import enable_gradient_checkpointing
from tether.engine.session import TrainingSession
from tether.losses.sft import sft_loss
from tether.models import apply_lora
from tether.models.tiny import tiny_llama


def make_model(lora: bool):
    model, _ = tiny_llama(seed=0)
    if not lora:
        return model
    with torch.random.fork_rng():
        torch.manual_seed(2)  # A's initialization: the same adapters in both models
        model = apply_lora(model, r=4, alpha=8)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # B starts at zero, which would leave every A without gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def decoder_layers(model):
    return [m for m in model.modules() if type(m).__name__ == "LlamaDecoderLayer"]


def loss_and_grads(model, calls: list):
    """One training forward and backward; ``calls`` collects the forward calls of a decoder layer's MLP."""
    mlp = decoder_layers(model)[0].mlp
    forward = mlp.forward

    def counted(*args, **kwargs):  # module hooks do not fire in the recompute; forward itself does
        calls.append(1)
        return forward(*args, **kwargs)

    mlp.forward = counted
    model.train()
    input_ids = torch.randint(4, 300, (3, 24), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[:, :5] = -100
    loss, _ = sft_loss(model(input_ids=input_ids, use_cache=False).logits, labels)
    loss.backward()
    mlp.forward = forward
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("lora", [False, True])
def test_same_loss_and_gradients_with_layers_recomputed(lora):
    plain_calls, checkpointed_calls = [], []
    plain_loss, plain_grads = loss_and_grads(make_model(lora), plain_calls)
    model = make_model(lora)
    enable_gradient_checkpointing(model)
    loss, grads = loss_and_grads(model, checkpointed_calls)

    assert len(plain_calls) == 1 and len(checkpointed_calls) == 2  # the layer ran again in the backward
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=1e-6)
    assert grads.keys() == plain_grads.keys() and len(grads) > 0
    if lora:
        assert all("lora_" in name for name in grads)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name  # no layer's gradient lost to the checkpoint
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("enabled", [False, True])
def test_the_session_turns_it_on_from_the_config(tmp_path, enabled):
    config = load_config(SFTConfig, None, [
        "data.train=unused.jsonl", f"train.output_dir={tmp_path}", "train.progress=false", "train.bf16=false",
        "train.report_to=[]", f"train.gradient_checkpointing={str(enabled).lower()}"])
    model = make_model(lora=True)
    session = TrainingSession(model, config, total_steps=1)
    calls = []
    loss_and_grads(session.model, calls)
    session.close()
    assert len(calls) == (2 if enabled else 1)


PEAK_RSS = textwrap.dedent("""
    import json, resource, sys
    import torch
    from tether.engine.activation_checkpointing import enable_gradient_checkpointing
    from tether.losses.sft import sft_loss
    from tether.models.tiny import tiny_llama

    torch.set_num_threads(1)
    model, _ = tiny_llama(seed=0, hidden_size=256, num_layers=8, max_position_embeddings=2048)
    if sys.argv[1] == "on":
        enable_gradient_checkpointing(model)
    model.train()
    input_ids = torch.randint(4, 300, (2, 2048), generator=torch.Generator().manual_seed(0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss, _ = sft_loss(model(input_ids=input_ids).logits, input_ids)
    loss.backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"step_peak_kib": after - before}))
""")


def step_peak_kib(mode: str) -> int:
    """The growth of peak RSS over one training step, in a fresh process (peaks never go down)."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, mode], capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["step_peak_kib"]


def test_peak_memory_is_lower_on_long_sequences():
    without, with_checkpointing = step_peak_kib("off"), step_peak_kib("on")
    # Measured here: ~710 MiB without, ~460 MiB with; what stays is one layer's recompute and its
    # backward (attention over 2048 positions), the logits and the gradients.
    assert without > 300 * 1024
    assert with_checkpointing < 0.75 * without, (with_checkpointing, without)


def test_shared_prompt_scoring_gives_the_same_logps_and_gradients():
    """GRPO and PPO score completions on their prompt's KV cache, which checkpointed layers drop:
    under checkpointing the rows are packed into one forward instead."""
    from tether.losses.logprobs import shared_prompt_token_logps

    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, 300, (2, 6), generator=generator)
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[1, :2] = 0  # left padding
    completions = torch.randint(4, 300, (4, 5), generator=generator)
    completion_mask = torch.ones_like(completions)
    completion_mask[3, 3:] = 0
    results = []
    for checkpointing in (False, True):
        model = make_model(lora=True)
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        logps = shared_prompt_token_logps(model, prompts, prompt_mask, torch.tensor([0, 0, 1, 1]),
                                          completions, completion_mask) * completion_mask
        logps.sum().backward()
        results.append((logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (plain, plain_grads), (checkpointed, grads) = results
    torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
