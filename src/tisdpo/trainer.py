"""``PreferenceTrainer``: a transformers.Trainer whose step is a preference (or SFT) objective.

The loop, checkpoints, resume, gradient accumulation, mixed precision, report_to and the
accelerate / DeepSpeed / FSDP integration all come from ``transformers.Trainer``; this class only
computes the loss and the TRL-named metrics.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback

from tisdpo import losses, sparsepo
from tisdpo.config import TisdpoConfig
from tisdpo.data.collate import PreferenceCollator
from tisdpo.errors import UserError
from tisdpo.logprobs import CompletionLogps, completion_logps


class NonFiniteLossError(RuntimeError):
    pass


class PreferenceTrainer(Trainer):
    def __init__(
        self,
        model: Any,
        args: TisdpoConfig,
        processing_class: Any,
        ref_model: Any | None = None,
        **kwargs: Any,
    ) -> None:
        if args.loss_type == "sparsepo" and args.sparsepo_mask == "learned":
            sparsepo.attach_mask_head(model)  # before the optimizer is built, so the head trains too
        sides = ("chosen",) if args.loss_type == "sft" else ("chosen", "rejected")
        kwargs.setdefault("data_collator", PreferenceCollator(processing_class.pad_token_id, sides=sides))
        super().__init__(model=model, args=args, processing_class=processing_class, **kwargs)
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean
        self.logprob_path = args.logprob_path
        deepspeed_plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if self.is_fsdp_enabled or (deepspeed_plugin is not None and deepspeed_plugin.zero_stage == 3):
            # The LM head's weight is sharded outside the model's forward: use the model's own head.
            self.logprob_path = "logits"
        if args.disable_tqdm:
            # Quiet means quiet: metrics still go to trainer_state.json and report_to, not to stdout.
            self.remove_callback(PrinterCallback)
        self.ref_model = None
        if ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self._metric_sums: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(lambda: [0.0, 0.0]),
            "eval": defaultdict(lambda: [0.0, 0.0]),
        }

    # -- metrics ----------------------------------------------------------------------------
    def _record(self, name: str, values: torch.Tensor, counts: torch.Tensor | float | None = None) -> None:
        """Accumulate a sum (and a count) so that logged metrics are exact means over pairs."""
        mode = "train" if self.model.training else "eval"
        entry = self._metric_sums[mode][name]
        entry[0] += float(values.detach().float().sum())
        entry[1] += float(
            values.numel() if counts is None else (counts.sum() if isinstance(counts, torch.Tensor) else counts)
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Evaluation logs carry "<prefix>_loss" (eval_loss, or test_loss for metric_key_prefix="test").
        eval_prefix = next((key[: -len("loss")] for key in logs if key.endswith("_loss") and key != "train_loss"), None)
        mode = "train" if eval_prefix is None else "eval"
        sums = self._metric_sums[mode]
        if sums:
            names = sorted(sums)
            totals = torch.tensor([sums[n] for n in names], dtype=torch.float64, device=self.accelerator.device)
            totals = self.accelerator.reduce(totals, reduction="sum")
            prefix = eval_prefix or ""
            for name, (total, count) in zip(names, totals.tolist()):
                if count > 0:
                    logs[prefix + name] = total / count
            sums.clear()
        super().log(logs, start_time)

    # -- the step ---------------------------------------------------------------------------
    def _logps(
        self, model: Any, inputs: dict[str, torch.Tensor], return_logits: bool, return_hidden: bool = False
    ) -> CompletionLogps:
        return completion_logps(
            model,
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["completion_start"],
            inputs["completion_mask"],
            path=self.logprob_path,
            chunk_size=self.args.lm_head_chunk_size,
            return_logits=return_logits,
            return_hidden=return_hidden,
        )

    def _reference_context(self, model: Any) -> contextlib.AbstractContextManager:
        unwrapped = self.accelerator.unwrap_model(model)
        if self.ref_model is None and hasattr(unwrapped, "disable_adapter"):
            return unwrapped.disable_adapter()
        return contextlib.nullcontext()

    @torch.no_grad()
    def _reference(self, model: Any, inputs: dict[str, torch.Tensor]) -> CompletionLogps:
        if self.ref_model is None and not hasattr(self.accelerator.unwrap_model(model), "disable_adapter"):
            raise RuntimeError("no reference: pass a reference model, use PEFT, or precompute reference log-probs")
        with self._reference_context(model):
            return self._logps(
                self.ref_model if self.ref_model is not None else model,
                inputs,
                self.args.needs_token_kl,
            )

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ):
        args = self.args
        learned_masks = args.loss_type == "sparsepo" and args.sparsepo_mask == "learned"
        policy = self._logps(model, inputs, args.needs_token_kl, return_hidden=learned_masks)
        mask = inputs["completion_mask"]
        if args.loss_type == "sft":
            loss = losses.sft_loss(policy.logps, mask)
            self._record("logps/chosen", losses.masked_sum(policy.logps, mask))
        else:
            loss = self._preference_loss(model, inputs, policy)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {self.state.global_step} on pairs {inputs['pair_index'].tolist()}; "
                "check the data and weights of these pairs, or lower the learning rate"
            )
        if not self.model.training:  # exact eval_loss: a mean over pairs, whatever the batch sizes
            self._record("loss", loss.detach().expand(inputs["pair_index"].shape[0]))
        return (loss, {}) if return_outputs else loss

    def _preference_loss(self, model: Any, inputs: dict[str, torch.Tensor], policy: CompletionLogps) -> torch.Tensor:
        args = self.args
        mask = inputs["completion_mask"]
        pairs = inputs["pair_index"].shape[0]
        c, r = slice(0, pairs), slice(pairs, 2 * pairs)
        logps = policy.logps
        record = self._record
        record("logps/chosen", losses.masked_sum(logps[c], mask[c]))
        record("logps/rejected", losses.masked_sum(logps[r], mask[r]))
        record("logits/chosen", losses.masked_sum(policy.mean_logits[c], mask[c]), mask[c].sum())
        record("logits/rejected", losses.masked_sum(policy.mean_logits[r], mask[r]), mask[r].sum())

        if args.loss_type == "simpo":
            chosen_avg, rejected_avg = (
                losses.masked_mean(logps[c], mask[c]),
                losses.masked_mean(logps[r], mask[r]),
            )
            self._record_rewards(args.beta * chosen_avg, args.beta * rejected_avg)
            return losses.simpo_loss(chosen_avg, rejected_avg, args.beta, args.simpo_gamma_beta_ratio).mean()

        reference = None
        if "ref_logps" in inputs:
            ref_logps = inputs["ref_logps"]
        else:
            reference = self._reference(model, inputs)
            ref_logps = reference.logps
        token_logratios = logps - ref_logps
        chosen_logratios = losses.masked_sum(token_logratios[c], mask[c])
        rejected_logratios = losses.masked_sum(token_logratios[r], mask[r])
        self._record_rewards(args.beta * chosen_logratios, args.beta * rejected_logratios)

        token_kl = None
        if args.needs_token_kl:
            token_kl = torch.zeros_like(logps).masked_scatter(mask, losses.token_kl(policy.logits, reference.logits))
            record("kl/chosen", losses.masked_sum(token_kl[c], mask[c]))
            record("kl/rejected", losses.masked_sum(token_kl[r], mask[r]))

        if args.loss_type in ("dpo", "cdpo"):
            per_pair = losses.dpo_loss(chosen_logratios, rejected_logratios, args.beta, args.label_smoothing)
        elif args.loss_type == "ipo":
            per_pair = losses.ipo_loss(
                losses.masked_mean(token_logratios[c], mask[c]),
                losses.masked_mean(token_logratios[r], mask[r]),
                args.beta,
            )
        elif args.loss_type in ("tdpo1", "tdpo2"):
            per_pair = losses.tdpo_loss(
                chosen_logratios,
                rejected_logratios,
                losses.masked_sum(token_kl[c], mask[c]),
                losses.masked_sum(token_kl[r], mask[r]),
                args.beta,
                args.tdpo_alpha,
                variant=int(args.loss_type[-1]),
            )
        elif args.loss_type == "tisdpo":
            # Pairs without weights (e.g. held-out pairs) get unit weights: their loss is the DPO loss.
            weights = inputs["weights"] if "weights" in inputs else torch.ones_like(token_logratios)
            per_pair = losses.tisdpo_loss(
                token_logratios[c],
                token_logratios[r],
                weights[c],
                weights[r],
                mask[c],
                mask[r],
                args.beta,
                kl_coef=args.tisdpo_kl_coef,
                chosen_token_kl=None if token_kl is None else token_kl[c],
                rejected_token_kl=None if token_kl is None else token_kl[r],
            )
            weighted_chosen = args.beta * losses.masked_sum(token_logratios[c], mask[c], weights[c])
            weighted_rejected = args.beta * losses.masked_sum(token_logratios[r], mask[r], weights[r])
            record("weighted_rewards/chosen", weighted_chosen)
            record("weighted_rewards/rejected", weighted_rejected)
            record("weighted_rewards/margins", weighted_chosen - weighted_rejected)
            record("weights/chosen_mean", losses.masked_sum(weights[c], mask[c]), mask[c].sum())
            record("weights/rejected_mean", losses.masked_sum(weights[r], mask[r]), mask[r].sum())
        elif args.loss_type == "dlma":
            if "dlma_score" in inputs:
                scores = inputs["dlma_score"]
            elif not self.model.training:  # held-out human-labelled pairs: no margin, the DPO loss
                scores = torch.zeros_like(chosen_logratios)
            else:
                raise UserError(
                    "--loss_type dlma needs a 'dlma_score' for every pair (make the pairs with `tisdpo dlma generate`)"
                )
            per_pair = losses.dlma_loss(
                chosen_logratios, rejected_logratios, scores, args.beta, args.dlma_gamma, args.dlma_clamp
            )
        elif args.loss_type == "sparsepo":
            if args.sparsepo_mask == "learned":
                head = getattr(self.accelerator.unwrap_model(model), sparsepo.HEAD_ATTRIBUTE)
                masks = sparsepo.learned_masks(head, policy.hidden, mask)
            else:
                masks = sparsepo.reference_masks(ref_logps, mask, args.sparsepo_threshold)
            per_pair = losses.sparsepo_loss(
                token_logratios[c],
                token_logratios[r],
                masks[c],
                masks[r],
                mask[c],
                mask[r],
                args.beta,
                kl_coef=args.sparsepo_kl_coef,
                chosen_token_kl=None if token_kl is None else token_kl[c],
                rejected_token_kl=None if token_kl is None else token_kl[r],
            )
            record("sparsity/chosen", sparsepo.sparsity(masks[c], mask[c]))
            record("sparsity/rejected", sparsepo.sparsity(masks[r], mask[r]))
            record("masks/chosen_mean", losses.masked_sum(masks[c].detach(), mask[c]), mask[c].sum())
            record("masks/rejected_mean", losses.masked_sum(masks[r].detach(), mask[r]), mask[r].sum())
        else:
            raise ValueError(f"unknown loss_type {args.loss_type}")
        return per_pair.mean()

    def _record_rewards(self, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        self._record("rewards/chosen", chosen)
        self._record("rewards/rejected", rejected)
        self._record("rewards/accuracies", (chosen > rejected).float())
        self._record("rewards/margins", chosen - rejected)

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
