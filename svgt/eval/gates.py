"""Quality gates a value module must pass before it may be registered.

Each gate compares one measured number from ``metrics/`` with a threshold from ``params.yaml`` (``gates``):

    min_harmful_refusal_gain  eval.json: methods.svgt.refusal_harmful.rate minus that of "none", >= threshold
    max_benign_over_refusal   eval.json: methods.svgt.over_refusal_benign.rate minus that of "none", <= threshold
    max_sensitive_over_refusal eval.json: methods.svgt.over_refusal_sensitive.rate minus that of "none", <= threshold
                              (benign prompts on sensitive topics from held-out sources)
    min_stage2_auroc          stage2.json: test_pair_auroc, >= threshold
    max_perplexity_increase   eval.json: methods.svgt.perplexity.value / methods.none.perplexity.value - 1, <= threshold
                              (perplexity of the responses to the benign prompts; see svgt/eval/guidance_eval.py)

A gate set to null is reported as skipped. An enabled gate whose metric is missing (or null/NaN) FAILS with a
message naming the missing metric: a gate never passes by default. A metrics file an enabled gate needs that is
missing or not valid JSON raises :class:`GateError` naming the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from svgt.core.errors import BadInput
from svgt.core.io import write_json_atomic
from svgt.core.params import GatesConfig

EVAL_FILE = "eval.json"
STAGE2_FILE = "stage2.json"
GATED_METHOD = "svgt"
BASELINE_METHOD = "none"
# rates are k/n, so e.g. 0.3 - 0.1 = 0.19999999999999998 must still meet a 0.2 gate
TOLERANCE = 1e-9


class GateError(BadInput):
    """A metrics file a gate needs is missing or unreadable."""


class MissingMetric(BadInput, LookupError):
    """An enabled gate's metric is absent (or null/NaN) in a metrics file that does exist."""


@dataclass(frozen=True)
class GateResult:
    name: str
    measured: float | None
    threshold: float | None
    passed: bool
    skipped: bool
    message: str


@dataclass(frozen=True)
class GateReport:
    passed: bool
    results: list[GateResult] = field(default_factory=list)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed and not r.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [asdict(r) for r in self.results]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateReport:
        results = [GateResult(**r) for r in data["results"]]
        return cls(passed=bool(data["passed"]), results=results)


@dataclass(frozen=True)
class _Gate:
    name: str
    file: str
    kind: str  # "min" or "max"
    measure: Callable[[dict[str, Any]], float]


def _entry(data: dict[str, Any], method: str, key: str, field_: str) -> float:
    """``methods.<method>.<key>.<field_>`` of eval.json as a finite number."""
    path = f"methods.{method}.{key}.{field_}"
    methods = data.get("methods")
    entry = methods.get(method) if isinstance(methods, dict) else None
    cell = entry.get(key) if isinstance(entry, dict) else None
    return _number(cell.get(field_) if isinstance(cell, dict) else None, path)


