"""Preference metrics of a policy against its reference on held-out pairs (``tisdpo evaluate``).

The trainer's own evaluation: its loss, implicit rewards, reward accuracy and margins, and log-probs,
for the ``--loss_type`` given (weights from a weights file with ``tisdpo``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tisdpo.data.load import load_pairs
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.errors import UserError, require
from tisdpo.modeling import load_model, load_tokenizer_for, unsharded_loading
from tisdpo.reference import with_reference_logps

if TYPE_CHECKING:
    from tisdpo.config import DataArguments, ModelArguments, TisdpoConfig


def preference_metrics(
    model_args: ModelArguments, data_args: DataArguments, config: TisdpoConfig
) -> tuple[dict[str, float], bool]:
    """The trainer's evaluation on held-out pairs; (metrics, whether this is the main process)."""
    from tisdpo.trainer import PreferenceTrainer

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
