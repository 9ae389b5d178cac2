"""Method name -> baseline class (the table ``load_baseline`` dispatches on)."""

from __future__ import annotations

from svgt.baselines.base import Baseline
from svgt.baselines.conva import ConVABaseline
from svgt.baselines.dpo import DPOLoRABaseline
from svgt.baselines.iti import ITIBaseline
from svgt.baselines.neva import NeVABaseline
from svgt.baselines.re_control import REControlBaseline
from svgt.baselines.system_prompt import SystemPromptBaseline

BASELINES: dict[str, type[Baseline]] = {
    cls.method: cls
    for cls in (SystemPromptBaseline, DPOLoRABaseline, ITIBaseline, REControlBaseline, ConVABaseline, NeVABaseline)
}
BASELINE_METHODS: tuple[str, ...] = tuple(BASELINES)
