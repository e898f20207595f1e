"""Read preference data and bring every known format to one shape: prompt / chosen / rejected.

Accepted rows (auto-detected per row):

* standard:        ``prompt``, ``chosen``, ``rejected`` as text
* conversational:  the same columns as lists of ``{"role", "content"}`` messages
* implicit prompt: only ``chosen`` and ``rejected`` (text or messages); the prompt is their common
                   prefix, cut after the last ``"\\n\\nAssistant:"`` for Anthropic HH dialogues
* PKU-SafeRLHF:    ``prompt``, ``response_0``, ``response_1`` and ``better_response_id`` /
                   ``safer_response_id`` (which one is chosen by ``preference_key``)

Any other column (``chosen_weights``, ``chosen_token_ids`` ...) is carried along unchanged.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tisdpo.errors import UserError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
HH_ASSISTANT_TAG = "\n\nAssistant:"
PAIRED_PREFIXES = ("chosen", "rejected")


class EmptyResponseError(UserError):
    """A response with no text; such pairs can be skipped with ``skip_empty_responses``."""


@dataclass
class RawRecords:
    """Rows as read from a source, with a human label for each row's location (``line 12``)."""

    rows: list[dict[str, Any]]
    source: str
    locations: list[str]

    def where(self, index: int) -> str:
        return self.locations[index] if index < len(self.locations) else f"example {index}"


UTF8_BOM = b"\xef\xbb\xbf"  # spreadsheet and Windows exports start their files with it


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8-sig") if path.endswith(".gz") else open(path, encoding="utf-8-sig")


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


# What reading a damaged file raises: not UTF-8, a truncated or corrupt gzip stream, a folder ...
READ_ERRORS = (UnicodeDecodeError, OSError, EOFError, zlib.error)


def _read_error(path: str, err: BaseException, line_number: int | None = None) -> UserError:
    if isinstance(err, UnicodeDecodeError):
        what = f"not UTF-8 text (byte {err.object[err.start : err.start + 1]!r} at position {err.start} of the line)"
    elif isinstance(err, IsADirectoryError):
        what = "is a folder, not a file"
    else:
        detail = " ".join(str(err).split()) or "no detail"
        what = f"could not read the file ({type(err).__name__}: {detail})"
    return UserError(what, source=path, location=f"line {line_number}" if line_number else None)


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a text file (gzip by extension), each line decoded on its own, so that a
    damaged file is an error naming its line."""
    line_number = 0
    try:
        handle = _open_binary(path)
    except READ_ERRORS as err:
        raise _read_error(path, err) from None
    with handle:
        while True:
            try:
                raw = handle.readline()
                if not raw:
                    return
                line = (raw.removeprefix(UTF8_BOM) if line_number == 0 else raw).decode("utf-8")
            except READ_ERRORS as err:
                raise _read_error(path, err, line_number + 1) from None
            line_number += 1
            yield line_number, line


def _read_jsonl(path: str) -> RawRecords:
    rows, locations = [], []
    for line_number, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line.rstrip("\r\n"))  # so that a cut line's error names its own column
        except json.JSONDecodeError as err:
            raise UserError(
                f"not valid JSON ({err.msg} at column {err.colno})",
                source=path,
                location=f"line {line_number}",
            ) from None
        if not isinstance(row, dict):
            raise UserError(
                f"expected a JSON object, got {type(row).__name__}",
                source=path,
                location=f"line {line_number}",
            )
        rows.append(row)
        locations.append(f"line {line_number}")
    return RawRecords(rows, path, locations)


def _read_json(path: str) -> RawRecords:
    try:
        with _open_text(path) as handle:
            text = handle.read()
    except READ_ERRORS as err:
        raise _read_error(path, err) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # A .json file holding one object per line is common enough to accept.
        if err.msg == "Extra data":
            return _read_jsonl(path)
        raise UserError(f"not valid JSON ({err.msg})", source=path, location=f"line {err.lineno}") from None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise UserError("expected a JSON list of objects (or JSON lines)", source=path)
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(
                f"expected a JSON object, got {type(row).__name__}",
                source=path,
                location=f"example {index}",
            )
    return RawRecords(data, path, [f"example {i}" for i in range(len(data))])


def _read_parquet(path: str) -> RawRecords:
    """A local Parquet file, read directly (no copy into the datasets cache, no library log lines)."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except READ_ERRORS as err:
        raise _read_error(path, err) from None
    except Exception as err:  # pyarrow's ArrowInvalid and kin: a damaged or non-Parquet file
        detail = " ".join(str(err).split())
        raise UserError(f"not a readable Parquet file ({type(err).__name__}: {detail})", source=path) from None
    return RawRecords(rows, path, [f"row {i}" for i in range(len(rows))])


