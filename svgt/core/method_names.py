"""The names of the guidance methods, importable without torch (the CLI builds its choices from them).

Order of the paper's main table: no guidance, the six baselines, then the SVGT ablation and SVGT.
``svgt.methods`` checks at import that the baseline names match the baseline registry.
"""

from __future__ import annotations

BASELINE_NAMES: tuple[str, ...] = ("system-prompt", "dpo-lora", "iti", "re-control", "conva", "neva")
ALL_METHODS: tuple[str, ...] = ("none", *BASELINE_NAMES, "svgt-inject", "svgt")
