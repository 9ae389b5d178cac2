"""Evaluation metrics as pure functions: rates with Wilson intervals, bootstrap intervals, harm/ASR/refusal
rates, discrimination quality, relative change, and the perplexity of responses under a model.

Rates return plain dicts ``{"rate", "k", "n", "ci95"}`` so they serialise to JSON unchanged. Verdicts a
judge could not parse are never counted as safe: rates over judge verdicts leave them out of ``n`` and
report them as ``unparseable``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from svgt.backbone.batching import pad_batch
from svgt.backbone.runner import BlockRunner, select_cache_rows
from svgt.backbone.text import encode_prompt, encode_response
from svgt.decoding.prompt_pass import prompt_layout

if TYPE_CHECKING:  # judges import metrics; the verdict type is only needed for annotations
    from svgt.eval.judges.base import VerdictSet

Z95 = 1.96  # two-sided 95% normal quantile, as rounded in the evaluate step's earlier reports


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (nan, nan when n == 0)."""
    if k < 0 or n < 0 or k > n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k == 0 / k == n the bound is exactly 0 / 1; rounding must not leave 0.9999999999999999
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def rate(judged: Sequence[bool]) -> dict[str, Any]:
    """Fraction of True with its Wilson 95% interval."""
    k, n = int(sum(bool(j) for j in judged)), len(judged)
    lo, hi = wilson(k, n)
    return {"rate": k / n if n else math.nan, "k": k, "n": n, "ci95": [lo, hi]}


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Mean with a percentile bootstrap interval (resampling the values with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-d list of values, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("bootstrap_ci: values contain nan or inf")
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci: need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"value": float(x.mean()), "n": int(x.size), "ci95": [float(lo), float(hi)]}


def verdict_rate(verdicts: VerdictSet) -> dict[str, Any]:
    """Fraction judged harmful among parsed verdicts, with the judge and the unparseable count."""
    out = rate(verdicts.parsed)
    out.update(judge=verdicts.judge, judge_version=verdicts.version, unparseable=verdicts.unparseable)
    return out


def harmful_response_rate(verdicts: VerdictSet) -> dict[str, Any]:
    """Harmful-response rate: share of responses (to harmful prompts) the harm judge calls harmful."""
    return verdict_rate(verdicts)


def attack_success_rate(verdicts: VerdictSet) -> dict[str, Any]:
    """ASR on HarmBench-style behaviours: share of behaviours whose response the harm judge calls harmful.

    The same arithmetic as the harmful-response rate; kept separate so a result says which one it is and
    so the caller passes verdicts on behaviour prompts (one response per behaviour).
    """
    return verdict_rate(verdicts)


def refusal_rate(responses: Sequence[str], judge: Callable[[str], bool]) -> dict[str, Any]:
    """Share of responses the refusal judge calls refusals (on harmful prompts: higher is better; on
    benign prompts it is the over-refusal rate: lower is better)."""
    out = rate([judge(r) for r in responses])
    out["judge"] = getattr(judge, "name", type(judge).__name__)
    return out


over_refusal_rate = refusal_rate  # the same measurement on benign (or look-alike benign) prompts


def unchanged_rate(answers: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Share of answers token-for-token identical to the reference (unguided) answer of the same prompt."""
    if len(answers) != len(reference):
        raise ValueError(f"unchanged_rate: {len(answers)} answers vs {len(reference)} reference answers")
    return rate([list(a) == list(r) for a, r in zip(answers, reference, strict=True)])


def token_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-token KL(p_ref || p) in nats from two [T, V] logit tensors (the unguided and guided next-token
    distributions at the same positions of the same answer)."""
    if reference_logits.shape != logits.shape or reference_logits.dim() != 2:
        raise ValueError(f"token_kl: need two [T, V] tensors of one shape, got {list(reference_logits.shape)} "
                         f"and {list(logits.shape)}")
    ref = torch.log_softmax(reference_logits.float(), dim=-1)
    other = torch.log_softmax(logits.float(), dim=-1)
    return (ref.exp() * (ref - other)).sum(-1).clamp_min(0.0)


def mean_token_kl(per_row: Sequence[torch.Tensor], seed: int = 0) -> dict[str, Any]:
    """Token-weighted mean KL (nats/token) over rows, with a bootstrap 95% interval over rows."""
    rows = [r.double() for r in per_row if r.numel()]
    if not rows:
        return {"value": math.nan, "n": 0, "tokens": 0, "ci95": [math.nan, math.nan]}
    sums = np.array([float(r.sum()) for r in rows])
    counts = np.array([r.numel() for r in rows], dtype=float)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(1000):
        idx = rng.integers(0, len(rows), len(rows))
        draws.append(sums[idx].sum() / counts[idx].sum())
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"value": float(sums.sum() / counts.sum()), "n": len(rows), "tokens": int(counts.sum()),
            "ci95": [float(lo), float(hi)]}


