"""``tisdpo evaluate``: preference metrics of a model against a reference on held-out pairs.

With ``--generate``: sample responses from the policy and a baseline for held-out prompts, score
them (``--scorer``, ``--reward_model_name_or_path``, ``--safety_classifier_name_or_path``, ROUGE
against references) and estimate KL(policy || reference); see :mod:`tisdpo.evaluation.run`. The
preference metrics are then computed too only with ``--preference_metrics``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

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
from tisdpo.evaluation.config import GenerationArguments
from tisdpo.modeling import unsharded_loading
from tisdpo.trainer import PreferenceTrainer
from tisdpo.utils import write_json

logger = logging.getLogger(__name__)

EVAL_KEYS = (
    "eval_loss",
    "eval_rewards/chosen",
    "eval_rewards/rejected",
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval_logps/chosen",
    "eval_logps/rejected",
)


def preference_metrics(
    model_args: ModelArguments, data_args: DataArguments, config: TisdpoConfig
) -> tuple[dict[str, float], bool]:
    """The trainer's evaluation on held-out pairs; (metrics, whether this is the main process)."""
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
        if config.precompute_ref_log_probs:
            with unsharded_loading():  # whole on every process, even under FSDP / ZeRO-3 loading
                reference = load_model(model_args, model_args.ref_model_name_or_path)
            (dataset,) = with_reference_logps(
                [dataset], reference, model_args.ref_model_name_or_path, tokenizer, config
            )
            del reference
        else:
            ref_model = load_model(model_args, model_args.ref_model_name_or_path)
    policy = load_model(model_args, model_name)
    trainer = PreferenceTrainer(policy, config, tokenizer, ref_model=ref_model, eval_dataset=dataset)
    metrics = trainer.evaluate()
    return metrics, trainer.is_world_process_zero()


def generation_flags_given(gen_args: GenerationArguments) -> list[str]:
    return [
        f.name for f in dataclasses.fields(gen_args) if f.name != "generate" and getattr(gen_args, f.name) != f.default
    ]


def run(argv: list[str]) -> dict[str, Any]:
    model_args, data_args, config, gen_args = parse_config(
        [ModelArguments, DataArguments, TisdpoConfig, GenerationArguments], argv, prog="tisdpo evaluate"
    )
    set_seed(config.seed)
    if not gen_args.generate:
        ignored = generation_flags_given(gen_args)
        if ignored:
            logger.warning("ignored without --generate: %s", ", ".join(f"--{name}" for name in ignored))
        metrics, is_main = preference_metrics(model_args, data_args, config)
        if is_main:
            write_json(os.path.join(config.output_dir, "eval_results.json"), metrics)
        return metrics

    from tisdpo.evaluation.run import evaluate_generations

    metrics: dict[str, Any] = {}
    if gen_args.preference_metrics:
        metrics, _ = preference_metrics(model_args, data_args, config)
    return evaluate_generations(model_args, data_args, config, gen_args, extra_metrics=metrics)
