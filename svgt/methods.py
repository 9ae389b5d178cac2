"""Every guidance method by name: unguided, the six baselines, SVGT-Inject and SVGT.

One entry point, ``GuidanceMethod.generate``, so `svgt generate` and `svgt evaluate` treat all nine the
same way. SVGT and SVGT-Inject need a trained value module; the trained baselines need their fitted
artifact (``svgt baselines`` writes ``models/baselines/<method>/``); ``none`` needs neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from svgt.backbone.runner import BlockRunner
from svgt.baselines import BASELINE_METHODS, Baseline, generate_with_baseline, load_baseline
from svgt.core.errors import BadInput
from svgt.core.method_names import ALL_METHODS
from svgt.decoding.guidance import METHODS as MODULE_METHODS
from svgt.decoding.guidance import generate_with_module
from svgt.decoding.loop import GenerationOutput
from svgt.model import ValueModule


class MethodError(BadInput):
    """A method name that does not exist, or a method without the artifact it needs."""


def check_methods(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in ALL_METHODS]
    if unknown:
        raise MethodError(f"unknown method(s) {', '.join(map(repr, unknown))} (choose from {', '.join(ALL_METHODS)})")


def needs_module(name: str) -> bool:
    return name in MODULE_METHODS and name != "none"


@dataclass
class GuidanceMethod:
    """A method ready to generate: its name plus the value module or baseline it runs with."""

    name: str
    module: ValueModule | None = None
    baseline: Baseline | None = None
    # SVGT's gate: "module" (the module's own), None (off: every prompt guided) or a score threshold
    threshold: float | None | str = "module"

    @property
    def kind(self) -> str:
        """The method proper: "svgt" for the operating points "svgt@<threshold>" (and labelled variants such as
        "svgt (…)")."""
        return self.name.split("@", 1)[0].split(" ", 1)[0]

    @property
    def plain_prompt_pass(self) -> bool:
        """Whether the method runs the prompt through the unmodified backbone (the bridge or delta comes
        after it), so a ``PromptPassCache`` may serve it."""
        return self.baseline.plain_prompt_pass if self.baseline is not None else True

    def generate(self, model: PreTrainedModel, tokenizer: Any, prompts: Sequence[str], *,
                 runner: BlockRunner | None = None, **kwargs: Any) -> GenerationOutput:
        if self.baseline is not None:
            return generate_with_baseline(model, tokenizer, prompts, self.baseline, runner=runner, **kwargs)
        if self.kind != "none":
            kwargs["threshold"] = self.threshold
        return generate_with_module(model, tokenizer, prompts, module=self.module, method=self.kind,  # type: ignore[arg-type]
                                    runner=runner, **kwargs)


def operating_point(module: ValueModule, threshold: float | None) -> GuidanceMethod:
    """SVGT with its gate at ``threshold`` (None: off), named "svgt@<threshold>" / "svgt@off"."""
    return GuidanceMethod(f"svgt@{'off' if threshold is None else f'{threshold:g}'}", module=module,
                          threshold=threshold)


def budget_point(module: ValueModule, budget: float) -> GuidanceMethod:
    """SVGT at the gate's operating point for an over-refusal ``budget`` (calibrated in stage 3), named
    "svgt@budget=<budget>"."""
    return GuidanceMethod(f"svgt@budget={budget:g}", module=module.at_gate_budget(budget))


def load_method(name: str, *, module: ValueModule | None = None, baselines_dir: str | Path | None = None,
                backbone_sha256: str | None = None) -> GuidanceMethod:
    """The named method with what it needs; a clear error names what is missing.

    ``backbone_sha256`` (the snapshot manifest's weights hash) makes a baseline fitted on other weights fail.
    """
    check_methods([name])
    if name in BASELINE_METHODS:
        if baselines_dir is None:
            raise MethodError(f"method {name!r} needs its fitted baseline (--baselines DIR from `svgt baselines`)")
        path = Path(baselines_dir) / name
        if not path.is_dir():
            raise MethodError(f"method {name!r}: no fitted baseline at {path} (run `svgt baselines` first)")
        return GuidanceMethod(name, baseline=load_baseline(path, expected_backbone_sha256=backbone_sha256))
    if needs_module(name) and module is None:
        raise MethodError(f"method {name!r} needs a value module (--module PATH_OR_URI)")
    return GuidanceMethod(name, module=module)
