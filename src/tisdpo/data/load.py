"""A preference dataset as the trainer takes it: read, normalized, tokenized (with its weights, if any)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tisdpo.data.formats import FormatOptions, load_preference_rows
from tisdpo.data.prepare import prepare_pairs
from tisdpo.data.tokenize import PairTokenizer, tokenizer_fingerprint
from tisdpo.weights.io import check_tokenizer

if TYPE_CHECKING:
    from tisdpo.config import DataArguments

logger = logging.getLogger(__name__)


def format_options(data_args: DataArguments) -> FormatOptions:
    """How the rows of a file are read: the preference key, the prompt template and the pair order."""
    return FormatOptions(
        preference_key=data_args.preference_key,
        prompt_template=data_args.prompt_template,
        reverse=data_args.reverse_pairs,
    )


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
    records, rows = load_preference_rows(
        name,
        split,
        format_options(data_args),
        max_samples,
        data_args.skip_empty_responses,
        drop_identical=data_args.drop_identical_pairs,
    )
    prepared = prepare_pairs(rows, records, pair_tokenizer, need_weights=need_weights)
    logger.info(
        "%s: %d pairs ready (%d dropped by truncation)",
        name,
        len(prepared),
        len(prepared.dropped_indices),
    )
    return prepared.to_dataset()
