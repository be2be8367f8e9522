"""``tether generate``: K candidates per prompt from each model, as FeedbackItem JSONL."""

import json

import pytest

from tether.cli import main
from tether.errors import ConfigError, DataValidationError
from tether.feedback.generate import (
    generate_items,
    parse_model_spec,
    read_prompts,
    read_records,
    sample_candidates,
)
from tether.feedback.records import FeedbackItem
from tether.models.tiny import save_tiny_llama, tiny_llama


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": "greet", "prompt": "Say hi.", "kind": "benign"},
            {"prompt": [{"role": "user", "content": "What is 2 plus 2?"}]},
            {"prompt": "Tell me about the fox."}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_read_prompts_keeps_ids_chats_and_metadata(prompts_file):
    prompts = read_prompts(prompts_file)
    assert [p[0] for p in prompts] == ["greet", "prompt-2", "prompt-3"]
    assert prompts[1][1] == [{"role": "user", "content": "What is 2 plus 2?"}]
    assert prompts[0][2] == {"kind": "benign"}


def test_bad_prompt_rows_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "id": "a"}\n{"text": "no prompt"}\nnot json\n{"prompt": "x", "id": "a"}\n')
    with pytest.raises(DataValidationError) as error:
        read_prompts(path)
    message = str(error.value)
    assert "4 invalid record(s)" not in message and "3 invalid record(s)" in message
    assert f"{path}:2: field 'prompt'" in message
    assert f"{path}:3:" in message and "invalid JSON" in message
    assert f"{path}:4: field 'id': duplicate id 'a'" in message


def test_items_hold_k_candidates_from_each_model(prompts_file):
    first, tokenizer = tiny_llama(seed=0)
    second, _ = tiny_llama(seed=1)
    prompts = read_prompts(prompts_file)
    items = generate_items(prompts, [("base", first, tokenizer), ("other", second, tokenizer)],
                           num_candidates=2, max_new_tokens=6, seed=3, progress=False)
    assert [item.id for item in items] == ["greet", "prompt-2", "prompt-3"]
    for item in items:
        assert [c.id for c in item.candidates] == ["c0", "c1", "c2", "c3"]
        assert [c.model for c in item.candidates] == ["base", "base", "other", "other"]
    assert items[0].metadata == {"kind": "benign", "generation": {
        "temperature": 1.0, "seed": 3, "max_new_tokens": 6}}
    # the same sampler call, by hand, gives the same texts: seeded and grouped per prompt
    expected = sample_candidates(first, tokenizer, [p[1] for p in prompts], num_candidates=2,
                                 max_new_tokens=6, temperature=1.0, seed=3, progress=False)
    assert [[c.text for c in item.candidates[:2]] for item in items] == expected
    assert expected[0][0] != expected[0][1]  # two samples, not one copied
    other_seed = sample_candidates(first, tokenizer, [p[1] for p in prompts], num_candidates=2,
                                   max_new_tokens=6, temperature=1.0, seed=4, progress=False)
    assert other_seed != expected


def test_candidates_shared_out_among_temperatures(prompts_file):
    """Three candidates at [0.5, 2.0]: two at 0.5 (the remainder goes first), one at 2.0, each
    exactly what the sampler gives at that temperature, labelled with it."""
    model, tokenizer = tiny_llama(seed=0)
    prompts = read_prompts(prompts_file)
    items = generate_items(prompts, [("base", model, tokenizer)], num_candidates=3, max_new_tokens=6,
                           temperature=[0.5, 2.0], seed=3, progress=False)
    texts = [p[1] for p in prompts]
    cool = sample_candidates(model, tokenizer, texts, num_candidates=2, max_new_tokens=6, temperature=0.5,
                             seed=3, progress=False)
    hot = sample_candidates(model, tokenizer, texts, num_candidates=1, max_new_tokens=6, temperature=2.0,
                            seed=3, progress=False)
    for item, low, high in zip(items, cool, hot):
        assert [c.model for c in item.candidates] == ["base@T0.5", "base@T0.5", "base@T2"]
        assert [c.text for c in item.candidates] == low + high
        assert item.metadata["generation"]["temperature"] == [0.5, 2.0]
    with pytest.raises(ConfigError, match="3 temperatures need at least as many candidates"):
        generate_items(prompts, [("m", model, tokenizer)], num_candidates=2, temperature=[0.5, 1.0, 2.0])


def test_impossible_requests_fail_before_sampling(prompts_file):
    model, tokenizer = tiny_llama()
    prompts = read_prompts(prompts_file)
    with pytest.raises(ConfigError, match="at least two candidates"):
        generate_items(prompts, [("m", model, tokenizer)], num_candidates=1)
    with pytest.raises(ConfigError, match="greedy"):
        generate_items(prompts, [("m", model, tokenizer)], num_candidates=2, temperature=0)


def test_model_specs():
    assert parse_model_spec("runs/x/final") == ("runs/x/final", "runs/x/final")
    assert parse_model_spec("dpo=runs/x/final") == ("dpo", "runs/x/final")
    assert parse_model_spec("tether:default") == ("tether:default", "tether:default")


def test_generate_command_writes_feedback_items(tmp_path, prompts_file):
    save_tiny_llama(tmp_path / "model")
    out = tmp_path / "items.jsonl"
    assert main(["generate", "--prompts", str(prompts_file), "--model", f"tiny={tmp_path / 'model'}",
                 "--num-candidates", "3", "--max-new-tokens", "5", "--limit", "2",
                 "--out", str(out), "--no-progress"]) == 0
    items = read_records(out, FeedbackItem)
    assert len(items) == 2 and all(len(item.candidates) == 3 for item in items)
    assert {c.model for item in items for c in item.candidates} == {"tiny"}
    assert main(["generate", "--prompts", str(prompts_file), "--model", str(tmp_path / "nope"),
                 "--out", str(out)]) == 2  # a missing model is a clean error
