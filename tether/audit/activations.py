"""Reading and steering a model's residual stream, through plain forward hooks.

Every decoder block of a Hugging Face causal LM reads the residual stream and writes it back; the
hidden states ``output_hidden_states=True`` returns are that stream at each block boundary
(index 0: the embeddings, index ``i``: after block ``i``). This module reads it at a prompt's last
token and edits it while the model runs:

    ablate(r):   h <- h - (h . r) r      at every block's input and the last block's output
                 (r a unit vector; "Refusal in language models is mediated by a single direction",
                 Arditi et al. 2024, remove a direction from every layer and position)
    add(v, k):   h <- h + v              at the output of block k, every position

Hooks are removed when the ``with`` block exits, also on error, so the model afterwards computes
exactly what it computed before. LoRA models (peft) are read through the same hooks: the adapters
sit inside the blocks. A library such as nnsight would add a tracing layer and a dependency for
what two hooks do here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from tether.data.records import Prompt
from tether.data.tokenize import encode_prompt
from tether.models import evaluation_mode


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's list of decoder blocks (``model.layers`` in Llama, Qwen, Mistral, ...), found
    through any wrapper (peft, DDP) as the longest ``ModuleList`` whose name ends in ``layers``/``h``."""
    candidates = [module for name, module in model.named_modules()
                  if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h")]
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no list of decoder layers named 'layers' or 'h'")
    return max(candidates, key=len)


@torch.no_grad()
def last_token_states(model, tokenizer, prompts: Sequence[Prompt], *, batch_size: int = 16) -> torch.Tensor:
    """The residual stream at each prompt's last token (chat template and generation prompt
    applied, as the model sees it before answering), for every layer boundary.

    Shape: (num_layers + 1, len(prompts), hidden), float32 on the CPU.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_prompt(prompt, tokenizer) for prompt in prompts]
    chunks = []
    with evaluation_mode(model):
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start:start + batch_size]
            width = max(map(len, rows))
            input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in rows], device=device)
            attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=device)
            position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding: positions start at 0
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        output_hidden_states=True, use_cache=False)
            chunks.append(torch.stack([h[:, -1].float().cpu() for h in out.hidden_states]))  # (L+1, b, H)
    return torch.cat(chunks, dim=1)


def _edit_output(output, edit):
    if isinstance(output, tuple):
        return (edit(output[0]), *output[1:])
    return edit(output)


@contextmanager
def ablated(model, direction: torch.Tensor) -> Iterator[None]:
    """Inside the block, ``model`` runs with ``direction`` projected out of its residual stream at
    every layer boundary after the embeddings. Shape: direction (hidden,)."""
    layers = decoder_layers(model)
    unit = direction.float() / direction.float().norm()

    def project_out(hidden: torch.Tensor) -> torch.Tensor:
        r = unit.to(hidden.device, hidden.dtype)
        return hidden - (hidden @ r).unsqueeze(-1) * r

    handles = [layer.register_forward_pre_hook(
        lambda module, args, kwargs: ((project_out(args[0]), *args[1:]), kwargs) if args
        else (args, {**kwargs, "hidden_states": project_out(kwargs["hidden_states"])}), with_kwargs=True)
        for layer in layers]
    handles.append(layers[-1].register_forward_hook(lambda module, args, output: _edit_output(output, project_out)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def added(model, vector: torch.Tensor, layer: int) -> Iterator[None]:
    """Inside the block, ``vector`` is added to the output of decoder block ``layer`` (0-based) at
    every position. Shape: vector (hidden,)."""
    block = decoder_layers(model)[layer]
    handle = block.register_forward_hook(
        lambda module, args, output: _edit_output(output, lambda h: h + vector.to(h.device, h.dtype)))
    try:
        yield
    finally:
        handle.remove()
