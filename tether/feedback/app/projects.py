"""Users, API tokens, projects, versioned guidelines, item import, and records out of the DB."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from tether.data.loading import read_rows
from tether.errors import DataValidationError
from tether.feedback.app import security
from tether.feedback.app.errors import Conflict, Invalid, NotFound
from tether.feedback.app.models import (
    ROLES,
    ApiToken,
    Assignment,
    Guidelines,
    Item,
    JudgmentRow,
    LoginSession,
    Project,
    ProjectMember,
    User,
    utcnow,
)
from tether.feedback.export import EXPORT_FORMATS, Export, export
from tether.feedback.records import PAIRWISE_SPECIAL, FeedbackItem, Judgment, TaskKind
from tether.feedback.verdicts import verdict_problem

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TASKS: tuple[TaskKind, ...] = ("pairwise", "ranking", "rating")
MAX_CANDIDATES = 26  # the label page names candidates A..Z
# verdict words: a candidate with one of these ids could not be told apart from the verdict
RESERVED_CANDIDATE_IDS = (*PAIRWISE_SPECIAL, "not_rankable")
MAX_NESTING = 32  # levels of lists / objects in one imported line
TOKEN_DAYS = 90  # API tokens expire after this many days unless told otherwise


def _check_name(kind: str, name: str) -> None:
    if not NAME.match(name):
        raise Invalid(f"{kind} name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
                      f"starting with a letter or digit")


# ---- users and tokens ---------------------------------------------------------------------

def check_password(password: str) -> None:
    if len(password) < security.MIN_PASSWORD_LENGTH:
        raise Invalid(f"password must have at least {security.MIN_PASSWORD_LENGTH} characters")


def create_user(db: Session, username: str, role: str, password: str | None = None, *,
                password_hash: str | None = None) -> User:
    """A new user. The web app passes ``password_hash`` (made by ``security.hash_password``
    after ``check_password``) so that the slow hash runs outside its write lock."""
    _check_name("user", username)
    if role not in ROLES:
        raise Invalid(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if role != "judge" and password is None and password_hash is None:
        raise Invalid(f"a {role} logs in with a password; give one")
    if password is not None:
        check_password(password)
        password_hash = security.hash_password(password)
    if db.scalar(select(User).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, role=role, password_hash=password_hash)
    db.add(user)
    db.flush()
    return user


def get_user(db: Session, username: str) -> User:
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user


def set_active(db: Session, user: User, active: bool) -> None:
    """Deactivating ends the user's sessions, deletes their API tokens and gives their open
    leases back to the queue; the judgments they made stay."""
    user.is_active = active
    if not active:
        db.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
        db.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
        now = utcnow()
        db.execute(update(Assignment).where(Assignment.user_id == user.id,
                                            Assignment.status == "leased",
                                            Assignment.expires_at > now)
                   .values(expires_at=now))
    db.flush()


def create_token(db: Session, user: User, name: str = "default", *,
                 days: float = TOKEN_DAYS) -> str:
    """A new API token for ``user``, valid for ``days``; the token is returned once and only
    its hash is kept."""
    if not 0 < days <= 3650:
        raise Invalid(f"a token lives 0 < days <= 3650, got {days}")
    token = security.new_token()
    db.add(ApiToken(user_id=user.id, name=name, token_hash=security.token_hash(token),
                    expires_at=utcnow() + timedelta(days=days)))
    db.flush()
    return token


def tokens_of(db: Session, user: User) -> list[ApiToken]:
    return list(db.scalars(select(ApiToken).where(ApiToken.user_id == user.id)
                           .order_by(ApiToken.id)))


def revoke_tokens(db: Session, user: User, *, name: str | None = None,
                  token_id: int | None = None) -> int:
    """Delete ``user``'s tokens: the one with ``token_id``, those called ``name``, or all;
    returns how many."""
    query = delete(ApiToken).where(ApiToken.user_id == user.id)
    if name is not None:
        query = query.where(ApiToken.name == name)
    if token_id is not None:
        query = query.where(ApiToken.id == token_id)
    return db.execute(query).rowcount


def user_for_token(db: Session, token: str) -> User | None:
    found = db.execute(select(ApiToken, User).join(User)
                       .where(ApiToken.token_hash == security.token_hash(token))).first()
    now = utcnow()
    if found is None or not found[1].is_active or found[0].expires_at <= now:
        return None
    row = found[0]
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        row.last_used_at = now  # not on every request: a judge bot would write on each call
    return found[1]


# ---- projects and guidelines ---------------------------------------------------------------

def create_project(db: Session, name: str, task: str, *, required_judgments: int = 3,
                   gold_rate: float = 0.1, lease_seconds: int = 900, rating_scale: int = 7,
                   guidelines: str = "") -> Project:
    _check_name("project", name)
    if task not in TASKS:
        raise Invalid(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if required_judgments < 1:
        raise Invalid(f"required_judgments must be at least 1, got {required_judgments}")
    if not 0.0 <= gold_rate < 1.0:
        raise Invalid(f"gold_rate must be in [0, 1), got {gold_rate}")
    if lease_seconds < 10:
        raise Invalid(f"lease_seconds must be at least 10, got {lease_seconds}")
    if rating_scale < 2:
        raise Invalid(f"rating_scale must be at least 2, got {rating_scale}")
    if db.scalar(select(Project).where(Project.name == name)) is not None:
        raise Conflict(f"project {name!r} already exists")
    project = Project(name=name, task=task, required_judgments=required_judgments,
                      gold_rate=gold_rate, lease_seconds=lease_seconds, rating_scale=rating_scale)
    db.add(project)
    db.flush()
    set_guidelines(db, project, guidelines)
    return project


def get_project(db: Session, name: str) -> Project:
    project = db.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"no project {name!r}")
    return project


def project_for(db: Session, name: str, user: User) -> Project:
    """The project as ``user`` may see it: admins see every project, others only those they
    are members of (any other is reported as missing, so names cannot be probed)."""
    project = get_project(db, name)
    if not is_member(db, project, user):
        raise NotFound(f"no project {name!r}")
    return project


def is_member(db: Session, project: Project, user: User) -> bool:
    return user.role == "admin" or db.get(ProjectMember, (project.id, user.id)) is not None


def visible_projects(db: Session, user: User) -> list[Project]:
    query = select(Project).order_by(Project.name)
    if user.role != "admin":
        query = query.join(ProjectMember).where(ProjectMember.user_id == user.id)
    return list(db.scalars(query))


def members(db: Session, project: Project) -> list[User]:
    return list(db.scalars(select(User).join(ProjectMember)
                           .where(ProjectMember.project_id == project.id)
                           .order_by(User.username)))


def set_members(db: Session, project: Project, *, add: list[str] = (),
                remove: list[str] = ()) -> list[User]:
    """Add and remove members by username; returns the members now. Removing someone gives
    their open leases in the project back to the queue."""
    current = {user.id for user in members(db, project)}
    for username in add:
        user = get_user(db, username)
        if user.id not in current:
            db.add(ProjectMember(project_id=project.id, user_id=user.id))
            current.add(user.id)
    for username in remove:
        user = get_user(db, username)
        db.execute(delete(ProjectMember).where(ProjectMember.project_id == project.id,
                                               ProjectMember.user_id == user.id))
        now = utcnow()
        db.execute(update(Assignment).where(
            Assignment.user_id == user.id, Assignment.status == "leased",
            Assignment.expires_at > now,
            Assignment.item_id.in_(select(Item.id).where(Item.project_id == project.id)))
            .values(expires_at=now))
    db.flush()
    return members(db, project)


def current_guidelines(db: Session, project: Project) -> Guidelines | None:
    return db.scalar(select(Guidelines).where(Guidelines.project_id == project.id)
                     .order_by(Guidelines.version.desc()).limit(1))


def set_guidelines(db: Session, project: Project, text: str) -> int:
    """Store ``text`` as the next guidelines version (unless it is unchanged); returns the
    version now in force. Judgments keep the version their annotator worked under."""
    current = current_guidelines(db, project)
    if current is not None and current.text == text:
        return current.version
    version = 1 if current is None else current.version + 1
    db.add(Guidelines(project_id=project.id, version=version, text=text))
    db.flush()
    return version


# ---- import --------------------------------------------------------------------------------

def _pydantic_problems(error: ValidationError, location: Any) -> list[DataValidationError]:
    problems = []
    for detail in error.errors():
        field = ".".join(str(part) for part in detail["loc"]) or None
        problems.append(DataValidationError(detail["msg"], file=location.file,
                                            line=location.line, field=field))
    return problems


def _nesting(value: Any) -> int:
    """How many levels of lists and objects ``value`` has (0 for a string or number)."""
    depth, level = 0, [value]
    while level:
        level = [child for node in level if isinstance(node, (list, dict))
                 for child in (node.values() if isinstance(node, dict) else node)]
        depth += 1
    return depth - 1


def _item_problems(item: FeedbackItem, project: Project) -> list[tuple[str, str]]:
    """(field, problem) pairs for an item that is valid JSON but wrong for this project."""
    problems = []
    ids = [c.id for c in item.candidates]
    duplicates = sorted(c for c, n in Counter(ids).items() if n > 1)
    if duplicates:
        problems.append(("candidates", f"candidate ids must be unique, repeated: {duplicates}"))
    reserved = sorted(set(ids) & set(RESERVED_CANDIDATE_IDS))
    if reserved:
        problems.append(("candidates", f"candidate ids {reserved} are reserved: they are verdict "
                                       f"words ({', '.join(RESERVED_CANDIDATE_IDS)})"))
    if len(ids) > MAX_CANDIDATES:
        problems.append(("candidates", f"at most {MAX_CANDIDATES} candidates per item (the "
                                       f"label page names them A-Z), got {len(ids)}"))
    if project.task == "pairwise" and len(ids) != 2:
        problems.append(("candidates", f"a pairwise project needs exactly 2 candidates, "
                                       f"got {len(ids)}"))
    if item.gold is not None and not duplicates:
        problem = verdict_problem(project.task, item.gold, ids, rating_scale=project.rating_scale)
        if problem is not None:
            problems.append(("gold", problem))
    return problems


def stored_item_problem(item: Item, project: Project) -> str | None:
    """Why the queue cannot serve a stored item (imported before today's checks, or written to
    the database by hand), or None."""
    try:
        record = item_record(item)
    except ValidationError as error:
        return f"not a valid FeedbackItem: {error.errors()[0]['msg']}"
    problems = _item_problems(record, project)
    return "; ".join(f"{field}: {text}" for field, text in problems) or None


def import_items(db: Session, project: Project, source: str | Path | list[dict], *,
                 skip_existing: bool = False) -> tuple[int, int]:
    """Add ``FeedbackItem`` rows (a JSONL path or a list of dicts) to ``project``.

    All-or-nothing: every problem in the source is reported in one ``DataValidationError``
    (``FILE:LINE: field 'F': problem``) and nothing is added. An id already in the project is a
    problem unless ``skip_existing``. Returns ``(added, skipped)``.
    """
    existing = set(db.scalars(select(Item.external_id).where(Item.project_id == project.id)))
    problems: list[DataValidationError] = []
    seen: dict[str, Any] = {}
    new: list[FeedbackItem] = []
    skipped = rows = 0
    for location, row, problem in read_rows(source):
        rows += 1
        if problem is not None:
            problems.append(problem)
            continue
        if _nesting(row) > MAX_NESTING:
            problems.append(DataValidationError(f"nested more than {MAX_NESTING} levels deep",
                                                file=location.file, line=location.line))
            continue
        try:
            item = FeedbackItem.model_validate(row)
        except ValidationError as error:
            problems.extend(_pydantic_problems(error, location))
            continue
        for field, text in _item_problems(item, project):
            problems.append(DataValidationError(text, file=location.file, line=location.line,
                                                field=field))
        if item.id in seen:
            problems.append(DataValidationError(f"duplicate id {item.id!r} (first used at "
                                                f"{seen[item.id]})", file=location.file,
                                                line=location.line, field="id"))
        elif item.id in existing and not skip_existing:
            problems.append(DataValidationError(
                f"item {item.id!r} is already in project {project.name!r} (use --skip-existing "
                f"to import only new items)", file=location.file, line=location.line,
                field="id"))
        elif item.id in existing:
            skipped += 1
        else:
            new.append(item)
        seen.setdefault(item.id, location)
    if rows == 0:
        name = str(source) if isinstance(source, (str, Path)) else None
        raise DataValidationError("no items: the source is empty or has only blank lines",
                                  file=name)
    if problems:
        raise DataValidationError(problems[0].problem, problems=problems)
    for item in new:
        db.add(Item(project_id=project.id, external_id=item.id, prompt=item.prompt,
                    candidates=[c.model_dump() for c in item.candidates],
                    item_metadata=item.metadata, gold=item.gold, is_gold=item.gold is not None))
    db.flush()
    return len(new), skipped


# ---- records out ---------------------------------------------------------------------------

def item_record(item: Item) -> FeedbackItem:
    return FeedbackItem(id=item.external_id, prompt=item.prompt, candidates=item.candidates,
                        metadata=item.item_metadata, gold=item.gold)


def judgment_record(row: JudgmentRow) -> Judgment:
    return Judgment(item_id=row.item.external_id, task=row.task, verdict=row.verdict,
                    annotator=row.annotator, source=row.source, reason=row.reason,
                    shown_left=row.shown_left, guidelines_version=row.guidelines_version,
                    constitution_version=row.constitution_version, seconds=row.seconds,
                    created_at=row.created_at)


def project_records(db: Session, project: Project, *, annotator: str | None = None
                    ) -> tuple[list[FeedbackItem], list[Judgment]]:
    """Every item of the project and its judgments (only ``annotator``'s when given)."""
    items = db.scalars(select(Item).where(Item.project_id == project.id).order_by(Item.id))
    query = (select(JudgmentRow).join(Item).where(Item.project_id == project.id)
             .order_by(JudgmentRow.id))
    if annotator is not None:
        query = query.where(JudgmentRow.annotator == annotator)
    return [item_record(i) for i in items], [judgment_record(j) for j in db.scalars(query)]


def progress(db: Session, project: Project, now: datetime | None = None) -> dict[str, Any]:
    """Counts for the admin page: items, gold, complete items, human/AI judgments, open leases,
    and judgments per annotator."""
    now = now or utcnow()
    in_project = Item.project_id == project.id
    items = db.scalar(select(func.count()).select_from(Item).where(in_project))
    gold = db.scalar(select(func.count()).select_from(Item).where(in_project, Item.is_gold))
    human = (select(JudgmentRow.item_id, func.count().label("n")).join(Item)
             .where(in_project, JudgmentRow.source == "human", ~Item.is_gold)
             .group_by(JudgmentRow.item_id).subquery())
    complete = db.scalar(select(func.count()).select_from(human)
                         .where(human.c.n >= project.required_judgments))
    by_source = dict(db.execute(select(JudgmentRow.source, func.count()).join(Item)
                                .where(in_project).group_by(JudgmentRow.source)).all())
    leases = db.scalar(select(func.count()).select_from(Assignment).join(Item)
                       .where(in_project, Assignment.status == "leased",
                              Assignment.expires_at > now))
    per_annotator = db.execute(select(JudgmentRow.annotator, JudgmentRow.source, func.count())
                               .join(Item).where(in_project)
                               .group_by(JudgmentRow.annotator, JudgmentRow.source)
                               .order_by(JudgmentRow.annotator, JudgmentRow.source)).all()
    unservable = db.scalar(select(func.count()).select_from(Item)
                           .where(in_project, Item.problem.is_not(None)))
    return {"items": items, "gold_items": gold, "regular_items": items - gold,
            "unservable_items": unservable,
            "complete_items": complete, "human_judgments": by_source.get("human", 0),
            "ai_judgments": by_source.get("ai", 0), "open_leases": leases,
            "annotators": [{"annotator": a, "source": s, "judgments": n}
                           for a, s, n in per_annotator]}


def export_project(db: Session, project: Project, fmt: str, *, include_ai: bool = True,
                   include_gold: bool = True) -> Export:
    """The project's judgments in one of ``export.EXPORT_FORMATS``, with what was left out."""
    if fmt not in EXPORT_FORMATS:
        raise Invalid(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    items, judgments = project_records(db, project)
    return export(items, judgments, fmt, include_ai=include_ai, include_gold=include_gold)


def export_rows(db: Session, project: Project, fmt: str, *, include_ai: bool = True,
                include_gold: bool = True) -> list[dict[str, Any]]:
    return export_project(db, project, fmt, include_ai=include_ai, include_gold=include_gold).rows


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
