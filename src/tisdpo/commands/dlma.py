"""``tisdpo dlma generate``: preference pairs without human labels (DLMA); see :mod:`tisdpo.dlma`.

This module checks the flags (:class:`tisdpo.config.DlmaArguments` with the model and data flags), runs
:func:`tisdpo.dlma.generate_dlma_pairs` and writes the pairs with their provenance.
"""

from __future__ import annotations

import logging

from tisdpo.config import DataArguments, DlmaArguments, ModelArguments, parse_config
from tisdpo.dlma import generate_dlma_pairs
from tisdpo.errors import UserError, require
from tisdpo.weights.io import check_output_extension, write_meta, write_rows

logger = logging.getLogger(__name__)
USAGE = "usage: tisdpo dlma generate --model_name_or_path M --dataset_name PROMPTS --output_file pairs.jsonl [flags]"


def run(argv: list[str]) -> None:
    if not argv or argv[0] != "generate":
        raise UserError(f"unknown dlma action {argv[0]!r}; {USAGE}" if argv else USAGE)
    model_args, data_args, args = parse_config(
        [ModelArguments, DataArguments, DlmaArguments], argv[1:], prog="tisdpo dlma generate"
    )
    output = require(args.output_file, "output_file", "tisdpo dlma generate")
    check_output_extension(output)
    require(model_args.model_name_or_path, "model_name_or_path", "tisdpo dlma generate")
    require(data_args.dataset_name, "dataset_name", "tisdpo dlma generate")
    pairs = generate_dlma_pairs(model_args, data_args, args)
    if pairs is None:  # not the main process
        return
    write_rows(output, pairs.rows)
    write_meta(output, pairs.meta)
    logger.info(
        "wrote %d DLMA pairs to %s (%d prompts skipped: an empty sample; %d: no room for a completion under "
        "max_length; %d prompts longer than max_prompt_length=%s had their start cut, the contrastive text kept whole)",
        len(pairs.rows),
        output,
        pairs.meta["skipped_empty"],
        pairs.meta["skipped_no_room"],
        pairs.meta["prompts_cut"],
        data_args.max_prompt_length,
    )
