"""Second thoughts: an annotator edits or takes back their last judgment in a project.

- **Edit** changes the verdict and reason in place. The item keeps its place in every count
  (its assignment stays submitted), so nothing else in the queue moves.
- **Take back** (undo) deletes the judgment and gives the item back through ``queue.withdraw``
  (the assignment becomes skipped): the slot opens again for another annotator, this one is not
  offered the item again, as after a skip, and nothing new is leased.

Only the most recent human judgment of the user in the project can be changed: ``own_last``
checks the id the page names, so a stale page (another judgment submitted since, in another tab)
gets 409 instead of changing the wrong one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.feedback.app import queue
from tether.feedback.app.errors import Conflict, Invalid
from tether.feedback.app.models import Assignment, Item, JudgmentRow, Project, User
from tether.feedback.verdicts import verdict_problem


def last_judgment(db: Session, project: Project, user: User) -> JudgmentRow | None:
    """The user's most recent human judgment in the project made through the queue."""
    return db.scalar(select(JudgmentRow).join(Item)
                     .where(Item.project_id == project.id, JudgmentRow.user_id == user.id,
                            JudgmentRow.source == "human",
                            JudgmentRow.assignment_id.is_not(None))
                     .order_by(JudgmentRow.id.desc()).limit(1))


def own_last(db: Session, project: Project, user: User, judgment_id: int) -> JudgmentRow:
    """Judgment ``judgment_id`` if it is the user's last in the project, else 409."""
    row = last_judgment(db, project, user)
    if row is None or row.id != judgment_id:
        raise Conflict("only your last judgment can be changed, and this one is not (any more)")
    return row


def edit(db: Session, project: Project, row: JudgmentRow, verdict: dict[str, Any],
         reason: str | None) -> None:
    """Replace the verdict (candidate ids) and reason of a judgment (from ``own_last``)."""
    problem = verdict_problem(project.task, verdict, [c["id"] for c in row.item.candidates],
                              rating_scale=project.rating_scale)
    if problem is not None:
        raise Invalid(problem)
    row.verdict = verdict
    row.reason = (reason or "").strip() or None
    db.flush()


def take_back(db: Session, row: JudgmentRow) -> None:
    """Delete a judgment (from ``own_last``); its item goes back to the queue for others
    (``queue.withdraw``), and no other item is leased."""
    queue.withdraw(db, db.get(Assignment, row.assignment_id), db.get(User, row.user_id))
    db.delete(row)
    db.flush()


def shown_values(row: JudgmentRow, order: list[str]) -> dict[str, Any]:
    """The stored verdict as the form fields that would produce it, by shown position: what the
    edit form is filled in with (``choice`` / ``rank_i`` / ``rating_i``, ``not_rankable``)."""
    verdict = row.verdict
    if "winner" in verdict:
        winner = verdict["winner"]
        side = {order[0]: "left", order[-1]: "right"}
        return {"choice": side.get(winner, winner)}
    if verdict.get("not_rankable"):
        return {"not_rankable": True}
    key, values = ("rank", verdict["ranks"]) if "ranks" in verdict else ("rating",
                                                                          verdict["ratings"])
    return {f"{key}_{i}": values.get(cid) for i, cid in enumerate(order)}
