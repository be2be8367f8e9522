"""Server-rendered pages: login, the labeling queue, an annotator's own judgments, admin pages.

Every POST takes a ``csrf_token`` form field (``server.check_csrf``). Candidate text and prompts
reach templates as plain strings and are HTML-escaped by Jinja; guidelines are Markdown with raw
HTML disabled.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import delete, func, select
from starlette.datastructures import UploadFile

from tether.errors import DataValidationError, TetherError
from tether.feedback.app import projects, queue, revisions, security
from tether.feedback.app.annotator_progress import annotator_progress
from tether.feedback.app.errors import Invalid
from tether.feedback.app.models import (
    ROLES,
    Assignment,
    Item,
    JudgmentRow,
    LoginSession,
    Project,
    User,
)
from tether.feedback.app.projects import export_rows, jsonl
from tether.feedback.app.quality_view import quality_view
from tether.feedback.app.server import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    HTTPProblem,
    check_csrf,
    client_address,
    current_session,
    rate_limit,
    set_cookie,
    start_session,
    templates,
    transaction,
    web_user,
)
from tether.feedback.export import EXPORT_FORMATS, export

router = APIRouter()
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200):
    return templates.TemplateResponse(request, name, context, status_code=status)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _safe_next(target: str | None) -> str:
    # only same-site paths: "//evil.example" and "https://..." would leave the site
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


# ---- login ----------------------------------------------------------------------------------

@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/"):
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or security.new_token("")
    response = _page(request, "login.html", {"csrf": token, "next": _safe_next(next),
                                             "user": None, "error": None})
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@router.post("/login")
def login(request: Request, username: str = Form(""), password: str = Form(""),
          next: str = Form("/"), csrf_token: str = Form("")):
    check_csrf(request, csrf_token, None)
    failures = request.app.state.login_failures
    address = client_address(request)
    keys = {"user": f"{username.lower()}|{address}", "client": address}
    wait = max(failures[kind].wait(key) for kind, key in keys.items())
    if wait > 0:
        raise HTTPProblem(429, f"too many failed logins; try again in {math.ceil(wait)} s",
                          {"Retry-After": str(math.ceil(wait))})
    for kind, key in keys.items():  # counted before the check: parallel guesses see it
        failures[kind].failed(key)
    with transaction(request) as db:
        user = db.scalar(select(User).where(User.username == username))
    # argon2 runs outside the transaction: it holds SQLite's write lock for every request
    ok = security.verify_password(user.password_hash if user else security.dummy_hash(),
                                  password)
    if not ok or user is None or not user.is_active or user.role == "judge":
        return _page(request, "login.html", {
            "csrf": request.cookies.get(LOGIN_CSRF_COOKIE), "next": _safe_next(next),
            "user": None, "error": "Wrong username or password."}, status=401)
    failures["user"].succeeded(keys["user"])
    failures["client"].forgive(keys["client"])
    rehashed = (security.hash_password(password) if security.needs_rehash(user.password_hash)
                else None)
    with transaction(request) as db:
        user = db.get(User, user.id)
        if user is None or not user.is_active:  # deactivated meanwhile
            raise HTTPProblem(401, "Wrong username or password.")
        if rehashed:
            user.password_hash = rehashed
        token = start_session(request, db, user)
    response = _redirect(_safe_next(next))
    set_cookie(request, response, SESSION_COOKIE, token,
               max_age=int(request.app.state.settings.session_hours * 3600))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form("")):
    with transaction(request) as db:
        session = current_session(request, db)
        if session is not None:
            check_csrf(request, csrf_token, session)
            db.execute(delete(LoginSession).where(LoginSession.id == session.id))
    response = _redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ---- annotator pages ------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def home(request: Request):
    with transaction(request) as db:
        user, session = web_user(request, db)
        rows = []
        for project in projects.visible_projects(db, user):
            mine = db.scalar(select(func.count()).select_from(JudgmentRow).join(Item).where(
                Item.project_id == project.id, JudgmentRow.user_id == user.id))
            rows.append({"project": project, "mine": mine})
        return _page(request, "home.html", {"user": user, "csrf": session.csrf_token,
                                            "rows": rows})


def _task_view(project: Project, assignment: Assignment) -> dict[str, Any]:
    """What the annotator sees: prompt and candidates by shown position, no ids, no models."""
    item = assignment.item
    text = {c["id"]: c["text"] for c in item.candidates}
    prompt = item.prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return {"messages": messages,
            "candidates": [{"position": i, "label": LETTERS[i], "text": text[cid]}
                           for i, cid in enumerate(assignment.order)]}


# Fixed texts for the ?notice= of a redirect: the query never puts its own words on the page.
NOTICES = {"edited": "Your last judgment was changed.",
           "taken_back": "Your last judgment was taken back; the item goes to another annotator."}


def _label_page(request: Request, db, user: User, session: LoginSession, project: Project,
                error: str | None = None, status: int = 200):
    """The user's open lease; without one, a button that leases the next item (a POST: a GET,
    a prefetch or a crawler must not take items out of the queue), or the done page."""
    assignment = queue.resume(db, project, user)
    guidelines = projects.current_guidelines(db, project)
    context = {"user": user, "csrf": session.csrf_token, "project": project,
               "guidelines": guidelines, "error": error,
               "notice": NOTICES.get(request.query_params.get("notice", "")),
               "progress": annotator_progress(db, project, user)}
    if assignment is None:
        page = "start.html" if queue.has_work(db, project, user) else "done.html"
        return _page(request, page, context, status)
    context.update(assignment=assignment, view=_task_view(project, assignment))
    return _page(request, "label.html", context, status)


@router.get("/p/{name}/label", response_class=HTMLResponse)
def label_page(request: Request, name: str):
    with transaction(request) as db:
        user, session = web_user(request, db)
        return _label_page(request, db, user, session, projects.project_for(db, name, user))


@router.post("/p/{name}/label")
def label_start(request: Request, name: str, csrf_token: str = Form("")):
    with transaction(request) as db:
        user, session = web_user(request, db)
        check_csrf(request, csrf_token, session)
        queue.lease_next(db, projects.project_for(db, name, user), user)
    return _redirect(f"/p/{name}/label")


@router.post("/p/{name}/label/{assignment_id}")
async def label_submit(request: Request, name: str, assignment_id: int):
    form = await request.form()  # rank_0..rank_K-1 / rating_0.. are as many as candidates
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return await _run_sync(_label_submit, request, name, assignment_id, fields)


async def _run_sync(function, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args)


def _label_submit(request: Request, name: str, assignment_id: int, fields: dict[str, str]):
    with transaction(request) as db:
        user, session = web_user(request, db)
        check_csrf(request, fields.get("csrf_token"), session)
        rate_limit(request, "submit", str(user.id))
        project = projects.project_for(db, name, user)
        assignment = queue.get_assignment(db, assignment_id, user)
        if fields.get("action") == "skip":
            queue.skip(db, assignment, user)
            queue.lease_next(db, project, user)  # the next item, as the annotator asked
            return _redirect(f"/p/{project.name}/label")
        try:
            verdict = _verdict_from_form(project, assignment.order, fields)
            queue.submit(db, assignment, user, verdict, reason=fields.get("reason"))
        except Invalid as error:  # raised before anything is written
            return _label_page(request, db, user, session, project, error=str(error), status=422)
        queue.lease_next(db, project, user)
    return _redirect(f"/p/{name}/label")


def _edit_last_page(request: Request, db, user: User, session: LoginSession,
                    project: Project, prefill: dict[str, Any] | None = None,
                    error: str | None = None, status: int = 200):
    row = revisions.last_judgment(db, project, user)
    if row is None:
        raise HTTPProblem(404, "you have no judgment in this project to change")
    problem = projects.stored_item_problem(row.item, project)
    if problem is not None:  # e.g. 27 candidates from an older tether: the form names them A-Z
        raise HTTPProblem(409, f"this item can no longer be shown: {problem}")
    assignment = db.get(Assignment, row.assignment_id)
    if prefill is None:
        prefill = {**revisions.shown_values(row, assignment.order), "reason": row.reason}
    return _page(request, "edit_last.html", {
        "user": user, "csrf": session.csrf_token, "project": project, "judgment": row,
        "view": _task_view(project, assignment), "prefill": prefill, "error": error,
        "guidelines": projects.current_guidelines(db, project)}, status)


@router.get("/p/{name}/last", response_class=HTMLResponse)
def edit_last_page(request: Request, name: str):
    with transaction(request) as db:
        user, session = web_user(request, db)
        return _edit_last_page(request, db, user, session, projects.project_for(db, name, user))


@router.post("/p/{name}/last/{judgment_id}")
async def edit_last_submit(request: Request, name: str, judgment_id: int):
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return await _run_sync(_edit_last_submit, request, name, judgment_id, fields)


def _edit_last_submit(request: Request, name: str, judgment_id: int, fields: dict[str, str]):
    with transaction(request) as db:
        user, session = web_user(request, db)
        check_csrf(request, fields.get("csrf_token"), session)
        rate_limit(request, "submit", str(user.id))
        project = projects.project_for(db, name, user)
        row = revisions.own_last(db, project, user, judgment_id)
        if fields.get("action") == "take_back":
            revisions.take_back(db, row)
            return _redirect(f"/p/{project.name}/label?notice=taken_back")
        try:
            order = db.get(Assignment, row.assignment_id).order
            revisions.edit(db, project, row, _verdict_from_form(project, order, fields),
                           fields.get("reason"))
        except Invalid as error:  # raised before anything is written
            return _edit_last_page(request, db, user, session, project, prefill=fields,
                                   error=str(error), status=422)
    return _redirect(f"/p/{project.name}/label?notice=edited")


def _verdict_from_form(project: Project, order: list[str], fields: dict[str, str]):
    k = len(order)
    return queue.verdict_from_positions(
        project.task, order, choice=fields.get("choice"),
        ranks=[fields.get(f"rank_{i}", "") for i in range(k)],
        ratings=[fields.get(f"rating_{i}", "") for i in range(k)],
        not_rankable=fields.get("not_rankable") == "1")


@router.get("/p/{name}/guidelines", response_class=HTMLResponse)
def guidelines_page(request: Request, name: str):
    with transaction(request) as db:
        user, session = web_user(request, db)
        project = projects.project_for(db, name, user)
        return _page(request, "guidelines.html", {
            "user": user, "csrf": session.csrf_token, "project": project,
            "guidelines": projects.current_guidelines(db, project)})


def _shown_verdict(row: JudgmentRow, order: list[str]) -> str:
    """A verdict in the terms the annotator saw it (left/right, A/B/C), never candidate ids."""
    label = {cid: LETTERS[i] for i, cid in enumerate(order)}
    verdict = row.verdict
    if "winner" in verdict:
        winner = verdict["winner"]
        if winner in label:
            return "left (A)" if label[winner] == "A" else "right (B)"
        return winner.replace("_", " ")
    if verdict.get("not_rankable"):
        return "not rankable"
    values = verdict.get("ranks") or verdict.get("ratings") or {}
    return ", ".join(f"{label.get(c, '?')}={v}" for c, v in
                     sorted(values.items(), key=lambda kv: label.get(kv[0], "?")))


@router.get("/p/{name}/mine", response_class=HTMLResponse)
def my_judgments(request: Request, name: str):
    with transaction(request) as db:
        user, session = web_user(request, db)
        project = projects.project_for(db, name, user)
        rows = db.execute(select(JudgmentRow, Assignment.order).select_from(JudgmentRow)
                          .join(Item, Item.id == JudgmentRow.item_id)
                          .join(Assignment, Assignment.id == JudgmentRow.assignment_id)
                          .where(Item.project_id == project.id, JudgmentRow.user_id == user.id)
                          .order_by(JudgmentRow.id.desc())).all()
        shown = [{"row": row, "verdict": _shown_verdict(row, order)} for row, order in rows]
        return _page(request, "mine.html", {"user": user, "csrf": session.csrf_token,
                                            "project": project, "rows": shown})


# ---- admin ----------------------------------------------------------------------------------

@router.get("/admin", response_class=HTMLResponse)
def admin_home(request: Request):
    with transaction(request) as db:
        user, session = web_user(request, db, admin=True)
        return _page(request, "admin.html", {
            "user": user, "csrf": session.csrf_token, "roles": ROLES,
            "users": list(db.scalars(select(User).order_by(User.username))),
            "projects": list(db.scalars(select(Project).order_by(Project.name))),
            "tasks": projects.TASKS, "message": None, "new_token": None})


def _admin_message(request: Request, db, user, session, message: str, status: int = 200,
                   new_token: str | None = None):
    return _page(request, "admin.html", {
        "user": user, "csrf": session.csrf_token, "roles": ROLES,
        "users": list(db.scalars(select(User).order_by(User.username))),
        "projects": list(db.scalars(select(Project).order_by(Project.name))),
        "tasks": projects.TASKS, "message": message, "new_token": new_token}, status)


@router.post("/admin/users", response_class=HTMLResponse)
def admin_create_user(request: Request, username: str = Form(...), role: str = Form(...),
                      password: str = Form(""), csrf_token: str = Form("")):
    _check_admin_form(request, csrf_token)
    password_hash = None
    if password:  # hashed before the transaction: argon2 would hold the write lock
        projects.check_password(password)
        password_hash = security.hash_password(password)
    with transaction(request) as db:
        user, session = web_user(request, db, admin=True)
        check_csrf(request, csrf_token, session)
        projects.create_user(db, username, role, password_hash=password_hash)
        return _admin_message(request, db, user, session, f"Created user {username}.")


@router.post("/admin/users/{username}/token", response_class=HTMLResponse)
def admin_create_token(request: Request, username: str, name: str = Form("web"),
                       csrf_token: str = Form("")):
    with transaction(request) as db:
        user, session = web_user(request, db, admin=True)
        check_csrf(request, csrf_token, session)
        token = projects.create_token(db, projects.get_user(db, username), name)
        return _admin_message(request, db, user, session,
                              f"API token for {username} (shown once):", new_token=token)


@router.post("/admin/users/{username}/active", response_class=HTMLResponse)
def admin_set_active(request: Request, username: str, active: str = Form(...),
                     csrf_token: str = Form("")):
    with transaction(request) as db:
        user, session = web_user(request, db, admin=True)
        check_csrf(request, csrf_token, session)
        target = projects.get_user(db, username)
        if target.id == user.id and active != "1":
            raise HTTPProblem(422, "you cannot deactivate yourself")
        projects.set_active(db, target, active == "1")
        state = "active again" if active == "1" else (
            "deactivated: sessions ended, API tokens deleted, open leases released")
        return _admin_message(request, db, user, session, f"{username} is {state}.")


@router.post("/admin/users/{username}/revoke-tokens", response_class=HTMLResponse)
def admin_revoke_tokens(request: Request, username: str, csrf_token: str = Form("")):
    with transaction(request) as db:
        user, session = web_user(request, db, admin=True)
        check_csrf(request, csrf_token, session)
        count = projects.revoke_tokens(db, projects.get_user(db, username))
        return _admin_message(request, db, user, session,
                              f"Revoked {count} API token(s) of {username}.")


@router.post("/admin/projects")
def admin_create_project(request: Request, name: str = Form(...), task: str = Form(...),
                         required_judgments: int = Form(3), gold_rate: float = Form(0.1),
                         lease_seconds: int = Form(900), rating_scale: int = Form(7),
                         guidelines: str = Form(""), csrf_token: str = Form("")):
    with transaction(request) as db:
        _, session = web_user(request, db, admin=True)
        check_csrf(request, csrf_token, session)
        projects.create_project(db, name, task, required_judgments=required_judgments,
                                gold_rate=gold_rate, lease_seconds=lease_seconds,
                                rating_scale=rating_scale, guidelines=guidelines)
    return _redirect(f"/admin/p/{name}")


def _optional_module(name: str) -> Any:
    """``tether.feedback.agreement`` / ``leaderboard`` when installed, else None."""
    full = f"tether.feedback.{name}"
    return importlib.import_module(full) if importlib.util.find_spec(full) else None


@router.get("/admin/p/{name}", response_class=HTMLResponse)
def admin_project(request: Request, name: str, message: str | None = None):
    with transaction(request) as db:
        user, session = web_user(request, db, admin=True)
        project = projects.get_project(db, name)
        return _page(request, "admin_project.html", {
            "user": user, "csrf": session.csrf_token, "project": project,
            "progress": projects.progress(db, project),
            "members": projects.members(db, project),
            "guidelines": projects.current_guidelines(db, project),
            "formats": EXPORT_FORMATS, "exports": _export_summaries(db, project),
            "message": message,
            "has_quality": _optional_module("agreement") is not None,
            "has_leaderboard": _optional_module("leaderboard") is not None})


def _export_summaries(db, project: Project) -> dict[str, str]:
    """Per format, what a download would hold and what it would leave out, and why."""
    items, judgments = projects.project_records(db, project)
    summaries = {}
    for fmt in EXPORT_FORMATS:
        try:
            summaries[fmt] = export(items, judgments, fmt).summary()
        except TetherError as error:  # e.g. chat prompts in a plain-text format
            summaries[fmt] = f"cannot export: {error}"
    return summaries


@router.post("/admin/p/{name}/guidelines")
def admin_guidelines(request: Request, name: str, text: str = Form(""),
                     csrf_token: str = Form("")):
    with transaction(request) as db:
        _, session = web_user(request, db, admin=True)
        check_csrf(request, csrf_token, session)
        version = projects.set_guidelines(db, projects.get_project(db, name), text)
    return _redirect(f"/admin/p/{name}?message=Guidelines+version+{version}")


@router.post("/admin/p/{name}/members")
def admin_members(request: Request, name: str, username: str = Form(...),
                  action: str = Form("add"), csrf_token: str = Form("")):
    with transaction(request) as db:
        _, session = web_user(request, db, admin=True)
        check_csrf(request, csrf_token, session)
        if action not in ("add", "remove"):
            raise HTTPProblem(422, f"action must be add or remove, got {action!r}")
        project = projects.get_project(db, name)
        projects.set_members(db, project, **{action: [username]})
    done = "Added" if action == "add" else "Removed"
    return _redirect(f"/admin/p/{name}?message={done}+{username}")


@router.post("/admin/p/{name}/import")
async def admin_import(request: Request, name: str, csrf_token: str = ""):
    """The upload's CSRF token travels in the query string (the form's action), so the
    session, the role and the token are all checked before a byte of the body is read;
    ``server.BodyLimits`` then answers 413 to a body over ``Settings.max_upload_mb``."""
    await _run_sync(_check_admin_form, request, csrf_token)
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPProblem(422, "choose a JSONL file to import")
    data = await upload.read()
    return await _run_sync(_admin_import, request, name, data, upload.filename,
                           form.get("skip_existing") == "1", csrf_token)


def _check_admin_form(request: Request, csrf_token: str) -> None:
    with transaction(request) as db:
        _, session = web_user(request, db, admin=True)
        check_csrf(request, csrf_token, session)


def _upload_name(filename: str | None) -> str:
    """The upload's base name for messages; never a path, '.' or '..'."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return name if name.strip(".") else "upload.jsonl"


