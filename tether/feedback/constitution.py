"""A constitution: the written principles an AI judge and Constitutional AI work from.

    name: tether-default
    version: "1.0"
    principles:
      - id: harm-assistance
        text: Prefer the response that does not help anyone cause harm ...      # the judge reads this
        critique_request: Identify specific ways in which the assistant's ...    # CAI critique step
        revision_request: Rewrite the assistant's response so that ...          # CAI revision step

Every AI judgment records ``name@version``, so a changed principle never mixes silently with
verdicts made under the old one. The default ships at ``tether/constitutions/default.yaml``
(``tether:constitutions/default.yaml``).
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tether.config import resolve_bundled
from tether.errors import ConfigError

DEFAULT_CONSTITUTION = "tether:constitutions/default.yaml"


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    critique_request: str = Field(min_length=1)
    revision_request: str = Field(min_length=1)


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    principles: list[Principle] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value):
        # YAML reads `version: 1.0` as a float; keep what the author wrote, as text.
        return str(value) if isinstance(value, (int, float)) else value

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, principles: list[Principle]) -> list[Principle]:
        seen: set[str] = set()
        for principle in principles:
            if principle.id in seen:
                raise ValueError(f"principle id {principle.id!r} appears twice")
            seen.add(principle.id)
        return principles

    @property
    def label(self) -> str:
        """``name@version``: what each AI judgment records as its constitution_version."""
        return f"{self.name}@{self.version}"

    def sample(self, rng: random.Random) -> Principle:
        """One principle drawn uniformly (CAI draws a fresh one for every critique/revision)."""
        return self.principles[rng.randrange(len(self.principles))]


def load_constitution(path: str | Path = DEFAULT_CONSTITUTION) -> Constitution:
    """Read and validate a constitution YAML; errors name the file and the bad field."""
    resolved = Path(resolve_bundled(str(path)))
    if not resolved.is_file():
        raise ConfigError(f"constitution file not found: {path}")
    try:
        data = yaml.safe_load(resolved.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with name, version and principles")
    try:
        return Constitution.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
                             for e in error.errors())
        raise ConfigError(f"invalid constitution {path}: {problems}") from None
