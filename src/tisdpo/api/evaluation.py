"""Evaluation in Python: ``evaluate_preferences`` is ``tisdpo evaluate`` on rows in memory (the trainer's own
evaluation of a policy against its reference on held-out pairs); ``generate_and_score`` is
``tisdpo evaluate --generate`` (samples, scores, win rate, KL)."""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tisdpo.api.trainer import PreferenceData, TISDPOTrainer
from tisdpo.config import DataArguments, GenerationArguments, ModelArguments, TisdpoConfig, check_values
from tisdpo.config.ranges import check_ranges
from tisdpo.config.trainer import TISDPOConfig
from tisdpo.errors import UserError
from tisdpo.evaluation.run import evaluate_generations

GENERATION_GROUPS = (ModelArguments, DataArguments, TisdpoConfig, GenerationArguments)


def evaluate_preferences(
    model: str | PreTrainedModel,
    eval_dataset: PreferenceData,
    args: TISDPOConfig,
    ref_model: str | PreTrainedModel | None = None,
    processing_class: PreTrainedTokenizerBase | None = None,
) -> dict[str, float]:
    """``eval_loss``, ``eval_rewards/{chosen,rejected,accuracies,margins}`` and ``eval_logps/*`` of ``model`` on the
    pairs of ``eval_dataset`` for the objective ``args.loss_type``. ``ref_model``: the model the policy started
    from (needed by every objective with a reference)."""
    if args.loss_type == "sft":
        raise UserError("evaluate_preferences computes preference metrics; choose a preference loss_type (dpo ...)")
    if args.needs_reference and ref_model is None:
        raise UserError("evaluate_preferences needs ref_model (the model the policy started from) for the rewards")
    trainer = TISDPOTrainer(
        model, args, eval_dataset=eval_dataset, processing_class=processing_class, ref_model=ref_model
    )
    return trainer.evaluate()


def generate_and_score(model: str, ref_model: str, dataset: str, output_dir: str, **options: Any) -> dict[str, Any]:
    """Sample responses of ``model`` (a name or path) and of a baseline (default: ``ref_model``) for the prompts of
    ``dataset`` (a file, saved dataset or hub name), score them and estimate KL(policy || ``ref_model``); write
    ``eval_results.json``, ``eval_results.md`` and the samples into ``output_dir``; return the metrics.
    ``options``: any other flag of ``tisdpo evaluate --generate`` by name (``scorer``, ``num_samples``,
    ``max_new_tokens``, ``reward_model_name_or_path``, ``max_prompts`` ...), checked like the flag."""
    values = check_values(options, GENERATION_GROUPS, source="generate_and_score")
    given = {"model_name_or_path": model, "ref_model_name_or_path": ref_model, "dataset_name": dataset}
    groups = []
    for group in GENERATION_GROUPS:
        names = {item.name for item in dataclasses.fields(group) if item.init}
        settings = {key: value for key, value in {**values, **given}.items() if key in names}
        if group is TisdpoConfig:
            settings = {"output_dir": output_dir, "report_to": "none", **settings}
        if group is GenerationArguments:
            settings["generate"] = True
        groups.append(group(**settings))
        check_ranges(groups[-1])
    model_args, data_args, config, gen_args = groups
    return evaluate_generations(model_args, data_args, config, gen_args)
