"""Moved to :mod:`tether.judges.refusal_embedding`; kept so older imports keep working."""

from tether.judges.refusal_embedding import (EMBEDDING_PACKAGE, EXEMPLARS, EmbeddingRefusalJudge,  # noqa: F401
                                             SentenceEncoder, load_encoder, load_exemplars)
