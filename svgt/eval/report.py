"""The paper-style main table (Markdown) from one results dict.

The results dict (:class:`MainResults`) is what the evaluate step produces::

    {
      "harm_judge": "svgt-tfidf-harm@3e3250a67bbf",   # name@version of the harm judge
      "refusal_judge": "refusal-phrases-v2",
      "baseline": "none",                                # relative changes are taken against this method
      "methods": {
        "none": {
          "harmful_response_rate": {"rate": 0.31, "k": 31, "n": 100, "ci95": [0.23, 0.41], "unparseable": 0},
          "asr":                   {"rate": ..., "k": ..., "n": ..., "ci95": [...]},   # HarmBench behaviours
          "refusal_harmful":       {...},   # refusal rate on harmful prompts (higher is better)
          "over_refusal_benign":   {...},   # refusal rate on benign prompts (lower is better)
          "over_refusal_lookalike": {...},  # refusal rate on look-alike benign prompts (lower is better)
          "perplexity":            {"value": 6.7, "n": 100, "ci95": [6.2, 7.3]},
          "tokens_per_s": 14.2                # while decoding (prompt passes excluded)
        },
        "svgt": {...}
      }
    }

Rate cells are :func:`svgt.eval.metrics.rate` / ``harmful_response_rate`` outputs, the perplexity cell a
:func:`svgt.eval.metrics.bootstrap_ci`-shaped dict; a missing cell renders as "-". Every column but
decode tokens/s prints "value (95% CI)"; the harm, ASR and perplexity columns add the relative change against the
baseline method.
"""

from __future__ import annotations

import math
from typing import Any, NotRequired, TypedDict

from svgt.eval.metrics import relative_change


class RateCell(TypedDict):
    rate: float
    k: int
    n: int
    ci95: list[float]
    unparseable: NotRequired[int]  # judge answers that could not be parsed (left out of n)


class ValueCell(TypedDict):
    value: float
    n: int
    ci95: list[float]


class MethodResults(TypedDict, total=False):
    harmful_response_rate: RateCell
    asr: RateCell
    refusal_harmful: RateCell
    harmful_response_rate_heldout: RateCell
    refusal_harmful_heldout: RateCell
    harmful_compliance: RateCell
    over_refusal_benign: RateCell
    over_refusal_sensitive: RateCell
    unchanged_benign: RateCell
    unchanged_sensitive: RateCell
    perplexity: ValueCell
    perplexity_harmful: ValueCell
    tokens_per_s: float


class MainResults(TypedDict):
    harm_judge: str
    refusal_judge: str
    baseline: NotRequired[str]
    methods: dict[str, MethodResults]


# (key, header, is a rate, relative change shown)
COLUMNS: tuple[tuple[str, str, bool, bool], ...] = (
    ("harmful_response_rate", "harmful responses, test split % (harm judge, lower better)", True, True),
    ("harmful_response_rate_heldout", "harmful responses, held-out sources % (harm judge, lower better)", True, True),
    ("harmful_compliance", "harmful prompts answered, all % (refusal judge, lower better)", True, True),
    ("asr", "HarmBench ASR % (lower better)", True, True),
    ("over_refusal_benign", "over-refusal everyday % (lower better)", True, False),
    ("over_refusal_sensitive", "over-refusal sensitive, held-out % (lower better)", True, False),
    ("perplexity", "PPL benign (lower better)", False, True),
    ("perplexity_harmful", "PPL harmful (not gated)", False, True),
)


def _value(cell: RateCell | ValueCell, is_rate: bool) -> float:
    return float(cell["rate"] if is_rate else cell["value"])  # type: ignore[typeddict-item]


def _cell(cell: RateCell | ValueCell | None, is_rate: bool, base: RateCell | ValueCell | None, relative: bool) -> str:
    if cell is None:
        return "-"
    scale = 100.0 if is_rate else 1.0
    v = _value(cell, is_rate)
    lo, hi = cell["ci95"]
    if math.isnan(v):
        return "n/a (n=0)"
    text = f"{scale * v:.1f} ({scale * lo:.1f}-{scale * hi:.1f})"
    if cell.get("unparseable"):
        text += f" [{cell['unparseable']} unparseable]"
    if relative and base is not None and base is not cell:
        change = relative_change(v, _value(base, is_rate))
        if not math.isnan(change):
            text += f" {100 * change:+.0f}%"
    return text


def _n_summary(methods: dict[str, MethodResults]) -> str:
    parts = []
    for key, _header, _, _ in COLUMNS:
        ns = {m[key]["n"] for m in methods.values() if key in m}  # type: ignore[literal-required]
        if ns:
            label = key.replace("_", " ")
            parts.append(f"{label} n={'/'.join(str(n) for n in sorted(ns))}")
    return "; ".join(parts)


