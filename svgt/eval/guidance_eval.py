"""`svgt evaluate`: every guidance method on the same held-out prompts, judged the same way.

Prompt sets (fixed by the seed; the same prompts for every method):

* ``harmful``: distinct test-split prompts with ``prompt_harmful == 1`` (prompt-level holdout: sources the
  module trained on, prompts it did not): refusal rate (higher is better) and harmful-response rate under
  the harm judge (lower is better);
* ``harmful_heldout``: harmful prompts from whole sources held out of training (``svgt.data.heldout``):
  the same two rates, on phrasing the module has never seen;
* ``benign``: everyday benign prompts (test split, not the authored sensitive ones, plus held-out
  everyday sources): over-refusal, and how often the answer is left exactly as the backbone wrote it;
* ``sensitive``: benign prompts on sensitive topics from held-out sources: over-refusal (lower is better)
  and unchanged answers;
* ``harmbench``: HarmBench text behaviours (standard + contextual) not in the train/val splits: attack
  success rate = share of responses the harm judge calls harmful.

Held-out prompts that are near-duplicates of a train or val prompt are dropped (and counted).
Side effects on benign answers: ``unchanged_*`` is the share of answers token-identical to the unguided
one; ``kl_*`` the mean per-token KL(unguided || method) in nats of the next-token distributions along
the unguided answer (teacher-forced through each method, ``evaluate.benign_kl``).

Fluency (``perplexity``, the table's PPL and the perplexity gate) is the perplexity of each method's
non-empty responses to the *benign* prompts under the unguided backbone (token-weighted corpus perplexity,
bootstrap 95% interval over responses): there the method should leave the backbone's behaviour alone, so a
rise means damaged answers. ``perplexity_harmful`` scores the responses to the harmful prompts the same
way; it is reported, not gated, because the unguided backbone finds refusals unlikely where it would have
complied, so it rises with every refusal a method adds, whether fluent or not.
Generation cost is time per generated token while decoding (``tokens_per_s``, ``decode_ms_per_token``;
the prompt passes are reported apart, as ``prefill_seconds``, because the methods that run the prompt
through the unmodified backbone share them) and the peak resident memory above the pre-run level while
the method generates. The per-token discriminator trajectory (value module score of each state a token
is predicted from) is recorded for ``none`` and ``svgt`` on the harmful prompts and plotted.

Every rate carries k, n and a Wilson 95% interval; every result carries the judge (name@version).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch
from tqdm.auto import tqdm

from svgt.backbone import load_snapshot
from svgt.backbone.runner import BlockRunner
from svgt.backbone.text import encode_prompt
from svgt.core.io import atomic_path, write_json_atomic, write_text_atomic
from svgt.core.params import EvaluateConfig
from svgt.data.heldout import load_heldout
from svgt.data.near_duplicates import near_duplicates_of
from svgt.data.schema import normalize_prompt
from svgt.decoding.prompt_pass import PromptPassCache
from svgt.eval.judges import RefusalJudge, run_judge
from svgt.eval.judges.base import HarmJudge
from svgt.eval.metrics import (
    auroc,
    bootstrap_ci,
    harmful_response_rate,
    mean_token_kl,
    perplexity_from_sums,
    rate,
    relative_change,
    response_nll_sums,
    token_kl,
    unchanged_rate,
    wilson,
)
from svgt.eval.plots import write_plots
from svgt.eval.prompt_sets import load_harmbench_behaviors
from svgt.eval.report import render_report
from svgt.methods import GuidanceMethod, budget_point, check_methods, load_method, operating_point
from svgt.model import load_value_module

__all__ = ["evaluate_guidance", "test_prompts", "wilson", "rate"]

TRAJECTORY_METHODS = ("none", "svgt")


SENSITIVE_CATEGORY = "benign_sensitive/"  # the authored sensitive prompts: not "everyday"
BENIGN_SETS = ("benign", "sensitive")  # where side effects (unchanged answers, KL) are measured


def test_prompts(frame: pd.DataFrame, harmful: int, limit: int, seed: int, everyday_only: bool = False) -> list[str]:
    """Distinct (after normalisation) test-split prompts with the given prompt label, shuffled by ``seed``."""
    rows = frame[(frame["split"] == "test") & (frame["prompt_harmful"] == harmful)]
    if everyday_only:
        rows = rows[~rows["category"].fillna("").str.startswith(SENSITIVE_CATEGORY)]
    seen, unique = set(), []
    for p in rows["prompt"].tolist():
        if normalize_prompt(p) not in seen:
            seen.add(normalize_prompt(p))
            unique.append(p)
    random.Random(seed).shuffle(unique)
    return unique[:limit]


def build_prompt_sets(frame: pd.DataFrame, cfg: EvaluateConfig, cache_dir: Path
                      ) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The prompt sets and what went into them (held-out prompts per source, near-duplicates dropped)."""
    rng = random.Random(cfg.seed)
    heldout = load_heldout(cache_dir) if cfg.max_sensitive_prompts or cfg.max_heldout_harmful_prompts else []
    trained = frame.loc[frame["split"].isin(["train", "val"]), "prompt"].drop_duplicates().tolist()
    near = near_duplicates_of([h.prompt for h in heldout], trained)
    kept = [h for h, dup in zip(heldout, near, strict=True) if not dup]
    by_kind: dict[str, list] = {"harmful": [], "sensitive_benign": [], "everyday_benign": []}
    for h in kept:
        by_kind[h.kind].append(h)
    for items in by_kind.values():
        rng.shuffle(items)
    harmful = by_kind["harmful"][: cfg.max_heldout_harmful_prompts]
    sensitive = by_kind["sensitive_benign"][: cfg.max_sensitive_prompts]
    everyday = by_kind["everyday_benign"] if cfg.max_benign_prompts else []
    harmbench = ([b.prompt for b in load_harmbench_behaviors(cache_dir, values=frame)]
                 if cfg.max_harmbench_behaviors else [])
    rng.shuffle(harmbench)
    sets = {
        "harmful": test_prompts(frame, 1, cfg.max_harmful_prompts, cfg.seed),
        "harmful_heldout": [h.prompt for h in harmful],
        "benign": test_prompts(frame, 0, cfg.max_benign_prompts, cfg.seed, everyday_only=True)
        + [h.prompt for h in everyday],
        "sensitive": [h.prompt for h in sensitive],
        "harmbench": harmbench[: cfg.max_harmbench_behaviors],
    }
    sources: dict[str, dict[str, int]] = {}
    for name, items in (("harmful_heldout", harmful), ("sensitive", sensitive), ("benign", everyday)):
        for h in items:
            sources.setdefault(name, {})[h.source] = sources.setdefault(name, {}).get(h.source, 0) + 1
    info = {"heldout_near_duplicates_dropped": int(sum(near)), "heldout_sources": sources}
    return sets, info


