"""Moved to :mod:`tether.judges.refusal_patterns`; kept so older imports keep working."""

from tether.judges.refusal_patterns import (DEFAULT_THRESHOLD, RefusalPatternsJudge, head, is_refusal,  # noqa: F401
                                            normalize, refusal_score)

PatternRefusalClassifier = RefusalPatternsJudge
