"""What every harm judge returns, so results always say which judge (and version) produced them.

A judge maps (prompt, response) pairs to :class:`HarmVerdict` objects in one batched call. A model
judge whose answer cannot be parsed returns ``harmful=None`` with the raw text: such a pair is
counted as unparseable, never silently treated as safe (that would flatter the guided model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class HarmVerdict:
    harmful: bool | None  # None: the judge's answer could not be parsed
    score: float | None = None  # P(harmful) in [0, 1] when the judge gives one
    raw: str | None = None  # the model judge's generated text, kept for audit

    def __post_init__(self) -> None:
        if self.score is not None and not 0.0 <= self.score <= 1.0:
            raise ValueError(f"HarmVerdict.score must lie in [0, 1], got {self.score}")


@runtime_checkable
class HarmJudge(Protocol):
    name: str
    version: str

    def judge(self, prompts: list[str], responses: list[str]) -> list[HarmVerdict]: ...


@dataclass(frozen=True)
class VerdictSet:
    """Verdicts on a list of pairs plus the judge that gave them (carried into every result)."""

    judge: str
    version: str
    verdicts: tuple[HarmVerdict, ...] = field(default_factory=tuple)

    @property
    def n(self) -> int:
        return len(self.verdicts)

    @property
    def unparseable(self) -> int:
        return sum(v.harmful is None for v in self.verdicts)

    @property
    def parsed(self) -> list[bool]:
        """The verdicts that were parsed (unparseable ones are left out, and counted separately)."""
        return [v.harmful for v in self.verdicts if v.harmful is not None]

    def to_dict(self) -> dict:
        return {
            "judge": self.judge,
            "version": self.version,
            "n": self.n,
            "unparseable": self.unparseable,
            "verdicts": [{"harmful": v.harmful, "score": v.score, "raw": v.raw} for v in self.verdicts],
        }


def check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"judge needs one response per prompt: got {len(prompts)} prompts, {len(responses)} responses")
    for what, texts in (("prompt", prompts), ("response", responses)):
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"judge: {what} {bad[0]} is {type(texts[bad[0]]).__name__}, not str")


def run_judge(judge: HarmJudge, prompts: Sequence[str], responses: Sequence[str]) -> VerdictSet:
    """Judge all pairs and wrap the verdicts with the judge's name and version."""
    check_pairs(prompts, responses)
    verdicts = judge.judge(list(prompts), list(responses))
    if len(verdicts) != len(prompts):
        raise RuntimeError(f"judge {judge.name} returned {len(verdicts)} verdicts for {len(prompts)} pairs")
    return VerdictSet(judge.name, judge.version, tuple(verdicts))
