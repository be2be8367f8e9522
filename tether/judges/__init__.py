"""Judges: the scorers every number about model behaviour rests on (refusal, and more to come).

A judge reads (prompt, response) pairs and returns a score per pair; a response is judged positive
(e.g. "refused") when its score is at or above the judge's threshold. Every report that uses a
judge records its name, version and threshold (:func:`describe`).

* ``base.py``: the :class:`Judge` protocol, :func:`decide`, :func:`describe`;
* ``registry.py``: judges by name (:func:`get_judge`) and :func:`default_refusal_judge`;
* ``refusal_patterns.py`` (``refusal-patterns``), ``refusal_embedding.py`` (``refusal-embedding``,
  ``refusal-combined``): the refusal judges;
* ``validate.py``: accuracy, precision and recall with Wilson intervals on labelled responses;
* ``conformal.py``: several judges combined, their threshold chosen so a stated error bound holds.
"""

from tether.judges.base import Judge, decide, describe
from tether.judges.registry import (
           DEFAULT_REFUSAL_JUDGE,
           REFUSAL_JUDGES,
           default_refusal_judge,
           get_judge,
           resolve_judge,
)

__all__ = ["Judge", "decide", "describe", "get_judge", "default_refusal_judge", "resolve_judge",
           "REFUSAL_JUDGES", "DEFAULT_REFUSAL_JUDGE"]
