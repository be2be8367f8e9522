"""A light audit inside training: measure every N steps, log it, stop on a regression.

In a recipe (any trainer built on ``TrainingSession``):

    audit:
      every: 50                                  # optimizer steps between audits
      metrics: [refusal_calibration, drift]      # metric modules, or package.module:function
      limit: 6                                   # probes per set, so an audit takes seconds
      stop_on: "over_refusal>+10pp,drift_kl>0.5" # --fail-on gates (tether/audit/gate.py)

Before the first step the hook measures the metrics on the starting model (loaded again from
``model.path``: the *baseline*), and saves those values to ``RUN/audit_baseline.json`` so a resumed
run compares against the same numbers. Every ``every`` steps it measures the model being trained
and writes ``audit/NAME`` values (and, per gate, ``audit/NAME/change``) as one line of
``metrics.jsonl``. A gate reads the change, current - baseline, in the metric's unit (``+10pp`` on
rates); pair metrics such as drift (``evaluate_pair(baseline, candidate)``) are already a change.
When a gate fails, training stops with :class:`AuditRegressionError` *before* that step's
checkpoint is written, so the newest checkpoint on disk is the last one that passed.

Keeping the best audited step instead of the last (early stopping on an audit):

    audit:
      every: 5
      metrics: [refusal_calibration]
      keep_best: unsafe_compliance                # the audited value to minimise (max: keep_best_mode)
      keep_best_unless: "over_refusal>+8pp"       # steps failing these gates cannot be the best
      keep_best_unless_value: "over_refusal>10%"  # nor steps whose audited value itself fails these

``keep_best_unless`` gates read the change from the baseline; ``keep_best_unless_value`` gates
read the audited value itself (an absolute cap: "at most 10% of safe probes refused", whatever
the starting model did). The starting weights are the first candidate (with the baseline values),
whichever gates they pass, so a run with no passing step ends where it began; each audited step that
passes both kinds of gates and strictly beats the best so far replaces it, its
trainable weights written to ``RUN/audit_best/`` (``model.safetensors`` and ``best.json``, so a
resumed run keeps its best). When training ends the best weights are loaded back into the model,
so the trainer's final model is the best audited step; checkpoints keep the last step's weights.
The selection reads the audit's probe sets, so report results on data the audit never saw.
``best.json`` records the refusal judge the values were counted with.

The refusal judge (default: :func:`tether.judges.default_refusal_judge`) can be named, or several
combined with a threshold chosen so a bound holds (:mod:`tether.judges.conformal`); a bound the
calibration set cannot certify stops the run before training starts:

    audit:
      judge: refusal-patterns,refusal-combined
      judge_bound: "missed_compliance<=5%@90%"    # at most 5% of compliant answers counted as refusals
      judge_calibration: my_labels.jsonl          # default: the bundled labelled responses

A metric is one of:

* a module name under ``tether.audit.metrics`` (or a full module path) with
  ``evaluate(model, *, limit)`` or ``evaluate_pair(baseline, candidate, *, limit)``;
* ``package.module:function`` or a Python callable ``metric(model: AuditModel)`` returning
  ``{name: value}`` or a list of ``MetricResult``.

The audit runs without gradients in eval mode, and restores torch's RNG afterwards so the
training that follows is the same as without the hook (exact resume keeps working). The values
are written through ``session.metrics`` rather than ``session.log``, which would count the audit's
time in the next line's throughput.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tether.audit.base import AuditModel, MetricResult, with_judge
from tether.audit.gate import Gate, check_gates, parse_fail_on
from tether.errors import ConfigError, TetherError
from tether.models import evaluation_mode

Metric = str | Callable[[AuditModel], Mapping[str, float] | Sequence[MetricResult]]
BASELINE_FILE = "audit_baseline.json"
BEST_DIR = "audit_best"
BEST_FILE = "best.json"  # in BEST_DIR: the kept step and its values


class AuditRegressionError(TetherError):
    """A training-time audit gate failed; the last checkpoint that passed is kept."""


def _resolve(metric: Metric) -> tuple[str, Any]:
    """(label, thing): a module with evaluate/evaluate_pair, or a callable."""
    if callable(metric):
        return getattr(metric, "__name__", repr(metric)), metric
    if ":" in metric:
        module_name, attribute = metric.split(":", 1)
        try:
            return attribute, getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"cannot import audit metric {metric!r}: {error}") from None
    for candidate in (f"tether.audit.metrics.{metric}", metric):
        try:
            module = importlib.import_module(candidate)
        except ImportError:
            continue
        if hasattr(module, "evaluate") or hasattr(module, "evaluate_pair"):
            return metric.rsplit(".", 1)[-1], module
    raise ConfigError(f"unknown audit metric {metric!r}: name a module in tether.audit.metrics "
                      "(refusal_calibration, drift, bias, ...) or give package.module:function")


def _is_pair(thing: Any) -> bool:
    """A metric module that compares two models (``evaluate_pair``), such as drift."""
    return hasattr(thing, "evaluate_pair") and not hasattr(thing, "evaluate")


def _values(output: Mapping[str, float] | Sequence[MetricResult]) -> dict[str, float]:
    if isinstance(output, Mapping):
        return {name: float(value) for name, value in output.items()}
    return {result.name: float(result.value) for result in output}


class AuditHook:
    """Runs ``metrics`` every ``every`` steps; see the module docstring.

    ``baseline``: the values gates compare against. None measures them on ``baseline_model`` at
    :meth:`start`; a dict gives them directly (from an earlier audit's JSON, say).
    """

    def __init__(self, every: int, metrics: Sequence[Metric], *, stop_on: str | Sequence[Gate] | None = None,
                 limit: int | None = 6, baseline: Mapping[str, float] | None = None,
                 keep_best: str | None = None, keep_best_mode: str = "min",
                 keep_best_unless: str | Sequence[Gate] | None = None,
                 keep_best_unless_value: str | Sequence[Gate] | None = None, judge=None):
        if every < 1:
            raise ConfigError(f"audit.every must be at least 1, got {every}")
        if keep_best_mode not in ("min", "max"):
            raise ConfigError(f"audit.keep_best_mode must be min or max, got {keep_best_mode!r}")
        for key, gates in (("keep_best_unless", keep_best_unless), ("keep_best_unless_value", keep_best_unless_value)):
            if keep_best is None and gates:
                raise ConfigError(f"audit.{key} needs audit.keep_best (the metric to select on)")
        self.every, self.limit = every, limit
        self.metrics = [_resolve(metric) for metric in metrics]
        self.gates = _gates(stop_on)
        self.keep_best, self.keep_best_mode = keep_best, keep_best_mode
        self.best_gates = _gates(keep_best_unless)  # on the change from the baseline
        self.best_value_gates = _gates(keep_best_unless_value)  # on the audited value itself
        self.best: dict | None = None  # {"step", "values", "changes"} of the best candidate so far
        self.baseline = dict(baseline) if baseline is not None else None
        self.tokenizer = None
        self.baseline_model: AuditModel | None = None
        self.history: list[dict[str, float]] = []
        self.judge = judge  # the refusal judge metrics count with; None: the default refusal judge

    @classmethod
    def from_settings(cls, settings) -> AuditHook:
        """From a config's ``audit`` section (:class:`tether.config.AuditHookSettings`)."""
        baseline = None
        if settings.baseline:
            path = Path(settings.baseline)
            if not path.is_file():
                raise ConfigError(f"audit.baseline: no such file {path}")
            baseline = json.loads(path.read_text(encoding="utf-8"))
        judge = None
        if settings.judge or settings.judge_bound or settings.judge_calibration:
            from tether.judges.registry import judge_from_options

            judge = judge_from_options(settings.judge, settings.judge_bound, settings.judge_calibration)
        return cls(settings.every, settings.metrics, stop_on=settings.stop_on, limit=settings.limit,
                   baseline=baseline, keep_best=settings.keep_best, keep_best_mode=settings.keep_best_mode,
                   keep_best_unless=settings.keep_best_unless,
                   keep_best_unless_value=settings.keep_best_unless_value, judge=judge)

    # ---- set-up ------------------------------------------------------------------------------

    def _needs_pairs(self) -> bool:
        return any(_is_pair(thing) for _, thing in self.metrics)

    def start(self, session) -> None:
        """Load the tokenizer and the starting model, and fix the baseline values (measured now,
        read back on resume, or given)."""
        from tether.models import load_model

        device = next(session.module.parameters()).device
        initial, self.tokenizer = load_model(session.config.model.path)
        self.baseline_model = AuditModel("baseline", initial.to(device), self.tokenizer,
                                         path=session.config.model.path, progress=session.config.train.progress)
        saved = Path(session.run_dir) / BASELINE_FILE
        if self.baseline is None and saved.is_file():
            self.baseline = json.loads(saved.read_text(encoding="utf-8"))
        if self.baseline is None:
            self.baseline = self.measure(self.baseline_model)
            if session.world.is_main:
                saved.write_text(json.dumps(self.baseline, indent=2), encoding="utf-8")
        self._check_gate_names(set(self.baseline))
        units = {name: None for name in self.baseline}
        for _, thing in self.metrics:
            declared = getattr(thing, "METRICS", None)
            units.update(declared if isinstance(declared, dict) else {})
        check_gates(self.gates + self.best_gates + self.best_value_gates, units)  # "+5pp" only on rates
        if self.keep_best:
            self._start_best(session)
        if not self._needs_pairs():
            self.baseline_model = None  # only pair metrics need the starting weights in memory

    def check_names(self) -> None:
        """Before any model loads: the names gates and keep_best use must be among those the
        metrics declare (``METRICS``) or the given baseline holds. A metric that declares
        nothing (a user function) is only known once measured; ``start`` checks those."""
        if self.baseline is not None:
            self._check_gate_names(set(self.baseline))
            return
        declared = [getattr(thing, "METRICS", None) for _, thing in self.metrics]
        if all(isinstance(names, dict) for names in declared):
            self._check_gate_names({name for names in declared for name in names})

    def _check_gate_names(self, reported: set[str]) -> None:
        for key, names in (("stop_on", [gate.metric for gate in self.gates]),
                           ("keep_best_unless", [gate.metric for gate in self.best_gates]),
                           ("keep_best_unless_value", [gate.metric for gate in self.best_value_gates]),
                           ("keep_best", [self.keep_best] if self.keep_best else [])):
            unknown = [name for name in names if name not in reported]
            if unknown:
                raise ConfigError(f"audit.{key} names {', '.join(unknown)}, which the audit metrics do not "
                                  f"report; they report {', '.join(sorted(reported)) or 'nothing'}")

    # ---- measuring ---------------------------------------------------------------------------

    def measure(self, model: AuditModel) -> dict[str, float]:
        """Every metric on ``model``: {name: value}. Pair metrics compare against the starting model
        (on the starting model itself they are 0 by definition)."""
        network = model.model
        device = next(network.parameters()).device
        values: dict[str, float] = {}
        # fork_rng: whatever the metrics draw, training continues from the same RNG state
        with evaluation_mode(network):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                for _, thing in self.metrics:
                    if callable(thing):  # a function; modules are not callable
                        values.update(_values(thing(model)))
                    elif not _is_pair(thing):
                        values.update(_values(thing.evaluate(model, limit=self.limit,
                                                             **with_judge(thing.evaluate, self.judge))))
                    elif model is self.baseline_model:
                        values.update({name: 0.0 for name in getattr(thing, "METRICS", {})})
                    else:
                        values.update(_values(thing.evaluate_pair(self.baseline_model, model, limit=self.limit)))
        return values

    def changes(self, values: Mapping[str, float]) -> dict[str, float]:
        """current - baseline per metric; pair metrics are already a change."""
        pair_names = {name for _, thing in self.metrics if _is_pair(thing) for name in getattr(thing, "METRICS", {})}
        return {name: value if name in pair_names else value - self.baseline.get(name, math.nan)
                for name, value in values.items()}

    def __call__(self, session, done: int) -> None:
        """Called by the session at the end of each step, before its checkpoint."""
        if done % self.every:
            return
        if self.tokenizer is None:
            self.start(session)
        values = self.measure(AuditModel(f"step {done}", session.module, self.tokenizer,
                                         path=session.config.model.path, progress=session.config.train.progress))
        changes = self.changes(values)
        line = {f"audit/{name}": value for name, value in values.items()}
        line.update({f"audit/{gate.metric}/change": changes[gate.metric] for gate in self.gates})
        session.metrics.log(done, line)
        self.history.append({"step": done, **values})
        failed = [gate for gate in self.gates if gate.fails(changes[gate.metric])]
        if self.keep_best and not failed:
            self._consider(session, done, values, changes)
        if failed:
            from tether.engine.checkpoint import latest_checkpoint

            last = latest_checkpoint(session.checkpoint_dir)
            kept = f"the last checkpoint that passed is kept at {last}" if last else "no checkpoint was saved yet"
            moved = "; ".join(f"{gate.text} (change {changes[gate.metric]:+.4g})" for gate in failed)
            raise AuditRegressionError(f"audit at step {done} failed: {moved}; training stopped, {kept}.")

    # ---- keeping the best audited step -------------------------------------------------------

    def _best_dir(self, session) -> Path:
        return Path(session.run_dir) / BEST_DIR

    def _start_best(self, session) -> None:
        """A resumed run reads its best so far; a fresh one starts with the starting weights."""
        record = self._best_dir(session) / BEST_FILE
        if session.resumed_from is not None and record.is_file():
            self.best = json.loads(record.read_text(encoding="utf-8"))
            return
        self._save_best(session, 0, dict(self.baseline), {name: 0.0 for name in self.baseline})

    def _consider(self, session, done: int, values: dict[str, float], changes: dict[str, float]) -> None:
        if any(gate.fails(changes[gate.metric]) for gate in self.best_gates):
            return
        if any(gate.fails(values[gate.metric]) for gate in self.best_value_gates):
            return
        value, best = values[self.keep_best], self.best["values"][self.keep_best]
        better = value < best if self.keep_best_mode == "min" else value > best
        if better and not math.isnan(value):
            self._save_best(session, done, values, changes)

    def _save_best(self, session, step: int, values: dict[str, float], changes: dict[str, float]) -> None:
        from tether.engine.checkpoint import save_trainable_state

        folder = self._best_dir(session)
        save_trainable_state(session.module, folder / "model.safetensors")
        self.best = {"step": step, "metric": self.keep_best, "mode": self.keep_best_mode,
                     "unless": [gate.text for gate in self.best_gates],
                     "unless_value": [gate.text for gate in self.best_value_gates],
                     "values": values, "changes": changes,
                     "refusal_judge": self.judge_record()}
        if session.world.is_main:
            (folder / BEST_FILE).write_text(json.dumps(self.best, indent=2), encoding="utf-8")

    def judge_record(self) -> dict | None:
        """The refusal judge the audited values were counted with (and its bound, if calibrated);
        None when no metric counts refusals."""
        from tether.judges import default_refusal_judge, describe

        if not any(hasattr(thing, "evaluate") and with_judge(thing.evaluate, True) for _, thing in self.metrics):
            return None
        judge = self.judge or default_refusal_judge()
        record = describe(judge)
        if hasattr(judge, "guarantee"):
            record["guarantee"] = judge.guarantee()
        return record

    def finish(self, session) -> None:
        """At the end of training: load the best audited step's weights into the model."""
        if not self.keep_best or self.best is None:
            return
        from tether.engine.checkpoint import load_trainable_state
        from tether.engine.progress import console

        load_trainable_state(session.module, self._best_dir(session) / "model.safetensors")
        step, value = self.best["step"], self.best["values"][self.keep_best]
        where = "the starting weights (no audited step beat them)" if step == 0 else f"step {step}"
        passing = self.best["unless"] + [f"{text} (value)" for text in self.best.get("unless_value", [])]
        rule = f" among steps passing {', '.join(passing)}" if passing else ""
        console.print(f"audit: keeping {where}: {self.keep_best} {value:.4g} "
                      f"({self.keep_best_mode}imum{rule})")


def _gates(spec: str | Sequence[Gate] | None) -> list[Gate]:
    return list(parse_fail_on(spec) if isinstance(spec, str) or spec is None else spec)
