"""Method name -> baseline class (the table ``load_baseline`` dispatches on)."""

from __future__ import annotations

from svgt.baselines.base import Baseline
from svgt.baselines.conva import ConVABaseline
from svgt.baselines.dpo import DPOLoRABaseline
from svgt.baselines.iti import ITIBaseline
from svgt.baselines.neva import NeVABaseline
from svgt.baselines.re_control import REControlBaseline
from svgt.baselines.system_prompt import SystemPromptBaseline
from svgt.core.method_names import BASELINE_NAMES

BASELINES: dict[str, type[Baseline]] = {
    cls.method: cls
    for cls in (SystemPromptBaseline, DPOLoRABaseline, ITIBaseline, REControlBaseline, ConVABaseline, NeVABaseline)
}
if tuple(BASELINES) != BASELINE_NAMES:  # the classes name themselves; the names are declared in one place
    raise ImportError(f"baseline classes {tuple(BASELINES)} do not match svgt.core.method_names {BASELINE_NAMES}")
BASELINE_METHODS: tuple[str, ...] = BASELINE_NAMES
