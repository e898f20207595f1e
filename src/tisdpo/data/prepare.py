"""Normalized rows -> the tokenized training table, with token weights checked against token ids."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tisdpo.data.formats import RawRecords
from tisdpo.data.tokenize import PairTokenizer, TokenizedPair
from tisdpo.errors import UserError

logger = logging.getLogger(__name__)

SIDES = ("chosen", "rejected")


@dataclass
class PreparedPairs:
    """Columns of the training table (lists, one entry per kept pair)."""

    columns: dict[str, list[Any]]
    dropped_indices: list[int]

    def __len__(self) -> int:
        return len(self.columns["index"])

    def to_dataset(self):
        import datasets

        return datasets.Dataset.from_dict(self.columns)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_token_ids(ids: Any, source: str, where: str, field: str) -> list[int]:
    """Stored token ids must be a list of integers."""
    if not isinstance(ids, list | tuple):
        raise UserError(
            f"expected a list of token ids (integers), got {type(ids).__name__}",
            source=source,
            location=where,
            field=field,
        )
    bad = next((i for i, t in enumerate(ids) if not isinstance(t, int) or isinstance(t, bool)), None)
    if bad is not None:
        raise UserError(
            f"token id {bad} is {ids[bad]!r} (expected an integer)", source=source, location=where, field=field
        )
    return list(ids)


def check_numbers(values: Any, what: str, source: str, where: str, field: str) -> list[float]:
    """Stored weights or rewards must be a list of numbers (``what`` names one: weight, reward)."""
    if not isinstance(values, list | tuple):
        raise UserError(
            f"expected a list of numbers, one {what} per completion token, got {type(values).__name__}",
            source=source,
            location=where,
            field=field,
        )
    bad = next((i for i, v in enumerate(values) if not is_number(v)), None)
    if bad is not None:
        raise UserError(
            f"{what} {bad} is {values[bad]!r} (expected a number)", source=source, location=where, field=field
        )
    return list(values)


def check_side_weights(
    row: dict[str, Any],
    side: str,
    pair: TokenizedPair,
    source: str,
    where: str,
    require_nonnegative: bool,
) -> list[float] | None:
    """Validate ``{side}_token_ids`` and ``{side}_weights`` of a row against the trainer's own ids.

    Weights may cover the full completion (response tokens + EOS) or only the part kept after
    truncation; they are cut like the tokens. Returns the weights to train with, or None.
    """
    trained: list[int] = getattr(pair, f"{side}_ids")
    full: list[int] = getattr(pair, f"{side}_full_ids")
    ids = row.get(f"{side}_token_ids")
    if ids is not None:
        ids = check_token_ids(ids, source, where, f"{side}_token_ids")
    if ids is not None and ids != full and ids != trained:
        mismatch = next((i for i, (a, b) in enumerate(zip(ids, full)) if a != b), min(len(ids), len(full)))
        raise UserError(
            f"token ids differ from this tokenizer's completion ids at position {mismatch} "
            f"(file has {len(ids)} ids, tokenizer gives {len(full)}); the weights were made with another tokenizer or another prompt format",
            source=source,
            location=where,
            field=f"{side}_token_ids",
        )
    weights = row.get(f"{side}_weights")
    if weights is None:
        return None
    weights = check_numbers(weights, "weight", source, where, f"{side}_weights")
    if len(weights) not in (len(full), len(trained)):
        raise UserError(
            f"has {len(weights)} weights but the completion has {len(full)} tokens (response + EOS); "
            "weights must have one value per completion token as tokenized for training",
            source=source,
            location=where,
            field=f"{side}_weights",
        )
    values = [float(w) for w in weights[: len(trained)]]
    bad = next((i for i, w in enumerate(values) if not math.isfinite(w)), None)
    if bad is not None:
        raise UserError(
            f"weight {bad} is {values[bad]} (expected a finite number)",
            source=source,
            location=where,
            field=f"{side}_weights",
        )
    if require_nonnegative:
        negative = next((i for i, w in enumerate(values) if w < 0), None)
        if negative is not None:
            raise UserError(
                f"weight {negative} is negative ({values[negative]}); TIS-DPO needs weights >= 0 (negative weights flip the gradient). "
                "Use a transform with positive output (exp, rank_based, threshold_and_scale)",
                source=source,
                location=where,
                field=f"{side}_weights",
            )
    return values


def prepare_pairs(
    rows: Sequence[dict[str, Any]],
    records: RawRecords,
    pair_tokenizer: PairTokenizer,
    need_weights: bool = False,
    require_nonnegative_weights: bool | None = None,
) -> PreparedPairs:
    """Tokenize every row; drop (and count) the pairs truncation leaves without completion tokens.

    Weights found in the rows are always checked (length, finite); negative weights are refused when
    ``require_nonnegative_weights`` (default: when the objective uses them, ``need_weights``).
    """
    if require_nonnegative_weights is None:
        require_nonnegative_weights = need_weights
    if not rows:
        raise UserError(
            "no pair left to train on (every pair was dropped before tokenization: identical or empty responses)",
            source=records.source,
        )
    columns: dict[str, list[Any]] = {
        "index": [],
        "prompt_input_ids": [],
        "chosen_input_ids": [],
        "rejected_input_ids": [],
        "length": [],  # longest sequence of the pair, for --group_by_length
    }
    found_weights: dict[str, list[list[float] | None]] = {side: [] for side in SIDES}
    found_scores: list[Any] = []
    dropped: list[int] = []
    prompts_cut = 0
    for position, row in enumerate(rows):
        index = row.get("source_index", position)
        where = records.where(index)
        pair = pair_tokenizer.tokenize(row)
        if pair is None:
            dropped.append(index)
            continue
        weights = {
            side: check_side_weights(row, side, pair, records.source, where, require_nonnegative_weights)
            for side in SIDES
        }
        for side in SIDES:
            if need_weights and weights[side] is None:
                raise UserError(
                    "is missing: this objective needs one weight per completion token (make them with `tisdpo weights`)",
                    source=records.source,
                    location=where,
                    field=f"{side}_weights",
                )
            found_weights[side].append(weights[side])
        prompts_cut += pair.prompt_cut
        found_scores.append(row.get("dlma_score"))
        columns["index"].append(index)
        columns["prompt_input_ids"].append(pair.prompt_ids)
        columns["chosen_input_ids"].append(pair.chosen_ids)
        columns["rejected_input_ids"].append(pair.rejected_ids)
        columns["length"].append(len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids)))
    if dropped:
        logger.warning(
            "%s: dropped %d of %d pair(s) whose prompt leaves no room for completion tokens (max_length=%s, max_prompt_length=%s)",
            records.source,
            len(dropped),
            len(rows),
            pair_tokenizer.max_length,
            pair_tokenizer.max_prompt_length,
        )
    if prompts_cut:
        logger.info(
            "%s: %d of %d pair(s) have a prompt longer than max_prompt_length=%s; its start was cut",
            records.source,
            prompts_cut,
            len(columns["index"]),
            pair_tokenizer.max_prompt_length,
        )
    if not columns["index"]:
        raise UserError(
            f"no pair left after truncation (all {len(rows)} dropped); raise --max_length or lower --max_prompt_length",
            source=records.source,
        )
    # DLMA's self-rewarding score, when every pair has one (`tisdpo dlma generate` writes it).
    if all(isinstance(score, int | float) and math.isfinite(score) for score in found_scores):
        columns["dlma_score"] = [float(score) for score in found_scores]
    # Weights travel with the pairs when every pair has them (they are ignored by unweighted objectives).
    if all(w is not None for side in SIDES for w in found_weights[side]):
        for side in SIDES:
            columns[f"{side}_weights"] = found_weights[side]
    return PreparedPairs(columns, dropped)
