"""Judges: refusal phrases, model judges (WildGuard, Llama Guard 3, HarmBench), our offline harm classifier."""

from svgt.eval.judges.base import HarmJudge, HarmVerdict, VerdictSet, run_judge
from svgt.eval.judges.refusal import RefusalJudge, refusal_judge_accuracy, write_refusal_judge_report

__all__ = [
    "HarmJudge",
    "HarmVerdict",
    "RefusalJudge",
    "VerdictSet",
    "refusal_judge_accuracy",
    "run_judge",
    "write_refusal_judge_report",
]
