"""The labeling queue: lease the next item to an annotator, take their verdict, skip, withdraw.

Rules, with N = ``project.required_judgments``:

- A regular item is open while (submitted judgments + unexpired leases) < N. Gold items have no
  cap: every annotator may get each gold item once.
- Nobody gets an item twice: ``assignments(item_id, user_id)`` is unique. An annotator's own
  expired lease is the one exception: the same row is leased to them again.
- A lease expires after ``project.lease_seconds``; an expired lease no longer holds a slot, so
  the item goes back to the queue. A late submission is still taken while a slot is free, and
  refused (409) once others have filled the item.
- Gold items are mixed in so that after t items an annotator has judged floor(t * gold_rate)
  gold ones.
- Blinding: each assignment stores a random order of the candidates; pages and the API show
  positions (left/right, 1..K) and never candidate ids or model names.

Concurrency: on SQLite every transaction holds the write lock from its start (db.py), so the
count-then-insert below is atomic. On PostgreSQL (READ COMMITTED) ``lease_next`` first locks the
user's row, so one annotator's parallel requests get one lease, not one each; the next open item
is then taken with ``FOR UPDATE SKIP LOCKED``, so parallel annotators spread over items instead
of queueing on one row, and its count is repeated after the lock (the query's snapshot may predate
a lease committed since). ``submit`` locks the item row (waiting) and counts again.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session

from tether.feedback.app.errors import Conflict, Invalid, NotFound
from tether.feedback.app.models import Assignment, Item, JudgmentRow, Project, User, utcnow
from tether.feedback.app.projects import current_guidelines, stored_item_problem
from tether.feedback.records import Judgment
from tether.feedback.verdicts import verdict_problem

PAIRWISE_CHOICES = ("left", "right", "tie", "both_bad")
_shuffle = random.SystemRandom().shuffle


def _holds_slot(now: datetime):
    """SQL condition: this assignment counts against the item's N."""
    return or_(Assignment.status == "submitted",
               and_(Assignment.status == "leased", Assignment.expires_at > now))


def _slots_taken(db: Session, item_id: int, now: datetime, *, excluding_user: int | None = None
                 ) -> int:
    query = (select(func.count()).select_from(Assignment)
             .where(Assignment.item_id == item_id, _holds_slot(now)))
    if excluding_user is not None:
        query = query.where(Assignment.user_id != excluding_user)
    return db.scalar(query)


def _lock_item(db: Session, item_id: int) -> Item:
    # FOR UPDATE on PostgreSQL; SQLAlchemy leaves it out on SQLite, which is locked whole
    return db.scalar(select(Item).where(Item.id == item_id).with_for_update())


def open_lease(db: Session, project: Project, user: User, now: datetime | None = None
               ) -> Assignment | None:
    now = now or utcnow()
    return db.scalar(select(Assignment).join(Item)
                     .where(Item.project_id == project.id, Assignment.user_id == user.id,
                            Assignment.status == "leased", Assignment.expires_at > now)
                     .order_by(Assignment.id).limit(1))


def _gold_turn(db: Session, project: Project, user: User) -> bool:
    done = db.execute(select(func.count(), func.coalesce(func.sum(case((Item.is_gold, 1), else_=0)), 0))
                      .select_from(Assignment).join(Item)
                      .where(Item.project_id == project.id, Assignment.user_id == user.id,
                             Assignment.status.in_(("submitted", "skipped")))).one()
    total, gold = int(done[0]), int(done[1])
    return math.floor((total + 1) * project.gold_rate) > gold


