"""Moved to :mod:`tether.judges.refusal_patterns`; kept so older imports keep working."""

from tether.judges.refusal_patterns import (  # noqa: F401
                                            DEFAULT_THRESHOLD,
                                            RefusalPatternsJudge,
                                            head,
                                            is_refusal,
                                            normalize,
                                            refusal_score,
)

PatternRefusalClassifier = RefusalPatternsJudge
