"""The ``tether`` command.

    tether recipes list      # the recipes shipped with tether; `tether recipes cp NAME DEST` copies one
    tether train sft --config tether:recipes/sft-demo.yaml optim.lr=1e-4 train.max_steps=20
    tether train sft --config tether:recipes/sft-demo.yaml --resume
    tether train dpo --help  # every config key of an algorithm, with defaults (docs/config.md)
    tether train dpo --config recipes/safety-dpo.yaml dpo.beta=0.2
    tether train reward|ppo|rlhf|cai --config recipes/...yaml
    tether demo              # safety DPO on the bundled SmolLM2, before/after table
    tether demo arith        # SFT warm-up + GRPO on arithmetic, held-out accuracy curve
    tether generate --model tether:default --prompts prompts.jsonl --out items.jsonl
    tether label serve       # the labeling web app (see docs/feedback.md)
    tether judge --items items.jsonl --backend local:tether:default --out judgments.jsonl
    tether audit --baseline tether:default --candidate runs/safety-dpo/final --fail-on "over_refusal>+5pp"
    tether audit data prefs.jsonl
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings

# OpenMP threads that spin while waiting steal the core the other thread needs whenever the
# machine is shared (benchmarks/RESULTS.md, "Measurements behind design choices"). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tether.commands
from tether import __version__
from tether.errors import TetherError


def _command_modules() -> dict:
    return {info.name: importlib.import_module(f"tether.commands.{info.name}")
            for info in sorted(pkgutil.iter_modules(tether.commands.__path__), key=lambda m: m.name)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in _command_modules().values():
        module.register(commands)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    # tether warns the user with plain UserWarnings ("optim.lr=3 is above 1", "truncated 3 prompts");
    # the file and line inside pydantic or tether that raised them mean nothing on a command line.
    if category is UserWarning:
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub at run time
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    warnings.formatwarning = _format_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    modules = _command_modules()
    # A command that parses its own arguments (``tether audit --baseline ...``) gets them whole:
    # argparse cannot hand a subcommand a remainder that starts with an option.
    raw = getattr(modules.get(argv[0]) if argv else None, "run_raw", None)
    if raw is not None:
        return _run(lambda: raw(argv[1:]))
    parser = build_parser()
    # Overrides may come before or after options (`--config X a.b=c --resume a.d=e`); argparse
    # only gathers the first run of positionals, so collect the rest here.
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra
               if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(getattr(args, "overrides", [])) + extra
    return _run(lambda: args.handler(args))


def _run(handler) -> int:
    try:
        status = handler()
    except TetherError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