def _next_item(db: Session, project: Project, user: User, gold: bool, now: datetime,
               passed: set[int], *, lock: bool = True) -> Item | None:
    """The first item (by id) still open to this user, or None; regular items come row-locked
    unless ``lock`` is False."""
    taken = (select(func.count()).select_from(Assignment)
             .where(Assignment.item_id == Item.id, _holds_slot(now)).scalar_subquery())
    mine = exists().where(Assignment.item_id == Item.id, Assignment.user_id == user.id,
                          Assignment.status.in_(("submitted", "skipped")))
    judged = exists().where(JudgmentRow.item_id == Item.id,
                            JudgmentRow.annotator == user.username)
    query = (select(Item).where(Item.project_id == project.id, Item.is_gold == gold,
                                Item.problem.is_(None), Item.id.not_in(passed), ~mine, ~judged)
             .order_by(Item.id).limit(1))
    if not gold:  # gold has no cap, so nothing to lock: (item, user) is unique on its own
        # SKIP LOCKED: an item another lease is being written for is passed over, not waited on
        # (waiting would re-check only the row, not the count). SQLite leaves the clause out.
        query = query.where(taken < project.required_judgments)
        if lock:
            query = query.with_for_update(of=Item, skip_locked=True)
    return db.scalar(query)


def _lock_user(db: Session, user: User) -> None:
    # NO KEY UPDATE: serializes this user's leases, yet lets foreign-key checks (KEY SHARE) on
    # the row through. No-op on SQLite.
    db.execute(select(User.id).where(User.id == user.id).with_for_update(key_share=True))


def resume(db: Session, project: Project, user: User, now: datetime | None = None
           ) -> Assignment | None:
    """The user's open lease in this project, if any; it never creates one (pages and API
    reads call it, so a GET or a link prefetch takes no item out of the queue)."""
    now = now or utcnow()
    current = open_lease(db, project, user, now)
    if current is not None and _unservable(db, current.item, project):
        current.expires_at = now  # leased before its item was found bad: let it go
        return None
    return current


def has_work(db: Session, project: Project, user: User, now: datetime | None = None) -> bool:
    """Whether ``lease_next`` would probably find an item (read-only; it locks nothing)."""
    now = now or utcnow()
    return any(_next_item(db, project, user, gold, now, set(), lock=False) is not None
               for gold in _kinds_in_turn(db, project, user))


def _kinds_in_turn(db: Session, project: Project, user: User) -> tuple[bool, ...]:
    """Which kinds of item (gold: True) the user's next lease may take, in order."""
    gold_turn = project.gold_rate > 0 and _gold_turn(db, project, user)
    return (True, False) if gold_turn else (False,)


def lease_next(db: Session, project: Project, user: User, now: datetime | None = None
               ) -> Assignment | None:
    """The user's open lease in this project, or a new one; None when nothing is left for them."""
    now = now or utcnow()
    _lock_user(db, user)
    current = resume(db, project, user, now)
    if current is not None:
        return current
    for gold in _kinds_in_turn(db, project, user):
        passed: set[int] = set()
        while (item := _next_item(db, project, user, gold, now, passed)) is not None:
            passed.add(item.id)
            if _unservable(db, item, project):
                continue
            if gold or _slots_taken(db, item.id, now) < project.required_judgments:
                return _lease(db, project, item, user, now)
            # filled since the query's snapshot (PostgreSQL only); we keep its lock, so the
            # others pass over it too
    return None


def _unservable(db: Session, item: Item, project: Project) -> bool:
    """True for an item that fails today's import checks (e.g. imported by an older tether
    with 27 candidates); it is marked, so that one bad item never blocks the queue, and the
    admin page counts it."""
    problem = stored_item_problem(item, project)
    if problem is not None:
        item.problem = problem
        db.flush()
    return problem is not None


def _lease(db: Session, project: Project, item: Item, user: User, now: datetime) -> Assignment:
    order = [c["id"] for c in item.candidates]
    _shuffle(order)
    expires = now + timedelta(seconds=project.lease_seconds)
    assignment = db.scalar(select(Assignment).where(Assignment.item_id == item.id,
                                                    Assignment.user_id == user.id))
    if assignment is None:  # the usual case; else the user's own expired lease is renewed
        assignment = Assignment(item_id=item.id, user_id=user.id)
        db.add(assignment)
    assignment.order, assignment.status = order, "leased"
    assignment.leased_at, assignment.expires_at = now, expires
    db.flush()
    return assignment


