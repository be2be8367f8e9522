"""The safety preference set (tether/resources/safety): splits, labels, and its build script."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

import tether
from tether.data import load_records
from tether.judges.refusal_patterns import is_refusal

SAFETY = Path(tether.__file__).parent / "resources" / "safety"
KINDS = ("harmful", "benign_lookalike")
HARMFUL_CATEGORIES = {"weapons", "drugs", "cyber", "violence", "selfharm", "fraud", "hate",
                      "privacy"}
BENIGN_CATEGORIES = {"programming", "cooking", "gaming", "history_fiction", "medicine",
                     "security", "gardening", "household", "photography"}


def _load_build():
    spec = importlib.util.spec_from_file_location("safety_build", SAFETY / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


def _rows(name: str) -> list[dict]:
    lines = (SAFETY / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {"train": _rows("train.jsonl"), "heldout": _rows("heldout.jsonl")}


def _normalized(prompt: str) -> str:
    return " ".join(prompt.lower().split())


# ---------------------------------------------------------------- the shipped files

def test_splits_load_as_preference_records(splits):
    for name, rows in splits.items():
        records = load_records(SAFETY / f"{name}.jsonl", "preference")
        assert [r.id for r in records] == [row["id"] for row in rows]
    assert len(splits["train"]) + len(splits["heldout"]) >= 240


def test_rows_have_exactly_the_documented_fields(splits):
    for row in splits["train"] + splits["heldout"]:
        assert list(row) == ["id", "prompt", "chosen", "rejected", "kind", "category"]
        assert row["kind"] in KINDS


def test_ids_unique_across_splits(splits):
    ids = [row["id"] for rows in splits.values() for row in rows]
    assert [i for i, n in Counter(ids).items() if n > 1] == []


def test_categories_cover_the_documented_set(splits):
    rows = splits["train"] + splits["heldout"]
    assert {r["category"] for r in rows if r["kind"] == "harmful"} == HARMFUL_CATEGORIES
    assert {r["category"] for r in rows if r["kind"] == "benign_lookalike"} == BENIGN_CATEGORIES


def test_both_kinds_in_both_splits_and_heldout_share(splits):
    counts = {name: Counter(r["kind"] for r in rows) for name, rows in splits.items()}
    for kind in KINDS:
        train, heldout = counts["train"][kind], counts["heldout"][kind]
        assert train > 0 and heldout > 0
        assert heldout / (train + heldout) >= 0.15, kind


def test_split_is_stratified_by_category(splits):
    train = Counter((r["kind"], r["category"]) for r in splits["train"])
    heldout = Counter((r["kind"], r["category"]) for r in splits["heldout"])
    assert set(train) == set(heldout)
    for group in train:
        assert 0.15 <= heldout[group] / (train[group] + heldout[group]) <= 0.30, group


def test_heldout_prompts_never_appear_in_train(splits):
    train_prompts = {_normalized(r["prompt"]) for r in splits["train"]}
    assert [r["id"] for r in splits["heldout"] if _normalized(r["prompt"]) in train_prompts] == []


def test_sft_file_is_train_prompt_plus_chosen(splits):
    records = load_records(SAFETY / "sft.jsonl", "sft")
    assert [(r.id, r.prompt, r.completion) for r in records] == [
        (row["id"], row["prompt"], row["chosen"]) for row in splits["train"]]


def test_refusal_detector_agrees_with_labels(splits):
    """Harmful: chosen refuses, rejected complies. Benign look-alike: the reverse."""
    disagreements = []
    for row in splits["train"] + splits["heldout"]:
        harmful = row["kind"] == "harmful"
        for side, should_refuse in (("chosen", harmful), ("rejected", not harmful)):
            if is_refusal(row[side]) != should_refuse:
                disagreements.append(f"{row['id']} {side}: {row[side]}")
    assert disagreements == []


def test_outputs_are_what_build_writes_from_the_parts(tmp_path):
    counts = build.build(SAFETY / "parts", tmp_path)
    for name in ("train.jsonl", "heldout.jsonl", "sft.jsonl"):
        assert (tmp_path / name).read_bytes() == (SAFETY / name).read_bytes(), name
    assert sum(counts["train"].values()) == len(_rows("train.jsonl"))
    assert sum(counts["heldout"].values()) == len(_rows("heldout.jsonl"))


def test_round_robin_mixes_categories_in_any_prefix(splits):
    heldout = splits["heldout"]
    first_harmful = [r["category"] for r in heldout if r["kind"] == "harmful"][:8]
    assert set(first_harmful) == HARMFUL_CATEGORIES


# ---------------------------------------------------------------- build.py checks

def _part_row(number: int, **changes) -> dict:
    row = {"id": f"benign-cooking-{number:03d}", "split": "train", "kind": "benign_lookalike",
           "category": "cooking", "prompt": f"How do I poach egg number {number}?",
           "chosen": "Simmer water, add the egg, cook three minutes.",
           "rejected": "I can't help with poaching."}
    row.update(changes)
    return row


def _write_parts(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir()
    (directory / "benign_cooking.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return directory


def _valid_rows() -> list[dict]:
    """Ten rows, two held out (20%), with unrelated prompts."""
    prompts = ["How do I poach an egg?", "How do I butcher a chicken?", "Best knife for fish?",
               "How do I sharpen a cleaver?", "How do I zest a lemon?", "How long to rest steak?",
               "Why does bread rise?", "How do I smash garlic?", "What is a roux?",
               "How do I crack a coconut?"]
    return [_part_row(i + 1, prompt=p, split="heldout" if i in (4, 9) else "train")
            for i, p in enumerate(prompts)]


def test_build_accepts_valid_parts_and_writes_three_files(tmp_path):
    parts = _write_parts(tmp_path / "parts", _valid_rows())
    counts = build.build(parts, tmp_path)
    assert counts["train"] == Counter({("benign_lookalike", "cooking"): 8})
    assert counts["heldout"] == Counter({("benign_lookalike", "cooking"): 2})
    sft = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert list(sft[0]) == ["id", "prompt", "completion"] and len(sft) == 8


@pytest.mark.parametrize(("index", "changes", "message"), [
    (1, {"id": "benign-cooking-001"}, "duplicate id 'benign-cooking-001'"),
    (1, {"chosen": "  "}, "missing or empty chosen"),
    (1, {"rejected": "Simmer water, add the egg,  cook three minutes."},
     "chosen and rejected are the same text"),
    (1, {"chosen": "word " * 61}, "chosen has 61 words (limit 60)"),
    (1, {"kind": "harmless"}, "kind 'harmless' is not one of"),
    (1, {"id": "harm-cooking-002"}, "does not match its kind and category"),
    (1, {"prompt": "how do I   POACH an egg?"}, "duplicate prompt"),
    (4, {"prompt": "How do I poach a duck egg?"}, "looks like a paraphrase of benign-cooking-001"),
    (9, {"split": "train"}, "1 of 10 rows held out"),
])
def test_build_reports_bad_parts_and_writes_nothing(tmp_path, index, changes, message):
    rows = _valid_rows()
    rows[index].update(changes)
    parts = _write_parts(tmp_path / "parts", rows)
    with pytest.raises(ValueError, match=re.escape(message)):
        build.build(parts, tmp_path)
    assert not (tmp_path / "train.jsonl").exists()
