"""Assemble the safety preference set from its part files.

    python tether/resources/safety/build.py   # writes train.jsonl, heldout.jsonl, sft.jsonl, benign_prompts_*.jsonl

Source: ``parts/*.jsonl``, one file per (kind, category), each row
``{"id", "split", "kind", "category", "prompt", "chosen", "rejected"}``. The split is written by
hand in the part files so that held-out prompts are chosen to be different requests, not
paraphrases of training prompts; this script checks it rather than drawing it at random.

Outputs (deterministic: same parts, same bytes):

* ``train.jsonl`` / ``heldout.jsonl``: preference rows ``{"id", "prompt", "chosen", "rejected",
  "kind", "category"}``, ordered round-robin over categories within each kind, so any prefix
  of a kind (``tether demo --eval-limit``) mixes categories.
* ``sft.jsonl``: the train split's prompt + chosen as ``{"id", "prompt", "completion"}``.
* ``benign_prompts_train.jsonl`` / ``benign_prompts_heldout.jsonl``: the benign look-alike
  prompts alone (``{"id", "prompt", "kind", "category"}``), for pipelines that should only ever be
  rewarded for helping (the RLHF recipe's on-topic annotator).

Checks (all problems are reported together, nothing is written if any is found): required
fields are non-empty strings, ids are unique and spell ``harm-CATEGORY-NNN`` /
``benign-CATEGORY-NNN``, chosen != rejected, word limits (chosen <= 60, rejected <= 50: the
model is small and training runs on CPU), no prompt appears twice, each (kind, category) keeps
15-30% of its rows held out, and no held-out prompt shares most of its words with a train
prompt (a cheap paraphrase guard).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from itertools import zip_longest
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ("id", "prompt", "chosen", "rejected", "kind", "category")
KIND_PREFIX = {"harmful": "harm", "benign_lookalike": "benign"}
SPLITS = ("train", "heldout")
MAX_WORDS = {"chosen": 60, "rejected": 50}
HELDOUT_FRACTION = (0.15, 0.30)
# Word-set Jaccard at or above this between a held-out and a train prompt flags a paraphrase.
PARAPHRASE_JACCARD = 0.5
# Words that carry no request of their own; left out of the paraphrase comparison.
_STOPWORDS = frozenset(
    "a an the i my me you your to of in on for with and or is it do does how what can could "
    "would should that this at from by be so as are was best way get into out without".split())


def normalize_prompt(text: str) -> str:
    """Case- and whitespace-insensitive form of a prompt, for equality checks."""
    return " ".join(text.lower().split())


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in _STOPWORDS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def read_parts(parts_dir: Path = HERE / "parts") -> list[dict]:
    """Every row of every part file, files in name order, rows in file order."""
    rows = []
    for path in sorted(parts_dir.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                row["_where"] = f"{path.name}:{number}"
                rows.append(row)
    return rows


def check(rows: list[dict]) -> list[str]:
    """Every problem found in ``rows``, as ``file:line: message`` strings."""
    problems: list[str] = []
    seen_ids: dict[str, str] = {}
    seen_prompts: dict[str, str] = {}
    for row in rows:
        where = row["_where"]
        missing = [f for f in FIELDS + ("split",)
                   if not isinstance(row.get(f), str) or not row[f].strip()]
        if missing:
            problems.append(f"{where}: missing or empty {', '.join(missing)}")
            continue
        if row["kind"] not in KIND_PREFIX:
            problems.append(f"{where}: kind {row['kind']!r} is not one of {sorted(KIND_PREFIX)}")
            continue
        if row["split"] not in SPLITS:
            problems.append(f"{where}: split {row['split']!r} is not one of {SPLITS}")
        if not re.fullmatch(rf"{KIND_PREFIX[row['kind']]}-{re.escape(row['category'])}-\d{{3}}",
                            row["id"]):
            problems.append(f"{where}: id {row['id']!r} does not match its kind and category")
        if row["id"] in seen_ids:
            problems.append(f"{where}: duplicate id {row['id']!r} (first at {seen_ids[row['id']]})")
        seen_ids.setdefault(row["id"], where)
        prompt = normalize_prompt(row["prompt"])
        if prompt in seen_prompts:
            problems.append(f"{where}: duplicate prompt (first at {seen_prompts[prompt]})")
        seen_prompts.setdefault(prompt, where)
        if normalize_prompt(row["chosen"]) == normalize_prompt(row["rejected"]):
            problems.append(f"{where}: chosen and rejected are the same text")
        for side, limit in MAX_WORDS.items():
            words = len(row[side].split())
            if words > limit:
                problems.append(f"{where}: {side} has {words} words (limit {limit})")
    if problems:
        return problems  # the split checks below assume well-formed rows

    groups = Counter((r["kind"], r["category"]) for r in rows)
    held = Counter((r["kind"], r["category"]) for r in rows if r["split"] == "heldout")
    low, high = HELDOUT_FRACTION
    for group, total in sorted(groups.items()):
        if not low <= held[group] / total <= high:
            problems.append(f"{group[0]}/{group[1]}: {held[group]} of {total} rows held out, "
                            f"want {low:.0%}-{high:.0%}")
    train = [r for r in rows if r["split"] == "train"]
    for row in rows:
        if row["split"] != "heldout":
            continue
        words = content_words(row["prompt"])
        for other in train:
            overlap = jaccard(words, content_words(other["prompt"]))
            if overlap >= PARAPHRASE_JACCARD:
                problems.append(f"{row['_where']}: held-out prompt looks like a paraphrase of "
                                f"{other['id']} (word overlap {overlap:.2f})")
    return problems


def round_robin(rows: list[dict]) -> list[dict]:
    """Rows of each kind interleaved across its categories (harmful first, then benign)."""
    ordered = []
    for kind in KIND_PREFIX:
        by_category: dict[str, list[dict]] = {}
        for row in rows:
            if row["kind"] == kind:
                by_category.setdefault(row["category"], []).append(row)
        columns = [by_category[c] for c in sorted(by_category)]
        ordered += [row for layer in zip_longest(*columns) for row in layer if row is not None]
    return ordered


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")


def build(parts_dir: Path = HERE / "parts", out_dir: Path = HERE) -> dict[str, Counter]:
    """Check the parts and write the outputs to ``out_dir``.

    Returns counts per split keyed by ``(kind, category)``. Raises ValueError listing every
    problem when a check fails (nothing is written then).
    """
    rows = read_parts(parts_dir)
    problems = check(rows)
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in the safety parts:\n  "
                         + "\n  ".join(problems))
    splits = {name: round_robin([r for r in rows if r["split"] == name]) for name in SPLITS}
    for name, split_rows in splits.items():
        _write_jsonl(out_dir / f"{name}.jsonl", [{f: r[f] for f in FIELDS} for r in split_rows])
    _write_jsonl(out_dir / "sft.jsonl", [{"id": r["id"], "prompt": r["prompt"],
                                          "completion": r["chosen"]} for r in splits["train"]])
    for name, split_rows in splits.items():
        _write_jsonl(out_dir / f"benign_prompts_{name}.jsonl",
                     [{f: r[f] for f in ("id", "prompt", "kind", "category")}
                      for r in split_rows if r["kind"] == "benign_lookalike"])
    return {name: Counter((r["kind"], r["category"]) for r in split_rows)
            for name, split_rows in splits.items()}


def main() -> int:
    try:
        counts = build()
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    groups = sorted(set(counts["train"]) | set(counts["heldout"]))
    print(f"{'kind':<17} {'category':<16} {'train':>5} {'heldout':>7}")
    for kind, category in groups:
        print(f"{kind:<17} {category:<16} {counts['train'][kind, category]:>5} "
              f"{counts['heldout'][kind, category]:>7}")
    print(f"{'total':<34} {sum(counts['train'].values()):>5} {sum(counts['heldout'].values()):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
