"""Training examples for the curriculum stages, streamed from the extracted hidden states.

Stage 1 judges prompts (prompt states, prompt_harmful); stage 2 judges responses in the context of
their prompt (response states + prompt states, response_harmful). Stage 3 reads the same store for
the frozen lower half of the backbone (see ``svgt.training.stage3``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from svgt.data.schema import normalize_prompt, stage_mask
from svgt.extract.store import HiddenStateStore


@dataclass(frozen=True)
class SequenceExample:
    id: str
    states: torch.Tensor  # [T, d] what the encoder reads (prompt in stage 1, response in stage 2)
    label: float
    prompt_states: torch.Tensor | None = None  # [M, d] cross-attention context (stage 2)


def stage_frame(frame: pd.DataFrame, stage: str, split: str) -> pd.DataFrame:
    """Rows of one stage view and split; stage 1 keeps one row per distinct prompt."""
    rows = frame[stage_mask(frame, stage) & (frame["split"] == split)]
    if stage == "stage1":
        rows = rows.loc[~rows["prompt"].map(normalize_prompt).duplicated()]
    return rows


def load_stage_examples(store: HiddenStateStore, frame: pd.DataFrame, stage: str, split: str,
                        max_tokens: int) -> list[SequenceExample]:
    """Examples of ``stage`` in ``split``, reading only the shards' rows that the stage uses."""
    rows = stage_frame(frame, stage, split).set_index("id")
    label_column = "prompt_harmful" if stage == "stage1" else "response_harmful"
    examples = []
    for ex in store.iter_split(split):
        if ex.id not in rows.index:
            continue
        label = float(rows.at[ex.id, label_column])
        if stage == "stage1":
            examples.append(SequenceExample(ex.id, ex.prompt_states[-max_tokens:], label))
        else:
            examples.append(SequenceExample(ex.id, ex.response_states[:max_tokens], label,
                                            ex.prompt_states[-max_tokens:]))
    missing = len(rows) - len(examples)
    if missing:
        raise ValueError(f"{store.directory}: {missing} {stage} rows of split {split!r} have no extracted states; "
                         "rerun `svgt extract`")
    return examples


def pad_sequences(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad [T_i, d] tensors into [B, T, d] float32 plus a bool mask (True = real token)."""
    width = max(1, max(s.shape[0] for s in seqs))
    d = seqs[0].shape[-1]
    out = torch.zeros(len(seqs), width, d, dtype=torch.float32)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s.float()
        mask[i, : s.shape[0]] = True
    return out, mask


def collate(examples: Sequence[SequenceExample]) -> dict[str, torch.Tensor]:
    states, mask = pad_sequences([e.states for e in examples])
    batch = {"states": states, "mask": mask, "labels": torch.tensor([e.label for e in examples])}
    if examples[0].prompt_states is not None:
        batch["prompt_states"], batch["prompt_mask"] = pad_sequences([e.prompt_states for e in examples])
    return batch
