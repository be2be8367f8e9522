"""Judgments -> training data: majority aggregation, formats, and the ``tether label`` CLI."""

from __future__ import annotations

import io
import json

import pytest

from tether.cli import main
from tether.data import load_records
from tether.data.records import PreferenceRecord
from tether.errors import TetherError
from tether.feedback import export as exports
from tether.feedback.export import export, preference_pairs, ranking_pairs, raw_judgments
from tether.feedback.records import FeedbackItem, Judgment


def item(item_id: str, texts: list[str], prompt="Q?", gold=None) -> FeedbackItem:
    return FeedbackItem(id=item_id, prompt=prompt, gold=gold, candidates=[
        {"id": f"c{i}", "text": text, "model": f"m{i}"} for i, text in enumerate(texts)])


def vote(item_id: str, verdict: dict, who: str, task="pairwise", source="human") -> Judgment:
    return Judgment(item_id=item_id, task=task, verdict=verdict, annotator=who, source=source)


def test_pairwise_majority_skips_ties_both_bad_and_split_votes():
    items = [item("maj", ["good", "bad"]), item("split", ["x", "y"]),
             item("tied", ["p", "q"]), item("bad", ["r", "s"]), item("none", ["t", "u"])]
    judgments = [
        vote("maj", {"winner": "c0"}, "h1"), vote("maj", {"winner": "c0"}, "h2"),
        vote("maj", {"winner": "c1"}, "h3"),
        vote("split", {"winner": "c0"}, "h1"), vote("split", {"winner": "c1"}, "h2"),
        vote("tied", {"winner": "tie"}, "h1"), vote("tied", {"winner": "tie"}, "h2"),
        vote("tied", {"winner": "c0"}, "h3"),
        vote("bad", {"winner": "both_bad"}, "h1"),
    ]
    assert preference_pairs(items, judgments) == [
        {"prompt": "Q?", "chosen": "good", "rejected": "bad", "id": "maj"}]


def test_ranking_all_pairs_and_best_vs_worst():
    it = item("r", ["A", "B", "C"])
    judgments = [
        vote("r", {"ranks": {"c0": 1, "c1": 2, "c2": 3}}, "h1", "ranking"),
        vote("r", {"ranks": {"c0": 1, "c1": 3, "c2": 2}}, "h2", "ranking"),
        vote("r", {"ranks": {"c0": 2, "c1": 1, "c2": 3}}, "h3", "ranking"),
        vote("r", {"not_rankable": True}, "h4", "ranking"),  # casts no votes
    ]
    # pair votes: (c0,c1) c0 c0 c1 -> c0; (c0,c2) c0 c0 c0 -> c0; (c1,c2) c1 c2 c1 -> c1
    assert ranking_pairs([it], judgments) == [
        {"prompt": "Q?", "chosen": "A", "rejected": "B", "id": "r/0-1", "group_id": "r"},
        {"prompt": "Q?", "chosen": "A", "rejected": "C", "id": "r/0-2", "group_id": "r"},
        {"prompt": "Q?", "chosen": "B", "rejected": "C", "id": "r/1-2", "group_id": "r"},
    ]
    # Copeland: c0 +2, c1 0, c2 -2 -> best A, worst C
    assert preference_pairs([it], judgments) == [
        {"prompt": "Q?", "chosen": "A", "rejected": "C", "id": "r"}]


def test_ranking_ties_give_no_pair_and_a_cycle_gives_no_best():
    it = item("t", ["A", "B", "C"])
    tied = [vote("t", {"ranks": {"c0": 1, "c1": 1, "c2": 2}}, "h1", "ranking")]
    assert [r["id"] for r in ranking_pairs([it], tied)] == ["t/0-2", "t/1-2"]
    assert preference_pairs([it], tied) == []  # best (c0, c1) is shared
    cycle = [vote("t", {"ranks": {"c0": 1, "c1": 2, "c2": 3}}, "h1", "ranking"),
             vote("t", {"ranks": {"c0": 3, "c1": 1, "c2": 2}}, "h2", "ranking"),
             vote("t", {"ranks": {"c0": 2, "c1": 3, "c2": 1}}, "h3", "ranking")]
    assert len(ranking_pairs([it], cycle)) == 3 and preference_pairs([it], cycle) == []


