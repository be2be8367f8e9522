"""The key reference (`tether train ALGO --help`, docs/config.md) is read from the config classes."""

from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from tether.cli import main
from tether.config import Section
from tether.config_reference import config_keys, docs_page

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def test_docs_page_is_current():
    assert DOCS_PAGE.read_text() == docs_page(), (
        "docs/config.md is stale: regenerate it with `python -m tether.config_reference docs/config.md`")


class Inner(Section):
    """What the inner section is for."""

    depth: int = Field(3, ge=1)  # how deep


class Example(Section):
    # ---- a banner, not a description
    # explained by the block
    # above it
    first: float | None = None
    mode: Literal["a", "b"] = "a"  # the trailing comment wins
    inner: Inner = Inner(depth=5)
    missing: Inner | None = None
    needed: str


def test_keys_carry_types_defaults_and_the_comments_that_explain_them():
    keys = {key.name: key for key in config_keys(Example)}
    assert list(keys) == ["first", "mode", "inner", "inner.depth", "missing", "missing.depth", "needed"]
    assert keys["first"].type == "float | null" and keys["first"].default == "null"
    assert keys["first"].description == "explained by the block above it"
    assert (keys["mode"].type, keys["mode"].default, keys["mode"].description) == \
        ('"a" | "b"', '"a"', "the trailing comment wins")
    assert keys["inner"].description == "What the inner section is for."
    assert keys["inner.depth"].default == "5"  # the section's configured default, not the class's 3
    assert keys["inner.depth"].type == "int (>= 1)" and keys["inner.depth"].description == "how deep"
    assert keys["missing"].default == "null" and keys["missing.depth"].default == "3"
    assert keys["needed"].default == "required"


def test_train_algo_help_lists_that_algorithms_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "dpo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "  dpo.beta: float (> 0) = 0.1\n      strength of the pull toward the reference model" in out
    assert "  optim.lr: float (> 0) = 2e-05\n" in out
    assert '  train.bf16: bool | "auto" = "auto"\n' in out  # not what "auto" resolved to here
    assert "  data.train: str (required)\n" in out
    assert "grpo." not in out


def test_nested_configs_show_their_own_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "rlhf", "--help"])
    out = capsys.readouterr().out
    assert "  reward_model.optim.lr: float (> 0) = 0.0001\n" in out  # OptimSettings(lr=1e-4) in RLHF
    assert '  reward_model.optim.schedule: "cosine" | "linear" | "constant" = "constant"\n' in out
    with pytest.raises(SystemExit):
        main(["train", "cai", "--help"])
    assert "every key of `tether train sft`, under `sft.`" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    from tether import __version__

    assert capsys.readouterr().out.strip() == f"tether {__version__}"
