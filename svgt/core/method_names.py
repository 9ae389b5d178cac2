"""The names of the guidance methods: declared here once, importable without torch (the CLI builds its choices
and params.yaml's validation from them; the baseline registry and the guidance code check against them).

Order of the paper's main table: no guidance, the six baselines, then the SVGT ablation and SVGT.
"""

from __future__ import annotations

BASELINE_NAMES: tuple[str, ...] = ("system-prompt", "dpo-lora", "iti", "re-control", "conva", "neva")
MODULE_METHODS: tuple[str, ...] = ("svgt-inject", "svgt")  # the methods that run a trained value module
ALL_METHODS: tuple[str, ...] = ("none", *BASELINE_NAMES, *MODULE_METHODS)
