"""Preference metrics in Python: ``evaluate_preferences`` is ``tisdpo evaluate`` (without ``--generate``) on rows in
memory: the trainer's own evaluation of a policy against its reference on held-out pairs."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tisdpo.api.trainer import PreferenceData, TISDPOTrainer
from tisdpo.config.trainer import TISDPOConfig
from tisdpo.errors import UserError


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
