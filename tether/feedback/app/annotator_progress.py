"""Where one annotator stands in a project: "12 of 40" on the label page.

``done`` counts the annotator's judgments in the project. ``left`` counts the items the queue
(``queue.lease_next``) would still give them if nobody else labeled meanwhile, the one on screen
included: regular items they have neither judged nor skipped that still have a free slot, and as
many unseen gold items as the gold rate will mix in. Items the queue passes over (``items.problem``
set: they fail today's import checks) are not counted. Other annotators filling items can only
make ``left`` smaller, so the total is an upper bound, and the page says so.
"""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy import case, exists, func, select
from sqlalchemy.orm import Session

from tether.feedback.app.models import Assignment, Item, JudgmentRow, Project, User, utcnow
from tether.feedback.app.queue import _holds_slot


def annotator_progress(db: Session, project: Project, user: User, now: datetime | None = None
                       ) -> dict[str, int]:
    """``{"done", "left", "total"}`` for ``user`` in ``project`` (see the module docstring)."""
    now = now or utcnow()
    done = db.scalar(select(func.count()).select_from(JudgmentRow).join(Item).where(
        Item.project_id == project.id, JudgmentRow.user_id == user.id,
        JudgmentRow.source == "human"))
    regular = db.scalar(_open_items(project, user, now, gold=False))
    gold = db.scalar(_open_items(project, user, now, gold=True)) if project.gold_rate > 0 else 0
    left = regular + _gold_still_mixed_in(db, project, user, regular, gold)
    return {"done": done, "left": left, "total": done + left}


def _open_items(project: Project, user: User, now: datetime, *, gold: bool):
    """SQL count of the items ``user`` has not judged or skipped (regular: with a free slot)."""
    seen = exists().where(Assignment.item_id == Item.id, Assignment.user_id == user.id,
                          Assignment.status.in_(("submitted", "skipped")))
    judged = exists().where(JudgmentRow.item_id == Item.id,
                            JudgmentRow.annotator == user.username)
    query = (select(func.count()).select_from(Item)
             .where(Item.project_id == project.id, Item.is_gold == gold,
                    Item.problem.is_(None), ~seen, ~judged))
    if not gold:  # one's own lease is the item on screen: it keeps its place in the count
        taken_by_others = (select(func.count()).select_from(Assignment)
                           .where(Assignment.item_id == Item.id, Assignment.user_id != user.id,
                                  _holds_slot(now))
                           .scalar_subquery())
        query = query.where(taken_by_others < project.required_judgments)
    return query


def _gold_still_mixed_in(db: Session, project: Project, user: User, regular: int,
                         gold: int) -> int:
    """How many of the ``gold`` unseen gold items the queue will serve before it runs dry:
    the queue's rule replayed (a gold turn whenever floor((t + 1) * rate) > gold so far)."""
    if gold == 0:
        return 0
    row = db.execute(select(func.count(),
                            func.coalesce(func.sum(case((Item.is_gold, 1), else_=0)), 0))
                     .select_from(Assignment).join(Item)
                     .where(Item.project_id == project.id, Assignment.user_id == user.id,
                            Assignment.status.in_(("submitted", "skipped")))).one()
    served, gold_served, served_gold_now = int(row[0]), int(row[1]), 0
    while True:
        if served_gold_now < gold and math.floor((served + 1) * project.gold_rate) > gold_served:
            served_gold_now, gold_served = served_gold_now + 1, gold_served + 1
        elif regular > 0:
            regular -= 1
        else:
            return served_gold_now
        served += 1