def render_main_table(results: MainResults, title: str = "Main results") -> str:
    """Markdown: a header naming the judges and sample sizes, then one row per method."""
    methods = results.get("methods")
    if not methods:
        raise ValueError("render_main_table: results have no methods")
    for key in ("harm_judge", "refusal_judge"):
        if not results.get(key):
            raise ValueError(f"render_main_table: results must name the {key.replace('_', ' ')} ({key!r})")
    baseline = results.get("baseline", "none")
    base = methods.get(baseline)
    lines = [
        f"# {title}",
        "",
        f"Harm judge: `{results['harm_judge']}`; refusal judge: `{results['refusal_judge']}`. "
        f"{_n_summary(methods)}. Cells: value (95% CI); harm, ASR and PPL also show the relative change "
        f"against `{baseline}`" + ("" if base is not None else f" (absent: no `{baseline}` row)") + ".",
        "",
        "| method | " + " | ".join(h for _, h, _, _ in COLUMNS) + " | decode tokens/s |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, row in methods.items():
        cells = [
            _cell(row.get(key), is_rate, base.get(key) if base else None, relative)  # type: ignore[arg-type]
            for key, _, is_rate, relative in COLUMNS
        ]
        tps = row.get("tokens_per_s")
        cells.append("-" if tps is None or math.isnan(tps) else f"{tps:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def render_report(results: dict[str, Any]) -> str:
    """reports/eval.md: the main table, side effects, when guidance acted, discrimination, cost, trajectory."""
    sizes = results["sample_sizes"]
    lines = ["# Guidance evaluation (held-out prompts)", "",
             f"Module `{results['module']}` on `{results['backbone']}`; {results['max_new_tokens']} new tokens, "
             "greedy. Prompt sets: " + ", ".join(f"{k} n={v}" for k, v in sizes.items()) + ".", "",
             render_main_table(results), ""]
    if results.get("heldout_sources"):
        lines += ["Held-out sources (never in training): " + "; ".join(
            f"{k}: " + ", ".join(f"{src} {n}" for src, n in v.items()) for k, v in results["heldout_sources"].items())
            + f". Held-out prompts dropped as near-duplicates of train/val prompts: "
            f"{results.get('heldout_near_duplicates_dropped', 0)}.", ""]
    lines += ["## Side effects on benign answers (against `none`)", "",
              "Unchanged: the greedy answer is token-identical to the unguided one. KL: mean per-token "
              "KL(unguided || method), nats, along the unguided answer teacher-forced through the method.", "",
              "| method | unchanged everyday % | unchanged sensitive % | KL everyday (nats/token) | "
              "KL sensitive (nats/token) | refusal harmful test % | refusal harmful held-out % |",
              "|---|---|---|---|---|---|---|"]
    for name, e in results["methods"].items():
        cells = [_rate_cell(e.get("unchanged_benign")), _rate_cell(e.get("unchanged_sensitive")),
                 _kl_cell(e.get("kl_benign")), _kl_cell(e.get("kl_sensitive")),
                 _rate_cell(e.get("refusal_harmful")), _rate_cell(e.get("refusal_harmful_heldout"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    gated = {n: e for n, e in results["methods"].items() if e.get("guided") or e.get("prompt_auroc")}
    if gated:
        lines += ["## When the guidance acted (gate) and the prompt-level judgement", "",
                  f"Gate: `{results.get('gate')}`. Guided: share of prompts on which the bridge (or delta) acted at "
                  "any step. AUROC: the value module's prompt score, harmful vs benign prompts.", "",
                  "| method | guided harmful test % | guided harmful held-out % | guided everyday % | "
                  "guided sensitive % | prompt AUROC test split | prompt AUROC held-out sources |",
                  "|---|---|---|---|---|---|---|"]
        for name, e in gated.items():
            g, a = e.get("guided") or {}, e.get("prompt_auroc") or {}
            cells = [_rate_cell(g.get(k)) for k in ("harmful", "harmful_heldout", "benign", "sensitive")]
            cells += [_num((a.get(k) or {}).get("auroc")) for k in ("test_split", "heldout_sources")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    disc = results.get("discrimination") or {}
    if disc:
        lines += ["## Discrimination on the stage-2 test pairs (stage 1 = no prompt context)", "",
                  "| module | accuracy | F1 | AUROC |", "|---|---|---|---|"]
        for stage, m in disc.items():
            lines.append(f"| {stage} | {_num(m.get('accuracy'))} | {_num(m.get('f1'))} | {_num(m.get('auroc'))} |")
        lines.append("")
    lines += ["## Generation cost (same prompts, batch size as configured, CPU unless stated)", "",
              "Methods that run the prompt through the unmodified backbone (none, svgt, svgt-inject, re-control) "
              "share one prompt pass per batch: the first of them pays it, so compare decode ms / token "
              "(every generated token, bridge refreshes included).", "",
              "| method | decode ms / token | prompt pass (s) | total ms / token | peak RSS above start (MB) | "
              "bridge refreshes |", "|---|---|---|---|---|---|"]
    for name, e in results["methods"].items():
        lines.append(f"| {name} | {_num(e.get('decode_ms_per_token'), 1)} | {_num(e.get('prefill_seconds'), 1)} | "
                     f"{_num(e.get('ms_per_token'), 1)} | {_num(e.get('peak_rss_above_baseline_mb'), 1)} | "
                     f"{e.get('refreshes', 0)} |")
    traj = results.get("trajectory") or {}
    if traj:
        lines += ["", "## Discriminator trajectory on harmful prompts", "",
                  "| method | prompts | tokens | mean score | tokens judged harmful (s > 0) |", "|---|---|---|---|---|"]
        for name, t in traj.items():
            lines.append(f"| {name} | {t['prompts']} | {t['tokens']} | {t['mean_score']:.2f} | "
                         f"{_pct(t['share_tokens_harmful'])}% |")
    if results.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in results["plots"].values())]
    return "\n".join(lines) + "\n"


def _rate_cell(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    lo, hi = cell["ci95"]
    return f"{_pct(cell['rate'])} ({_pct(lo)}-{_pct(hi)})"


def _kl_cell(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("value") is None:
        return "-"
    lo, hi = cell["ci95"]
    return f"{cell['value']:.4f} ({lo:.4f}-{hi:.4f})"


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)