def _read_with_datasets(name: str, split: str, kind: str | None) -> RawRecords:
    import datasets

    try:
        if kind == "disk":
            dataset = datasets.load_from_disk(name)
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(name, split=split)
    except FileNotFoundError as err:
        raise UserError(f"dataset not found ({' '.join(str(err).split())})", source=name) from None
    except Exception as err:  # the hub and readers raise many kinds; all mean "could not load"
        detail = " ".join(str(err).split())
        raise UserError(f"could not load dataset: {type(err).__name__}: {detail}", source=name) from None
    rows = dataset.to_list()
    return RawRecords(rows, name, [f"example {i}" for i in range(len(rows))])


def read_records(name_or_path: str, split: str = "train") -> RawRecords:
    """Read rows from a local JSON / JSONL(.gz) / Parquet file, a saved dataset folder or a hub name."""
    lowered = name_or_path.lower()
    if lowered.endswith((".jsonl", ".jsonl.gz")):
        kind = "jsonl"
    elif lowered.endswith((".json", ".json.gz")):
        kind = "json"
    elif lowered.endswith(".parquet"):
        kind = "parquet"
    elif os.path.isdir(name_or_path):
        kind = (
            "disk"
            if os.path.exists(os.path.join(name_or_path, "dataset_info.json"))
            or os.path.exists(os.path.join(name_or_path, "dataset_dict.json"))
            else None
        )
    else:
        kind = None
    if kind in ("jsonl", "json", "parquet") and not os.path.exists(name_or_path):
        raise UserError("file not found", source=name_or_path)
    if kind == "jsonl":
        return _read_jsonl(name_or_path)
    if kind == "json":
        return _read_json(name_or_path)
    if kind == "parquet":
        return _read_parquet(name_or_path)
    return _read_with_datasets(name_or_path, split, kind)


def is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def _check_text(value: Any, field: str, source: str, where: str, allow_empty: bool = False) -> str:
    if value is None:
        raise UserError("is missing or null (expected text)", source=source, location=where, field=field)
    if not isinstance(value, str):
        raise UserError(f"expected text, got {type(value).__name__}", source=source, location=where, field=field)
    if not allow_empty and not value.strip():
        raise EmptyResponseError(
            "is empty or whitespace only (fix the row, or pass --skip_empty_responses to drop such pairs)",
            source=source,
            location=where,
            field=field,
        )
    return value


def _check_messages(value: Any, field: str, source: str, where: str) -> list[dict[str, str]]:
    if not value:
        raise UserError("is an empty conversation", source=source, location=where, field=field)
    for turn, message in enumerate(value):
        role = message.get("role")
        if role not in ROLES:
            raise UserError(
                f"message {turn} has unknown role {role!r} (expected one of {', '.join(ROLES)})",
                source=source,
                location=where,
                field=field,
            )
        if not isinstance(message.get("content"), str):
            raise UserError(f"message {turn} has no text 'content'", source=source, location=where, field=field)
    return value


