"""A preference dataset as the trainer takes it: read, normalized, tokenized (with its weights, if any)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tisdpo.data.formats import FormatOptions, RawRecords, normalize_records, read_records
from tisdpo.data.prepare import prepare_pairs
from tisdpo.data.tokenize import PairTokenizer, tokenizer_fingerprint
from tisdpo.weights.io import check_tokenizer

if TYPE_CHECKING:
    from tisdpo.config import DataArguments
    from tisdpo.config.trainer import TISDPOConfig

logger = logging.getLogger(__name__)


def format_options(data_args: DataArguments | TISDPOConfig) -> FormatOptions:
    """How the rows of a file are read: the preference key, the prompt template and the pair order."""
    return FormatOptions(
        preference_key=data_args.preference_key,
        prompt_template=data_args.prompt_template,
        reverse=data_args.reverse_pairs,
    )


def read_pairs(name: str, split: str, max_samples: int | None) -> RawRecords:
    """The rows of a preference dataset (a file, a saved dataset, a hub name), the first ``max_samples``."""
    records = read_records(name, split)
    if max_samples is None:
        return records
    return RawRecords(records.rows[:max_samples], records.source, records.locations[:max_samples])


def tokenize_records(
    records: RawRecords,
    data_args: DataArguments | TISDPOConfig,
    pair_tokenizer: PairTokenizer,
    need_weights: bool,
) -> Any:
    """Normalize and tokenize rows into the training table (a datasets.Dataset), their weights checked."""
    rows = normalize_records(
        records,
        format_options(data_args),
        data_args.skip_empty_responses,
        drop_identical=data_args.drop_identical_pairs,
    )
    prepared = prepare_pairs(rows, records, pair_tokenizer, need_weights=need_weights)
    logger.info(
        "%s: %d pairs ready (%d dropped by truncation)",
        records.source,
        len(prepared),
        len(prepared.dropped_indices),
    )
    return prepared.to_dataset()


def load_pairs(
    name: str,
    split: str,
    data_args: DataArguments,
    pair_tokenizer: PairTokenizer,
    need_weights: bool,
    max_samples: int | None,
) -> Any:
    """Read, normalize and tokenize a preference dataset into the training table (a datasets.Dataset)."""
    check_tokenizer(name, tokenizer_fingerprint(pair_tokenizer.tokenizer))
    return tokenize_records(read_pairs(name, split, max_samples), data_args, pair_tokenizer, need_weights)
