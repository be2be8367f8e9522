"""``--fail-on`` gates: fail the audit (exit 3) when a metric moved too far.

    --fail-on "over_refusal>+5pp,toxicity_prob>+2pp,drift_kl>0.5"

Each comma-separated gate is ``METRIC OP THRESHOLD``: ``>`` fails when the change
(candidate - baseline) is above the threshold, ``<`` when it is below. The threshold is signed;
on a rate it must say its unit, percentage points (``+5pp``, or ``+5%``, the same: +0.05), since
``over_refusal>5`` could mean 5 points or a fraction of 5; on other metrics it is a plain number
in the metric's own unit (``0.5`` nats on drift). For metrics that already compare the two models
(drift), the change is the value itself.

Gates compare the point estimate of the change; the report shows its bootstrap interval beside it.
A gate with no evidence (no probes behind either value, e.g. ``--limit 0``, or a change that is
not a number) fails, saying so: an audit that measured nothing has not passed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tether.errors import ConfigError

_GATE = re.compile(r"^\s*(?P<metric>[A-Za-z_][\w.]*)\s*(?P<op>[<>])\s*"
                   r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<pp>pp|%)?\s*$")
SYNTAX = "METRIC>THRESHOLD or METRIC<THRESHOLD, e.g. over_refusal>+5pp or drift_kl>0.5"


@dataclass(frozen=True)
class Gate:
    """One gate; ``threshold`` is in the metric's unit (pp already divided by 100)."""

    metric: str
    op: str
    threshold: float
    percentage_points: bool
    text: str

    def fails(self, change: float) -> bool:
        """Whether ``change`` breaks the gate; a change that is not a number is no evidence and fails."""
        if math.isnan(change):
            return True
        return change > self.threshold if self.op == ">" else change < self.threshold


@dataclass(frozen=True)
class GateOutcome:
    gate: Gate
    change: float
    failed: bool
    evidence: int | None = None  # probes behind the change (the fewer side); None: not known

    @property
    def no_evidence(self) -> bool:
        return self.evidence == 0 or math.isnan(self.change)

    def describe(self) -> str:
        if self.no_evidence:
            return (f"{self.gate.text}: no evidence ({self.evidence if self.evidence is not None else 'no'} "
                    f"probes measured) -> FAILED; run it with probes (--limit above 0)")
        shown = (f"{self.change * 100:+.2f}pp" if self.gate.percentage_points
                 else f"{self.change:+.4g}")
        verdict = "FAILED" if self.failed else "passed"
        return f"{self.gate.text}: change {shown} -> {verdict}"


def parse_fail_on(spec: str | None) -> list[Gate]:
    """Gates from a ``--fail-on`` string (empty or None: no gates).

    Raises:
        ConfigError: a gate does not follow the syntax.
    """
    gates = []
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        match = _GATE.match(part)
        if match is None:
            raise ConfigError(f"cannot read --fail-on gate {part.strip()!r}; write {SYNTAX}")
        number, pp = float(match["number"]), match["pp"] is not None
        gates.append(Gate(metric=match["metric"], op=match["op"], threshold=number / 100 if pp else number,
                          percentage_points=pp, text=part.strip()))
    return gates


def check_gates(gates: Iterable[Gate], units: Mapping[str, str | None]) -> None:
    """Fail fast on gates naming an unknown metric, pp on a metric that is not a rate, or a rate's
    threshold without its unit.

    ``units`` maps each known metric name to ``"rate"``, ``"score"``, or None (unit unknown yet).

    Raises:
        ConfigError: naming the gate and listing the known metrics.
    """
    for gate in gates:
        if gate.metric not in units:
            known = ", ".join(sorted(units)) or "(none)"
            raise ConfigError(f"--fail-on gate {gate.text!r} names unknown metric {gate.metric!r}; "
                              f"metrics in this suite: {known}")
        unit = units[gate.metric]
        if gate.percentage_points and unit not in (None, "rate"):
            raise ConfigError(f"--fail-on gate {gate.text!r}: {gate.metric} is a {unit}, not a rate; "
                              f"give a plain number instead of percentage points")
        if unit == "rate" and not gate.percentage_points:
            raise ConfigError(f"--fail-on gate {gate.text!r}: {gate.metric} is a rate; say the unit of "
                              f"the threshold, pp or % (percentage points), e.g. {gate.metric}{gate.op}"
                              f"{gate.text.split(gate.op, 1)[1].strip()}pp")


def evaluate_gates(gates: Iterable[Gate], changes: Mapping[str, float],
                   evidence: Mapping[str, int] | None = None) -> list[GateOutcome]:
    """One outcome per gate, from each metric's change (candidate - baseline) and, when given, the
    number of probes behind it (``evidence``; 0 fails the gate)."""
    outcomes = []
    for gate in gates:
        change, n = changes[gate.metric], (evidence or {}).get(gate.metric)
        outcomes.append(GateOutcome(gate, change, gate.fails(change) or n == 0, n))
    return outcomes
