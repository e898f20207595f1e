"""Batches of pairs as one right-padded tensor: rows [0, B) are chosen, rows [B, 2B) rejected.

The j-th completion token of row i sits at position ``completion_start[i] + j`` of ``input_ids``;
per-token tensors (weights, reference log-probs, the completion mask) are laid out as
``(rows, max_completion_length)`` so that column j is that token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

PER_TOKEN_COLUMNS = ("weights", "ref_logps")


def pad_2d(sequences: Sequence[Sequence[float]], width: int, value: float, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(sequences), width), value, dtype=dtype)
    for row, seq in enumerate(sequences):
        if len(seq):
            out[row, : len(seq)] = torch.as_tensor(seq, dtype=dtype)
    return out


@dataclass
class PreferenceCollator:
    """Collate tokenized pairs. ``sides=("chosen",)`` builds chosen-only batches (SFT)."""

    pad_token_id: int
    sides: tuple[str, ...] = ("chosen", "rejected")
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts, completions = [], []
        per_token: dict[str, list[Sequence[float]]] = {}
        for side in self.sides:
            for feature in features:
                prompts.append(feature["prompt_input_ids"])
                completions.append(feature[f"{side}_input_ids"])
                for column in PER_TOKEN_COLUMNS:
                    key = f"{side}_{column}" if column == "weights" else f"ref_{side}_logps"
                    if key in feature and feature[key] is not None:
                        per_token.setdefault(column, []).append(feature[key])
        lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            sequence = list(prompt) + list(completion)
            input_ids[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
            attention_mask[row, : len(sequence)] = 1
        completion_lengths = torch.tensor([len(c) for c in completions], dtype=torch.long)
        max_completion = int(completion_lengths.max())
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_start": torch.tensor([len(p) for p in prompts], dtype=torch.long),
            "completion_mask": torch.arange(max_completion)[None, :] < completion_lengths[:, None],
            "pair_index": torch.tensor([f["index"] for f in features], dtype=torch.long),
        }
        if all("dlma_score" in f for f in features):
            batch["dlma_score"] = torch.tensor([float(f["dlma_score"]) for f in features], dtype=torch.float32)
        for column, values in per_token.items():
            if len(values) == len(prompts):
                batch[column] = pad_2d(values, max_completion, 0.0, torch.float32)
        return batch
