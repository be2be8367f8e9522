"""The reward-function API, and combining several rewards into one score per completion.

A reward function has TRL's signature, so users bring theirs unchanged::

    reward(prompts: list, completions: list, **dataset_columns) -> list[float | None]

one value per completion; ``None`` means "this reward does not apply to this sample" (a code
reward on a math prompt). As in TRL, it is called by keyword (so ``def reward(completions,
**kwargs)`` works), and a completion is a string after a text prompt but a list with one
assistant message (``[{"role": "assistant", "content": "..."}]``) after a conversational prompt,
so TRL's conversational rewards (``completion[0]["content"]``) run unchanged. ``combine_rewards``
turns a list of weighted rewards into

    total_i = Σ_k w_k · r_k,i        (r_k,i = None counts as 0)

and logs per-reward mean/std over the samples where the reward applied.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tether.errors import ConfigError, TetherError

logger = logging.getLogger(__name__)

RewardFn = Callable[..., Sequence["float | None"]]

_SHOWN_CHARS = 200  # of a prompt or completion, at each end, in error messages


class RewardError(TetherError):
    """A reward function failed or returned something that is not one number (or None) per sample.

    The message names the reward, the sample index, a shortened prompt and completion, and the
    original exception, so a failure deep inside a training step can be reproduced by hand.
    """

    def __init__(self, reward: str, problem: str, *, index: int | None = None,
                 prompt: Any = None, completion: Any = None):
        self.reward = reward
        self.problem = problem
        self.index = index
        message = f"reward '{reward}'"
        if index is not None:
            message += f" failed on sample {index}: {problem}"
            message += f"\n  prompt: {shorten(prompt)}\n  completion: {shorten(completion)}"
        else:
            message += f": {problem}"
        super().__init__(message)


@dataclass(frozen=True)
class RewardSpec:
    """One reward in a weighted sum. ``name`` keys the metrics (``rewards/{name}/mean``)."""

    name: str
    fn: RewardFn
    weight: float = 1.0


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational form, a list of messages
    (``[{"role": "assistant", "content": "..."}]``), whose contents are joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, dict) and "content" in m for m in completion):
        return "".join(str(m["content"]) for m in completion)
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def trl_completions(prompts: Sequence[Any], completions: Sequence[Any]) -> list[Any]:
    """Completions in the shape TRL gives reward functions: a text completion of a
    conversational prompt (a list of messages) becomes ``[{"role": "assistant", "content": text}]``;
    text after a text prompt, and completions that already are messages, stay as they are."""
    return [[{"role": "assistant", "content": completion}]
            if isinstance(prompt, list) and isinstance(completion, str) else completion
            for prompt, completion in zip(prompts, completions, strict=True)]


def _parameters(fn: RewardFn) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return None


def _takes_them_by_position(parameters: list[inspect.Parameter] | None) -> bool:
    """True for a reward that names neither ``prompts`` nor ``completions`` and so must get them
    as its first two arguments (``lambda p, c, **_``)."""
    if parameters is None or {"prompts", "completions"} & {p.name for p in parameters}:
        return False
    return any(p.kind == p.VAR_POSITIONAL for p in parameters) or sum(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters) >= 2


def call_reward(fn: RewardFn, prompts: list, completions: list, columns: dict[str, list]) -> Any:
    """``fn(prompts=..., completions=..., **columns)`` as TRL calls it, so a reward that takes only
    ``completions`` and ``**kwargs`` works; a function that names neither (``lambda p, c, **_``)
    gets prompts and completions by position instead."""
    if _takes_them_by_position(_parameters(fn)):
        return fn(prompts, completions, **columns)
    return fn(prompts=prompts, completions=completions, **columns)


def required_columns(fn: RewardFn) -> list[str]:
    """The dataset columns a reward cannot run without: its parameters that have no default,
    besides prompts and completions (the first two when it takes them by position)."""
    parameters = _parameters(fn)
    if parameters is None:
        return []
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if _takes_them_by_position(parameters):
        named = named[2:]
    return [p.name for p in named if p.default is p.empty and p.name not in ("prompts", "completions")]


def reward_columns(records, repeat: int = 1) -> dict[str, list]:
    """The dataset columns reward functions receive, one value per row, from prompt records
    (``data`` kind ``prompt``): ``answer`` (when any record has one: prompt-only data has none) and
    every other column (None where a row lacks it); each value ``repeat`` times (N samples)."""
    columns = {}
    if any(r.answer is not None for r in records):
        columns["answer"] = [r.answer for r in records for _ in range(repeat)]
    for key in dict.fromkeys(key for r in records for key in r.extras):
        columns[key] = [r.extras.get(key) for r in records for _ in range(repeat)]
    return columns


def check_reward_columns(specs: Sequence[RewardSpec], columns: Sequence[str], source: str) -> None:
    """Raise ConfigError before training when a reward needs a column ``source`` does not have
    (``math_answer`` on prompt-only data), instead of failing at the first rollout."""
    for spec in specs:
        missing = [name for name in required_columns(spec.fn) if name not in columns]
        if missing:
            raise ConfigError(f"reward '{spec.name}' reads the column(s) {', '.join(missing)}, which "
                              f"{source} does not have (its columns: {', '.join(columns) or 'none'})")


def shorten(value: Any, keep: int = _SHOWN_CHARS) -> str:
    """``repr`` of a prompt/completion, with the middle cut out when longer than 2·keep chars."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > 2 * keep:
        text = f"{text[:keep]}[... {len(text) - 2 * keep} chars cut ...]{text[-keep:]}"
    return repr(text)


