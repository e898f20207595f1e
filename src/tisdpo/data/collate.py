"""Batches of pairs, in one of two layouts. Per-token tensors are the same in both.

Per-token tensors (``completion_mask``, ``weights``, ``ref_logps``) are laid out ``(S, max_completion_length)``
with one row per completion, column j its j-th token: rows [0, B) are the chosen completions, rows [B, 2B) the
rejected ones (``sides=("chosen",)``: rows [0, B) only). Both layouts also carry ``pair_index`` (B,) and, when
every feature has one, ``dlma_score`` (B,).

**Unshared layout** (default): one right-padded row per completion, the prompt repeated in each::

    input_ids, attention_mask  (S, W)   row s = prompt + completion s, then padding
    completion_start           (S,)     the j-th completion token of row s is at completion_start[s] + j

**Shared-prompt layout** (``shared_prompt=True``, or ``pack_tokens`` set): a *group* is one prompt and its K
completions (K = len(sides)), written once as ``[prompt, completion 1, ..., completion K]``; with ``pack_tokens``
several groups share a row (first-fit, up to that many tokens a row), which also removes most padding::

    input_ids     (R, W)  the groups' tokens, then padding
    position_ids  (R, W)  0.. over the prompt; each completion restarts where its prompt ends; 0 on padding
    group_ids     (R, W)  index (in the batch) of the group a token belongs to, -1 on padding
    side_ids      (R, W)  0 on prompts and padding, k + 1 on the tokens of a group's k-th completion
    prompt_offset (S,)    flat index (row * W + column) of the first token of completion s's prompt
    prompt_length (S,)
    completion_offset (S,) flat index of the first token of completion s

A token attends to the earlier tokens of its own group that are prompt tokens or of its own completion, so
each completion sees exactly ``prompt + itself`` at the positions it would have alone (padding attends only to
padding). ``tisdpo.logprobs.batch_logps`` builds that mask on the device and computes the same
``CompletionLogps`` as for the unshared layout; the j-th token of completion s is predicted by the hidden state
at ``completion_offset[s] + j - 1``, or, for j = 0, by the last prompt token (shared by every completion of the
group). :func:`shared_prompt_layout` builds the layout for any groups (K may differ between groups).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

PER_TOKEN_COLUMNS = ("weights", "ref_logps")
# Keys only the shared-prompt layout has (``completion_offset`` tells the layouts apart).
SHARED_LAYOUT_KEYS = ("position_ids", "group_ids", "side_ids", "prompt_offset", "prompt_length", "completion_offset")

Group = tuple[Sequence[int], Sequence[Sequence[int]]]  # (prompt ids, [completion ids, ...])


def pad_2d(sequences: Sequence[Sequence[float]], width: int, value: float, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(sequences), width), value, dtype=dtype)
    for row, seq in enumerate(sequences):
        if len(seq):
            out[row, : len(seq)] = torch.as_tensor(seq, dtype=dtype)
    return out


def round_up(width: int, multiple: int | None) -> int:
    return -(-width // multiple) * multiple if multiple else width


def completion_mask_of(lengths: Sequence[int]) -> torch.Tensor:
    """(S, max length) boolean mask, True on the first ``lengths[s]`` columns of row s."""
    lengths_tensor = torch.tensor(list(lengths), dtype=torch.long)
    width = int(lengths_tensor.max()) if len(lengths) else 0
    return torch.arange(width)[None, :] < lengths_tensor[:, None]


def pack_rows(lengths: Sequence[int], capacity: int | None) -> list[list[int]]:
    """Group indices assigned to rows: one per row without ``capacity``; else first-fit decreasing, each row
    holding at most ``capacity`` tokens (a group longer than that gets a row of its own)."""
    if not capacity:
        return [[index] for index in range(len(lengths))]
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, space in enumerate(free) if space >= lengths[index]), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        free[row] -= lengths[index]
    return rows


def shared_prompt_layout(
    groups: Sequence[Group],
    pad_token_id: int,
    pack_tokens: int | None = None,
    pad_to_multiple_of: int | None = None,
    side_major: bool = False,
) -> dict[str, torch.Tensor]:
    """The shared-prompt tensors (see the module docstring) of ``groups``, with ``completion_mask``.

    Completions are numbered group by group (group 0's completions, then group 1's ...), or, with
    ``side_major`` (every group has the same K), side by side: completion k of group g is row ``k * G + g``.
    """
    if any(len(prompt) == 0 for prompt, _ in groups):
        raise ValueError("the shared-prompt layout needs a non-empty prompt in every group")
    lengths = [len(prompt) + sum(len(c) for c in completions) for prompt, completions in groups]
    rows = pack_rows(lengths, pack_tokens)
    width = round_up(max(sum(lengths[g] for g in row) for row in rows), pad_to_multiple_of)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    group_ids = torch.full(shape, -1, dtype=torch.long)
    side_ids = torch.zeros(shape, dtype=torch.long)
    # Per completion, keyed by (group, side): (prompt offset, prompt length, completion offset, length).
    records: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    for row, members in enumerate(rows):
        cursor = 0
        for group in members:
            prompt, completions = groups[group]
            prompt_offset = row * width + cursor
            for side, tokens in enumerate([prompt, *completions]):
                span = slice(cursor, cursor + len(tokens))
                start = 0 if side == 0 else len(prompt)
                input_ids[row, span] = torch.as_tensor(list(tokens), dtype=torch.long)
                position_ids[row, span] = torch.arange(start, start + len(tokens))
                group_ids[row, span] = group
                side_ids[row, span] = side
                if side > 0:
                    records[group, side - 1] = (prompt_offset, len(prompt), row * width + cursor, len(tokens))
                cursor += len(tokens)
    if side_major:
        count = {len(completions) for _, completions in groups}
        if len(count) > 1:
            raise ValueError("side_major needs the same number of completions in every group")
        order = [(g, k) for k in range(count.pop() if count else 0) for g in range(len(groups))]
    else:
        order = [(g, k) for g, (_, completions) in enumerate(groups) for k in range(len(completions))]
    prompt_offsets, prompt_lengths, completion_offsets, completion_lengths = zip(*(records[key] for key in order))
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "group_ids": group_ids,
        "side_ids": side_ids,
        "prompt_offset": torch.tensor(prompt_offsets, dtype=torch.long),
        "prompt_length": torch.tensor(prompt_lengths, dtype=torch.long),
        "completion_offset": torch.tensor(completion_offsets, dtype=torch.long),
        "completion_mask": completion_mask_of(completion_lengths),
    }


def unshared_layout(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """One right-padded row per (prompt, completion): ``input_ids``, ``attention_mask``, ``completion_start``,
    ``completion_mask``."""
    width = round_up(max(len(p) + len(c) for p, c in zip(prompts, completions)), pad_to_multiple_of)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        sequence = list(prompt) + list(completion)
        input_ids[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_start": torch.tensor([len(p) for p in prompts], dtype=torch.long),
        "completion_mask": completion_mask_of([len(c) for c in completions]),
    }


@dataclass
class PreferenceCollator:
    """Collate tokenized pairs. ``sides=("chosen",)`` builds chosen-only batches (SFT).

    ``shared_prompt`` (or ``pack_tokens``) selects the shared-prompt layout: each prompt once, followed by
    its completions; ``pack_tokens`` packs several pairs in a row, up to that many tokens.
    """

    pad_token_id: int
    sides: tuple[str, ...] = ("chosen", "rejected")
    pad_to_multiple_of: int | None = None
    shared_prompt: bool = False
    pack_tokens: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.shared_prompt or self.pack_tokens:
            groups = [(f["prompt_input_ids"], [f[f"{side}_input_ids"] for side in self.sides]) for f in features]
            batch = shared_prompt_layout(
                groups, self.pad_token_id, self.pack_tokens, self.pad_to_multiple_of, side_major=True
            )
        else:
            prompts = [f["prompt_input_ids"] for _ in self.sides for f in features]
            completions = [f[f"{side}_input_ids"] for side in self.sides for f in features]
            batch = unshared_layout(prompts, completions, self.pad_token_id, self.pad_to_multiple_of)
        batch["pair_index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
        if all("dlma_score" in f for f in features):
            batch["dlma_score"] = torch.tensor([float(f["dlma_score"]) for f in features], dtype=torch.float32)
        max_completion = batch["completion_mask"].shape[1]
        for column, values in self.per_token_columns(features).items():
            if len(values) == len(self.sides) * len(features):
                batch[column] = pad_2d(values, max_completion, 0.0, torch.float32)
        return batch

    def per_token_columns(self, features: list[dict[str, Any]]) -> dict[str, list[Sequence[float]]]:
        """Per-token values given with the features (weights, reference log-probs), side by side."""
        per_token: dict[str, list[Sequence[float]]] = {}
        for side in self.sides:
            for feature in features:
                for column in PER_TOKEN_COLUMNS:
                    key = f"{side}_{column}" if column == "weights" else f"ref_{side}_logps"
                    if key in feature and feature[key] is not None:
                        per_token.setdefault(column, []).append(feature[key])
        return per_token
