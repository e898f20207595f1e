"""``tisdpo evaluate``: preference metrics of a model against a reference on held-out pairs.

With ``--generate``: sample responses from the policy and a baseline for held-out prompts, score
them (``--scorer``, ``--reward_model_name_or_path``, ``--safety_classifier_name_or_path``, ROUGE
against references) and estimate KL(policy || reference); see :mod:`tisdpo.evaluation.run`. The
preference metrics (:mod:`tisdpo.evaluation.preference`) are then computed too only with
``--preference_metrics``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from transformers import set_seed

from tisdpo.config import DataArguments, GenerationArguments, ModelArguments, TisdpoConfig, parse_config
from tisdpo.evaluation.preference import preference_metrics
from tisdpo.utils import write_json

logger = logging.getLogger(__name__)


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
