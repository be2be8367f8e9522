"""Prompt wrappers (jailbreak framings, sycophancy cues, paraphrases) read from a YAML of templates.

The file has a ``train`` and a ``heldout`` section, each mapping a category to a list of templates;
a template is a string (one user turn) or a list of chat messages. ``tether/resources/consistency/
wrappers.yaml`` is the shipped set and documents the placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from tether.config import resolve_bundled
from tether.data.records import Prompt
from tether.errors import ConfigError

DEFAULT_WRAPPERS = "tether:resources/consistency/wrappers.yaml"
PLACEHOLDERS = ("prompt", "first_half", "second_half", "leet", "suggestion")
_LEET = str.maketrans({"a": "4", "e": "3", "o": "0", "A": "4", "E": "3", "O": "0"})


@dataclass(frozen=True)
class Wrapper:
    category: str
    template: str | tuple[tuple[str, str], ...]  # a user turn, or (role, content) messages
    index: int  # position within its category, for names like roleplay/1

    @property
    def name(self) -> str:
        return f"{self.category}/{self.index}"

    def needs(self, field: str) -> bool:
        texts = [self.template] if isinstance(self.template, str) else [content for _, content in self.template]
        return any("{" + field + "}" in text for text in texts)

    def apply(self, prompt: str, suggestion: str | None = None) -> Prompt | None:
        """The wrapped prompt (a string or a chat), or None when the template needs a suggestion
        the row does not have."""
        if self.needs("suggestion") and suggestion is None:
            return None
        words = prompt.split()
        middle = max(1, len(words) // 2)
        values = {"prompt": prompt, "first_half": " ".join(words[:middle]), "second_half": " ".join(words[middle:]),
                  "leet": prompt.translate(_LEET), "suggestion": suggestion or ""}
        if isinstance(self.template, str):
            return self.template.format(**values)
        return [{"role": role, "content": content.format(**values)} for role, content in self.template]


def load_wrappers(path: str | Path = DEFAULT_WRAPPERS, split: Literal["train", "heldout"] = "train") -> list[Wrapper]:
    """The templates of one split, validated (known placeholders, known roles, ending on a user turn)."""
    file = Path(resolve_bundled(str(path)))
    if not file.is_file():
        raise ConfigError(f"wrappers file not found: {file}")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict) or split not in data:
        raise ConfigError(f"{file}: needs a '{split}' section (category: [templates])")
    wrappers = []
    for category, templates in (data[split] or {}).items():
        for index, template in enumerate(templates or []):
            wrappers.append(Wrapper(category, _parse(template, f"{file}: {split}.{category}[{index}]"), index))
    if not wrappers:
        raise ConfigError(f"{file}: the '{split}' section has no templates")
    return wrappers


def _parse(template: Any, where: str) -> str | tuple[tuple[str, str], ...]:
    if isinstance(template, str):
        texts, parsed = [template], template
    elif isinstance(template, list) and template and all(isinstance(m, dict) for m in template):
        if any(set(m) != {"role", "content"} or m["role"] not in ("system", "user", "assistant") for m in template):
            raise ConfigError(f"{where}: each message needs exactly 'role' (system/user/assistant) and 'content'")
        if template[-1]["role"] != "user":
            raise ConfigError(f"{where}: the last message must be the user's")
        texts, parsed = [m["content"] for m in template], tuple((m["role"], m["content"]) for m in template)
    else:
        raise ConfigError(f"{where}: a template is a string or a list of {{role, content}} messages")
    for text in texts:
        try:
            text.format(**{name: "" for name in PLACEHOLDERS})
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(f"{where}: unknown placeholder or stray brace ({error}); "
                              f"placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}") from None
    if not any("{prompt}" in t or "{first_half}" in t or "{leet}" in t for t in texts):
        raise ConfigError(f"{where}: the template never includes the request ({{prompt}}, {{first_half}} or {{leet}})")
    return parsed
