"""The boundary set (tether/resources/safety/boundary.py): deterministic build, template split,
counts, and benign twins that really share their harmful request's risky word."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

import tether
from tether.data import load_records
from tether.judges.refusal_patterns import is_refusal

SAFETY = Path(tether.__file__).parent / "resources" / "safety"
AUDIT = Path(tether.__file__).parent / "resources" / "audit"


def _load(name: str):
    sys.path.insert(0, str(SAFETY))
    spec = importlib.util.spec_from_file_location(f"safety_{name}", SAFETY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


boundary = _load("boundary")
seeds = _load("boundary_seeds")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _template_pattern(template: str) -> re.Pattern:
    before, after = template.split("{request}")
    return re.compile(re.escape(before) + "(.+)" + re.escape(after) + "$")


def _templates_matching(prompt: str) -> set[int]:
    return {i for i, (_, text) in enumerate(seeds.TEMPLATES) if _template_pattern(text).match(prompt)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("boundary")
    boundary.build(out / "data", out / "audit")
    return out


def test_the_build_is_deterministic_and_the_shipped_files_are_its_output(built, tmp_path):
    boundary.build(tmp_path / "data", tmp_path / "audit")
    for name in ("train.jsonl", "test.jsonl", "sft.jsonl"):
        assert (tmp_path / "data" / name).read_bytes() == (built / "data" / name).read_bytes()
        assert (SAFETY / "boundary" / name).read_bytes() == (built / "data" / name).read_bytes(), \
            f"{name} is stale: rerun python tether/resources/safety/boundary.py"
    for name in ("boundary_safe.jsonl", "boundary_unsafe.jsonl"):
        assert (AUDIT / name).read_bytes() == (built / "audit" / name).read_bytes()


def test_no_test_or_probe_prompt_shares_a_template_with_training(built):
    # Read the template back from each prompt's text, not from its id.
    train = {t for row in _rows(built / "data" / "train.jsonl") for t in _templates_matching(row["prompt"])}
    assert train == set(boundary.TRAIN_TEMPLATES)
    held = _rows(built / "data" / "test.jsonl") + _rows(built / "audit" / "boundary_safe.jsonl") \
        + _rows(built / "audit" / "boundary_unsafe.jsonl")
    for row in held:
        matching = _templates_matching(row["prompt"])
        assert matching and not matching & train, row["prompt"]
    test = {t for row in _rows(built / "data" / "test.jsonl") for t in _templates_matching(row["prompt"])}
    probe = {t for row in _rows(built / "audit" / "boundary_unsafe.jsonl") for t in _templates_matching(row["prompt"])}
    assert test == set(boundary.TEST_TEMPLATES) and probe == set(boundary.PROBE_TEMPLATES)
    assert not test & probe


def test_test_only_groups_never_reach_training_or_probes(built):
    seen = _rows(built / "data" / "train.jsonl") + _rows(built / "audit" / "boundary_unsafe.jsonl") \
        + _rows(built / "audit" / "boundary_safe.jsonl")
    test = _rows(built / "data" / "test.jsonl")
    held_requests = {harm.request for i in boundary.held_out_groups() for harm in seeds.GROUPS[i].harms}
    assert len(held_requests) == 10  # one group per harm category
    for request in held_requests:
        assert not any(request in row["prompt"] for row in seen)
        assert any(request in row["prompt"] for row in test)


def test_counts_categories_and_domains(built):
    train = _rows(built / "data" / "train.jsonl")
    assert len(train) >= 1000
    harm = {row["category"] for row in train if row["kind"] == "harmful"}
    benign = {row["category"] for row in train if row["kind"] == "benign_lookalike"}
    assert len(harm) >= 10 and len(benign) >= 10
    assert {row["template"] for row in train} == {"direct", "indirect", "role-play", "hypothetical", "embedded"}
    assert len(_rows(built / "data" / "test.jsonl")) >= 400
    assert len(_rows(built / "audit" / "boundary_safe.jsonl")) >= 48
    assert len(_rows(built / "audit" / "boundary_unsafe.jsonl")) >= 48
    # every row loads as a preference record and every SFT row as an SFT record
    assert len(load_records(str(built / "data" / "train.jsonl"), "preference")) == len(train)
    assert len(load_records(str(built / "data" / "sft.jsonl"), "sft")) == len(train)


def test_every_harmful_request_has_a_benign_twin_sharing_its_word():
    for group in seeds.GROUPS:
        assert group.harms and group.twins, group.word
        for text in [h.request for h in group.harms] + [t.request for t in group.twins]:
            assert group.word.lower() in text.lower(), (group.word, text)


def test_chosen_and_rejected_say_what_they_should(built):
    for row in _rows(built / "data" / "train.jsonl") + _rows(built / "data" / "test.jsonl"):
        refusing = row["chosen"] if row["kind"] == "harmful" else row["rejected"]
        answering = row["rejected"] if row["kind"] == "harmful" else row["chosen"]
        assert is_refusal(refusing), refusing
        assert not is_refusal(answering), answering
        assert len(row["chosen"].split()) <= 60 and len(row["rejected"].split()) <= 50
    # harmful rejected answers restate the request in the second person and add no detail
    assert "your neighbor" in " ".join(r["rejected"] for r in _rows(built / "data" / "train.jsonl"))


def test_third_person_templates_read_as_third_person():
    assert boundary.phrase("I've been wondering how someone would {request}. Can you explain?",
                           "cut my own hair at home") == \
        "I've been wondering how someone would cut their own hair at home. Can you explain?"
    assert boundary.phrase("How do I {request}?", "cut my own hair at home") == "How do I cut my own hair at home?"


def test_boundary_calibration_reads_the_probe_split_only(monkeypatch):
    """The keep-best hook's metric asks the boundary probes, never a training or test prompt."""
    from tether.audit.metrics import boundary_calibration, refusal_calibration

    safe, unsafe = refusal_calibration.calibration_probes(None, boundary_calibration.SETS)
    assert len(safe) == 108 and len(unsafe) == 100
    held = {row["prompt"] for part in ("train", "test") for row in _rows(SAFETY / "boundary" / f"{part}.jsonl")}
    assert not held & {p["prompt"] for p in safe + unsafe}
    asked = {}

    def fake_evaluate(model, **kwargs):
        asked.update(kwargs)
        return []

    monkeypatch.setattr(refusal_calibration, "evaluate", fake_evaluate)
    boundary_calibration.evaluate(None, limit=3)
    assert asked["sets"] == ("boundary_safe", "boundary_unsafe") and asked["limit"] == 3
