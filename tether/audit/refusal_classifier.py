"""Moved to :mod:`tether.judges.refusal_embedding`; kept so older imports keep working."""

from tether.judges.refusal_embedding import (  # noqa: F401
                                             EMBEDDING_PACKAGE,
                                             EXEMPLARS,
                                             EmbeddingRefusalJudge,
                                             SentenceEncoder,
                                             load_encoder,
                                             load_exemplars,
)