def _number(value: Any, key: str) -> float:
    if value is None:
        raise MissingMetric(f"{key} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MissingMetric(f"{key} is not a number ({value!r})")
    if not math.isfinite(value):
        raise MissingMetric(f"{key} is {value} (not measured)")
    return float(value)


def _harmful_gain(data: dict[str, Any]) -> float:
    return _entry(data, GATED_METHOD, "refusal_harmful", "rate") - _entry(data, BASELINE_METHOD, "refusal_harmful",
                                                                          "rate")


def _benign_over_refusal(data: dict[str, Any]) -> float:
    return (_entry(data, GATED_METHOD, "over_refusal_benign", "rate")
            - _entry(data, BASELINE_METHOD, "over_refusal_benign", "rate"))


def _sensitive_over_refusal(data: dict[str, Any]) -> float:
    return (_entry(data, GATED_METHOD, "over_refusal_sensitive", "rate")
            - _entry(data, BASELINE_METHOD, "over_refusal_sensitive", "rate"))


def _stage2_auroc(data: dict[str, Any]) -> float:
    return _number(data.get("test_pair_auroc"), "test_pair_auroc")


def _perplexity_increase(data: dict[str, Any]) -> float:
    """Relative perplexity increase of guided over unguided responses: ppl(svgt) / ppl(none) - 1."""
    base = _entry(data, BASELINE_METHOD, "perplexity", "value")
    guided = _entry(data, GATED_METHOD, "perplexity", "value")
    if base <= 0:
        raise MissingMetric(f"methods.{BASELINE_METHOD}.perplexity.value is {base} (must be > 0)")
    return guided / base - 1.0


GATES: tuple[_Gate, ...] = (
    _Gate("min_harmful_refusal_gain", EVAL_FILE, "min", _harmful_gain),
    _Gate("max_benign_over_refusal", EVAL_FILE, "max", _benign_over_refusal),
    _Gate("max_sensitive_over_refusal", EVAL_FILE, "max", _sensitive_over_refusal),
    _Gate("min_stage2_auroc", STAGE2_FILE, "min", _stage2_auroc),
    _Gate("max_perplexity_increase", EVAL_FILE, "max", _perplexity_increase),
)


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateError(f"{path}: metrics file not found (run the step that writes it first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GateError(f"{path}: not valid JSON: {err}") from None
    except OSError as err:
        raise GateError(f"{path}: unreadable: {err}") from None
    if not isinstance(data, dict):
        raise GateError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _fmt(x: float) -> str:
    """At least two decimals, at most four: 0.05 -> 0.05, 0.2 -> 0.20, 0.6999 -> 0.6999."""
    text = f"{x:.4f}"
    while text.endswith("0") and len(text.split(".")[1]) > 2:
        text = text[:-1]
    return text


def check_gates(metrics_dir: str | Path, cfg: GatesConfig) -> GateReport:
    """Evaluate every gate in ``cfg`` against the metrics files in ``metrics_dir``."""
    metrics_dir = Path(metrics_dir)
    loaded: dict[str, dict[str, Any]] = {}
    results: list[GateResult] = []
    for gate in GATES:
        threshold = getattr(cfg, gate.name)
        if threshold is None:
            results.append(GateResult(gate.name, None, None, passed=True, skipped=True,
                                      message=f"skipped {gate.name}: disabled (null)"))
            continue
        if gate.file not in loaded:
            loaded[gate.file] = _read_metrics(metrics_dir / gate.file)
        bound = "required" if gate.kind == "min" else "allowed"
        op_ok, op_bad = (">=", "<") if gate.kind == "min" else ("<=", ">")
        try:
            measured = gate.measure(loaded[gate.file])
        except MissingMetric as err:
            results.append(GateResult(gate.name, None, float(threshold), passed=False, skipped=False,
                                      message=f"FAILED {gate.name}: metric missing in {metrics_dir / gate.file}: "
                                              f"{err} ({bound} {op_ok} {_fmt(threshold)})"))
            continue
        ok = measured >= threshold - TOLERANCE if gate.kind == "min" else measured <= threshold + TOLERANCE
        if ok:
            message = f"passed {gate.name}: measured {_fmt(measured)} {op_ok} {bound} {_fmt(threshold)}"
        else:
            message = f"FAILED {gate.name}: measured {_fmt(measured)} {op_bad} {bound} {_fmt(threshold)}"
        results.append(GateResult(gate.name, measured, float(threshold), passed=ok, skipped=False, message=message))
    passed = all(r.passed or r.skipped for r in results)
    return GateReport(passed=passed, results=results)


def write_gate_report(report: GateReport, path: str | Path) -> None:
    write_json_atomic(path, report.to_dict())


def read_gate_report(path: str | Path) -> GateReport:
    path = Path(path)
    data = _read_metrics(path)
    try:
        return GateReport.from_dict(data)
    except (KeyError, TypeError) as err:
        raise GateError(f"{path}: not a gate report: {err}") from None


def format_gate_report(report: GateReport) -> str:
    """One line per gate under a verdict line; failed gates name measured value and threshold."""
    checked = [r for r in report.results if not r.skipped]
    skipped = len(report.results) - len(checked)
    if report.passed:
        head = f"gates PASSED ({len(checked)} checked, {skipped} skipped)"
    else:
        head = f"gates FAILED ({len(report.failed)} of {len(checked)} checked failed, {skipped} skipped)"
    return "\n".join([head, *(f"  {r.message}" for r in report.results)]) + "\n"