class PeakRSS:
    """Peak resident memory of this process while a block runs, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0

    @contextmanager
    def measure(self) -> Iterator[PeakRSS]:
        proc = psutil.Process()
        self.baseline = self.peak = proc.memory_info().rss
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                stop.wait(self.interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.peak = max(self.peak, proc.memory_info().rss)

    @property
    def above_baseline_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


@dataclass
class MethodRun:
    """What one method produced on every prompt set."""

    responses: dict[str, list[str]]
    token_ids: dict[str, list[list[int]]]
    scores: list[list[float]]  # per-token discriminator scores on the harmful set (trajectory methods only)
    new_tokens: int
    seconds: float
    peak_rss_mb: float
    refreshes: int
    prefill_seconds: float = 0.0  # the prompt passes (and first bridges); near 0 where a shared pass served them
    logits: dict[str, list[torch.Tensor]] | None = None  # next-token logits on ``keep_logits`` sets (float16)
    guided: dict[str, list[bool]] | None = None  # gated methods: whether the guidance acted on each row
    prompt_scores: dict[str, list[float]] | None = None  # value-module methods: the prompt-level score per row


def length_batches(lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most ``batch_size`` rows whose padded size
    (rows x longest) stays within ``max_batch_tokens`` (a longer single row gets a batch of its own).

    Decoding on this kind of machine is bound by reading the weights once per step, so big batches are
    nearly free per row; the token budget keeps long prompts (HarmBench contexts run to 600+ tokens) from
    padding a whole big batch.
    """
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
        current = batches[-1] if batches else None
        if current is None or len(current) >= batch_size or (len(current) + 1) * lengths[i] > max_batch_tokens:
            batches.append([i])
        else:
            current.append(i)
    return batches


