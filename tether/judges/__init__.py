"""Judges: the scorers every number about model behaviour rests on (refusal, and more to come).

A judge reads (prompt, response) pairs and returns a score per pair; a response is judged positive
(e.g. "refused") when its score is at or above the judge's threshold. Every report that uses a
judge records its name, version and threshold (:func:`describe`).
"""

from tether.judges.base import Judge, decide, describe

__all__ = ["Judge", "decide", "describe"]