def _check_field(value: Any, field: str, source: str, where: str, allow_empty: bool = False):
    if is_conversation(value):
        return _check_messages(value, field, source, where)
    return _check_text(value, field, source, where, allow_empty=allow_empty)


def split_implicit_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Split two full dialogues sharing a prompt into (prompt, chosen_response, rejected_response).

    Text: the longest common prefix, cut after the last ``"\\n\\nAssistant:"`` inside it (Anthropic
    HH), else at the last whitespace so no word is split. Messages: the longest common list prefix,
    ending before the first differing assistant turn.
    """
    if is_conversation(chosen) and is_conversation(rejected):
        common = 0
        while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
            common += 1
        while common > 0 and chosen[common - 1].get("role") == "assistant":
            common -= 1
        return chosen[:common], chosen[common:], rejected[common:]
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT_TAG)
    if cut >= 0:
        cut += len(HH_ASSISTANT_TAG)
    else:
        cut = max(common.rfind(" "), common.rfind("\n"))
        cut = 0 if cut < 0 else cut
    return chosen[:cut], chosen[cut:], rejected[cut:]


@dataclass(frozen=True)
class FormatOptions:
    """How raw rows become preference examples."""

    preference_key: str = "better"  # PKU-SafeRLHF: better_response_id or safer_response_id
    prompt_template: str | None = None  # plain-text prompts: "{prompt}" is replaced by the prompt
    reverse: bool = False  # swap chosen and rejected (reverse DPO, negative SFT)


def swap_sides(row: dict[str, Any]) -> dict[str, Any]:
    """Exchange every ``chosen*`` column with its ``rejected*`` twin; DLMA's score of chosen over
    rejected changes sign."""
    swapped: dict[str, Any] = {}
    for key, value in row.items():
        for this, other in (PAIRED_PREFIXES, PAIRED_PREFIXES[::-1]):
            if key.startswith(this):
                key = other + key[len(this) :]
                break
        swapped[key] = value
    score = swapped.get("dlma_score")
    if isinstance(score, int | float) and not isinstance(score, bool):
        swapped["dlma_score"] = -score
    return swapped


def normalize_row(row: dict[str, Any], options: FormatOptions, source: str, where: str) -> dict[str, Any]:
    """One raw row -> a dict with ``prompt``, ``chosen``, ``rejected`` (text or messages) and extras."""
    out = dict(row)
    if "response_0" in row and "response_1" in row:
        key = f"{options.preference_key}_response_id"
        choice = row.get(key)
        if choice not in (0, 1):
            raise UserError(f"expected 0 or 1, got {choice!r}", source=source, location=where, field=key)
        responses = [
            _check_text(row["response_0"], "response_0", source, where),
            _check_text(row["response_1"], "response_1", source, where),
        ]
        out["chosen"], out["rejected"] = responses[choice], responses[1 - choice]
    for field in ("chosen", "rejected"):
        if field not in out:
            raise UserError(
                "is missing (expected prompt/chosen/rejected, chosen/rejected, or PKU-SafeRLHF response_0/response_1)",
                source=source,
                location=where,
                field=field,
            )
        _check_field(out[field], field, source, where)
    if "prompt" not in out:
        out["prompt"], out["chosen"], out["rejected"] = split_implicit_prompt(out["chosen"], out["rejected"])
    else:
        out["prompt"] = _check_field(out["prompt"], "prompt", source, where, allow_empty=True)
    for field in ("chosen", "rejected"):
        _check_field(out[field], field, source, where)
    if is_conversation(out["chosen"]) != is_conversation(out["rejected"]):
        raise UserError(
            "chosen and rejected must both be text or both be message lists",
            source=source,
            location=where,
            field="rejected",
        )
    if is_conversation(out["prompt"]) and not is_conversation(out["chosen"]):
        raise UserError(
            "is a list of messages but chosen and rejected are text (expected the responses as assistant "
            'messages, [{"role": "assistant", "content": ...}], or the prompt as text)',
            source=source,
            location=where,
            field="prompt",
        )
    if isinstance(out["prompt"], str) and options.prompt_template:
        out["prompt"] = options.prompt_template.replace("{prompt}", out["prompt"])
    if isinstance(out["prompt"], str) and is_conversation(out["chosen"]):
        out["prompt"] = [{"role": "user", "content": out["prompt"]}] if out["prompt"] else []
    return swap_sides(out) if options.reverse else out


def iter_normalized(
    records: RawRecords, options: FormatOptions, skip_empty_responses: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Normalized rows with their source index; pairs with an empty response raise or are skipped."""
    skipped = 0
    for index, row in enumerate(records.rows):
        try:
            yield index, normalize_row(row, options, records.source, records.where(index))
        except EmptyResponseError:
            if not skip_empty_responses:
                raise
            skipped += 1
    if skipped:
        logger.warning("%s: skipped %d pair(s) with an empty response", records.source, skipped)