def test_ratings_vote_per_pair():
    it = item("s", ["A", "B"])
    judgments = [vote("s", {"ratings": {"c0": 2, "c1": 6}}, "h1", "rating"),
                 vote("s", {"ratings": {"c0": 5, "c1": 5}}, "h2", "rating"),
                 vote("s", {"ratings": {"c0": 1, "c1": 3}}, "h3", "rating")]
    assert preference_pairs([it], judgments) == [
        {"prompt": "Q?", "chosen": "B", "rejected": "A", "id": "s"}]


def test_chat_format_and_flags_for_gold_and_ai():
    chat = item("c", ["Hi!", "Go away."],
                prompt=[{"role": "system", "content": "Be nice."},
                        {"role": "user", "content": "Hello"}])
    gold = item("g", ["right", "wrong"], gold={"winner": "c0"})
    judgments = [vote("c", {"winner": "c0"}, "judge", source="ai"),
                 vote("g", {"winner": "c0"}, "h1")]
    assert preference_pairs([chat, gold], judgments, chat=True) == [
        {"prompt": [{"role": "system", "content": "Be nice."},
                    {"role": "user", "content": "Hello"}],
         "chosen": [{"role": "assistant", "content": "Hi!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}], "id": "c"},
        {"prompt": [{"role": "user", "content": "Q?"}],
         "chosen": [{"role": "assistant", "content": "right"}],
         "rejected": [{"role": "assistant", "content": "wrong"}], "id": "g"}]
    assert preference_pairs([chat, gold], judgments, chat=True, include_ai=False,
                            include_gold=False) == []
    with pytest.raises(TetherError, match="item 'c' has a chat prompt"):
        preference_pairs([chat], judgments)


def test_an_export_says_which_items_it_left_out_and_why():
    items = [item("kept", ["good", "bad"]), item("tied", ["p", "q"]), item("split", ["x", "y"]),
             item("unjudged", ["t", "u"]), item("ai", ["v", "w"]),
             item("gold", ["r", "s"], gold={"winner": "c0"}),
             item("unrankable", ["a", "b", "c"]), item("cycle", ["a", "b", "c"])]
    judgments = [vote("kept", {"winner": "c0"}, "h1"),
                 vote("tied", {"winner": "tie"}, "h1"), vote("tied", {"winner": "both_bad"}, "h2"),
                 vote("tied", {"winner": "tie"}, "h3"),
                 vote("split", {"winner": "c0"}, "h1"), vote("split", {"winner": "c1"}, "h2"),
                 vote("ai", {"winner": "c0"}, "judge", source="ai"),
                 vote("gold", {"winner": "c0"}, "h1"),
                 vote("unrankable", {"not_rankable": True}, "h1", task="ranking")]
    judgments += [vote("cycle", {"ranks": ranks}, who, task="ranking") for who, ranks in (
        ("h1", {"c0": 1, "c1": 2, "c2": 3}), ("h2", {"c1": 1, "c2": 2, "c0": 3}),
        ("h3", {"c2": 1, "c0": 2, "c1": 3}))]
    result = export(items, judgments, "preference", include_ai=False, include_gold=False)
    assert [row["id"] for row in result.rows] == ["kept"]
    assert result.dropped == {exports.MAJORITY_TIE: ["tied"], exports.SPLIT: ["split"],
                              exports.NOT_JUDGED: ["unjudged"], exports.AI_ONLY: ["ai"],
                              exports.GOLD_EXCLUDED: ["gold"],
                              exports.NOT_RANKABLE: ["unrankable"],
                              exports.NO_BEST_WORST: ["cycle"]}
    assert result.summary().startswith("1 preference rows; 7 items left out: ")
    assert "1 the majority said tie or both bad (tied)" in result.summary()
    # every pair of the cycle has a majority, so all-pairs keeps it; AI and gold count again
    ranking = export(items, judgments, "ranking")
    assert {row["group_id"] for row in ranking.rows} == {"kept", "ai", "gold", "cycle"}
    assert exports.NO_BEST_WORST not in ranking.dropped and exports.AI_ONLY not in ranking.dropped
    raw = export(items, judgments, "raw", include_ai=False)
    assert len(raw.rows) == len(judgments) - 1
    assert raw.dropped == {exports.AI_JUDGMENT: ["ai"]}
    assert raw.summary() == (f"{len(judgments) - 1} raw rows; 1 judgments left out: "
                             f"1 AI judgment (AI excluded) (ai)")
    assert export(items, [], "raw").summary() == "0 raw rows; no judgments left out"


def test_a_verdict_that_does_not_fit_its_item_is_an_error():
    with pytest.raises(TetherError, match="judgment by 'h1' on item 'x': winner 'c9'"):
        preference_pairs([item("x", ["a", "b"])], [vote("x", {"winner": "c9"}, "h1")])


def test_raw_keeps_every_field():
    judgment = vote("x", {"winner": "tie"}, "h1").model_copy(update={"seconds": 2.5})
    (row,) = raw_judgments([judgment])
    assert Judgment.model_validate(row) == judgment


# ---- the CLI, end to end ---------------------------------------------------------------------

@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch):
    from argon2 import PasswordHasher

    from tether.feedback.app import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
                                                            parallelism=1))


