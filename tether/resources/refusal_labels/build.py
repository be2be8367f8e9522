"""Build the labeled refusal set: choose the prompts, generate the responses, merge the labels.

    python tether/resources/refusal_labels/build.py prompts
    python tether/resources/refusal_labels/build.py generate --source NAME=MODEL[@CHECKPOINT][:TEMPERATURE] ...
    python tether/resources/refusal_labels/build.py merge

``prompts`` writes ``prompts.jsonl``: 150 prompts (75 harmful, 75 benign look-alikes), each with
its split. The split is drawn per prompt (seeded, stratified by kind and origin), so every
response to a prompt lands in the same half and the test half holds requests the calibration
half never saw.

``generate`` assigns each prompt to ``RESPONSES_PER_PROMPT`` of the sources (seeded, balanced),
writes each source's answers to ``generated/SOURCE.jsonl`` and collects them into
``responses.jsonl``: one row per (prompt, source), unlabeled. A source is a model
(``default``, or a LoRA run's ``final`` folder) with an optional checkpoint folder of that run
whose trainable weights replace the final ones, and a sampling temperature (0: greedy).

``merge`` joins ``responses.jsonl`` with ``labels.jsonl`` (``{"id", "label"}``, written by a
person reading each response; README.md has the rules) into ``labeled.jsonl``, the set the
judges are trained and tested on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

# As the CLI does: spinning OpenMP threads make forwards 2-4x slower on a shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).parent
RESOURCES = HERE.parent
SEED = 16
GENERATED = HERE / "generated"
RESPONSES_PER_PROMPT = 3
MAX_NEW_TOKENS = 96
LABELS = ("full_refusal", "partial_refusal", "compliance")
# Prompts drawn from each origin: (file, kind field -> our kind, how many of each kind, rows to skip).
# The demo reports on safety/heldout.jsonl and the training-time audit reads the first 24 probes
# of each audit file, so neither is used here; train.jsonl prompts are seen in training (noted
# per row as origin "safety-train").
TRAIN_PER_KIND = 20
PROBES_PER_KIND = 30
PROBES_SKIPPED = 24
# The sources' names fix which prompts each one answers (assign_sources), so a source can be
# generated on its own, in any order; its model is given on the command line (README.md).
SOURCES = ("base", "base-t07", "dpo-8", "dpo-16", "dpo-16-t07", "dpo-32", "overrefuse", "sft")
# More calibration rows (`generate --extra`): 70 prompts written later (extra_prompts.jsonl), all on
# the calibration side so the test half stays as it was, answered mostly by trained checkpoints,
# whose soft refusals are where the judges go wrong.
EXTRA_PROMPTS = HERE / "extra_prompts.jsonl"
EXTRA_GENERATED = HERE / "generated_extra"
EXTRA_SOURCES = ("base", "dpo-8", "dpo-16", "dpo-16-t07", "dpo-32", "sft")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def choose_prompts() -> list[dict]:
    rng = random.Random(SEED)
    train = _read(RESOURCES / "safety" / "train.jsonl")
    pool = []
    for kind in ("harmful", "benign_lookalike"):
        rows = [row for row in train if row["kind"] == kind]
        pool += [{"id": row["id"], "prompt": row["prompt"], "prompt_kind": _kind(kind), "origin": "safety-train"}
                 for row in rng.sample(rows, TRAIN_PER_KIND)]
    for name, kind in (("refusal_unsafe.jsonl", "harmful"), ("refusal_safe.jsonl", "benign")):
        rows = _read(RESOURCES / "audit" / name)[PROBES_SKIPPED:]
        pool += [{"id": row["id"], "prompt": row["prompt"], "prompt_kind": kind, "origin": "audit-probe"}
                 for row in rng.sample(rows, PROBES_PER_KIND)]
    pool += [{"id": row["id"], "prompt": row["prompt"], "prompt_kind": _kind(row["kind"]), "origin": "new"}
             for row in _read(HERE / "new_prompts.jsonl")]
    if len({row["prompt"] for row in pool}) != len(pool):
        raise SystemExit("a prompt appears twice")
    # Split per (kind, origin) group: half calibration, half test.
    for group in sorted({(row["prompt_kind"], row["origin"]) for row in pool}):
        members = [row for row in pool if (row["prompt_kind"], row["origin"]) == group]
        rng.shuffle(members)
        for index, row in enumerate(members):
            row["split"] = "calibration" if index % 2 == 0 else "test"
    return pool


def extra_prompts() -> list[dict]:
    """The later prompts, every one on the calibration side."""
    return [{"id": row["id"], "prompt": row["prompt"], "prompt_kind": _kind(row["kind"]), "origin": "extra",
             "split": "calibration"} for row in _read(EXTRA_PROMPTS)]


def _kind(kind: str) -> str:
    return "harmful" if kind == "harmful" else "benign"


def assign_sources(prompts: list[dict], sources: tuple[str, ...] = SOURCES, seed: int = SEED + 1
                   ) -> dict[str, list[dict]]:
    """Each prompt to RESPONSES_PER_PROMPT distinct sources, every source getting about as many."""
    rng = random.Random(seed)
    order = list(sources)
    work: dict[str, list[dict]] = {name: [] for name in sources}
    for row in prompts:
        rng.shuffle(order)
        for name in sorted(order, key=lambda name: len(work[name]))[:RESPONSES_PER_PROMPT]:
            work[name].append(row)
    return work


def parse_source(spec: str) -> dict:
    name, _, rest = spec.partition("=")
    rest, _, temperature = rest.partition(":")
    model, _, checkpoint = rest.partition("@")
    return {"name": name, "model": model, "checkpoint": checkpoint or None, "temperature": float(temperature or 0)}


def generate(specs: list[str], extra: bool = False) -> None:
    """Write ``generated/SOURCE.jsonl`` for each source (one file each, so sources can be generated
    by separate processes at once), then collect them all into ``responses.jsonl``."""
    import torch

    from tether.engine.checkpoint import load_trainable_state
    from tether.models import load_model
    from tether.rollout.generate import generate_responses

    sources = [parse_source(spec) for spec in specs]
    names = EXTRA_SOURCES if extra else SOURCES
    unknown = [source["name"] for source in sources if source["name"] not in names]
    if unknown:
        raise SystemExit(f"unknown sources {unknown}; the names are {names}")
    work = extra_work() if extra else assign_sources(_read(HERE / "prompts.jsonl"))
    folder = EXTRA_GENERATED if extra else GENERATED
    for source in sources:
        out = folder / f"{source['name']}.jsonl"
        if out.is_file():
            continue
        todo = work[source["name"]]
        model, tokenizer = load_model(source["model"])
        if source["checkpoint"]:
            load_trainable_state(model, Path(source["checkpoint"]) / "model.safetensors")
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # one matmul per layer instead of base + adapter: faster decoding
        with torch.no_grad():
            texts = generate_responses(model, tokenizer, [row["prompt"] for row in todo],
                                       max_new_tokens=MAX_NEW_TOKENS, temperature=source["temperature"],
                                       seed=SEED, description=source["name"])
        folder.mkdir(exist_ok=True)
        _write(out, [{"prompt_id": row["id"], "prompt": row["prompt"], "response": text,
                      "source": source["name"], "prompt_kind": row["prompt_kind"],
                      "origin": row["origin"], "split": row["split"]} for row, text in zip(todo, texts)])
        del model
    collect()


def extra_work() -> dict[str, list[dict]]:
    return assign_sources(extra_prompts(), EXTRA_SOURCES, SEED + 2)


def collect() -> None:
    """``responses.jsonl``: every generated source's rows, in a fixed order with stable ids."""
    rows = [row for folder in (GENERATED, EXTRA_GENERATED) for path in sorted(folder.glob("*.jsonl"))
            for row in _read(path)]
    _write(HERE / "responses.jsonl", _numbered(rows))


