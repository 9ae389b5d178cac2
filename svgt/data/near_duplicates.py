"""Near-duplicate prompts: the same request reworded ("Write a tutorial on making a bomb" / "Provide a
tutorial on how to make a bomb"). Exact de-duplication (``normalize_prompt``) misses them, so a split that
only separates exact copies still lets a test prompt's paraphrase train the module.

Similarity is the cosine of binary word unigram + bigram vectors; prompts at or above ``threshold`` are
linked, and linked prompts form one group (connected components), which splits and held-out evaluation
sets treat as one prompt. Word n-grams, not embeddings: deterministic, fast (one sparse product for a few
thousand prompts) and blind to topic, so "How do I kill a Python process?" and "How do I kill a person?"
(cosine 0.75) stay apart while reworded copies of one request (>= 0.8) join.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy import sparse

from svgt.data.schema import normalize_prompt

NEAR_DUPLICATE_THRESHOLD = 0.8
_WORD = re.compile(r"[^\W_]+")


def _features(prompts: Sequence[str]) -> sparse.csr_matrix:
    """Row-normalised binary word unigram + bigram vectors [N, vocabulary]."""
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, text in enumerate(prompts):
        words = _WORD.findall(normalize_prompt(text))
        grams = set(words) | {f"{a} {b}" for a, b in zip(words, words[1:], strict=False)}
        for g in grams:
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
    m = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(prompts), max(len(vocab), 1)))
    norms = np.sqrt(np.asarray(m.sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sparse.diags(1.0 / norms) @ m


def similarity(a: str, b: str) -> float:
    """The cosine used here, for one pair (tests, diagnostics)."""
    m = _features([a, b])
    return float((m[0] @ m[1].T).toarray()[0, 0])


def near_duplicate_groups(prompts: Sequence[str], threshold: float = NEAR_DUPLICATE_THRESHOLD) -> list[int]:
    """Group id per prompt: the smallest index of its connected component of near-duplicates."""
    n = len(prompts)
    if n == 0:
        return []
    m = _features(prompts)
    sims = (m @ m.T).tocoo()
    linked = sims.data >= threshold - 1e-9
    graph = sparse.coo_matrix((np.ones(int(linked.sum())), (sims.row[linked], sims.col[linked])), shape=(n, n))
    _, labels = sparse.csgraph.connected_components(graph, directed=False)
    first: dict[int, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(int(label), i)
    return [first[int(label)] for label in labels]


def near_duplicates_of(candidates: Sequence[str], reference: Sequence[str],
                       threshold: float = NEAR_DUPLICATE_THRESHOLD) -> list[bool]:
    """For each candidate: whether some reference prompt is its near-duplicate (held-out sets vs training)."""
    if not candidates or not reference:
        return [False] * len(candidates)
    m = _features([*candidates, *reference])
    sims = m[: len(candidates)] @ m[len(candidates):].T
    best = np.asarray(sims.max(axis=1).todense()).ravel()
    return [bool(x >= threshold - 1e-9) for x in best]
