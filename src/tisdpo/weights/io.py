"""The weights file: the input rows plus token ids, token rewards and weights, with provenance.

The file is JSONL or Parquet (by extension) and is directly a ``--dataset_name`` for training.
Provenance (models, prompts, transform, tokenizer fingerprint) sits beside it in
``<file>.meta.json``; training refuses a weights file made with another tokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from tisdpo.errors import UserError
from tisdpo.utils import atomic_path, write_json

WEIGHT_COLUMNS = (
    "chosen_token_ids",
    "rejected_token_ids",
    "chosen_token_rewards",
    "rejected_token_rewards",
    "chosen_weights",
    "rejected_weights",
)


def meta_path(path: str) -> str:
    return path + ".meta.json"


def check_output_extension(path: str) -> None:
    if not path.lower().endswith((".jsonl", ".parquet")):
        raise UserError("the output file must end in .jsonl or .parquet", source=path)


def write_rows(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows atomically as JSONL or Parquet (by the file's extension)."""
    check_output_extension(path)
    with atomic_path(path) as tmp:
        if path.lower().endswith(".parquet"):
            import datasets

            datasets.Dataset.from_list(list(rows)).to_parquet(tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_meta(path: str, meta: dict[str, Any]) -> None:
    write_json(meta_path(path), meta)


def remove_meta(path: str) -> None:
    """Remove the provenance of an earlier output at ``path`` before a new one is written."""
    if os.path.exists(meta_path(path)):
        os.remove(meta_path(path))


def read_meta(path: str) -> dict[str, Any] | None:
    sidecar = meta_path(path)
    if not os.path.exists(sidecar):
        return None
    with open(sidecar, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as err:
            raise UserError(f"provenance file is not valid JSON ({err.msg})", source=sidecar) from None


def write_weights_file(output_file: str, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Order matters for a kill at any moment: the old provenance goes first, then the rows and their
    provenance are each renamed into place; a file never sits beside another run's provenance."""
    remove_meta(output_file)
    write_rows(output_file, rows)
    write_meta(output_file, meta)


def check_tokenizer(path: str, fingerprint: str) -> None:
    """Refuse a weights file whose provenance names another tokenizer."""
    meta = read_meta(path) if os.path.isfile(path) else None
    if meta and meta.get("tokenizer_fingerprint") not in (None, fingerprint):
        raise UserError(
            f"this weights file was made with another tokenizer (fingerprint {meta['tokenizer_fingerprint']}, "
            f"training uses {fingerprint}; made from {meta.get('tokenizer')}); rescore it with `tisdpo weights` using this model's tokenizer",
            source=path,
        )