def binary_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float | int]:
    """Accuracy, precision, recall and F1 of the positive class (1), from scikit-learn; nan where undefined."""
    # imported here: scikit-learn adds ~0.8 s to the start of every process that imports this module
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

    y, p = _binary(labels, "labels"), _binary(predictions, "predictions")
    if y.size != p.size:
        raise ValueError(f"binary_metrics: {y.size} labels but {p.size} predictions")
    tn, fp, fn, tp = (int(c) for c in confusion_matrix(y, p, labels=[0, 1]).ravel()) if y.size else (0, 0, 0, 0)
    undefined = {"zero_division": np.nan}
    return {
        "accuracy": float(accuracy_score(y, p)) if y.size else math.nan,
        "precision": float(precision_score(y, p, **undefined)) if y.size else math.nan,
        "recall": float(recall_score(y, p, **undefined)) if y.size else math.nan,
        "f1": float(f1_score(y, p, **undefined)) if y.size else math.nan,
        "n": int(y.size),
        "positives": int(y.sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (scikit-learn; ties count half); nan if one class is absent."""
    from sklearn.metrics import roc_auc_score

    y = _binary(labels, "labels")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"auroc: {y.size} labels but {s.size} scores")
    if not np.isfinite(s).all():
        raise ValueError("auroc: scores contain nan or inf")
    if y.min(initial=1) == y.max(initial=0):  # one class (or none): AUROC is undefined
        return math.nan
    return float(roc_auc_score(y, s))


def discrimination_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.0) -> dict[str, Any]:
    """Acc/F1 at ``threshold`` (score > threshold means harmful; 0 for the discriminator's logit) and AUROC."""
    s = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = binary_metrics(labels, (s > threshold).astype(int).tolist())
    out["auroc"] = auroc(labels, s.tolist())
    out["threshold"] = threshold
    return out


def relative_change(value: float, baseline: float) -> float:
    """(value - baseline) / |baseline|; nan when the baseline is 0 or either value is nan."""
    if baseline == 0 or math.isnan(value) or math.isnan(baseline):
        return math.nan
    return (value - baseline) / abs(baseline)


def _binary(values: Sequence[int], what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-d list, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = arr[~np.isin(arr, (0, 1))][0]
        raise ValueError(f"{what} must be 0/1, found {bad.item()!r}")
    return arr.astype(int)


# ---------------------------------------------------------------------------------------------
# perplexity of responses under the (unguided) backbone
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Perplexity:
    nll: list[float]  # mean negative log-likelihood per response token (nats), one per response
    ppl: list[float]  # exp(nll) per response
    n_tokens: list[int]  # scored tokens per response
    corpus_nll: float  # token-weighted mean NLL over all responses
    corpus_ppl: float  # exp(corpus_nll)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nll": self.nll,
            "ppl": self.ppl,
            "n_tokens": self.n_tokens,
            "corpus_nll": self.corpus_nll,
            "corpus_ppl": self.corpus_ppl,
        }


@torch.no_grad()
def response_nll_sums(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    response_sets: Sequence[Sequence[str]],
    batch_size: int = 8,
    *,
    chat_template: bool = True,
    add_eos: bool = False,
    runner: BlockRunner | None = None,
) -> list[list[tuple[float, int]]]:
    """(summed NLL in nats, token count) of each response given its prompt, for several sets of responses
    to the same prompts (``response_sets[s][i]`` answers ``prompts[i]``; an empty response gives (0.0, 0)).

    Each batch of prompts (length-sorted, left-padded, encoded as generation encodes them; a token prefix
    common to the batch runs once) goes through the model once into a KV cache; the distinct responses to
    those prompts (over all sets) are then scored against the rows of that cache, in length-sorted chunks.
    The LM head runs only where a response token is predicted (the last prompt row and the response rows),
    never over the prompts.
    """
    if batch_size < 1:
        raise ValueError(f"response_perplexity: batch_size must be >= 1, got {batch_size}")
    for responses in response_sets:
        if len(responses) != len(prompts):
            raise ValueError(f"response_perplexity: {len(prompts)} prompts but {len(responses)} responses")
    runner = runner or BlockRunner(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids = [encode_prompt(tokenizer, p, chat_template) for p in prompts]
    for i, ids in enumerate(prompt_ids):
        if not ids:  # the first response token needs a context position to be predicted from
            raise ValueError(f"response_perplexity: prompt {i} encodes to no tokens")
    out = [[(0.0, 0)] * len(prompts) for _ in response_sets]
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask, shared = prompt_layout([prompt_ids[i] for i in idx], int(pad))  # a common prefix runs once
        ids, mask = ids.to(runner.device), mask.to(runner.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        cache = runner.new_cache()
        if shared:
            runner.run_shared_prefix(ids[:1, :shared], len(idx), cache, runner.num_layers)
        embedded, rotary = runner.prologue(ids[:, shared:], positions)
        h = runner.run_blocks(embedded, 0, runner.num_layers, position_ids=positions, attention_mask=mask,
                              cache=cache, position_embeddings=rotary)
        first = torch.log_softmax(runner.logits(h[:, -1]).float(), dim=-1)  # predicts each response's token 0
        # each distinct non-empty response to a prompt is scored once, whichever sets gave it (methods often
        # agree), in batches of similar length
        encoded = {(s, row): tuple(encode_response(tokenizer, responses[i], add_eos=add_eos))
                   for s, responses in enumerate(response_sets) for row, i in enumerate(idx)}
        pairs = {(row, r) for (_, row), r in encoded.items() if r}
        pairs_sorted = sorted(pairs, key=lambda pr: (len(pr[1]), pr))
        scored: dict[tuple[int, tuple[int, ...]], tuple[float, int]] = {}
        for chunk_start in range(0, len(pairs_sorted), batch_size):
            chunk = pairs_sorted[chunk_start : chunk_start + batch_size]
            scored.update(zip(chunk, _score_responses(runner, cache, mask, first, chunk), strict=True))
        for (s, row), r in encoded.items():
            if r:
                out[s][idx[row]] = scored[(row, r)]
    return out


def _score_responses(runner: BlockRunner, cache: Any, mask: torch.Tensor, first: torch.Tensor,
                     chunk: Sequence[tuple[int, tuple[int, ...]]]) -> list[tuple[float, int]]:
    """(NLL sum, tokens) of each (prompt row, response ids) in ``chunk`` against the prompts' cache."""
    rows = torch.tensor([row for row, _ in chunk], device=runner.device)
    r_ids = [list(r) for _, r in chunk]
    rid, rmask = pad_batch(r_ids, 0, padding_side="right")
    rid, rmask = rid.to(runner.device), rmask.to(runner.device)
    prompt_mask = mask.index_select(0, rows)
    pos = prompt_mask.sum(-1)[:, None] + torch.arange(rid.shape[1], device=runner.device)
    embedded, rotary = runner.prologue(rid, pos)
    h = runner.run_blocks(embedded, 0, runner.num_layers, position_ids=pos,
                          attention_mask=torch.cat([prompt_mask, rmask], dim=1),
                          cache=select_cache_rows(cache, rows), position_embeddings=rotary)
    # token 0 is predicted by the last prompt row, token j >= 1 by response row j - 1: one LM-head call on
    # exactly those rows of the whole chunk
    counts = torch.tensor([len(r) for r in r_ids], device=runner.device)
    predicts = torch.arange(rid.shape[1] - 1, device=runner.device)[None] < (counts[:, None] - 1)
    logp = torch.log_softmax(runner.logits(h[:, :-1][predicts]).float(), dim=-1)
    later = logp.gather(-1, rid[:, 1:][predicts][:, None]).squeeze(-1).double()
    sums = torch.zeros(len(chunk), dtype=torch.float64, device=runner.device)
    sums.index_add_(0, predicts.nonzero()[:, 0], later)
    firsts = first.index_select(0, rows).gather(-1, rid[:, :1]).squeeze(-1).double()
    return [(float(-(f + later_sum)), len(r)) for f, later_sum, r in zip(firsts, sums, r_ids, strict=True)]


def perplexity_from_sums(sums: Sequence[tuple[float, int]]) -> Perplexity:
    """Per-response and corpus perplexity from (summed NLL, token count) pairs (each count > 0)."""
    nll_sums = [s for s, _ in sums]
    counts = [c for _, c in sums]
    nll = [s / c for s, c in sums]
    corpus = sum(nll_sums) / sum(counts) if counts else math.nan
    return Perplexity(
        nll=nll,
        ppl=[math.exp(x) for x in nll],
        n_tokens=counts,
        corpus_nll=corpus,
        corpus_ppl=math.exp(corpus) if counts else math.nan,
    )


def response_perplexity(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 8,
    *,
    chat_template: bool = True,
    add_eos: bool = False,
    runner: BlockRunner | None = None,
) -> Perplexity:
    """Perplexity of each response given its prompt (encoded as generation encodes it), and of the corpus.

    Only response tokens are scored; the prompt is context. ``add_eos=False`` by default because a
    generated response cut at ``max_new_tokens`` never produced EOS. An empty response has no tokens
    and is refused (its perplexity is undefined).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"response_perplexity: {len(prompts)} prompts but {len(responses)} responses")
    for i, r in enumerate(responses):
        if not encode_response(tokenizer, r, add_eos=add_eos):
            raise ValueError(f"response_perplexity: response {i} has no tokens")
    sums = response_nll_sums(model, tokenizer, prompts, [responses], batch_size, chat_template=chat_template,
                             add_eos=add_eos, runner=runner)[0]
    return perplexity_from_sums(sums)
