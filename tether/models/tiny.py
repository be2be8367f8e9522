"""Tiny random Llama models with a small byte-level tokenizer, for tests and quick experiments.

They share the default model's chat format (ChatML: ``<|im_start|>role\\n...<|im_end|>``), so
every code path that applies a chat template runs the same on a tiny model as on SmolLM2.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

# A few sentences are enough for BPE to learn common English merges; the byte alphabet
# means any text, in any script, still tokenizes without unknown tokens.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "I can't help with that, but here is a safer alternative.",
    "Sure! Here is how to do it step by step.",
    "What is 12 plus 7? The answer is 19.",
    "<think>Let me add the numbers.</think><answer>42</answer>",
    "How do I kill a Python process? Use kill with the process id.",
    "user assistant system question answer response prompt completion",
    "Hello, how are you today? I am fine, thank you for asking.",
]


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML special tokens, built in milliseconds, offline."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_llama(seed: int = 0, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
               num_kv_heads: int = 2, max_position_embeddings: int = 512,
               tokenizer: PreTrainedTokenizerFast | None = None
               ) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised Llama (2 layers, hidden 64 by default) and its tokenizer.

    The same seed gives the same weights, so tests can compare runs exactly.
    """
    tokenizer = tokenizer or tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def save_tiny_llama(directory: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write a tiny model and tokenizer as a Hugging Face checkpoint directory."""
    directory = Path(directory)
    model, tokenizer = tiny_llama(seed, **kwargs)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