def combine_rewards(
    specs: Sequence[RewardSpec],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: dict[str, Sequence[Any]] | None = None,
    *,
    on_error: Literal["raise", "score_failed"] = "raise",
    failed_score: float = 0.0,
) -> tuple[list[float], dict[str, list[float | None]], dict[str, float]]:
    """Score every completion with every reward and sum them with their weights.

    Each reward is called once on the whole batch. If that raises, it is called again one sample
    at a time to find which samples fail: ``on_error="raise"`` raises ``RewardError`` for the
    first one; ``"score_failed"`` gives each failing sample ``failed_score``, logs one warning per
    reward with the count, and reports the count as ``rewards/{name}/failed``. Text completions of
    conversational prompts reach the rewards as message lists (``trl_completions``).

    Shape: prompts, completions and every column have length N; returns
    ``totals`` (N,), ``per_reward[name]`` (N,), and ``metrics`` with ``rewards/{name}/mean``,
    ``rewards/{name}/std`` (over non-None values; std with Bessel's correction as TRL logs it,
    0.0 for one value, NaN for none) and ``rewards/total/mean``, ``rewards/total/std``.
    """
    columns = dict(columns or {})
    if on_error not in ("raise", "score_failed"):
        raise ConfigError(f"on_error must be 'raise' or 'score_failed', got {on_error!r}")
    n = len(completions)
    if len(prompts) != n:
        raise ConfigError(f"{len(prompts)} prompts but {n} completions")
    completions = trl_completions(prompts, completions)
    for key, values in columns.items():
        if len(values) != n:
            raise ConfigError(f"column '{key}' has {len(values)} values for {n} completions")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names) or "total" in names:
        raise ConfigError(f"reward names must be unique and not 'total', got {names}")

    totals = [0.0] * n
    per_reward: dict[str, list[float | None]] = {}
    metrics: dict[str, float] = {}
    for spec in specs:
        values, failures = _score(spec, prompts, completions, columns, on_error, failed_score)
        per_reward[spec.name] = values
        for i, value in enumerate(values):
            if value is not None:
                totals[i] += spec.weight * value
        applied = [v for v in values if v is not None]
        metrics[f"rewards/{spec.name}/mean"], metrics[f"rewards/{spec.name}/std"] = _mean_std(applied)
        if on_error == "score_failed":
            metrics[f"rewards/{spec.name}/failed"] = float(len(failures))
            if failures:
                first = failures[0]
                logger.warning("reward '%s' failed on %d of %d samples, scored %s; first failure: %s",
                               spec.name, len(failures), n, failed_score, first)
    metrics["rewards/total/mean"], metrics["rewards/total/std"] = _mean_std(totals)
    return totals, per_reward, metrics