def run(*argv: str, stdin: str = "") -> int:
    import sys

    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        return main(["label", *argv])
    finally:
        sys.stdin = old


def test_cli_import_label_export_roundtrip(tmp_path, capsys, label_db_url):
    db = label_db_url  # SQLite, and PostgreSQL when TETHER_TEST_POSTGRES_URL is set (conftest)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(item(f"i{i}", [f"good {i}", f"bad {i}"]).model_dump())
                             + "\n" for i in range(3)))
    guidelines = tmp_path / "guide.md"
    guidelines.write_text("# Pick the helpful answer\n")
    assert run("export", "--db", db, "--project", "p", "--out", str(tmp_path / "x")) == 2
    assert "has no tether label schema; run `tether label init" in capsys.readouterr().err
    assert run("init", "--db", db) == 0
    assert run("create-user", "ann", "--db", db, "--password-stdin", stdin="secret-pass\n") == 0
    assert run("create-user", "bot", "--db", db, "--role", "judge") == 0
    assert run("create-project", "p", "--db", db, "--judgments", "1", "--gold-rate", "0",
               "--guidelines", str(guidelines)) == 0
    assert run("import", "--db", db, "--project", "p", str(items)) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "z", "prompt": "p", "candidates": []}\n')
    assert run("import", "--db", db, "--project", "p", str(bad)) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: field 'candidates': List should have at least 2 items" in err
    assert run("create-user", "ann", "--db", db, "--password-stdin", stdin="other-pass\n") == 2
    assert "user 'ann' already exists" in capsys.readouterr().err

    # label every item "left" through the queue, as the app does
    from tether.feedback.app import projects, queue
    from tether.feedback.app.db import make_engine, session_factory

    engine = make_engine(db)
    with session_factory(engine).begin() as session:
        project, ann = projects.get_project(session, "p"), projects.get_user(session, "ann")
        while (assignment := queue.lease_next(session, project, ann)) is not None:
            good = next(c["id"] for c in assignment.item.candidates if "good" in c["text"])
            choice = "left" if assignment.order[0] == good else "right"
            queue.submit(session, assignment, ann, queue.verdict_from_positions(
                "pairwise", assignment.order, choice=choice))
    engine.dispose()

    for fmt in ("preference", "preference-chat", "ranking", "raw"):
        out = tmp_path / f"{fmt}.jsonl"
        assert run("export", "--db", db, "--project", "p", "--format", fmt,
                   "--out", str(out)) == 0
        unit = "judgments" if fmt == "raw" else "items"
        assert f"; no {unit} left out" in capsys.readouterr().out
    records = load_records(tmp_path / "preference.jsonl", "preference")
    assert [(r.prompt, r.chosen, r.rejected, r.id) for r in records] == [
        ("Q?", f"good {i}", f"bad {i}", f"i{i}") for i in range(3)]
    chat = load_records(tmp_path / "preference-chat.jsonl", "preference")
    assert chat[0].chosen == [{"role": "assistant", "content": "good 0"}]
    assert all(isinstance(r, PreferenceRecord) for r in
               load_records(tmp_path / "ranking.jsonl", "preference"))
    ranking = [json.loads(line) for line in (tmp_path / "ranking.jsonl").read_text().splitlines()]
    assert [r["group_id"] for r in ranking] == ["i0", "i1", "i2"]
    raw = [Judgment.model_validate_json(line)
           for line in (tmp_path / "raw.jsonl").read_text().splitlines()]
    assert [(j.item_id, j.annotator, j.guidelines_version) for j in raw] == [
        (f"i{i}", "ann", 1) for i in range(3)]
    capsys.readouterr()
    assert run("token", "ann", "--db", db) == 0
    assert capsys.readouterr().out.startswith("tl_")