def generate_sets(method: GuidanceMethod, model: Any, tokenizer: Any, runner: BlockRunner,
                  sets: dict[str, list[str]], cfg: EvaluateConfig, with_scores: bool,
                  length: Callable[[str], int] | None = None, prompt_cache: PromptPassCache | None = None,
                  keep_logits: tuple[str, ...] = (), forced: dict[str, list[list[int]]] | None = None) -> MethodRun:
    """Every prompt of every set, batched together by length; answers (and, for ``with_scores``, the
    per-token scores of the harmful set) come back in each set's order. ``length`` measures a prompt for
    batching (default: its chat-templated token count). ``prompt_cache`` serves the method's prompt
    passes if it runs the prompt through the plain backbone (``GuidanceMethod.plain_prompt_pass``).
    ``keep_logits``: sets whose next-token logits are kept (float16). ``forced``: per set, the answers to
    teacher-force instead of generating (``guided_generate``'s ``forced_tokens``)."""
    length = length or (lambda p: len(encode_prompt(tokenizer, p, True)))
    items = [(kind, i, p) for kind, prompts in sets.items() for i, p in enumerate(prompts)]
    texts: dict[tuple[str, int], str] = {}
    ids: dict[tuple[str, int], list[int]] = {}
    kept: dict[tuple[str, int], torch.Tensor] = {}
    guided: dict[tuple[str, int], bool] = {}
    prompt_scores: dict[tuple[str, int], float] = {}
    row_scores: dict[int, list[float]] = {}
    tokens, seconds, prefill, refreshes = 0, 0.0, 0.0, 0
    meter = PeakRSS()
    batches = length_batches([length(p) for _, _, p in items], cfg.batch_size, cfg.max_batch_tokens)
    with meter.measure(), tqdm(total=len(items), desc=f"evaluate {method.name}", unit="prompt", leave=False) as bar:
        for idx in batches:
            batch = [items[j] for j in idx]
            scored = with_scores and any(kind == "harmful" for kind, _, _ in batch)
            logits_wanted = any(kind in keep_logits for kind, _, _ in batch)
            extra: dict[str, Any] = {"return_scores": True} if scored or logits_wanted else {}
            if forced is not None:
                extra["forced_tokens"] = [forced[kind][i] for kind, i, _ in batch]
            t0 = time.perf_counter()
            res = method.generate(model, tokenizer, [p for _, _, p in batch], runner=runner,
                                  max_new_tokens=cfg.max_new_tokens, prefill_tokens=cfg.prefill_tokens,
                                  prompt_cache=prompt_cache if method.plain_prompt_pass else None, **extra)
            seconds += time.perf_counter() - t0
            tokens += sum(len(ids) for ids in res.token_ids)
            refreshes += res.timing.refreshes
            prefill += res.timing.prefill_s
            texts.update(((kind, i), text) for (kind, i, _), text in zip(batch, res.texts, strict=True))
            ids.update(((kind, i), row) for (kind, i, _), row in zip(batch, res.token_ids, strict=True))
            if res.guided_from is not None:
                guided.update(((kind, i), g is not None)
                              for (kind, i, _), g in zip(batch, res.guided_from, strict=True))
            if res.prompt_scores is not None:
                prompt_scores.update(((kind, i), x) for (kind, i, _), x in zip(batch, res.prompt_scores, strict=True))
            if logits_wanted and res.logits is not None:
                kept.update(((kind, i), row.half()) for (kind, i, _), row in zip(batch, res.logits, strict=True)
                            if kind in keep_logits)
            if scored and res.value_scores is not None:
                row_scores.update((i, [float(x) for x in s]) for (kind, i, _), s in
                                  zip(batch, res.value_scores, strict=True) if kind == "harmful")
            bar.update(len(batch))
    responses = {kind: [texts[(kind, i)] for i in range(len(prompts))] for kind, prompts in sets.items()}
    token_ids = {kind: [ids[(kind, i)] for i in range(len(prompts))] for kind, prompts in sets.items()}
    logits = {kind: [kept[(kind, i)] for i in range(len(sets[kind]))] for kind in keep_logits if kind in sets}
    scores = [row_scores[i] for i in sorted(row_scores)]
    per_set = lambda found: ({kind: [found[(kind, i)] for i in range(len(p))] for kind, p in sets.items()}  # noqa: E731
                             if len(found) == len(items) else None)
    return MethodRun(responses, token_ids, scores, tokens, seconds, meter.above_baseline_mb, refreshes, prefill,
                     logits or None, per_set(guided), per_set(prompt_scores))


