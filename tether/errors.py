"""The errors tether raises on purpose. Each names what is wrong and what to do about it."""

from __future__ import annotations


class TetherError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(TetherError):
    """A recipe or override is invalid (unknown key, wrong type, bad value)."""


class DataValidationError(TetherError):
    """A data record is invalid. Carries where: file, 1-based line, and field.

    The message reads ``FILE:LINE: field 'FIELD': PROBLEM`` so editors can jump to it.
    Several problems can be reported at once through ``problems``.
    """

    def __init__(self, problem: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, problems: list[DataValidationError] | None = None):
        self.problem = problem
        self.file = file
        self.line = line
        self.field = field
        self.problems = problems or []
        super().__init__(self._render())

    def location(self) -> str:
        where = self.file or "<data>"
        if self.line is not None:
            where += f":{self.line}"
        return where

    def _render(self) -> str:
        if self.problems:
            shown = "\n".join(f"  {p}" for p in self.problems[:20])
            more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            return f"{len(self.problems)} invalid record(s):\n{shown}{more}"
        field = f" field '{self.field}':" if self.field else ""
        return f"{self.location()}:{field} {self.problem}"


class ModelNotFoundError(TetherError):
    """A model path or bundled model is missing; the message says what to install or pass."""


class TrainingDivergedError(TetherError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(TetherError):
    """A checkpoint is missing, incomplete, or does not match the run it is resumed into."""
