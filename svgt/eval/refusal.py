"""Re-export: the refusal judge lives in :mod:`svgt.eval.judges.refusal`."""

from svgt.eval.judges.refusal import REFUSAL_PHRASES, RefusalJudge

__all__ = ["REFUSAL_PHRASES", "RefusalJudge"]
