"""The model card (``README.md``) every saved value module carries, in the Hugging Face Hub's format.

Generated from what the module records (config, backbone, data hash, curriculum params, metrics) and, when the
saver has it, the dataset card (``CARD.json`` beside the canonical Parquet). Deterministic: the same module and
metadata give the same bytes, so DVC's and the registry's identity checks keep working.
"""

from __future__ import annotations

import json
from typing import Any

from svgt.model.config import ValueModuleConfig

CARD = "README.md"

INTENDED_USE = """\
## Intended use

Guided generation with the exact backbone named above (its weights hash is checked on load): `svgt generate`,
`svgt serve`, or `svgt.generate` in Python. The module judges each prompt (and the answer so far, every
`refresh_interval` tokens) in its value space and, when its score passes the calibrated gate, steers the answer
through bridge tokens; when the gate stays closed the backbone runs exactly as it would unguided.

## Limits

* Only for the backbone it was trained on: another backbone, or the same one quantised differently, is refused.
* Trained on English prompts from the sources below; other languages, long multi-turn conversations, and attacks
  unlike those sources (jailbreak templates, encodings) are outside what it has seen.
* Its score is a steering signal, not a content classifier: do not use it alone to block or report users.
* The gate trades refusals of harmful requests against refusals of benign questions on sensitive topics; the
  operating point is the calibrated budget above (`svgt generate --gate-budget` picks another). Check the
  guided evaluation (`svgt evaluate`: harmful compliance, over-refusal, benign answers unchanged, KL) on your own
  prompts before relying on it; the registry version of this module carries its evaluation gates.
"""


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True) + "`"
    return str(v)


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("key", "value")) -> list[str]:
    out = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    out += [f"| `{k}` | {_value(v)} |" for k, v in rows]
    return out


def _hub_base_model(source: str | None) -> str | None:
    """The backbone as a Hub id when it is one (``org/name``), for the card's ``base_model`` field."""
    if not source or "://" in source or source.startswith(("/", ".")) or source.count("/") != 1:
        return None
    return source


def model_card(config: ValueModuleConfig, metadata: dict[str, Any], data_card: dict[str, Any] | None = None) -> str:
    stage = metadata.get("stage")
    source = metadata.get("backbone_source")
    front = ["---", "library_name: svgt", "license: apache-2.0",
             "tags: [svgt, value-guidance, safety, steering, guardrail]"]
    if _hub_base_model(source):
        front.append(f"base_model: {_hub_base_model(source)}")
    front.append("---")
    lines = [*front, "", f"# SVGT value module{f' (curriculum stage {stage})' if stage else ''}", "",
             "A value module for the frozen backbone below (Stable Value Guidance Transformer): it reads the "
             f"backbone's hidden states at layer {config.layer}, judges them in a {config.d_v}-dimensional value "
             f"space and steers generation through {config.num_bridge_tokens} bridge tokens, refreshed every "
             f"{config.refresh_interval} tokens. Load it with `ValueModule.from_pretrained(\"<this folder or "
             "repo>\")` (checksums and backbone verified) or serve it with `svgt serve --module <folder>`.", ""]
    lines += ["## Backbone", ""]
    lines += _table([(k, metadata[k]) for k in ("backbone_source", "backbone_weights_sha256",
                                                 "backbone_architecture", "backbone_num_layers",
                                                 "backbone_hidden_size") if k in metadata])
    lines += ["", "## Module", ""]
    keep = ("hidden_size", "layer", "d_v", "encoder_layers", "num_bridge_tokens", "bridge_retrieval",
            "refresh_interval", "momentum", "gate", "gate_budget", "gate_threshold", "gate_response_threshold",
            "refresh_context")
    cfg = config.to_dict()
    lines += _table([(k, cfg[k]) for k in keep if k in cfg])
    points = cfg.get("gate_points") or []
    if points:
        lines += ["", "Operating points calibrated on the validation split (`--gate-budget B`): at most B of its "
                  "benign prompts open the gate.", "", "| budget | prompt threshold | response threshold |",
                  "|---|---|---|"]
        lines += [f"| {p['budget']} | {p['threshold']:.4g} | {p['response_threshold']:.4g} |" for p in points]
    lines += ["", "## Training data", ""]
    if metadata.get("data_sha256"):
        lines.append(f"Canonical dataset sha256 `{metadata['data_sha256']}`.")
    if data_card:
        lines.append(f"{data_card.get('rows', '?')} rows ({_value(data_card.get('by_split', {}))} by split), "
                     f"{data_card.get('unique_prompts', '?')} distinct prompts, from these sources:")
        lines += ["", "| source | rows | licence |", "|---|---|---|"]
        licences = data_card.get("licenses_by_source", {})
        for name, rows in sorted((data_card.get("by_source") or {}).items()):
            lines.append(f"| {name} | {rows} | {', '.join(licences.get(name, ['?']))} |")
    else:
        lines.append("(no dataset card was available when the module was saved)")
    train = (metadata.get("params") or {}).get("train") or {}
    curriculum = [(f"stage{n}", train[f"stage{n}"]) for n in (1, 2, 3) if f"stage{n}" in train and
                  (stage is None or n <= int(stage))]
    if curriculum:
        lines += ["", "## Curriculum", ""]
        lines += _table(curriculum, ("stage", "settings"))
    metrics = metadata.get("metrics") or {}
    shown = [(k, v) for k, v in sorted(metrics.items())
             if k.startswith(("test_", "gate_test_", "gate_val_", "final_val_", "epochs", "final_best_epoch"))]
    if shown:
        lines += ["", "## Evaluation at training time", "",
                  "Held-out test and validation splits of the training data (`test_*`: the discriminator; "
                  "`gate_*_open_rate`: how often the calibrated gate opens; `final_val_*`: the exported epoch's "
                  "validation losses):", ""]
        lines += _table(shown, ("metric", "value"))
    lines += ["", INTENDED_USE]
    return "\n".join(lines).rstrip() + "\n"
