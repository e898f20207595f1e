"""Prompts (and reference texts) of a held-out split, from any of the accepted row formats.

A row gives its prompt as (first match):

* ``--prompt_column`` when given;
* ``prompt``: text or a list of messages (prompt-only rows, prompt/completion rows, standard and
  conversational pairs, PKU-SafeRLHF rows);
* ``post``: TL;DR-style rows (``post`` + ``summary``);
* ``chosen`` + ``rejected`` without a prompt: the implicit prompt of the pair
  (:func:`tisdpo.data.formats.split_implicit_prompt`, e.g. Anthropic HH).

Reference texts for ROUGE come from ``--reference_column`` or, when present and text (or a list of
texts), ``summary``, ``reference``, ``references`` or ``completion``. Plain-text prompts get
``--prompt_template`` like training; a text prompt of a conversational pair becomes a user message.
Repeated prompts are kept once (their references merged), in order of first appearance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tisdpo.data.formats import ROLES, is_conversation, read_records, split_implicit_prompt
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.errors import UserError

REFERENCE_COLUMNS = ("summary", "reference", "references", "completion")
_DUMMY_RESPONSE = [{"role": "assistant", "content": "."}]


@dataclass(frozen=True)
class PromptItem:
    """One distinct prompt: as in the data (template applied), with its references."""

    source_index: int  # row of its first appearance
    prompt: str | list[dict[str, str]]
    references: tuple[str, ...] = ()

    @property
    def chat(self) -> bool:
        return is_conversation(self.prompt)


def _check_prompt(value: Any, field: str, source: str, where: str) -> str | list[dict[str, str]]:
    if value is None:
        raise UserError(
            "is missing or null (expected text or a list of messages)", source=source, location=where, field=field
        )
    if isinstance(value, str):
        return value
    if isinstance(value, list) and not value:
        raise UserError("is an empty conversation", source=source, location=where, field=field)
    if is_conversation(value):
        for turn, message in enumerate(value):
            if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise UserError(
                    f"message {turn} needs a role ({', '.join(ROLES)}) and a text 'content'",
                    source=source,
                    location=where,
                    field=field,
                )
        return value
    raise UserError(
        f"expected text or a list of messages, got {type(value).__name__}", source=source, location=where, field=field
    )


def _references(row: dict[str, Any], column: str | None, source: str, where: str) -> list[str]:
    columns = [column] if column else [c for c in REFERENCE_COLUMNS if c in row]
    for name in columns:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return [v for v in value if v.strip()]
        if column:
            raise UserError(
                f"expected a reference text (or a list of texts), got {type(value).__name__}",
                source=source,
                location=where,
                field=name,
            )
    return []


def row_prompt(
    row: dict[str, Any],
    source: str,
    where: str,
    prompt_column: str | None = None,
    reference_column: str | None = None,
    prompt_template: str | None = None,
) -> tuple[str | list[dict[str, str]], list[str]]:
    """(prompt, references) of one raw row."""
    if prompt_column:
        if prompt_column not in row:
            raise UserError("is missing (named by --prompt_column)", source=source, location=where, field=prompt_column)
        prompt = _check_prompt(row[prompt_column], prompt_column, source, where)
    elif "prompt" in row:
        prompt = _check_prompt(row["prompt"], "prompt", source, where)
    elif "post" in row:
        prompt = _check_prompt(row["post"], "post", source, where)
    elif "chosen" in row and "rejected" in row:
        chosen = _check_prompt(row["chosen"], "chosen", source, where)
        rejected = _check_prompt(row["rejected"], "rejected", source, where)
        prompt = split_implicit_prompt(chosen, rejected)[0]
    else:
        raise UserError(
            "has no prompt (expected a 'prompt' column, TL;DR 'post' + 'summary', or a chosen/rejected pair; "
            "or name the column with --prompt_column)",
            source=source,
            location=where,
        )
    if isinstance(prompt, str) and prompt_template:
        prompt = prompt_template.replace("{prompt}", prompt)
    if isinstance(prompt, str) and is_conversation(row.get("chosen")) and row.get("chosen"):
        prompt = [{"role": "user", "content": prompt}] if prompt else []
    return prompt, _references(row, reference_column, source, where)


def load_prompts(
    name: str,
    split: str,
    max_prompts: int | None = None,
    prompt_column: str | None = None,
    reference_column: str | None = None,
    prompt_template: str | None = None,
) -> list[PromptItem]:
    """The distinct prompts of a dataset (the first ``max_prompts``), with their reference texts."""
    records = read_records(name, split)
    order: list[str] = []
    found: dict[str, tuple[int, Any, list[str]]] = {}
    for index, row in enumerate(records.rows):
        prompt, references = row_prompt(
            row, records.source, records.where(index), prompt_column, reference_column, prompt_template
        )
        key = json.dumps(prompt, sort_keys=True)
        if key in found:
            merged = found[key][2]
            merged.extend(r for r in references if r not in merged)
            continue
        if max_prompts is not None and len(order) >= max_prompts:
            continue
        order.append(key)
        found[key] = (index, prompt, list(dict.fromkeys(references)))
    if not order:
        raise UserError("the dataset has no rows", source=name)
    return [PromptItem(found[k][0], found[k][1], tuple(found[k][2])) for k in order]


def render_prompt(item: PromptItem, pair_tokenizer: PairTokenizer) -> str:
    """The prompt text exactly as the model sees it (chat template applied to message prompts)."""
    response = _DUMMY_RESPONSE if item.chat else "."
    if item.chat and not item.prompt:
        raise UserError("a message prompt is empty", location=f"row {item.source_index}")
    return pair_tokenizer.render({"prompt": item.prompt, "chosen": response, "rejected": response}).prompt


def encode_prompts(items: list[PromptItem], pair_tokenizer: PairTokenizer) -> tuple[list[str], list[list[int]]]:
    """Rendered texts and token ids (``max_prompt_length`` applied, keeping the end), as in training."""
    texts, ids = [], []
    for item in items:
        text = render_prompt(item, pair_tokenizer)
        texts.append(text)
        ids.append(pair_tokenizer.truncate_prompt(pair_tokenizer.encode_prompt(text, item.chat)))
    return texts, ids
