"""``tisdpo evaluate``: preference metrics of a model against a reference on held-out pairs."""

from __future__ import annotations

import os

from transformers import set_seed

from tisdpo.commands.common import (
    load_model,
    load_pairs,
    load_tokenizer_for,
    require,
    with_reference_logps,
)
from tisdpo.config import DataArguments, ModelArguments, TisdpoConfig, parse_config
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.errors import UserError
from tisdpo.trainer import PreferenceTrainer
from tisdpo.utils import write_json

EVAL_KEYS = (
    "eval_loss",
    "eval_rewards/chosen",
    "eval_rewards/rejected",
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval_logps/chosen",
    "eval_logps/rejected",
)


def run(argv: list[str]) -> dict[str, float]:
    model_args, data_args, config = parse_config(
        [ModelArguments, DataArguments, TisdpoConfig], argv, prog="tisdpo evaluate"
    )
    model_name = require(model_args.model_name_or_path, "model_name_or_path", "tisdpo evaluate")
    dataset_name = data_args.eval_dataset_name or require(data_args.dataset_name, "dataset_name", "tisdpo evaluate")
    split = data_args.eval_dataset_split if data_args.eval_dataset_name else data_args.dataset_split
    if config.loss_type == "sft":
        raise UserError(
            "tisdpo evaluate computes preference metrics; choose a preference --loss_type (dpo, tisdpo ...)"
        )
    if config.needs_reference and not model_args.ref_model_name_or_path:
        raise UserError(
            "tisdpo evaluate needs --ref_model_name_or_path (the model the policy started from) for the rewards"
        )
    set_seed(config.seed)
    tokenizer = load_tokenizer_for(model_args)
    pair_tokenizer = PairTokenizer(tokenizer, data_args.max_length, data_args.max_prompt_length)
    dataset = load_pairs(
        dataset_name,
        split,
        data_args,
        pair_tokenizer,
        config.needs_weights,
        data_args.max_eval_samples or data_args.max_samples,
    )
    ref_model = None
    if config.needs_reference:
        reference = load_model(model_args, model_args.ref_model_name_or_path)
        if config.precompute_ref_log_probs:
            (dataset,) = with_reference_logps(
                [dataset], reference, model_args.ref_model_name_or_path, tokenizer, config
            )
        else:
            ref_model = reference
    policy = load_model(model_args, model_name)
    trainer = PreferenceTrainer(policy, config, tokenizer, ref_model=ref_model, eval_dataset=dataset)
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        write_json(os.path.join(config.output_dir, "eval_results.json"), metrics)
    return metrics