def _numbered(rows: list[dict]) -> list[dict]:
    """Rows in a fixed order with an id that stays put as sources are added (labels refer to it)."""
    rows = sorted(rows, key=lambda row: (row["prompt_id"], row["source"]))
    return [{"id": f"{row['prompt_id']}/{row['source']}", **{k: v for k, v in row.items() if k != "id"}}
            for row in rows]


def merge() -> None:
    responses = _read(HERE / "responses.jsonl")
    labels = {row["id"]: row["label"] for row in _read(HERE / "labels.jsonl")}
    bad = {label for label in labels.values() if label not in LABELS}
    if bad:
        raise SystemExit(f"unknown labels {sorted(bad)}; use {LABELS}")
    missing = [row["id"] for row in responses if row["id"] not in labels]
    if missing:
        raise SystemExit(f"{len(missing)} responses have no label yet, e.g. {missing[:5]}")
    _write(HERE / "labeled.jsonl", [{**row, "label": labels[row["id"]]} for row in responses])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["prompts", "generate", "merge"])
    parser.add_argument("--source", action="append", default=[], help="NAME=MODEL[@CHECKPOINT][:TEMPERATURE]")
    parser.add_argument("--extra", action="store_true", help="answer extra_prompts.jsonl (calibration side only)")
    args = parser.parse_args()
    if args.stage == "prompts":
        _write(HERE / "prompts.jsonl", choose_prompts())
    elif args.stage == "generate":
        generate(args.source, args.extra)
    else:
        merge()


if __name__ == "__main__":
    main()
