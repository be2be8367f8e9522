"""Audit metric modules and the probe sets they read.

Each module follows the contract in :mod:`tether.audit.base`: ``evaluate(model, *, limit=None)``
(one model at a time) or ``evaluate_pair(baseline, candidate, *, limit=None)`` (drift), returning
``MetricResult``s, and names the results it returns in ``METRICS`` so ``--fail-on`` can be checked
before anything runs.

Probe sets written by the project live in ``tether/resources/audit/*.jsonl``, one probe a line with
at least ``id``, ``prompt`` and ``category``. :func:`load_probes` reads one and :func:`balanced`
takes the first ``limit`` probes round-robin over categories, so a small ``--limit`` still covers
every category.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from tether.errors import DataValidationError

PROBE_DIR = Path(__file__).resolve().parents[2] / "resources" / "audit"
PROBE_FIELDS = ("id", "prompt", "category")


def probe_path(name: str) -> Path:
    return PROBE_DIR / f"{name}.jsonl"


def load_probes(name: str) -> list[dict]:
    """Rows of ``tether/resources/audit/NAME.jsonl``; each must have ``id``, ``prompt``, ``category``.

    Raises:
        DataValidationError: a line is not JSON, lacks a field, or repeats an id.
    """
    path = probe_path(name)
    rows, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataValidationError(f"not valid JSON: {error.msg}", file=str(path), line=number) from None
        for field in PROBE_FIELDS:
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise DataValidationError(f"missing or empty {field!r}", file=str(path), line=number,
                                          field=field)
        if row["id"] in seen:
            raise DataValidationError(f"duplicate id {row['id']!r}", file=str(path), line=number, field="id")
        seen.add(row["id"])
        rows.append(row)
    return rows


def balanced(rows: list[dict], limit: int | None) -> list[dict]:
    """The first ``limit`` rows taken round-robin over ``category`` (file order within a category).

    With ``limit=None`` (or >= len(rows)) every row is kept, still in round-robin order.
    """
    by_category: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
    queues = list(by_category.values())
    ordered: list[dict] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        ordered.extend(q[depth] for q in queues if depth < len(q))
    return ordered if limit is None else ordered[:max(limit, 0)]
