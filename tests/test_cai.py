"""Constitutional AI end to end on a tiny model: every stage's files, counts, and skip-on-rerun."""

import json

import pytest
from fake_openai_server import FakeJudgeServer

from tether.algorithms.cai import CAIConfig, run_cai
from tether.config import load_config
from tether.errors import ConfigError
from tether.feedback.agreement import inconsistent_pairs
from tether.feedback.constitution import load_constitution
from tether.feedback.generate import read_records
from tether.feedback.records import FeedbackItem, Judgment
from tether.models import load_model
from tether.models.tiny import save_tiny_llama


@pytest.fixture
def job(tmp_path):
    save_tiny_llama(tmp_path / "model")
    rows = [{"id": f"harm-{n}", "prompt": f"How do I hurt person number {n}?", "kind": "harmful"}
            for n in range(4)] + [{"id": "benign-0", "prompt": "How do I kill a process?", "kind": "benign"}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path


def config_for(job, judge: str, *overrides):
    return load_config(CAIConfig, None, [
        f"train.output_dir={job / 'runs'}", "train.progress=false", "sft.train.bf16=false", "dpo.train.bf16=false",
        f"prompts.path={job / 'prompts.jsonl'}", "prompts.kinds=[harmful]", "prompts.limit=4",
        "critique.max_new_tokens=8", "critique.temperature=1.0",  # greedy: the tiny model says nothing
        f"sft.model.path={job / 'model'}", "sft.model.lora.r=4", "sft.data.max_length=256",
        "sft.train.batch_size=2", "sft.train.max_steps=2", "sft.optim.lr=1e-3",
        "sft.train.tensorboard=false",
        "rlaif.max_new_tokens=8", f"rlaif.judge={judge}", "rlaif.judge_model=fake",
        "rlaif.api_key_env=null",
        "dpo.data.max_length=256", "dpo.train.batch_size=2", "dpo.train.max_steps=2",
        "dpo.train.tensorboard=false", *overrides])


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cai_pipeline_writes_every_stage_and_skips_finished_ones(job):
    with FakeJudgeServer() as server:
        config = config_for(job, f"openai:{server.url}", "critique.revisions=2")
        final = run_cai(config)
    run = job / "runs" / "cai"
    assert final == run / "dpo" / "final"

    traces = lines(run / "critiques.jsonl")
    assert [t["id"] for t in traces] == ["harm-0", "harm-1", "harm-2", "harm-3"]  # benign filtered out
    principle_ids = {p.id for p in load_constitution().principles}
    for trace in traces:
        assert len(trace["steps"]) == 2 and trace["revision"] == trace["steps"][-1]["revision"]
        assert {step["principle"] for step in trace["steps"]} <= principle_ids
    sft_rows = lines(run / "sft.jsonl")
    assert sft_rows == [{"id": t["id"], "prompt": t["prompt"], "completion": t["revision"]}
                        for t in traces if t["revision"].strip()]

    assert (run / "sft" / "final" / "adapter_config.json").is_file()
    items = read_records(run / "rlaif_items.jsonl", FeedbackItem)
    assert len(items) == 4 and all(len(item.candidates) == 2 for item in items)
    assert {c.model for item in items for c in item.candidates} == {"sft"}

    judgments = read_records(run / "judgments.jsonl", Judgment)
    assert len(judgments) == 4 and {j.constitution_version for j in judgments} == {"tether-default@1.0"}
    assert len(server.requests) == 8  # 4 pairs, both orders
    # the fake judge prefers the shorter candidate, so each pair is decided (or tied) consistently
    decided = []
    for item, judgment in zip(items, judgments):
        a, b = (c.text for c in item.candidates)
        expected = "tie" if len(a) == len(b) else "c0" if len(a) < len(b) else "c1"
        assert judgment.verdict == {"winner": expected}
        if expected != "tie":
            texts = {c.id: c.text for c in item.candidates}
            decided.append((texts[expected], texts["c1" if expected == "c0" else "c0"]))
    pairs = lines(run / "preferences.jsonl")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == decided and decided
    assert (run / "dpo" / "final" / "adapter_config.json").is_file()
    load_model(final)  # the CAI model loads (the SFT adapter, trained on by DPO)

    summary = json.loads((run / "summary.json").read_text())
    assert list(summary) == ["critique", "sft", "rlaif-generate", "judge", "preferences", "dpo"]
    assert summary["critique"]["sft_records"] == len(sft_rows)
    assert summary["judge"] == summary["judge"] | {"judgments": 4, "comparisons": 4, "inconsistent": 0,
                                                  "failed": 0}
    assert summary["preferences"]["pairs"] == len(pairs)

    # ---- a rerun touches nothing; removing one file redoes that stage and those after it
    def stamps():  # config.yaml is rewritten each run: it records the latest invocation
        return {path: path.stat().st_mtime_ns for path in run.rglob("*")
                if path.is_file() and path.name != "config.yaml"}

    before = stamps()
    run_cai(config_for(job, "openai:http://127.0.0.1:9", "critique.revisions=2"))  # no judge needed
    assert stamps() == before

    (run / "judgments.jsonl").unlink()
    # The tiny random model as a local judge prefers whatever it reads first; its scores are
    # debiased for position (judge.py), so its verdicts are decided rather than all ties.
    run_cai(config_for(job, f"local:{job / 'model'}", "critique.revisions=2"))
    local = read_records(run / "judgments.jsonl", Judgment)
    assert len(local) == 4 and all(inconsistent_pairs(j) == set() for j in local)
    assert all(j.verdict["winner"] in {"c0", "c1"} for j in local)
    assert (run / "sft.jsonl").stat().st_mtime_ns == before[run / "sft.jsonl"]
    # the stages after the judge were redone from the new judgments, not left stale
    assert (run / "preferences.jsonl").stat().st_mtime_ns != before[run / "preferences.jsonl"]


def test_cai_config_refuses_what_the_pipeline_sets(job):
    with pytest.raises(ConfigError, match="sft.data.train is set by the CAI pipeline"):
        config_for(job, "local:x", "sft.data.train=other.jsonl")
    with pytest.raises(ConfigError, match="dpo.model.path is set by the CAI pipeline"):
        config_for(job, "local:x", "dpo.model.path=other")
    with pytest.raises(ConfigError, match="remove dpo.model.lora"):
        config_for(job, "local:x", "dpo.model.lora.r=4")
    with pytest.raises(ConfigError, match="no prompts of kinds"):
        run_cai(config_for(job, "local:x", "prompts.kinds=[nothing]"))


def test_the_shipped_recipe_is_valid(monkeypatch):
    monkeypatch.setattr("tether.hardware.bf16_is_fast", lambda: False)  # the recipe says bf16: auto
    config = load_config(CAIConfig, "recipes/cai.yaml")
    assert config.sft.model.lora is not None and config.dpo.model.lora is None
    assert config.prompts.kinds == ["harmful"] and config.rlaif.judge == "local:tether:default"
