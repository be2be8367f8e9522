"""Every key of a config class, read from the pydantic models themselves.

``tether train ALGO --help`` prints them, and docs/config.md is written from them
(``python -m tether.config_reference docs/config.md``; tests/test_config_reference.py fails when
the page is stale), so neither can drift from the code.

A key's description is its ``Field(description=...)`` when given, else the comment on its line in
the class body, else the comment block right above it (``# ----`` banners excepted).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tether.config import RunConfig


@dataclass(frozen=True)
class Key:
    name: str  # dotted, as in an override: "optim.lr"
    type: str  # "float > 0", "section", ...
    default: str  # JSON, "required", or "" for a section that is always there
    description: str


def config_keys(config_class: type[BaseModel]) -> list[Key]:
    """Every key of ``config_class``, sections before their keys, in declaration order."""
    return list(_walk(config_class, "", None))


def _walk(cls: type[BaseModel], prefix: str, instance: BaseModel | None):
    for name, field in cls.model_fields.items():
        dotted = prefix + name
        section = _section_class(field.annotation)
        # A section given as a configured instance (OptimSettings(lr=1e-4)) has its own defaults;
        # keys it leaves unset keep the class default ("auto", not what "auto" resolved to here).
        if instance is not None and name in instance.model_fields_set:
            default = getattr(instance, name)
        elif field.default_factory is not None:
            # A section made by a factory has its class defaults; building it would resolve "auto".
            default = section if section is not None else field.default_factory()
        else:
            default = field.default
        required = default is PydanticUndefined
        description = field.description or _comments(_defining_class(cls, name)).get(name, "")
        if section is not None and issubclass(section, RunConfig):
            algorithm = ALGORITHM_OF.get(section.__name__, section.__name__)
            yield Key(dotted, f"a whole {algorithm} config", "required" if required else "",
                      _join(description, f"every key of `tether train {algorithm}`, under `{dotted}.`"))
        elif section is not None:
            yield Key(dotted, "section", "required" if required else ("null" if default is None else ""),
                      description or _docstring(section))
            yield from _walk(section, dotted + ".", default if isinstance(default, BaseModel) else None)
        else:
            yield Key(dotted, _type_name(field.annotation) + _constraints(field.metadata),
                      "required" if required else _json(default), description)


# The config class of each `tether train` algorithm, for keys that hold a whole config (CAI's sft, dpo).
ALGORITHM_OF = {"SFTConfig": "sft", "DPOConfig": "dpo", "GRPOConfig": "grpo", "RewardModelConfig": "reward",
                "PPOConfig": "ppo", "RLHFConfig": "rlhf", "CAIConfig": "cai"}


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


# ------------------------------------------------------------------------------------- types

def _members(annotation) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _section_class(annotation) -> type[BaseModel] | None:
    return next((member for member in _members(annotation)
                 if isinstance(member, type) and issubclass(member, BaseModel)), None)


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(map(_type_name, args))
    if origin is typing.Literal:
        return " | ".join(json.dumps(value) for value in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(map(_type_name, args))}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "{" + ", ".join(f"{name}: {_type_name(field.annotation)}"
                               for name, field in annotation.model_fields.items()) + "}"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {annotated_types.Gt: ("gt", ">"), annotated_types.Ge: ("ge", ">="),
           annotated_types.Lt: ("lt", "<"), annotated_types.Le: ("le", "<=")}


def _constraints(metadata: list) -> str:
    parts = []
    for item in metadata:
        if type(item) in _BOUNDS:
            attribute, sign = _BOUNDS[type(item)]
            parts.append(f"{sign} {getattr(item, attribute)}")
        elif isinstance(item, annotated_types.MinLen):
            parts.append("non-empty" if item.min_length == 1 else f"at least {item.min_length} items")
    return f" ({', '.join(parts)})" if parts else ""


def _json(value) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, (list, tuple)):
        value = [item.model_dump(mode="json") if isinstance(item, BaseModel) else item for item in value]
    return json.dumps(value)


# ------------------------------------------------------------------------------------- comments

def _defining_class(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in klass.__dict__.get("__annotations__", {}))


def _docstring(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    return " ".join(doc.split("\n\n")[0].split())


@functools.cache
def _comments(cls: type) -> dict[str, str]:
    """field name -> the comment that explains it in ``cls``'s source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source shipped (a frozen build): keys without descriptions
        return {}
    lines = source.splitlines()
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    fields = cls.__dict__.get("__annotations__", {})
    found = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"    (\w+)\s*:", line)  # an annotated name in the class body
        if not match or match.group(1) not in fields:
            continue
        if number in comments:
            found[match.group(1)] = comments[number]
            continue
        block, above = [], number - 1
        while above in comments and lines[above - 1].lstrip().startswith("#") \
                and not comments[above].startswith("----"):
            block.insert(0, comments[above])
            above -= 1
        found[match.group(1)] = " ".join(block)
    return found


# ------------------------------------------------------------------------------------- output

def format_help(config_class: type[BaseModel]) -> str:
    """The key list for ``tether train ALGO --help``."""
    lines = ["keys (in the recipe, or key.sub=value on the command line; docs/config.md):"]
    for key in config_keys(config_class):
        default = " (required)" if key.default == "required" else (f" = {key.default}" if key.default else "")
        lines.append(f"  {key.name}: {key.type}{default}")
        if key.description:
            lines.extend(textwrap.wrap(key.description, width=96, initial_indent="      ",
                                       subsequent_indent="      "))
    return "\n".join(lines)


def _table(keys: list[Key]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key in keys:
        default = f"`{cell(key.default)}`" if key.default else ""
        rows.append(f"| `{key.name}` | {cell(key.type)} | {default} | {cell(key.description)} |")
    return rows


def docs_page() -> str:
    """docs/config.md: the keys shared by the trainers once, then each algorithm's own."""
    from tether.commands.train import TRAINERS

    classes = {}
    for algorithm, (target, _) in TRAINERS.items():
        module_name, class_name = target.split(":")
        classes[algorithm] = getattr(importlib.import_module(module_name), class_name)
    shared = set(RunConfig.model_fields)
    runs = [name for name, cls in classes.items() if issubclass(cls, RunConfig)]
    out = ["# Config keys", "",
           "<!-- Generated by `python -m tether.config_reference docs/config.md` from the config classes; "
           "tests/test_config_reference.py fails when it is stale. Do not edit by hand. -->", "",
           "Every key of every `tether train` algorithm. Set them in a YAML recipe (sections as mappings) "
           "or on the command line as `section.key=value` (the value is read as YAML). "
           "`tether train ALGO --help` prints the same list for one algorithm. "
           "`train.bf16: \"auto\"` is resolved when the config loads: bf16 autocast is on where it "
           "is fast (CUDA, or a CPU with AMX).", "",
           f"## Shared by {', '.join(runs)}", ""]
    out += _table([key for key in config_keys(RunConfig) if key.name.split(".")[0] in shared])
    for algorithm, cls in classes.items():
        own = [key for key in config_keys(cls)
               if not (issubclass(cls, RunConfig) and key.name.split(".")[0] in shared)]
        out += ["", f"## {algorithm}", ""]
        if _docstring(cls):
            out += [_docstring(cls), ""]
        if issubclass(cls, RunConfig):
            out += ["The shared sections above, and " + ("these:" if own else "no keys of its own."), ""]
        out += _table(own) if own else []
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    page = docs_page()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(page)
    else:
        sys.stdout.write(page)