def get_assignment(db: Session, assignment_id: int, user: User) -> Assignment:
    """The user's own assignment; another user's is reported as missing, not as forbidden, so
    ids cannot be probed."""
    assignment = db.get(Assignment, assignment_id)
    if assignment is None or assignment.user_id != user.id:
        raise NotFound(f"no assignment {assignment_id}")
    return assignment


def verdict_from_positions(task: str, order: list[str], *, choice: str | None = None,
                           ranks: list[Any] | None = None, ratings: list[Any] | None = None,
                           not_rankable: bool = False) -> dict[str, Any]:
    """A verdict in candidate ids from what the annotator saw: ``choice`` left/right/tie/
    both_bad (pairwise), or ``ranks`` / ``ratings`` listed by shown position."""
    if task == "pairwise":
        if choice not in PAIRWISE_CHOICES:
            raise Invalid(f"choice must be one of {', '.join(PAIRWISE_CHOICES)}, got {choice!r}")
        winner = {"left": order[0], "right": order[-1]}.get(choice, choice)
        return {"winner": winner}
    if task == "ranking" and not_rankable:
        return {"not_rankable": True}
    values = ranks if task == "ranking" else ratings
    what = "ranks" if task == "ranking" else "ratings"
    if not isinstance(values, list) or len(values) != len(order):
        raise Invalid(f"give {len(order)} {what}, one per candidate in the order shown")
    numbers = []
    for position, value in enumerate(values, start=1):
        try:
            numbers.append(int(str(value).strip()))
        except ValueError:
            raise Invalid(f"{what[:-1]} for candidate {position} must be a whole number, "
                          f"got {value!r}") from None
    return {what: dict(zip(order, numbers))}


def submit(db: Session, assignment: Assignment, user: User, verdict: dict[str, Any], *,
           reason: str | None = None, now: datetime | None = None) -> JudgmentRow:
    """Record the user's verdict (candidate ids) on their assignment."""
    now = now or utcnow()
    item = _lock_item(db, assignment.item_id)
    db.refresh(assignment)  # the state as of the lock, not as first read
    project = db.get(Project, item.project_id)
    if assignment.user_id != user.id:
        raise NotFound(f"no assignment {assignment.id}")
    if assignment.status != "leased":
        raise Conflict(f"this item was already {assignment.status}")
    if (assignment.expires_at <= now and not item.is_gold
            and _slots_taken(db, item.id, now, excluding_user=user.id)
            >= project.required_judgments):
        raise Conflict("the lease expired and other annotators have completed this item")
    ids = [c["id"] for c in item.candidates]
    problem = verdict_problem(project.task, verdict, ids, rating_scale=project.rating_scale)
    if problem is not None:
        raise Invalid(problem)
    guidelines = current_guidelines(db, project)
    judgment = JudgmentRow(
        item_id=item.id, user_id=user.id, annotator=user.username, assignment_id=assignment.id,
        task=project.task, verdict=verdict, source="human", reason=(reason or "").strip() or None,
        shown_left=assignment.order[0] if project.task == "pairwise" else None,
        guidelines_version=guidelines.version if guidelines else None,
        seconds=round((now - assignment.leased_at).total_seconds(), 3), created_at=now)
    db.add(judgment)
    assignment.status = "submitted"
    db.flush()
    return judgment


def skip(db: Session, assignment: Assignment, user: User) -> None:
    """Give the item back to the queue for others; this user will not be offered it again."""
    if assignment.user_id != user.id:
        raise NotFound(f"no assignment {assignment.id}")
    if assignment.status != "leased":
        raise Conflict(f"this item was already {assignment.status}")
    assignment.status = "skipped"
    db.flush()


