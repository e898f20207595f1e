"""``tisdpo weights``: token rewards from a contrastive pair, turned into TIS-DPO weights.

The flags are :class:`tisdpo.config.WeightsArguments` (with the model and data flags); the
work is :func:`tisdpo.weights.estimate.estimate_weights`, which :func:`tisdpo.estimate_weights` runs too (or,
with ``--from_rewards``, :func:`tisdpo.weights.estimate.rederive_weights`). This module checks the flags and
writes the file with :func:`tisdpo.save_weights`.
"""

from __future__ import annotations

import logging
import shutil

from tisdpo.api import save_weights
from tisdpo.config import DataArguments, ModelArguments, WeightsArguments, parse_config, transform_config
from tisdpo.errors import UserError
from tisdpo.weights.estimate import estimate_weights, parts_dir, rederive_weights
from tisdpo.weights.io import check_output_extension

logger = logging.getLogger(__name__)

REVERSE_PAIRS_REFUSED = (
    "--reverse_pairs: tisdpo weights scores the pairs as the file has them; score them without it, then train "
    "on the weights file with --reverse_pairs true, which swaps texts, token ids, rewards and weights together "
    "(exactly the weights of the reversed contrast on the reversed pairs)"
)


def run(argv: list[str]) -> None:
    model_args, data_args, args = parse_config(
        [ModelArguments, DataArguments, WeightsArguments], argv, prog="tisdpo weights"
    )
    if not args.output_file:
        raise UserError("tisdpo weights needs --output_file (.jsonl or .parquet)")
    check_output_extension(args.output_file)
    if data_args.reverse_pairs:
        raise UserError(REVERSE_PAIRS_REFUSED)
    if args.from_rewards:
        config = transform_config(args)
        rows, meta = rederive_weights(args.from_rewards, config)
        save_weights(args.output_file, rows, meta)
        logger.info("wrote %d rows with %s weights to %s", len(rows), config.name, args.output_file)
        return
    if not data_args.dataset_name:
        raise UserError("tisdpo weights needs --dataset_name")
    estimated = estimate_weights(model_args, data_args, args)
    if estimated is None:  # not the main process
        return
    save_weights(args.output_file, estimated.rows, estimated.meta)
    shutil.rmtree(parts_dir(args.output_file), ignore_errors=True)
    logger.info(
        "wrote %d rows to %s (%d dropped by truncation)",
        len(estimated.rows),
        args.output_file,
        estimated.meta["dropped"],
    )
