"""``tether audit ...``: five tools under one word.

    tether audit --baseline PATH --candidate PATH [--suite default] [--fail-on "over_refusal>+5pp"]
    tether audit data FILE                 # what a preference file rewards; suspicious pairs
    tether audit overoptimization ...      # best-of-n sweep: where a proxy reward stops helping
    tether audit representations --baseline A --candidate B   # erased, or only suppressed?
    tether audit agentic --model PATH      # agent misbehaviour in scripted scenarios; spec gaming

Each tool parses its own arguments (``main(argv)`` in its module).
"""

from __future__ import annotations

import argparse
import importlib

TOOLS = {
    "agentic": "tether.audit.agentic.cli",
    "data": "tether.audit.data_audit",
    "overoptimization": "tether.audit.overoptimization",
    "representations": "tether.audit.representations",
}
MODEL_AUDIT = "tether.audit.cli"


def run_raw(words: list[str]) -> int:
    """``tether audit WORDS...``: the tool named by the first word, or the model audit."""
    module = TOOLS.get(words[0]) if words else None
    if module is not None:
        words = words[1:]
    return importlib.import_module(module or MODEL_AUDIT).main(words) or 0


def _audit(args: argparse.Namespace) -> int:
    return run_raw(list(args.words))


def register(commands) -> None:
    audit = commands.add_parser(
        "audit", help="what post-training did to a model (or what a preference file rewards)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False)
    audit.add_argument("words", nargs=argparse.REMAINDER)
    audit.set_defaults(handler=_audit)
