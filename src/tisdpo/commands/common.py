"""What the train, evaluate and weights commands share: loading pairs and models."""

from __future__ import annotations

import logging
from typing import Any

from tisdpo.config import DataArguments, ModelArguments, TisdpoConfig
from tisdpo.data.formats import FormatOptions, load_preference_rows
from tisdpo.data.prepare import prepare_pairs
from tisdpo.data.tokenize import PairTokenizer, tokenizer_fingerprint
from tisdpo.errors import UserError
from tisdpo.modeling import (
    distributed_state,
    load_causal_lm,
    load_contrastive_pair,
    load_tokenizer,
    model_fingerprint_parts,
    weights_materialized,
)
from tisdpo.reference import add_reference_logps
from tisdpo.weights.io import check_tokenizer

logger = logging.getLogger(__name__)


def format_options(data_args: DataArguments) -> FormatOptions:
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


def require(value: Any, flag: str, command: str) -> Any:
    if value is None:
        raise UserError(f"{command} needs --{flag}")
    return value


def load_tokenizer_for(model_args: ModelArguments) -> Any:
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    return load_tokenizer(name, trust_remote_code=model_args.trust_remote_code, revision=model_args.revision)


def load_model(model_args: ModelArguments, name: str) -> Any:
    return load_causal_lm(
        name,
        model_args.dtype,
        model_args.attn_implementation,
        model_args.trust_remote_code,
        model_args.revision,
    )


def load_model_pair(model_args: ModelArguments, positive: str, negative: str) -> tuple[Any, Any]:
    """The contrastive pair of ``tisdpo weights`` (S, D): two LoRA adapters on one base share it."""
    return load_contrastive_pair(
        positive,
        negative,
        model_args.dtype,
        model_args.attn_implementation,
        model_args.trust_remote_code,
        model_args.revision,
    )


def with_reference_logps(
    datasets: list[Any],
    model: Any,
    model_name: str,
    tokenizer: Any,
    config: TisdpoConfig,
    reference_context: Any = None,
) -> list[Any]:
    """Attach precomputed reference log-probs (cached) to every dataset in the list.

    ``model`` must hold its full weights on every process (see ``modeling.unsharded_loading``).
    """
    if not weights_materialized(model):
        raise UserError(
            f"{model_name}: its weights are sharded across processes (FSDP CPU-RAM-efficient loading or ZeRO-3) "
            "before training starts, so reference log-probs cannot be precomputed with it; "
            "load it within tisdpo.modeling.unsharded_loading()"
        )
    model.to(distributed_state().device)
    parts = model_fingerprint_parts(model_name, model)
    kwargs = {"reference_context": reference_context} if reference_context is not None else {}
    return [
        None
        if dataset is None
        else add_reference_logps(
            dataset,
            model,
            parts,
            tokenizer.pad_token_id,
            config.per_device_eval_batch_size,
            config.logprob_path,
            config.lm_head_chunk_size,
            config.ref_logps_cache_dir,
            **kwargs,
        )
        for dataset in datasets
    ]
