"""Heatmap examples from a weights file: token ids decoded to text pieces, each with its weight or reward.

A weights file (written by ``tisdpo weights``) holds per pair ``{chosen,rejected}_token_ids``,
``..._token_rewards`` and ``..._weights``; its ``.meta.json`` names the tokenizer and its
fingerprint. :func:`weights_tokenizer` loads that tokenizer (refusing another one), and
:func:`heatmap_examples` checks the rows and turns them into :class:`HeatmapExample` objects.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from tisdpo.data.formats import RawRecords, split_implicit_prompt
from tisdpo.errors import UserError
from tisdpo.report.heatmap import SIDES, HeatmapExample, token_pieces

Value = Literal["weights", "rewards"]


def value_column(value: Value) -> str:
    """The column suffix holding ``value``: ``weights`` or ``token_rewards``."""
    return "weights" if value == "weights" else "token_rewards"


def prompt_text(row: dict[str, Any]) -> str:
    """The prompt of a row as text (a conversation becomes ``role: content`` lines)."""
    prompt = row.get("prompt")
    if prompt is None:
        prompt = split_implicit_prompt(row["chosen"], row["rejected"])[0]
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)
    return str(prompt)


def _is_token_id(token: Any, vocab_size: int) -> bool:
    return isinstance(token, int) and not isinstance(token, bool) and 0 <= token < vocab_size


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_values(row: dict[str, Any], side: str, key: str, vocab_size: int, source: str, where: str) -> None:
    """One finite value per token id, and ids the tokenizer knows; a UserError naming the row otherwise."""
    ids, values = row[f"{side}_token_ids"], row[f"{side}_{key}"]
    bad_id = next((i for i, token in enumerate(ids) if not _is_token_id(token, vocab_size)), None)
    if bad_id is not None:
        raise UserError(
            f"token id {bad_id} is {ids[bad_id]!r}, not an id of this tokenizer (vocabulary of {vocab_size}); "
            "was the file made with another tokenizer?",
            source=source,
            location=where,
            field=f"{side}_token_ids",
        )
    if len(values) != len(ids):
        raise UserError(
            f"has {len(values)} values but {side}_token_ids has {len(ids)} tokens (expected one per token)",
            source=source,
            location=where,
            field=f"{side}_{key}",
        )
    for position, v in enumerate(values):
        if not _is_number(v):
            raise UserError(
                f"value {position} is {v!r} (expected a finite number)",
                source=source,
                location=where,
                field=f"{side}_{key}",
            )


def _check_columns(records: RawRecords, index: int, key: str) -> None:
    row = records.rows[index]
    for column in ("chosen_token_ids", "rejected_token_ids", f"chosen_{key}", f"rejected_{key}"):
        if not isinstance(row.get(column), list):
            raise UserError(
                "is missing: expected a file written by `tisdpo weights`",
                source=records.source,
                location=records.where(index),
                field=column,
            )


def heatmap_examples(records: RawRecords, tokenizer: Any, value: Value = "weights") -> list[HeatmapExample]:
    """One example per row, coloured by its weights or raw rewards; rows are checked first."""
    key = value_column(value)
    examples = []
    for index, row in enumerate(records.rows):
        _check_columns(records, index, key)
        for side in SIDES:
            check_values(row, side, key, len(tokenizer), records.source, records.where(index))
        examples.append(
            HeatmapExample(
                prompt=prompt_text(row),
                chosen_tokens=token_pieces(tokenizer, row["chosen_token_ids"]),
                chosen_values=list(row[f"chosen_{key}"]),
                rejected_tokens=token_pieces(tokenizer, row["rejected_token_ids"]),
                rejected_values=list(row[f"rejected_{key}"]),
                title=f"example {index}",
                chosen_rewards=row.get("chosen_token_rewards"),
                rejected_rewards=row.get("rejected_token_rewards"),
                chosen_structural=row.get("chosen_structural_positions"),
                rejected_structural=row.get("rejected_structural_positions"),
            )
        )
    return examples


def weights_tokenizer(
    weights_file: str,
    meta: dict[str, Any],
    tokenizer_name: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The tokenizer to decode a weights file: ``tokenizer_name``, else the one its provenance names.

    Refuses a tokenizer whose fingerprint differs from the recorded one (its ids would decode to
    other text).
    """
    from tisdpo.data.tokenize import tokenizer_fingerprint
    from tisdpo.modeling import load_tokenizer

    name = tokenizer_name or meta.get("tokenizer")
    if not name:
        raise UserError(
            "no tokenizer named in the file's provenance; pass --tokenizer_name_or_path", source=weights_file
        )
    tokenizer = load_tokenizer(name, trust_remote_code)
    recorded = meta.get("tokenizer_fingerprint")
    if recorded and tokenizer_fingerprint(tokenizer) != recorded:
        raise UserError(
            f"this weights file was made with another tokenizer ({meta.get('tokenizer')}, fingerprint {recorded}) "
            f"than {name}; its token ids would decode to other text",
            source=weights_file,
        )
    return tokenizer


def weights_file_examples(
    rows: list[dict[str, Any]], weights_file: str, value: Value = "weights"
) -> list[HeatmapExample]:
    """Examples of rows read from ``weights_file``, decoded with the tokenizer its provenance names.

    Empty when there are no rows or the file has no provenance naming a tokenizer (a report then
    simply has no heatmap).
    """
    from tisdpo.weights.io import read_meta

    meta = read_meta(weights_file) or {}
    if not rows or not meta.get("tokenizer"):
        return []
    records = RawRecords(rows, weights_file, [f"line {i + 1}" for i in range(len(rows))])
    return heatmap_examples(records, weights_tokenizer(weights_file, meta), value)
