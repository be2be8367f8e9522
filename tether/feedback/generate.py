"""Candidates to judge: K sampled responses per prompt from each of one or more models.

    tether generate --prompts prompts.jsonl --model tether:default --model runs/dpo/final \\
        --num-candidates 2 --out items.jsonl

Each prompt becomes one ``FeedbackItem`` holding K candidates from every model (so K x M in
all), with ids ``c0, c1, ...`` in model order. A candidate's ``model`` is the name given on the
command line (``NAME=PATH`` names a path explicitly), which is what the leaderboard ranks.
Prompts come from a JSONL file with a ``prompt`` field (a string or a chat); an ``id`` field
becomes the item id (else ``prompt-N`` with N the line number), other fields go to metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from tether.config import BUNDLED_PREFIX, resolve_bundled
from tether.data import load_records, read_rows
from tether.data.records import Prompt
from tether.engine.progress import progress_bar
from tether.errors import ConfigError, DataValidationError
from tether.feedback.records import Candidate, FeedbackItem
from tether.models import load_model
from tether.models.default_model import is_default_name
from tether.rollout.backends import RolloutSettings, make_sampler
from tether.rollout.sampler import RolloutConfig, Sampler, TransformersSampler

RecordT = TypeVar("RecordT", bound=BaseModel)


# ---- reading and writing records ------------------------------------------------------------

def read_records(path: str | Path, record_class: type[RecordT]) -> list[RecordT]:
    """Every line of a JSONL file as ``record_class`` (FeedbackItem, Judgment); all problems
    are reported together as ``FILE:LINE: ...``."""
    records, problems = [], []
    for location, row, problem in read_rows(str(resolve_bundled(str(path)))):
        if problem is not None:
            problems.append(problem)
            continue
        try:
            records.append(record_class.model_validate(row))
        except ValidationError as error:
            first = error.errors()[0]
            problems.append(DataValidationError(
                first["msg"], file=location.file, line=location.line,
                field=".".join(map(str, first["loc"])) or None))
    if problems:
        raise DataValidationError("invalid records", problems=problems)
    return records


def write_jsonl(path: str | Path, records: Iterable[BaseModel | dict]) -> int:
    """Write one JSON object per line, atomically (temp file + rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    with temporary.open("w") as handle:
        for record in records:
            handle.write((record.model_dump_json() if isinstance(record, BaseModel)
                          else json.dumps(record, ensure_ascii=False)) + "\n")
            count += 1
    os.replace(temporary, path)
    return count


def read_prompts(path: str | Path) -> list[tuple[str, Prompt, dict]]:
    """``(id, prompt, metadata)`` per row of a prompt file (the data kind ``prompt``: ``prompt`` and
    any other columns, docs/data.md); a row without an id is ``prompt-LINE``."""
    records = load_records(str(resolve_bundled(str(path))), "prompt")
    return [(record.id if record.id is not None else f"prompt-{record.location.line}", record.prompt,
             {**({"answer": record.answer} if record.answer is not None else {}), **record.extras})
            for record in records]


# ---- models --------------------------------------------------------------------------------------

def parse_model_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare ``PATH`` is its own name."""
    name, equals, path = spec.partition("=")
    if equals and name and "/" not in name:
        return name, path
    return spec, spec


def load_named_model(spec: str):
    """``(name, model, tokenizer)`` for ``NAME=PATH``, a local path, or ``tether:default``."""
    name, path = parse_model_spec(spec)
    if path.startswith(BUNDLED_PREFIX) and is_default_name(path[len(BUNDLED_PREFIX):]):
        path = path[len(BUNDLED_PREFIX):]
    model, tokenizer = load_model(path)
    return name, model, tokenizer


# ---- sampling --------------------------------------------------------------------------------------

def sample_candidates(model, tokenizer, prompts: list[Prompt], *, num_candidates: int,
                      max_new_tokens: int, temperature: float, seed: int, batch_prompts: int = 4,
                      progress: bool = True, description: str = "generate", sampler: Sampler | None = None
                      ) -> list[list[str]]:
    """``num_candidates`` sampled responses per prompt, grouped per prompt, in input order
    (``sampler``: an engine already built on ``model``; default tether's own decode loop)."""
    sampler = sampler or TransformersSampler(model, tokenizer)
    groups: list[list[str]] = []
    with progress_bar(description, len(prompts), enabled=progress) as bar:
        for start in range(0, len(prompts), batch_prompts):
            chunk = prompts[start:start + batch_prompts]
            # A seed per batch (not one generator for the run), so a batch's samples do not
            # depend on how many batches came before it.
            config = RolloutConfig(num_samples=num_candidates, temperature=temperature,
                                   max_new_tokens=max_new_tokens, seed=seed + start)
            texts = sampler.sample(chunk, config).texts
            groups.extend([text.strip() for text in texts[i * num_candidates:(i + 1) * num_candidates]]
                          for i in range(len(chunk)))
            bar.advance(len(chunk))
    return groups


def temperature_shares(num_candidates: int, temperatures: Sequence[float]) -> list[int]:
    """How many of a model's ``num_candidates`` candidates each temperature samples (4 at [0.3, 1.0]:
    2 and 2); a greedy temperature (0) may have one at most, its samples being identical."""
    if not temperatures or num_candidates < len(temperatures):
        raise ConfigError(f"{len(temperatures)} temperatures need at least as many candidates per model, "
                          f"got num_candidates={num_candidates}")
    shares = [num_candidates // len(temperatures) + (i < num_candidates % len(temperatures))
              for i in range(len(temperatures))]
    if any(t == 0 and share > 1 for t, share in zip(temperatures, shares)):
        raise ConfigError("temperature 0 is greedy: the K candidates of a model would be identical")
    return shares


def generate_items(prompts: list[tuple[str, Prompt, dict]], models: list[tuple[str, object, object]],
                   *, num_candidates: int = 2, max_new_tokens: int = 128,
                   temperature: float | Sequence[float] = 1.0, seed: int = 0, batch_prompts: int = 4,
                   progress: bool = True, rollout: RolloutSettings | None = None) -> list[FeedbackItem]:
    """One FeedbackItem per prompt with ``num_candidates`` candidates from each ``(name, model,
    tokenizer)``; every model samples with the same seed.

    ``temperature`` may list several values: each model's candidates are then shared out among them
    (4 candidates at [0.3, 1.0]: two at each), and a candidate's ``model`` reads ``NAME@T0.3``. Mixed
    temperatures give a ranking clear contrasts (a focused answer beside a wandering one).
    ``rollout`` picks the engine (``rollout.backend``: transformers, or vllm with one engine per
    model, closed before the next starts); default tether's own decode loop."""
    temperatures = [float(temperature)] if isinstance(temperature, (int, float)) else [float(t) for t in temperature]
    if num_candidates * len(models) < 2:
        raise ConfigError("an item needs at least two candidates: pass --num-candidates 2 or more, "
                          "or a second --model")
    shares = temperature_shares(num_candidates, temperatures)
    texts = [prompt for _, prompt, _ in prompts]
    per_model = []  # (candidate model label, [candidates of prompt i])
    for name, model, tokenizer in models:
        sampler = make_sampler(model, tokenizer, rollout or RolloutSettings(), bf16=False)
        for t, share in zip(temperatures, shares):
            label = name if len(temperatures) == 1 else f"{name}@T{t:g}"
            per_model.append((label, sample_candidates(model, tokenizer, texts, num_candidates=share,
                                                       max_new_tokens=max_new_tokens, temperature=t, seed=seed,
                                                       batch_prompts=batch_prompts, progress=progress,
                                                       description=f"generate {label}", sampler=sampler)))
        sampler.close()  # one engine at a time
    items = []
    for index, (item_id, prompt, metadata) in enumerate(prompts):
        candidates = [(name, text) for name, groups in per_model for text in groups[index]]
        items.append(FeedbackItem(
            id=item_id, prompt=prompt,
            candidates=[Candidate(id=f"c{j}", text=text, model=name)
                        for j, (name, text) in enumerate(candidates)],
            metadata={**metadata, "generation": {
                "temperature": temperatures[0] if len(temperatures) == 1 else temperatures,
                "seed": seed, "max_new_tokens": max_new_tokens}}))
    return items