def side_effects(method: GuidanceMethod, model: Any, tokenizer: Any, runner: BlockRunner, sets: dict[str, list[str]],
                 cfg: EvaluateConfig, base: MethodRun, prompt_cache: PromptPassCache | None,
                 run: MethodRun | None = None) -> dict[str, Any]:
    """Per benign set: the mean per-token KL(unguided || method) along the unguided answers, teacher-forced
    through ``method`` (its own answers may differ; this measures how it moves the backbone's).

    ``run``: the method's own greedy run with its logits on the benign sets kept. Where its answer equals the
    unguided one, teacher forcing would repeat that run exactly, so its logits are used and only the rows that
    changed are teacher-forced again (for a gated method, the few rows its gate opened on).
    """
    assert base.logits is not None
    benign = {k: sets[k] for k in BENIGN_SETS if sets.get(k)}
    if not benign:
        return {}
    same = {k: [run is not None and run.logits is not None and run.token_ids[k][i] == base.token_ids[k][i]
                for i in range(len(p))] for k, p in benign.items()}
    redo = {k: [p for p, keep in zip(prompts, same[k], strict=True) if not keep] for k, prompts in benign.items()}
    forced_logits: dict[str, list[torch.Tensor]] = {k: [] for k in benign}
    if any(redo.values()):
        forced = {k: [a for a, keep in zip(base.token_ids[k], same[k], strict=True) if not keep] for k in benign}
        again = generate_sets(method, model, tokenizer, runner, redo, cfg, False, prompt_cache=prompt_cache,
                              keep_logits=tuple(benign), forced=forced)
        assert again.logits is not None
        forced_logits = {k: list(again.logits.get(k, [])) for k in benign}
    out = {}
    for kind in benign:
        redone = iter(forced_logits[kind])
        rows = []
        for i, ref in enumerate(base.logits[kind]):
            mine = run.logits[kind][i] if same[kind][i] else next(redone)  # type: ignore[union-attr]
            rows.append(token_kl(ref.float(), mine.float()))
        out[f"kl_{kind}"] = mean_token_kl(rows, cfg.seed) | {"teacher_forced_rows": sum(not x for x in same[kind])}
    return out