def _admin_import(request: Request, name: str, data: bytes, filename: str | None,
                  skip_existing: bool, csrf_token: str):
    import tempfile
    from pathlib import Path

    with transaction(request) as db:
        _, session = web_user(request, db, admin=True)
        check_csrf(request, csrf_token, session)
        project = projects.get_project(db, name)
        with tempfile.TemporaryDirectory() as folder:  # read_rows reports FILE:LINE
            path = Path(folder) / "upload.jsonl"  # never the client's name: it may be '..'
            path.write_bytes(data)
            try:
                added, skipped = projects.import_items(db, project, path,
                                                       skip_existing=skip_existing)
            except DataValidationError as error:
                raise HTTPProblem(422, str(error).replace(str(path), _upload_name(filename))
                                  ) from None
    return _redirect(f"/admin/p/{name}?message=Imported+{added}+items,+skipped+{skipped}")


@router.get("/admin/p/{name}/export")
def admin_export(request: Request, name: str, format: str = "preference", ai: str = "1",
                 gold: str = "1"):
    with transaction(request) as db:
        web_user(request, db, admin=True)
        project = projects.get_project(db, name)
        rows = export_rows(db, project, format, include_ai=ai == "1", include_gold=gold == "1")
    return Response(jsonl(rows), media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="{project.name}-{format}.jsonl"'})


@router.get("/admin/p/{name}/quality", response_class=HTMLResponse)
def admin_quality(request: Request, name: str):
    with transaction(request) as db:
        user, session = web_user(request, db, admin=True)
        agreement = _optional_module("agreement")
        if agreement is None:
            raise HTTPProblem(404, "the quality page needs tether.feedback.agreement")
        project = projects.get_project(db, name)
        items, judgments = projects.project_records(db, project)
    report = quality_view(agreement.quality_report(judgments, items))
    return _page(request, "quality.html", {"user": user, "csrf": session.csrf_token,
                                           "project": project, "q": report})


@router.get("/admin/p/{name}/leaderboard", response_class=HTMLResponse)
def admin_leaderboard(request: Request, name: str, bootstrap: int = 1000):
    with transaction(request) as db:
        user, session = web_user(request, db, admin=True)
        board = _optional_module("leaderboard")
        if board is None:
            raise HTTPProblem(404, "the leaderboard page needs tether.feedback.leaderboard")
        project = projects.get_project(db, name)
        items, judgments = projects.project_records(db, project)
    rows = board.leaderboard(judgments, items, bootstrap=max(0, min(bootstrap, 5000)), seed=0)
    return _page(request, "leaderboard.html", {"user": user, "csrf": session.csrf_token,
                                               "project": project, "rows": rows})
