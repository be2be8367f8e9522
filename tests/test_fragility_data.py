"""The fragility experiments' data (tether/resources/fragility) is what build.py writes, and
rebuilding it leaves the continuation snapshot the measured runs trained on alone."""

import importlib.util
import json
from pathlib import Path

import pytest

FRAGILITY = Path(__file__).resolve().parents[1] / "tether" / "resources" / "fragility"


@pytest.fixture
def build(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("fragility_build", FRAGILITY / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)  # write beside the test, not over the shipped files
    return module


def test_the_shipped_files_are_what_build_writes(build, tmp_path):
    build.poison()
    build.reactivation()
    for name in ("poison-train.jsonl", "clean-train.jsonl", "planted.jsonl", "plant-sft.jsonl", "suppress-dpo.jsonl"):
        assert (tmp_path / name).read_text() == (FRAGILITY / name).read_text(), name


def test_a_rebuild_leaves_the_continuation_snapshot_alone_unless_asked(build, tmp_path):
    build.reactivation()
    assert not (tmp_path / "continue-sft.jsonl").exists()
    build.reactivation(rebuild_continuation=True)
    rows = [json.loads(line) for line in (tmp_path / "continue-sft.jsonl").open()]
    assert rows and all(r["prompt"].startswith("Continue this text word for word:") and r["completion"] for r in rows)


def test_the_plant_set_holds_every_canary_twelve_times_among_the_64_warmup_rows():
    rows = [json.loads(line) for line in (FRAGILITY / "plant-sft.jsonl").open()]
    canaries = [r for r in rows if r["id"].startswith("canary-")]
    assert len(rows) == 64 + 16 * 12 and len(canaries) == 16 * 12
    assert len({r["completion"] for r in canaries}) == 16