def _format_name(row: dict[str, Any]) -> str:
    return "a list of messages" if is_conversation(row["chosen"]) else "text"


def check_one_format(rows: list[dict[str, Any]], records: RawRecords) -> None:
    """Every pair of a dataset is plain text, or every pair is conversational: the first row decides."""
    first = rows[0]
    other = next((row for row in rows if is_conversation(row["chosen"]) != is_conversation(first["chosen"])), None)
    if other is None:
        return
    first_where = records.where(first["source_index"])
    raise UserError(
        f"is {_format_name(other)} but {first_where}, the first row, is {_format_name(first)}; a dataset must not mix "
        f"plain-text and conversational pairs (expected {_format_name(first)}, like {first_where})",
        source=records.source,
        location=records.where(other["source_index"]),
        field="chosen",
    )


def load_preference_rows(
    name_or_path: str,
    split: str = "train",
    options: FormatOptions | None = None,
    max_samples: int | None = None,
    skip_empty_responses: bool = False,
    drop_identical: bool = False,
) -> tuple[RawRecords, list[dict[str, Any]]]:
    """Read and normalize a preference dataset. Returns the raw records (for locations) and rows.

    Each row gets ``source_index``, its position in the source (for messages and output order).
    Pairs whose chosen equals rejected are counted in a warning, and dropped with ``drop_identical``.
    """
    records = read_records(name_or_path, split)
    if max_samples is not None:
        records = RawRecords(records.rows[:max_samples], records.source, records.locations[:max_samples])
    return records, normalize_records(records, options, skip_empty_responses, drop_identical)


def normalize_records(
    records: RawRecords,
    options: FormatOptions | None = None,
    skip_empty_responses: bool = False,
    drop_identical: bool = False,
) -> list[dict[str, Any]]:
    """The rows of ``records`` (read from a file, or given in memory) normalized, as :func:`load_preference_rows`
    returns them."""
    if not records.rows:
        raise UserError("the dataset has no rows", source=records.source)
    rows = [
        {**row, "source_index": index}
        for index, row in iter_normalized(records, options or FormatOptions(), skip_empty_responses)
    ]
    if not rows:
        raise UserError(
            f"no pair left: all {len(records.rows)} have an empty response (dropped by --skip_empty_responses)",
            source=records.source,
        )
    check_one_format(rows, records)
    identical = sum(1 for row in rows if row["chosen"] == row["rejected"])
    if identical:
        logger.warning(
            "%s: %d of %d pair(s) have chosen identical to rejected; they carry no preference signal%s",
            records.source,
            identical,
            len(rows),
            " (dropped)" if drop_identical else " (--drop_identical_pairs true drops them)",
        )
        if drop_identical:
            rows = [row for row in rows if row["chosen"] != row["rejected"]]
            if not rows:
                raise UserError(
                    f"no pair left: all {identical} have chosen identical to rejected (dropped by --drop_identical_pairs)",
                    source=records.source,
                )
    return rows
