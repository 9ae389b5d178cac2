"""The baselines SVGT is compared against, each a ``Baseline`` selectable as a generation method.

=================  ====================================================================  ==================
method             mechanism                                                             where
=================  ====================================================================  ==================
``system-prompt``  safety instruction as the chat template's system message              system_prompt.py
``dpo-lora``       LoRA adapter trained with the DPO loss, merged while applied           dpo.py
``iti``            top-k attention heads shifted along mass-mean directions              iti.py
``re-control``     gradient ascent on a value function of the LM head's input            re_control.py
``conva``          gated closed-form steering along per-layer probe normals              conva.py
``neva``           additive edit of a few value-relevant MLP neurons                     neva.py
=================  ====================================================================  ==================

``fit_baselines`` fits them from the train split (fit.py); ``load_baseline`` reads one back with its
checksums verified; ``generate_with_baseline`` decodes with one applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel

from svgt.backbone.runner import BlockRunner
from svgt.baselines.base import Baseline, BaselineError, load_baseline
from svgt.baselines.fit import fit_baselines, fit_baselines_on
from svgt.baselines.registry import BASELINE_METHODS, BASELINES
from svgt.decoding.loop import GenerationOutput, guided_generate

__all__ = [
    "BASELINES",
    "BASELINE_METHODS",
    "Baseline",
    "BaselineError",
    "fit_baselines",
    "fit_baselines_on",
    "generate_with_baseline",
    "load_baseline",
]


def generate_with_baseline(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    baseline: Baseline,
    *,
    runner: BlockRunner | None = None,
    chat_template: bool = True,
    **kwargs: Any,
) -> GenerationOutput:
    """``guided_generate`` (no bridge) on the baseline's prompt ids with the baseline applied to ``model``.

    The runner is built before the baseline is applied, so its probe forward sees the plain backbone.
    """
    runner = runner or BlockRunner(model)
    ids = baseline.prompt_ids(tokenizer, list(prompts), chat_template)
    with baseline.applied(model):
        return guided_generate(model, tokenizer, ids, runner=runner, chat_template=chat_template, **kwargs)
