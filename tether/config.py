"""Typed run configs: YAML recipes plus ``key.sub=value`` overrides, validated by pydantic.

Every section forbids unknown keys, and the error names the closest valid key, so a typo in a
recipe fails at load time instead of silently training with a default.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tether.errors import ConfigError

BUNDLED_PREFIX = "tether:"
RECIPES_DIR = Path(__file__).parent / "recipes"  # `tether recipes list`
# Folders of the recipes loaded in this process: a reward named ``module:function`` is also looked
# up there (and in the working directory), as Python finds modules beside the script it runs.
RECIPE_DIRS: list[Path] = []


def resolve_bundled(path: str) -> str:
    """``tether:resources/x.jsonl`` names a file shipped inside the package; other paths pass."""
    if path.startswith(BUNDLED_PREFIX):
        return str(Path(__file__).parent / path[len(BUNDLED_PREFIX):])
    return path


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(Section):
    r: int = Field(16, gt=0)  # adapter rank
    alpha: int = Field(32, gt=0)  # scale: the adapter update is multiplied by alpha / r
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # dropout on the adapter input
    target_modules: str | list[str] = "all-linear"  # module names, or every linear layer but lm_head


class ModelSettings(Section):
    path: str = "default"  # a local model or adapter folder; "default": the bundled SmolLM2-135M-Instruct
    lora: LoraSettings | None = None  # set it to train a LoRA adapter instead of every weight
    # When ``path`` is itself a LoRA adapter (e.g. an earlier run's final/) and ``lora`` is set:
    # "merge" folds that adapter into its base and trains fresh adapters on the result (the
    # merged model is saved as the run's merged_base/, the base final/ names); "continue"
    # trains the loaded adapter further (its own r, alpha and target modules; the LoRA-off
    # model is then the original base). See docs/models.md.
    lora_on_adapter: Literal["merge", "continue"] = "merge"


class DataSettings(Section):
    train: str  # a JSONL file (tether:resources/... names one shipped with tether)
    eval: str | None = None  # held-out records, evaluated every train.eval_every steps and at the end
    max_length: int = Field(512, gt=8)  # tokens per sequence (prompt + completion)
    max_prompt_tokens: int | None = Field(None, gt=0)  # prompt budget; what data.truncation does past it
    truncation: Literal["error", "truncate_left", "drop"] = "error"  # for prompts over max_prompt_tokens
    # "bucket" groups similar lengths to waste little padding; "pack" concatenates sequences
    # into one row with position ids restarting per sequence (padding-free); "shuffle" takes random
    # batches with no length sorting, so kinds of rows that differ in length still share batches.
    batching: Literal["bucket", "pack", "shuffle"] = "bucket"

    @field_validator("train", "eval")
    @classmethod
    def _bundled_paths(cls, value: str | None) -> str | None:
        return resolve_bundled(value) if value else value


class OptimSettings(Section):
    lr: float = Field(2e-5, gt=0)  # peak learning rate (AdamW)
    # "adamw_8bit": bitsandbytes' AdamW8bit, moments kept in 8 bits (blockwise quantized): 2 bytes of
    # optimizer state per trainable weight instead of 8. pip install 'tether[bnb]'; runs on CPU and CUDA.
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    eps: float = 1e-8  # AdamW
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warm-up
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from 0
    max_grad_norm: float | None = Field(1.0, gt=0)  # gradient clipping; None: no clipping

    @field_validator("lr")
    @classmethod
    def _warn_on_huge_lr(cls, value: float) -> float:
        # Valid, but almost always a typo (3 for 3e-4): fine-tuning rates sit around 1e-6..1e-3.
        if value > 1:
            warnings.warn(f"optim.lr={value:g} is above 1; fine-tuning learning rates are usually "
                          "1e-6 to 1e-3 (did you mean e.g. 3e-4?)", stacklevel=2)
        return value


def check_run_name(value: str) -> str:
    """A run's folder is ``output_dir/run_name``: the name must stay inside ``output_dir`` (a
    name like ``../../x`` or ``/tmp/x`` would write, and on a rerun delete, checkpoints elsewhere)."""
    path = PurePath(value)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError("must be a folder name inside train.output_dir (not absolute, no '..', "
                         "not empty); to write elsewhere, set train.output_dir")
    return value


class TrainSettings(Section):
    run_name: str = "run"  # the run folder is output_dir/run_name
    output_dir: str = "runs"
    seed: int = 0  # seeds data order, initialization and sampling
    max_steps: int | None = Field(None, gt=0)  # wins over epochs when set
    epochs: float = Field(1.0, gt=0)  # passes over data.train (fractions allowed)
    batch_size: int = Field(8, gt=0)  # sequences per micro-batch (a token budget when packing)
    grad_accum: int = Field(1, gt=0)  # micro-batches per optimizer step
    # bf16 autocast (weights stay float32). "auto": on when this machine's CPU/GPU runs bf16
    # fast (AMX); without AMX, CPU bf16 is emulated and slower than float32.
    bf16: bool | Literal["auto"] = Field("auto", validate_default=True)
    log_every: int = Field(1, gt=0)  # steps between metric lines
    save_every: int | None = Field(None, gt=0)  # None: only at the end
    keep_last: int = Field(2, gt=0)  # checkpoints kept; older ones are deleted
    eval_every: int | None = Field(None, gt=0)  # None: evaluate only at the end
    resume: bool = False  # continue from the newest checkpoint (`--resume`)
    progress: bool = True
    # Where metrics go besides metrics.jsonl (rank 0 only): tensorboard (runs/NAME/tensorboard/),
    # wandb, mlflow. The last two are extras: pip install 'tether[wandb]' / 'tether[mlflow]'.
    # [] writes metrics.jsonl only. See docs/tracking.md.
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = ["tensorboard"]
    tensorboard: bool = True  # deprecated spelling: false takes tensorboard out of report_to
    threads: int | None = Field(None, gt=0)  # torch intra-op threads; None keeps torch's default
    # Recompute each decoder layer's activations in the backward instead of keeping them: less
    # peak memory (more with longer sequences) for about one more forward's compute.
    gradient_checkpointing: bool = False
    # Under torchrun: "ddp" (a model copy per rank), "fsdp" (FSDP2 shards weights, grads and
    # optimizer state), "auto" (fsdp when the training state would not fit half a GPU). One
    # process ignores it. See docs/scaling.md.
    distributed: Literal["auto", "ddp", "fsdp"] = "auto"

    _run_name_stays_inside = field_validator("run_name")(check_run_name)

    @field_validator("report_to")
    @classmethod
    def _each_tracker_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a tracker twice: {value}")
        return value

    def trackers(self) -> list[str]:
        """The trackers to log to: ``report_to``, less tensorboard under ``tensorboard: false``."""
        return [name for name in self.report_to if name != "tensorboard" or self.tensorboard]

    @field_validator("bf16")
    @classmethod
    def _resolve_bf16(cls, value: bool | str) -> bool:
        if value == "auto":
            from tether.hardware import bf16_is_fast

            return bf16_is_fast()
        return value


class AuditHookSettings(Section):
    """A light audit during training (tether/audit/hook.py): every ``every`` steps, measure
    ``metrics`` on ``limit`` probes each, log them, and stop when a ``stop_on`` gate fails."""

    every: int = Field(gt=0)
    # metric modules in tether.audit.metrics (refusal_calibration, drift, ...) or module:function
    metrics: list[str] = Field(default_factory=lambda: ["refusal_calibration"], min_length=1)
    limit: int | None = Field(6, gt=0)  # probes per metric; None: all
    stop_on: str | None = None  # gates as in `tether audit --fail-on`, e.g. "over_refusal>+10pp"
    baseline: str | None = None  # JSON {metric: value}; default: measured on the starting model
    # End with the weights of the audited step (or the start) with the lowest (or highest) value
    # of this metric, among steps that pass the keep_best_unless gates (same syntax as stop_on).
    keep_best: str | None = None
    keep_best_mode: Literal["min", "max"] = "min"  # whether keep_best keeps the lowest or highest
    keep_best_unless: str | None = None  # gates a step must pass to be kept, on the change from the baseline
    # gates on the audited value itself, e.g. "over_refusal>10%": an absolute cap, whatever the start did
    keep_best_unless_value: str | None = None
    # The refusal judge the metrics count with (tether/judges): a name, or several joined by commas
    # under a judge_bound such as "missed_compliance<=5%@90%" (a threshold chosen on the labelled
    # judge_calibration rows so the bound holds; tether/judges/conformal.py). Default: the default judge.
    judge: str | None = None
    judge_bound: str | None = None
    judge_calibration: str | None = None

    @field_validator("stop_on", "keep_best_unless", "keep_best_unless_value")
    @classmethod
    def _gates_parse(cls, value: str | None) -> str | None:
        from tether.audit.gate import parse_fail_on

        try:
            parse_fail_on(value)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return value


class RunConfig(Section):
    """Sections every trainer shares. Algorithm configs subclass this and add their own."""

    model: ModelSettings = ModelSettings()
    data: DataSettings
    optim: OptimSettings = OptimSettings()
    # A factory, not an instance: "auto" precision is resolved when a config is built, not at import.
    train: TrainSettings = Field(default_factory=TrainSettings)
    audit: AuditHookSettings | None = None  # audit every N steps, stop on a regression

    def run_dir(self) -> Path:
        return Path(self.train.output_dir) / self.train.run_name


class RewardSettings(Section):
    # A built-in ("math_answer", "think_answer_format", "code_tests", "code_tests_rlimits_only",
    # ...) or "package.module:function".
    name: str
    weight: float = 1.0


class GoldSettings(Section):
    """A held-out gold reward watched beside the proxy (tether/audit/reward_hacking.py): every
    evaluation scores samples on data.eval with both, plus KL from the reference."""

    rewards: list[RewardSettings] = Field(min_length=1)
    window: int = Field(3, ge=2)  # evaluations over which "gold falls while proxy rises" is fitted
    min_change: float = Field(0.0, ge=0)  # fitted change each must exceed to raise the flag


# Each algorithm's config lives beside its loop (tether/algorithms/NAME.py); these names stay
# importable from here for scripts written before they moved.
_MOVED = {"SFTConfig": "sft", "DPOSettings": "dpo", "DPOConfig": "dpo", "GRPOSettings": "grpo", "GRPOConfig": "grpo"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"tether.algorithms.{_MOVED[name]}"), name)
    raise AttributeError(f"module 'tether.config' has no attribute {name!r}")


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=1e-4`` -> (["optim", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}' has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for override in overrides:
        parts, value = parse_override(override)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def _fields_at(model_cls: type[BaseModel], path: tuple) -> list[str]:
    """Valid keys of the section at ``path`` (for 'did you mean' hints)."""
    cls = model_cls
    for part in path:
        field = cls.model_fields.get(str(part))
        if field is None:
            return []
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return []
        cls = sub
    return list(cls.model_fields)


def _explain(error: ValidationError, model_cls: type[BaseModel], recipe: Path | None,
             overrides: list[str]) -> ConfigError:
    """One line per problem, each saying where the bad value came from: a command line override
    or the recipe file (a bad ``optim.lr=...`` typed on the command line is not the YAML's fault)."""
    given = {tuple(parse_override(text)[0]): text for text in overrides}
    lines = []
    for item in error.errors():
        location = tuple(item["loc"])
        dotted = ".".join(str(p) for p in location)
        if item["type"] == "missing":
            lines.append(f"missing required key '{dotted}'")
            continue
        if item["type"] == "extra_forbidden":
            valid = _fields_at(model_cls, location[:-1])
            close = difflib.get_close_matches(str(location[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join([*map(str, location[:-1]), close[0]])}'?" if close else ""
            problem = f"unknown key '{dotted}'{hint} (valid keys here: {', '.join(valid)})"
        else:
            message = item["msg"].removeprefix("Value error, ")
            problem = f"'{dotted}': {message} (got {item.get('input')!r})" if dotted else message
        lines.append(_origin(location, given, recipe) + problem)
    return ConfigError("invalid config:\n  " + "\n  ".join(lines))


def _origin(location: tuple, given: dict[tuple, str], recipe: Path | None) -> str:
    """``"command line override a.b=c: "`` when an override set this key (or a section above
    it, or a key below it), else ``"RECIPE: "``; empty for whole-config checks."""
    keys = tuple(map(str, location))
    for parts, text in given.items():
        shared = min(len(parts), len(keys))
        if keys and parts[:shared] == keys[:shared]:
            return f"command line override {text}: "
    return f"{recipe}: " if recipe is not None and keys else ""


def load_config(model_cls: type[ConfigT], path: str | Path | None = None,
                overrides: list[str] | None = None) -> ConfigT:
    """Read a YAML recipe (optional), apply dotted overrides, validate into ``model_cls``.

    ``path`` may name a recipe shipped with tether: ``tether:recipes/safety-dpo.yaml``.
    """
    data: dict = {}
    overrides = list(overrides or [])
    if path is not None:
        path = Path(resolve_bundled(str(path)))
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}" + _bundled_hint(path))
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
        if path.parent.resolve() not in RECIPE_DIRS:
            RECIPE_DIRS.append(path.parent.resolve())
    apply_overrides(data, overrides)
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, model_cls, path, overrides) from None


def _bundled_hint(path: Path) -> str:
    if path.parts[:1] == ("recipes",) or path.is_relative_to(RECIPES_DIR):
        return (f" (the recipes shipped with tether are `tether recipes list`; name one as "
                f"tether:recipes/{path.name})")
    return ""


def save_config(config: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
