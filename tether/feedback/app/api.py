"""JSON API for scripts and judge bots: ``Authorization: Bearer TOKEN`` (``tether label token``).

    GET  /api/me
    GET  /api/projects                          the projects you are a member of (admins: all)
    POST /api/projects/{p}/next                 your open lease, or a new one (204: nothing left)
    POST /api/assignments/{id}                  {"choice": "left"} | {"ranks": [..]} | ...
    POST /api/assignments/{id}/skip
    GET  /api/projects/{p}/judgments            your own; admins: all, or ?annotator=NAME
    GET  /api/projects/{p}/items                judge / admin: items, model names and gold left out
    POST /api/projects/{p}/judgments/bulk       judge / admin: a list of source="ai" Judgments
    GET  /api/projects/{p}/export?format=F      admin: JSONL, as ``tether label export``

Bearer tokens are not sent by browsers on their own, so these endpoints need no CSRF token;
session cookies are not accepted here. A project you are not a member of answers 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from tether.feedback.app import projects, queue
from tether.feedback.app.errors import NotFound
from tether.feedback.app.models import Project
from tether.feedback.app.projects import export_rows, jsonl
from tether.feedback.app.server import HTTPProblem, api_user, rate_limit, transaction
from tether.feedback.app.web import _task_view
from tether.feedback.records import Judgment

router = APIRouter()


class Submission(BaseModel):
    model_config = ConfigDict(extra="forbid")

    choice: str | None = None  # pairwise: left | right | tie | both_bad
    ranks: list[int] | None = None  # ranking: by shown position, 1 = best
    ratings: list[int] | None = None  # rating: by shown position
    not_rankable: bool = False
    reason: str | None = Field(default=None, max_length=5000)


@router.get("/me")
def me(request: Request) -> dict[str, Any]:
    with transaction(request) as db:
        user = api_user(request, db)
        return {"username": user.username, "role": user.role}


@router.get("/projects")
def list_projects(request: Request) -> list[dict[str, Any]]:
    with transaction(request) as db:
        user = api_user(request, db)
        return [{"name": p.name, "task": p.task, "required_judgments": p.required_judgments,
                 "rating_scale": p.rating_scale}
                for p in projects.visible_projects(db, user)]


@router.post("/projects/{name}/next")
def next_item(request: Request, name: str):
    """A POST, not a GET: it takes an item out of the queue for this user."""
    with transaction(request) as db:
        user = api_user(request, db, roles=("admin", "annotator"))
        project = projects.project_for(db, name, user)
        assignment = queue.lease_next(db, project, user)
        if assignment is None:
            return Response(status_code=204)
        guidelines = projects.current_guidelines(db, project)
        view = _task_view(project, assignment)
        return {"assignment_id": assignment.id, "task": project.task,
                "rating_scale": project.rating_scale, "prompt": assignment.item.prompt,
                "candidates": [{"position": c["position"], "text": c["text"]}
                               for c in view["candidates"]],
                "guidelines_version": guidelines.version if guidelines else None,
                "expires_at": assignment.expires_at.isoformat()}


@router.post("/assignments/{assignment_id}")
def submit(request: Request, assignment_id: int, body: Submission) -> dict[str, Any]:
    with transaction(request) as db:
        user = api_user(request, db, roles=("admin", "annotator"))
        rate_limit(request, "submit", str(user.id))
        assignment = queue.get_assignment(db, assignment_id, user)
        project = db.get(Project, assignment.item.project_id)
        if not projects.is_member(db, project, user):
            raise NotFound(f"no assignment {assignment_id}")
        verdict = queue.verdict_from_positions(project.task, assignment.order,
                                               choice=body.choice, ranks=body.ranks,
                                               ratings=body.ratings,
                                               not_rankable=body.not_rankable)
        judgment = queue.submit(db, assignment, user, verdict, reason=body.reason)
        return {"judgment_id": judgment.id, "item_id": assignment.item.external_id}


@router.post("/assignments/{assignment_id}/skip")
def skip(request: Request, assignment_id: int) -> dict[str, Any]:
    with transaction(request) as db:
        user = api_user(request, db, roles=("admin", "annotator"))
        queue.skip(db, queue.get_assignment(db, assignment_id, user), user)
        return {"skipped": assignment_id}


@router.get("/projects/{name}/judgments")
def judgments(request: Request, name: str, annotator: str | None = None) -> list[dict]:
    with transaction(request) as db:
        user = api_user(request, db)
        project = projects.project_for(db, name, user)
        if user.role != "admin":
            if annotator not in (None, user.username):
                raise HTTPProblem(403, "annotators can read only their own judgments")
            annotator = user.username
        _, rows = projects.project_records(db, project, annotator=annotator)
        return [row.model_dump(mode="json") for row in rows]


@router.get("/projects/{name}/items")
def items(request: Request, name: str) -> list[dict[str, Any]]:
    with transaction(request) as db:
        user = api_user(request, db, roles=("admin", "judge"))
        records, _ = projects.project_records(db, projects.project_for(db, name, user))
        return [{"id": r.id, "prompt": r.prompt, "metadata": r.metadata,
                 "candidates": [{"id": c.id, "text": c.text} for c in r.candidates]}
                for r in records]


_JUDGMENTS = TypeAdapter(list[Judgment])


@router.post("/projects/{name}/judgments/bulk")
async def bulk(request: Request, name: str) -> dict[str, Any]:
    """The token is checked before the body (a batch may be large) is read."""
    await run_in_threadpool(_check_user, request, ("admin", "judge"))
    try:
        body = _JUDGMENTS.validate_json(await request.body())
    except ValidationError as error:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                    for e in error.errors()[:5]]
        raise HTTPProblem(422, "; ".join(problems)) from None
    return await run_in_threadpool(_bulk, request, name, body)


def _check_user(request: Request, roles: tuple[str, ...]) -> None:
    with transaction(request) as db:
        api_user(request, db, roles=roles)


def _bulk(request: Request, name: str, body: list[Judgment]) -> dict[str, Any]:
    with transaction(request) as db:
        user = api_user(request, db, roles=("admin", "judge"))
        created, duplicates = queue.add_ai_judgments(db, projects.project_for(db, name, user),
                                                     user, body)
        return {"created": created, "duplicates": duplicates}


@router.get("/projects/{name}/export")
def export(request: Request, name: str, format: str = "preference", ai: bool = True,
           gold: bool = True):
    with transaction(request) as db:
        api_user(request, db, roles=("admin",))
        rows = export_rows(db, projects.get_project(db, name), format, include_ai=ai,
                           include_gold=gold)
    return Response(jsonl(rows), media_type="application/x-ndjson")
