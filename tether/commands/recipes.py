"""``tether recipes list`` and ``tether recipes cp NAME DEST``: the recipes shipped in the package.

They work from an installed tether, outside a clone: copy one to edit it, or run one in place
with ``--config tether:recipes/NAME.yaml``.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
from pathlib import Path

from tether.config import RECIPES_DIR
from tether.errors import ConfigError

# recipe -> the `tether train` algorithm it is for (tests/test_recipes.py: every recipe is here).
ALGORITHMS = {"arith-grpo": "grpo", "arith-sft": "sft", "arith-tools-grpo": "grpo",
              "arith-tools-sft": "sft", "cai": "cai", "consistency": "consistency",
              "reward-model": "reward",
              "rlhf-ppo": "rlhf", "safety-dpo": "dpo", "sft-demo": "sft",
              # fragility (issue 22)
              "poison-grpo": "grpo", "reactivation-plant": "sft", "reactivation-suppress": "dpo",
              "reactivation": "sft"}


def recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def describe(path: Path) -> str:
    """The first sentence of the recipe's opening comment block (its one-line summary)."""
    block = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        block.append(line.lstrip("#").strip())
    text = " ".join(line for line in block if line)
    # A sentence ends at ". " or ";", or at a colon that ends its line (a list follows).
    first_line_colon = len(block[0]) if block and block[0].endswith(":") else -1
    ends = [m.start() for m in re.finditer(r"\. |;", text)] + [first_line_colon]
    end = min((e for e in ends if e > 0), default=len(text))
    return text[:end].rstrip(".:; ")


def _list(args: argparse.Namespace) -> None:
    names = recipe_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {ALGORITHMS.get(name, '?'):<6}  "
              f"{describe(RECIPES_DIR / f'{name}.yaml')}")
    print("\nrun one with   tether train ALGO --config tether:recipes/NAME.yaml"
          "\ncopy one with  tether recipes cp NAME my-recipe.yaml")


def _copy(args: argparse.Namespace) -> None:
    name = args.name.removesuffix(".yaml")
    source = RECIPES_DIR / f"{name}.yaml"
    if not source.is_file():
        close = difflib.get_close_matches(name, recipe_names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"no recipe named '{name}'{hint} (recipes: {', '.join(recipe_names())})")
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not args.force:
        raise ConfigError(f"{dest} already exists; pass --force to overwrite it")
    if not dest.parent.is_dir():
        raise ConfigError(f"cannot write {dest}: the folder {dest.parent} does not exist")
    shutil.copyfile(source, dest)
    print(f"copied {name} to {dest}")


def register(commands) -> None:
    recipes = commands.add_parser("recipes", help="list or copy the recipes shipped with tether")
    actions = recipes.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="each recipe's name and what it does").set_defaults(handler=_list)
    copy = actions.add_parser("cp", help="copy a recipe to edit it")
    copy.add_argument("name", help="a name from `tether recipes list`")
    copy.add_argument("dest", help="a file, or a folder to copy NAME.yaml into")
    copy.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    copy.set_defaults(handler=_copy)