def withdraw(db: Session, assignment: Assignment, user: User) -> None:
    """Give a submitted item back to the queue once its judgment is deleted (taken back): its
    slot opens for others and, as after a skip, this user is not offered it again. Nothing new
    is leased."""
    _lock_item(db, assignment.item_id)  # as submit does: a count under way sees before or after
    db.refresh(assignment)
    if assignment.user_id != user.id:
        raise NotFound(f"no assignment {assignment.id}")
    if assignment.status != "submitted":
        raise Conflict(f"this item is {assignment.status}, not submitted")
    assignment.status = "skipped"
    db.flush()


ANNOTATOR_LENGTH = 128  # judgments.annotator


def ai_annotator(account: User, name: str) -> str:
    """An AI judge's name as stored: ``ACCOUNT/NAME``. Usernames cannot contain '/', so an AI
    name never equals a person's, and no account can post under another account's names."""
    prefix = f"{account.username}/"
    return name if name.startswith(prefix) else prefix + name


def add_ai_judgments(db: Session, project: Project, user: User, judgments: list[Judgment]
                     ) -> tuple[int, list[str]]:
    """Store AI judge verdicts (``source="ai"``) posted in bulk by ``user`` (a judge or admin),
    each under ``ai_annotator(user, judgment.annotator)``.

    All-or-nothing on invalid input (``Invalid`` naming the index); a judgment whose
    (item, annotator) is already stored is left as it is and reported, so a judge bot can
    retry a batch. Returns ``(created, duplicate item ids)``.
    """
    # one upload per project at a time (PostgreSQL; SQLite is locked whole): a retried batch
    # racing its first try then sees the stored rows as duplicates instead of failing on the
    # unique key
    db.execute(select(Project.id).where(Project.id == project.id).with_for_update(key_share=True))
    items = {i.external_id: i for i in db.scalars(select(Item).where(
        Item.project_id == project.id, Item.external_id.in_({j.item_id for j in judgments})))}
    for index, judgment in enumerate(judgments):
        where = f"judgments[{index}] (item {judgment.item_id!r})"
        if judgment.source != "ai":
            raise Invalid(f"{where}: bulk upload takes source='ai' judgments only")
        if judgment.item_id not in items:
            raise Invalid(f"{where}: no such item in project {project.name!r}")
        if judgment.task != project.task:
            raise Invalid(f"{where}: task {judgment.task!r} but the project is {project.task!r}")
        if not judgment.annotator.strip():
            raise Invalid(f"{where}: annotator is empty")
        if len(ai_annotator(user, judgment.annotator)) > ANNOTATOR_LENGTH:
            raise Invalid(f"{where}: annotator name longer than {ANNOTATOR_LENGTH} characters")
        ids = [c["id"] for c in items[judgment.item_id].candidates]
        problem = verdict_problem(project.task, judgment.verdict, ids,
                                  rating_scale=project.rating_scale)
        if problem is not None:
            raise Invalid(f"{where}: {problem}")
    existing = {(row[0], row[1]) for row in db.execute(
        select(JudgmentRow.item_id, JudgmentRow.annotator)
        .where(JudgmentRow.item_id.in_([i.id for i in items.values()])))}
    created, duplicates = 0, []
    for judgment in judgments:
        item = items[judgment.item_id]
        annotator = ai_annotator(user, judgment.annotator)
        if (item.id, annotator) in existing:
            duplicates.append(judgment.item_id)
            continue
        existing.add((item.id, annotator))
        db.add(JudgmentRow(
            item_id=item.id, user_id=user.id, annotator=annotator, task=judgment.task,
            verdict=judgment.verdict, source="ai", reason=judgment.reason,
            shown_left=judgment.shown_left, guidelines_version=judgment.guidelines_version,
            constitution_version=judgment.constitution_version, seconds=judgment.seconds,
            created_at=judgment.created_at))
        created += 1
    db.flush()
    return created, duplicates