def _score(spec: RewardSpec, prompts, completions, columns, on_error, failed_score
           ) -> tuple[list[float | None], list[RewardError]]:
    """One reward over the batch → (values, failures); raises on the first failure if asked to."""
    n = len(completions)
    try:
        returned = call_reward(spec.fn, list(prompts), list(completions), {k: list(v) for k, v in columns.items()})
    except Exception as batch_error:  # noqa: BLE001 — any failure is re-run per sample below
        return _score_one_by_one(spec, prompts, completions, columns, on_error, failed_score,
                                 batch_error)

    raw = _as_list(returned)
    if raw is None or len(raw) != n:
        got = f"{len(raw)} values" if raw is not None else f"a {type(returned).__name__}"
        error = RewardError(spec.name, f"returned {got} for {n} completions; "
                                       "a reward must return one float (or None) per completion")
        if on_error == "raise":
            raise error
        return [failed_score] * n, [error] * n

    values: list[float | None] = []
    failures: list[RewardError] = []
    for i, value in enumerate(raw):
        problem = _check_value(value)
        if problem is None:
            values.append(None if value is None else float(value))
            continue
        error = RewardError(spec.name, problem, index=i, prompt=prompts[i], completion=completions[i])
        if on_error == "raise":
            raise error
        failures.append(error)
        values.append(failed_score)
    return values, failures


def _score_one_by_one(spec, prompts, completions, columns, on_error, failed_score, batch_error):
    values: list[float | None] = []
    failures: list[RewardError] = []
    for i in range(len(completions)):
        one_columns = {key: [column[i]] for key, column in columns.items()}
        try:
            returned = call_reward(spec.fn, [prompts[i]], [completions[i]], one_columns)
            raw = _as_list(returned)
            if raw is None or len(raw) != 1:
                raise TypeError(f"returned {returned!r} for one completion")
            problem = _check_value(raw[0])
            if problem is not None:
                raise TypeError(problem)
        except Exception as error:  # noqa: BLE001 — reported with the sample below
            failure = RewardError(spec.name, f"{type(error).__name__}: {error}", index=i,
                                  prompt=prompts[i], completion=completions[i])
            if on_error == "raise":
                raise failure from error
            failures.append(failure)
            values.append(failed_score)
            continue
        values.append(None if raw[0] is None else float(raw[0]))
    if not failures:
        # The batch call failed but every sample alone succeeds: the fault is in the batch
        # (e.g. the function assumes a batch size); say so rather than hide it.
        error = RewardError(spec.name, f"failed on the batch but on no single sample: "
                                       f"{type(batch_error).__name__}: {batch_error}")
        if on_error == "raise":
            raise error from batch_error
        return [failed_score] * len(completions), [error] * len(completions)
    return values, failures


def _as_list(raw: Any) -> list | None:
    """A reward's output as a list (lists, tuples, numpy arrays all do); None if not a sequence."""
    if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__len__") or not hasattr(raw, "__iter__"):
        return None
    return list(raw)


def _check_value(value: Any) -> str | None:
    """None if ``value`` is a valid reward (None or a finite real number), else the problem."""
    if value is None:
        return None
    if not isinstance(value, numbers.Real):
        return f"returned {type(value).__name__} {value!r}, not a number or None"
    if not math.isfinite(float(value)):
        return f"returned {value!r}; rewards must be finite"
    return None


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance)
