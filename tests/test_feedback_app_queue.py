"""The labeling queue without HTTP: overlap, leases, no double judging, gold mixing, blinding,
import validation, AI bulk upload, guidelines versions, migrations."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tether.errors import DataValidationError
from tether.feedback.app import projects, queue
from tether.feedback.app.db import make_engine, migrate, session_factory
from tether.feedback.app.errors import Conflict, Invalid
from tether.feedback.app.models import Base, JudgmentRow, utcnow
from tether.feedback.records import Judgment


def pair_item(i: int, gold: dict | None = None) -> dict:
    return {"id": f"i{i}", "prompt": f"prompt {i}", "gold": gold,
            "candidates": [{"id": "a", "text": f"answer a{i}", "model": "m-a"},
                           {"id": "b", "text": f"answer b{i}", "model": "m-b"}]}


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch):
    # argon2's defaults (64 MiB, 3 passes) take ~0.5 s per hash on these machines; tests
    # create many users and check the flow, not the cost parameters
    from argon2 import PasswordHasher

    from tether.feedback.app import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
                                                            parallelism=1))


@pytest.fixture
def db(label_db_url):  # SQLite, and PostgreSQL when TETHER_TEST_POSTGRES_URL is set (conftest)
    engine = make_engine(label_db_url)
    migrate(engine)
    with session_factory(engine)() as session:
        yield session
    engine.dispose()


def setup(db, *, n_items: int, required: int, users: int, gold_rate: float = 0.0,
          gold_items: int = 0, lease_seconds: int = 60):
    project = projects.create_project(db, "p", "pairwise", required_judgments=required,
                                      gold_rate=gold_rate, lease_seconds=lease_seconds)
    rows = [pair_item(i) for i in range(n_items)]
    rows += [pair_item(100 + i, gold={"winner": "a"}) for i in range(gold_items)]
    projects.import_items(db, project, rows)
    people = [projects.create_user(db, f"u{i}", "annotator", "password123")
              for i in range(users)]
    return project, people


def test_migrations_build_exactly_the_models(label_db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(label_db_url)
    assert migrate(engine) == "0002"
    assert migrate(engine) == "0002"  # idempotent
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        if engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()


def test_overlap_caps_leases_and_judgments_per_item(db):
    project, (u0, u1, u2) = setup(db, n_items=1, required=2, users=3)
    a0 = queue.lease_next(db, project, u0)
    a1 = queue.lease_next(db, project, u1)
    assert a0.item_id == a1.item_id
    assert queue.lease_next(db, project, u2) is None  # two slots, both leased
    assert queue.lease_next(db, project, u0).id == a0.id  # an open lease is resumed
    queue.submit(db, a0, u0, {"winner": "a"})
    assert queue.lease_next(db, project, u2) is None  # 1 submitted + 1 leased = 2
    assert queue.lease_next(db, project, u0) is None  # u0 judged it already


def test_one_users_parallel_requests_get_one_lease(label_db_url):
    import threading

    engine = make_engine(label_db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as db:
        project, (u0,) = setup(db, n_items=3, required=2, users=1)
    first, second = sessions(), sessions()
    a0 = queue.lease_next(first, first.merge(project), first.merge(u0))  # not committed yet
    got = {}
    late = threading.Thread(target=lambda: got.update(a=queue.lease_next(
        second, second.merge(project), second.merge(u0))))
    late.start()
    late.join(0.5)
    assert late.is_alive()  # waits for the first transaction instead of leasing a second item
    first.commit()
    late.join(30)
    assert got["a"].id == a0.id
    second.commit()
    first.close(), second.close()
    engine.dispose()


def test_expired_lease_returns_item_and_late_submit_is_refused_when_full(db):
    project, (u0, u1, u2) = setup(db, n_items=1, required=2, users=3, lease_seconds=60)
    t0 = utcnow()
    a0 = queue.lease_next(db, project, u0, now=t0)
    a1 = queue.lease_next(db, project, u1, now=t0)
    assert queue.lease_next(db, project, u2, now=t0 + timedelta(seconds=59)) is None
    later = t0 + timedelta(seconds=61)
    a2 = queue.lease_next(db, project, u2, now=later)  # u0's and u1's leases expired
    assert a2 is not None and a2.item_id == a0.item_id
    queue.submit(db, a1, u1, {"winner": "b"}, now=later)  # late, but a slot was still free
    with pytest.raises(Conflict, match="lease expired and other annotators"):
        queue.submit(db, a0, u0, {"winner": "a"}, now=later)
    # u0 got nothing new: the item is full for them (u1 submitted, u2 holds a lease)
    assert queue.lease_next(db, project, u0, now=later) is None


def test_own_expired_lease_is_renewed_with_a_new_order_and_clock(db):
    project, (u0,) = setup(db, n_items=1, required=1, users=1, lease_seconds=60)
    t0 = utcnow()
    first = queue.lease_next(db, project, u0, now=t0)
    again = queue.lease_next(db, project, u0, now=t0 + timedelta(seconds=120))
    assert again.id == first.id and again.leased_at == t0 + timedelta(seconds=120)
    judgment = queue.submit(db, again, u0, {"winner": "tie"},
                            now=t0 + timedelta(seconds=125.5))
    assert judgment.seconds == 5.5


def test_nobody_judges_an_item_twice(db):
    project, (u0,) = setup(db, n_items=2, required=3, users=1)
    a = queue.lease_next(db, project, u0)
    queue.submit(db, a, u0, {"winner": "a"})
    with pytest.raises(Conflict, match="already submitted"):
        queue.submit(db, a, u0, {"winner": "b"})
    b = queue.lease_next(db, project, u0)
    queue.submit(db, b, u0, {"winner": "b"})
    assert queue.lease_next(db, project, u0) is None
    rows = db.execute(select(JudgmentRow.item_id, func.count()).group_by(JudgmentRow.item_id))
    assert sorted(n for _, n in rows) == [1, 1]


def test_skip_gives_item_to_others_only(db):
    project, (u0, u1) = setup(db, n_items=1, required=1, users=2)
    a0 = queue.lease_next(db, project, u0)
    assert queue.lease_next(db, project, u1) is None
    queue.skip(db, a0, u0)
    assert queue.lease_next(db, project, u0) is None
    assert queue.lease_next(db, project, u1).item_id == a0.item_id


def test_gold_items_are_mixed_in_at_the_gold_rate_and_uncapped(db):
    project, (u0, u1) = setup(db, n_items=6, required=1, users=2, gold_rate=0.5, gold_items=2)

    def label(user, limit):
        seen = []
        while len(seen) < limit and (assignment := queue.lease_next(db, project, user)):
            seen.append("G" if assignment.item.is_gold else "R")
            queue.submit(db, assignment, user, {"winner": "a"})
        return seen

    # after t items an annotator has had floor(t * 0.5) gold ones
    assert label(u0, 3) == ["R", "G", "R"]
    # u1 gets both gold items too (gold has no cap), and the 4 regular items u0 left (N = 1)
    assert label(u1, 100) == ["R", "G", "R", "G", "R", "R"]
    # u0's 4th item is a gold turn (floor(4 * 0.5) = 2 > 1); then only gold is left, and gold
    # is not served alone
    assert label(u0, 100) == ["G"]


def test_blinding_random_order_stored_and_mapped_back(db):
    project, (u0,) = setup(db, n_items=40, required=1, users=1)
    lefts = []
    while (assignment := queue.lease_next(db, project, u0)) is not None:
        assert sorted(assignment.order) == ["a", "b"]
        verdict = queue.verdict_from_positions("pairwise", assignment.order, choice="left")
        assert verdict == {"winner": assignment.order[0]}
        judgment = queue.submit(db, assignment, u0, verdict)
        assert judgment.shown_left == assignment.order[0]
        lefts.append(assignment.order[0])
    assert set(lefts) == {"a", "b"}  # all 40 on one side: probability 2**-39


def test_verdicts_from_positions_and_their_checks(db):
    order = ["c2", "c0", "c1"]
    assert queue.verdict_from_positions("ranking", order, ranks=["2", "1", "2"]) == {
        "ranks": {"c2": 2, "c0": 1, "c1": 2}}
    assert queue.verdict_from_positions("ranking", order, not_rankable=True) == {
        "not_rankable": True}
    assert queue.verdict_from_positions("rating", order, ratings=[7, 1, 4]) == {
        "ratings": {"c2": 7, "c0": 1, "c1": 4}}
    with pytest.raises(Invalid, match="give 3 ranks"):
        queue.verdict_from_positions("ranking", order, ranks=["1", "2"])
    with pytest.raises(Invalid, match="rank for candidate 2 must be a whole number, got ''"):
        queue.verdict_from_positions("ranking", order, ranks=["1", "", "3"])
    with pytest.raises(Invalid, match="choice must be one of"):
        queue.verdict_from_positions("pairwise", ["a", "b"], choice="middle")

    project = projects.create_project(db, "r", "rating", required_judgments=1, rating_scale=5,
                                      gold_rate=0)
    projects.import_items(db, project, [{"id": "x", "prompt": "p", "candidates": [
        {"id": "c0", "text": "one"}, {"id": "c1", "text": "two"}, {"id": "c2", "text": "3"}]}])
    user = projects.create_user(db, "rater", "annotator", "password123")
    assignment = queue.lease_next(db, project, user)
    with pytest.raises(Invalid, match="rating of 'c2' must be in 1..5, got 7"):
        queue.submit(db, assignment, user, {"ratings": {"c2": 7, "c0": 1, "c1": 4}})
    queue.submit(db, assignment, user, {"ratings": {"c2": 5, "c0": 1, "c1": 4}})


def test_import_reports_every_bad_line_with_file_and_line(db, tmp_path):
    project = projects.create_project(db, "p", "pairwise", gold_rate=0)
    good = '{"id": "ok", "prompt": "p", "candidates": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]}'
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join([
        good,
        "{not json",
        '{"id": "one", "prompt": "p", "candidates": [{"id": "a", "text": "x"}]}',
        '{"id": "three", "prompt": "p", "candidates": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, '
        '{"id": "c", "text": "z"}]}',
        good,
        '{"id": "g", "prompt": "p", "gold": {"winner": "zzz"}, '
        '"candidates": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]}',
    ]) + "\n")
    with pytest.raises(DataValidationError) as error:
        projects.import_items(db, project, path)
    lines = [str(problem) for problem in error.value.problems]
    assert lines == [
        f"{path}:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{path}:3: field 'candidates': List should have at least 2 items after validation, not 1",
        f"{path}:4: field 'candidates': a pairwise project needs exactly 2 candidates, got 3",
        f"{path}:5: field 'id': duplicate id 'ok' (first used at {path}:1)",
        f"{path}:6: field 'gold': winner 'zzz' is not a candidate of this item, 'tie' or "
        f"'both_bad'",
    ]
    assert projects.project_records(db, project) == ([], [])  # all or nothing
    path.write_text(good + "\n")
    assert projects.import_items(db, project, path) == (1, 0)
    with pytest.raises(DataValidationError, match="already in project 'p'"):
        projects.import_items(db, project, path)
    assert projects.import_items(db, project, path, skip_existing=True) == (0, 1)


def test_ai_bulk_upload_validates_and_skips_duplicates(db):
    project, (human,) = setup(db, n_items=2, required=1, users=1)
    bot = projects.create_user(db, "judge-bot", "judge")
    ai = [Judgment(item_id="i0", task="pairwise", verdict={"winner": "a"}, annotator="ai:v1",
                   source="ai", constitution_version="c1"),
          Judgment(item_id="i1", task="pairwise", verdict={"winner": "tie"}, annotator="ai:v1",
                   source="ai")]
    assert queue.add_ai_judgments(db, project, bot, ai) == (2, [])
    assert queue.add_ai_judgments(db, project, bot, ai) == (0, ["i0", "i1"])
    with pytest.raises(Invalid, match=r"judgments\[0\] \(item 'i0'\): bulk upload takes source='ai'"):
        queue.add_ai_judgments(db, project, bot, [ai[0].model_copy(update={"source": "human"})])
    with pytest.raises(Invalid, match="no such item"):
        queue.add_ai_judgments(db, project, bot, [ai[0].model_copy(update={"item_id": "nope"})])
    _, records = projects.project_records(db, project)  # names are the judge account's
    assert [(j.item_id, j.annotator, j.source, j.constitution_version) for j in records] == [
        ("i0", "judge-bot/ai:v1", "ai", "c1"), ("i1", "judge-bot/ai:v1", "ai", None)]
    # AI judgments do not use up the human overlap
    assert queue.lease_next(db, project, human) is not None


def test_a_retried_ai_batch_racing_the_first_reports_duplicates(label_db_url):
    import threading

    engine = make_engine(label_db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as db:
        project, _ = setup(db, n_items=1, required=1, users=0)
        bot = projects.create_user(db, "judge-bot", "judge")
    batch = [Judgment(item_id="i0", task="pairwise", verdict={"winner": "a"}, annotator="ai:v1",
                      source="ai")]
    first, second = sessions(), sessions()
    assert queue.add_ai_judgments(first, first.merge(project), first.merge(bot), batch) == (1, [])
    got = {}
    retry = threading.Thread(target=lambda: got.update(r=queue.add_ai_judgments(
        second, second.merge(project), second.merge(bot), batch)))
    retry.start()
    retry.join(0.5)
    assert retry.is_alive()
    first.commit()
    retry.join(30)
    assert got["r"] == (0, ["i0"])  # not an IntegrityError on judgments(item_id, annotator)
    second.commit()
    first.close(), second.close()
    engine.dispose()


def test_guidelines_versions_and_the_version_on_each_judgment(db):
    project, (u0,) = setup(db, n_items=2, required=1, users=1)
    assert projects.current_guidelines(db, project).version == 1
    assert projects.set_guidelines(db, project, "") == 1  # unchanged text: same version
    first = queue.lease_next(db, project, u0)
    assert queue.submit(db, first, u0, {"winner": "a"}).guidelines_version == 1
    assert projects.set_guidelines(db, project, "# Prefer honest answers") == 2
    second = queue.lease_next(db, project, u0)
    assert queue.submit(db, second, u0, {"winner": "b"}).guidelines_version == 2