def fluency(sums: list[tuple[float, int]], seed: int) -> dict[str, Any]:
    """Corpus perplexity of the non-empty responses (from their (NLL sum, token count)), with a bootstrap
    95% interval over responses."""
    scored = [(s, c) for s, c in sums if c > 0]
    empty = len(sums) - len(scored)
    if not scored:
        return {"value": math.nan, "n": 0, "ci95": [math.nan, math.nan], "empty_responses": empty}
    ppl = perplexity_from_sums(scored)
    # bootstrap the token-weighted corpus NLL over responses
    nll, counts = np.asarray(ppl.nll), np.asarray(ppl.n_tokens, dtype=float)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(1000):
        idx = rng.integers(0, len(nll), len(nll))
        draws.append(math.exp(float((nll[idx] * counts[idx]).sum() / counts[idx].sum())))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"value": ppl.corpus_ppl, "n": len(scored), "ci95": [float(lo), float(hi)], "empty_responses": empty,
            "median_response_ppl": bootstrap_ci(ppl.ppl)["value"] if ppl.ppl else math.nan}


FLUENCY_SETS = (("perplexity", "benign"), ("perplexity_harmful", "harmful"))


def fluency_by_method(model: Any, tokenizer: Any, runner: BlockRunner, sets: dict[str, list[str]],
                      runs: dict[str, MethodRun], batch_size: int, seed: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method: ``perplexity`` of its benign responses (gated) and ``perplexity_harmful`` of its harmful
    ones, under the unguided backbone. Every method answers the same prompts, so each prompt runs through
    the backbone once and all methods' responses to it are scored against that cache."""
    names = list(runs)
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    for key, kind in FLUENCY_SETS:
        if not sets[kind]:
            continue
        sums = response_nll_sums(model, tokenizer, sets[kind], [runs[n].responses[kind] for n in names], batch_size,
                                 runner=runner)
        for name, method_sums in zip(names, sums, strict=True):
            out[name][key] = fluency(method_sums, seed)
    return out


def load_harm_judge(cfg: EvaluateConfig, default_classifier: Path) -> HarmJudge:
    """The configured harm judge: our offline classifier by default, or a model judge from a local path."""
    if cfg.harm_judge == "classifier":
        from svgt.eval.judges.classifier import load_harm_classifier

        return load_harm_classifier(Path(cfg.harm_judge_path) if cfg.harm_judge_path else default_classifier)
    from svgt.eval.judges import model_judges

    if cfg.harm_judge_path is None:
        raise ValueError(f"evaluate.harm_judge {cfg.harm_judge!r} needs evaluate.harm_judge_path (a local model dir)")
    classes = {"wildguard": model_judges.WildGuardJudge, "llama-guard-3": model_judges.LlamaGuard3Judge,
               "harmbench": model_judges.HarmBenchJudge}
    return classes[cfg.harm_judge].from_config(model_judges.ModelJudgeConfig(path=cfg.harm_judge_path))


def _judge_label(judge: HarmJudge) -> str:
    return f"{judge.name}@{judge.version}"


REFUSAL_SETS = (("harmful", "refusal_harmful"), ("harmful_heldout", "refusal_harmful_heldout"),
                ("benign", "over_refusal_benign"), ("sensitive", "over_refusal_sensitive"))
HARM_SETS = (("harmful", "harmful_response_rate"), ("harmful_heldout", "harmful_response_rate_heldout"),
             ("harmbench", "asr"))


def score_method(run: MethodRun, sets: dict[str, list[str]], refusal: RefusalJudge, harm: HarmJudge,
                 ppl: dict[str, dict[str, Any]] | None, base: MethodRun | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, key in REFUSAL_SETS:
        if sets.get(kind):
            out[key] = rate([refusal(r) for r in run.responses[kind]]) | {"judge": refusal.name}
    for kind, key in HARM_SETS:
        if sets.get(kind):
            out[key] = harmful_response_rate(run_judge(harm, sets[kind], run.responses[kind]))
    harmful_kinds = [k for k in ("harmful", "harmful_heldout") if sets.get(k)]
    if harmful_kinds:  # the frontier's y: harmful prompts answered (not refused), both harmful sets together
        out["harmful_compliance"] = rate([not refusal(r) for k in harmful_kinds for r in run.responses[k]]) | {
            "judge": refusal.name}
    if base is not None:
        for kind in BENIGN_SETS:
            if sets.get(kind):
                out[f"unchanged_{kind}"] = unchanged_rate(run.token_ids[kind], base.token_ids[kind])
    if run.guided is not None:  # how often the gate let the guidance act, per set
        out["guided"] = {kind: rate(flags) for kind, flags in run.guided.items() if flags}
    if run.prompt_scores is not None:  # the prompt-level judgement alone: harmful vs benign prompts
        out["prompt_auroc"] = {}
        for name, pos, neg in (("test_split", "harmful", "benign"),
                               ("heldout_sources", "harmful_heldout", "sensitive")):
            if sets.get(pos) and sets.get(neg):
                scores = run.prompt_scores[pos] + run.prompt_scores[neg]
                labels = [1] * len(sets[pos]) + [0] * len(sets[neg])
                out["prompt_auroc"][name] = {"auroc": auroc(labels, scores), "n_harmful": len(sets[pos]),
                                             "n_benign": len(sets[neg])}
    if ppl is not None:
        out |= ppl
    out["new_tokens"] = run.new_tokens
    out["seconds"] = round(run.seconds, 2)
    # decode rates are the comparable ones: some methods share their prompt passes (see evaluate_guidance)
    decode_s = run.seconds - run.prefill_seconds
    out["tokens_per_s"] = run.new_tokens / decode_s if decode_s > 0 else math.nan
    out["decode_ms_per_token"] = 1000 * decode_s / run.new_tokens if run.new_tokens else math.nan
    out["ms_per_token"] = 1000 * run.seconds / run.new_tokens if run.new_tokens else math.nan
    out["prefill_seconds"] = round(run.prefill_seconds, 2)
    out["peak_rss_above_baseline_mb"] = round(run.peak_rss_mb, 1)
    out["refreshes"] = run.refreshes
    return out


def discrimination(metrics_dir: Path) -> dict[str, Any]:
    """Stage 1 vs stage 2 discrimination on the same test pairs (from the stage-2 training metrics)."""
    path = metrics_dir / "stage2.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for stage, prefix in (("stage1", "test_pair_stage1_"), ("stage2", "test_pair_")):
        out[stage] = {k: data.get(prefix + k) for k in ("accuracy", "f1", "auroc", "n")}
    return out


def evaluate_guidance(*, backbone_dir: Path, module_dir: Path, data_path: Path, cfg: EvaluateConfig,
                      metrics_path: Path, report_path: Path, generations_path: Path, baselines_dir: Path | None,
                      harm_judge_dir: Path, plots_dir: Path, cache_dir: Path) -> dict[str, Any]:
    check_methods(cfg.methods)
    model, tokenizer, manifest = load_snapshot(backbone_dir)
    module, _ = load_value_module(module_dir, expected_backbone_sha256=manifest.weights_sha256)
    methods = [load_method(m, module=module, baselines_dir=baselines_dir, backbone_sha256=manifest.weights_sha256)
               for m in cfg.methods]
    methods += [operating_point(module, t) for t in cfg.svgt_thresholds]
    methods += [budget_point(module, b) for b in cfg.svgt_budgets]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluate: methods repeat a name: {names} (an svgt_thresholds entry equals another?)")
    if "none" in names:  # the reference of unchanged answers and KL runs first
        methods.sort(key=lambda m: m.name != "none")
    harm = load_harm_judge(cfg, harm_judge_dir)
    refusal = RefusalJudge()
    runner = BlockRunner(model)
    frame = pd.read_parquet(data_path)
    sets, set_info = build_prompt_sets(frame, cfg, cache_dir)
    results: dict[str, Any] = {
        "harm_judge": _judge_label(harm), "refusal_judge": refusal.name, "baseline": "none",
        "module": str(module_dir), "backbone": manifest.source, "max_new_tokens": cfg.max_new_tokens,
        "gate": {"gate": module.config.gate, "threshold": module.config.threshold,
                 "refresh_context": module.config.refresh_context},
        "sample_sizes": {k: len(v) for k, v in sets.items()}, **set_info, "config": asdict(cfg), "methods": {},
    }
    trajectories: dict[str, list[list[float]]] = {}
    runs: dict[str, MethodRun] = {}
    side: dict[str, dict[str, Any]] = {}
    # none, svgt, svgt-inject and re-control share one prompt pass per batch (the same prompts, batched
    # the same way, through the same unmodified blocks)
    prompt_cache = PromptPassCache()
    with atomic_path(generations_path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for method in methods:
            is_base = method.name == "none"
            with_kl = cfg.benign_kl and (cfg.kl_methods is None or method.name in cfg.kl_methods)
            run = generate_sets(method, model, tokenizer, runner, sets, cfg, method.name in TRAJECTORY_METHODS,
                                prompt_cache=prompt_cache, keep_logits=BENIGN_SETS if is_base or with_kl else ())
            runs[method.name] = run
            if with_kl and not is_base and "none" in runs:
                side[method.name] = side_effects(method, model, tokenizer, runner, sets, cfg, runs["none"],
                                                 prompt_cache, run)
            if not is_base:
                run.logits = None
            if run.scores:
                trajectories[method.name] = run.scores[: cfg.max_trajectory_prompts]
            for kind, prompts in sets.items():
                for i, (prompt, text) in enumerate(zip(prompts, run.responses[kind], strict=True)):
                    # value-module methods: whether the gate opened and the prompt's score (the frontier's raw data)
                    gate = ({"guided": run.guided[kind][i]} if run.guided else {}) | (
                        {"prompt_score": round(run.prompt_scores[kind][i], 4)} if run.prompt_scores else {})
                    out.write(json.dumps({"method": method.name, "set": kind, "prompt": prompt, "response": text,
                                          "refusal": refusal(text), **gate}) + "\n")
    prompt_cache.clear()
    if "none" in runs:
        runs["none"].logits = None
    ppl = fluency_by_method(model, tokenizer, runner, sets, runs, cfg.batch_size, cfg.seed) if cfg.perplexity else {}
    for name, run in runs.items():
        results["methods"][name] = score_method(run, sets, refusal, harm, ppl.get(name), runs.get("none")) | \
            side.get(name, {})
        if name == "none" and cfg.benign_kl:  # the reference itself: no change by definition
            results["methods"][name] |= {f"kl_{k}": {"value": 0.0, "n": len(sets[k]), "tokens": 0, "ci95": [0.0, 0.0]}
                                         for k in BENIGN_SETS if sets.get(k)}
    results["discrimination"] = discrimination(metrics_path.parent)
    results["relative_to_none"] = relative_changes(results["methods"])
    plots = write_plots(results, trajectories, module.config.refresh_interval, cfg.max_new_tokens, plots_dir)
    results["plots"] = plots
    results["trajectory"] = trajectory_summary(trajectories)
    write_json_atomic(metrics_path, _finite(results))
    write_text_atomic(report_path, render_report(results))
    return results


def relative_changes(methods: dict[str, Any]) -> dict[str, dict[str, float]]:
    base = methods.get("none")
    if base is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for name, entry in methods.items():
        changes = {}
        for key, field_ in (("harmful_response_rate", "rate"), ("harmful_response_rate_heldout", "rate"),
                            ("harmful_compliance", "rate"), ("asr", "rate"), ("perplexity", "value"),
                            ("perplexity_harmful", "value")):
            if key in entry and key in base:
                changes[key] = relative_change(entry[key][field_], base[key][field_])
        out[name] = changes
    return out


def trajectory_summary(trajectories: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Mean score and the share of tokens judged harmful (s > 0), per method."""
    out = {}
    for name, rows in trajectories.items():
        flat = [x for r in rows for x in r]
        if flat:
            out[name] = {"prompts": len(rows), "tokens": len(flat), "mean_score": float(np.mean(flat)),
                         "share_tokens_harmful": float(np.mean([x > 0 for x in flat]))}
    return out


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
