"""Anthropic HH dialogues as conversations: ``"\\n\\nHuman: X\\n\\nAssistant: Y ..."`` -> chat messages.

An HH row holds two whole dialogues, ``chosen`` and ``rejected``, that share everything but the last
assistant turn. :func:`hh_pair_to_conversation` turns such a row into a conversational preference row:

* ``prompt``: every turn before the final assistant turn, as ``{"role": "user" | "assistant", "content"}``;
* ``chosen`` / ``rejected``: the final assistant turn of each dialogue, as a one-message list.

Turn texts are stripped of surrounding whitespace. Consecutive segments of one speaker (``"Assistant: a
\\n\\nAssistant: b"``, a few dozen in the HH data) are one turn, their texts joined by a blank line, so that
messages alternate as chat templates expect. ``Human:`` inside a turn's text (not after a blank line) is
text. A row that cannot be a preference pair (no final assistant turn, an empty final turn, prompts that
differ) raises :class:`NotConvertible` with the reason; :func:`convert_hh_rows` skips and counts them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tisdpo.data.formats import read_records
from tisdpo.errors import UserError

SPEAKERS = {"Human": "user", "Assistant": "assistant"}
TURN_TAG = re.compile(r"\n\n(Human|Assistant):")


class NotConvertible(ValueError):
    """An HH row that is not a usable preference pair; the message says why (a short reason)."""


def parse_dialogue(text: str) -> list[dict[str, str]]:
    """The turns of one HH dialogue as messages, in order (consecutive turns of one speaker merged)."""
    if not isinstance(text, str):
        raise NotConvertible("not a text dialogue")
    body = "\n\n" + text.lstrip() if text.lstrip().startswith(tuple(f"{s}:" for s in SPEAKERS)) else text
    pieces = TURN_TAG.split(body)
    if pieces[0].strip() or len(pieces) < 3:
        raise NotConvertible("does not start with a 'Human:' or 'Assistant:' turn")
    messages: list[dict[str, str]] = []
    for speaker, content in zip(pieces[1::2], pieces[2::2]):
        role, content = SPEAKERS[speaker], content.strip()
        if messages and messages[-1]["role"] == role:
            joined = "\n\n".join(part for part in (messages[-1]["content"], content) if part)
            messages[-1] = {"role": role, "content": joined}
        else:
            messages.append({"role": role, "content": content})
    return messages


def split_final_turn(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """(the turns before the final assistant turn, the final assistant turn)."""
    if messages[-1]["role"] != "assistant":
        raise NotConvertible("does not end with an assistant turn")
    if not messages[-1]["content"]:
        raise NotConvertible("the final assistant turn is empty")
    return messages[:-1], messages[-1]


def hh_pair_to_conversation(row: dict[str, Any]) -> dict[str, Any]:
    """One HH row (``chosen`` and ``rejected`` dialogues) -> ``prompt`` / ``chosen`` / ``rejected`` messages.

    Other columns are kept.
    """
    sides = {}
    for side in ("chosen", "rejected"):
        if side not in row:
            raise NotConvertible(f"no '{side}' dialogue")
        try:
            sides[side] = split_final_turn(parse_dialogue(row[side]))
        except NotConvertible as err:
            raise NotConvertible(f"{side}: {err}") from None
    (prompt, chosen), (rejected_prompt, rejected) = sides["chosen"], sides["rejected"]
    if prompt != rejected_prompt:
        raise NotConvertible("chosen and rejected differ before the final assistant turn")
    if not prompt or prompt[-1]["role"] != "user":
        raise NotConvertible("no user turn before the final assistant turn")
    return {**row, "prompt": prompt, "chosen": [chosen], "rejected": [rejected]}


@dataclass
class Conversion:
    """Converted rows (each with ``source_index``, its row in the input) and the reasons rows were skipped."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def describe_skipped(self) -> str:
        return ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items())) or "none"


def convert_hh_rows(rows: Iterable[dict[str, Any]]) -> Conversion:
    conversion = Conversion()
    for index, row in enumerate(rows):
        try:
            converted = hh_pair_to_conversation(row)
        except NotConvertible as err:
            conversion.skipped[str(err)] += 1
            continue
        conversion.rows.append({**converted, "source_index": index})
    return conversion


def read_hh_conversations(path: str) -> Conversion:
    """Read an HH-format file (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.parquet``) as conversations."""
    records = read_records(path)
    for index, row in enumerate(records.rows):
        if "chosen" not in row or "rejected" not in row:
            raise UserError(
                "expected Anthropic HH rows with 'chosen' and 'rejected' dialogues",
                source=path,
                location=records.where(index),
            )
    conversion = convert_hh_rows(records.rows)
    if not conversion.rows:
        raise UserError(f"no HH dialogue could be used ({conversion.describe_skipped()})", source=path)
    return conversion
