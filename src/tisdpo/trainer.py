"""``PreferenceTrainer``: a transformers.Trainer whose step is a preference (or SFT) objective.

The loop, checkpoints, resume, gradient accumulation, mixed precision, report_to and the
accelerate / DeepSpeed / FSDP integration all come from ``transformers.Trainer``; this class
computes the loss and the TRL-named metrics, and adds these guarantees:

* one step, however split: the loss of an optimizer step is the mean over all of its items (pairs;
  completion tokens for sft), whatever its split into micro-batches (gradient accumulation) and processes;
* no dropout in the policy (``--disable_dropout``, on by default), so that it matches its eval-mode
  reference; the saved config keeps the model's own dropout settings;
* numerical guards: a non-finite loss, or a non-finite gradient norm at an optimizer step, stops the
  run with the step, the pairs and a hint (or, with ``--skip_nonfinite_batches``, the step is
  skipped: no parameter moves, and ``nonfinite_batches_skipped`` counts it in the logs);
* atomic checkpoints: a checkpoint is written in ``OUTPUT_DIR/.tmp-checkpoint/`` and renamed to
  ``checkpoint-N`` when complete, so a killed run never leaves a ``checkpoint-N`` that a resume
  would trust half-written; the final model's files are staged the same way and moved in one by one;
* a resume checkpoint without a readable ``trainer_state.json`` (left by another tool, or a copy
  cut short) is passed over for the last complete one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from tisdpo import losses, sparsepo
from tisdpo.config import TisdpoConfig
from tisdpo.data.collate import PreferenceCollator
from tisdpo.errors import UserError
from tisdpo.logprobs import CompletionLogps, batch_logps, configs_of, shared_prompt_is_exact
from tisdpo.objectives import PairBatch, objective_for
from tisdpo.utils import atomic_path

logger = logging.getLogger(__name__)

CHECKPOINT_STAGING = ".tmp-checkpoint"  # checkpoints are written here, then renamed to checkpoint-N
MODEL_STAGING = ".tmp-model"  # the final model's files are written here, then moved into output_dir
TRAINER_STATE = "trainer_state.json"
NONFINITE_HINT = (
    "check these pairs' data and token weights (huge weights overflow), lower --learning_rate, keep "
    "--max_grad_norm on, or pass --skip_nonfinite_batches true to skip such batches"
)
NONFINITE_EVAL_HINT = "check these pairs' data and token weights, and the model's own weights"


class NonFiniteLossError(UserError):
    """A non-finite loss or gradient: the CLI prints it as one line (step, pairs, hint) and exits 1."""


def _pairs_text(indices: list[int], limit: int = 16) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    more = f", ... ({len(indices)} pairs)" if len(indices) > limit else ""
    return f"[{shown}{more}]"


def checkpoint_is_complete(path: str) -> bool:
    """A checkpoint folder whose trainer state (written last) is present and readable."""
    try:
        with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(folder: str) -> str | None:
    """The highest-step ``checkpoint-N`` of ``folder`` that is complete (None when there is none)."""
    if not os.path.isdir(folder):
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = sorted(
        ((int(m.group(1)), name) for name in os.listdir(folder) if (m := pattern.match(name))),
        reverse=True,
    )
    for _, name in steps:
        path = os.path.join(folder, name)
        if os.path.isdir(path) and checkpoint_is_complete(path):
            return path
    return None


def is_dropout_name(name: str) -> bool:
    """An attribute or config field that holds a dropout probability (``attention_dropout``, GPT-2's ``attn_pdrop``)."""
    return not name.startswith("_") and ("dropout" in name or name.endswith("pdrop"))


def is_probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0


ConfigChange = tuple[Any, str, Any]  # (config object, field, the value it had)


def disable_dropout(model: nn.Module) -> tuple[int, list[ConfigChange]]:
    """Set every dropout of ``model`` to 0: ``nn.Dropout`` layers (LoRA's included), dropout probabilities
    that modules keep as attributes for a functional dropout (``attention_dropout`` of attention layers),
    and the dropout fields of its configs, which some models read in their forward.

    Returns the number of layers and attributes changed, and the config fields changed with their old
    values (the trainer puts them back in every saved config).
    """
    changed = 0
    configs: dict[int, Any] = {}
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p != 0:
            module.p = 0.0
            changed += 1
        for name, value in list(vars(module).items()):
            if is_dropout_name(name) and is_probability(value):
                setattr(module, name, 0.0)
                changed += 1
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for sub_config in configs_of(config):
                configs.setdefault(id(sub_config), sub_config)
    config_changes: list[ConfigChange] = []
    for config in configs.values():
        for name, value in list(vars(config).items()):
            if is_dropout_name(name) and is_probability(value):
                config_changes.append((config, name, value))
                setattr(config, name, 0.0)
    return changed, config_changes


@contextlib.contextmanager
def config_values_restored(changes: list[ConfigChange]) -> Iterator[None]:
    """The configs' original values inside the block (for saving), the changed ones again after it."""
    changed_values = [getattr(config, name) for config, name, _ in changes]
    for config, name, value in changes:
        setattr(config, name, value)
    try:
        yield
    finally:
        for (config, name, _), value in zip(changes, changed_values):
            setattr(config, name, value)


class PreferenceTrainer(Trainer):
    def __init__(
        self,
        model: Any,
        args: TisdpoConfig,
        processing_class: Any,
        ref_model: Any | None = None,
        **kwargs: Any,
    ) -> None:
        self.objective = objective_for(args.loss_type)
        if self.objective.hidden_states(args):
            sparsepo.attach_mask_head(model)  # before the optimizer is built, so the head trains too
        sides = ("chosen", "rejected") if self.objective.pairs else ("chosen",)
        kwargs.setdefault("data_collator", self._collator(args, model, ref_model, processing_class.pad_token_id, sides))
        training = kwargs.get("train_dataset") is not None  # evaluation alone runs in eval mode: no dropout anyway
        dropout_config_changes = self._disable_dropout(model) if args.disable_dropout and training else []
        super().__init__(model=model, args=args, processing_class=processing_class, **kwargs)
        # compute_loss divides by the items (pairs, or completion tokens for sft) of the whole optimizer
        # step on all processes (num_items_in_batch): already scaled for gradient accumulation.
        self.loss_is_scaled_for_ga = True
        self._dropout_config_changes = dropout_config_changes
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
        # Per-pair metrics of the batch being computed; added to _metric_sums only if its loss is finite.
        self._batch_metrics: dict[str, list[torch.Tensor]] | None = None
        # Numerical guards: the pairs of the optimizer step in progress, and what went wrong in it.
        self._step_pairs: list[torch.Tensor] = []
        self._step_nonfinite_loss: str | None = None
        self.nonfinite_batches_skipped = 0
        self._checkpoint_staging: str | None = None

    @staticmethod
    def _collator(
        args: TisdpoConfig, model: Any, ref_model: Any, pad_token_id: int, sides: tuple[str, ...]
    ) -> PreferenceCollator:
        """The batch layout: the prompt computed once per pair (and pairs packed) when every model that runs on
        the batches takes the shared-prompt mask exactly (``logprobs.shared_prompt_is_exact``)."""
        wanted = args.shared_prompt or bool(args.pack_tokens)
        exact = wanted and all(shared_prompt_is_exact(m) for m in (model, ref_model) if m is not None)
        return PreferenceCollator(
            pad_token_id,
            sides=sides,
            shared_prompt=exact and args.shared_prompt,
            pack_tokens=args.pack_tokens if exact else None,
        )

    @staticmethod
    def _disable_dropout(model: nn.Module) -> list[ConfigChange]:
        changed, config_changes = disable_dropout(model)
        if changed or config_changes:
            fields = sorted({name for _, name, _ in config_changes})
            logger.info(
                "dropout disabled in the policy: %d layers/attributes%s set to 0 (--disable_dropout false keeps it)",
                changed,
                f", config {', '.join(fields)}" if fields else "",
            )
        return config_changes

    # -- loss normalization -------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """What one optimizer step's loss averages over, summed over its micro-batches and all processes:
        completion tokens for sft, pairs for the preference objectives.

        transformers would count ``labels`` (we have none); counting ourselves makes the loss the same
        however the step's batch is split into micro-batches and processes.
        """
        if not batch_samples:
            return None
        if not self.objective.pairs:
            count = sum(int(batch["completion_mask"].sum()) for batch in batch_samples)
        else:
            count = sum(int(batch["pair_index"].shape[0]) for batch in batch_samples)
        total = torch.tensor(count, dtype=torch.float32, device=device)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        return total

    def _step_mean(self, total: torch.Tensor, count: torch.Tensor, num_items_in_batch: Any) -> torch.Tensor:
        """``total`` (a sum of per-item losses) as this micro-batch's share of the step's mean loss.

        With the step's item count the gradients sum to those of the mean over the whole step, however it
        is split; the factor undoes DDP's (and FSDP's, DeepSpeed's) average of gradients over processes.
        Without it (evaluation) this batch's own mean.
        """
        if num_items_in_batch is None:
            mean = total / count.clamp(min=1)
            return mean / self.args.gradient_accumulation_steps if self.model.training else mean
        return total / num_items_in_batch * self.accelerator.num_processes

    # -- metrics ----------------------------------------------------------------------------
    def _record(self, name: str, values: torch.Tensor, counts: torch.Tensor | None = None) -> None:
        """Accumulate one value (and one count, default 1) per pair so that logged metrics are exact means."""
        values = values.detach().double()
        counts = torch.ones_like(values) if counts is None else counts.detach().double().expand_as(values)
        if self._batch_metrics is None:  # outside compute_loss
            self._add_metrics({name: [values, counts]}, self.model.training)
            return
        entry = self._batch_metrics.setdefault(name, [torch.zeros_like(values), torch.zeros_like(values)])
        entry[0] += values
        entry[1] += counts

    def _add_metrics(self, batch_metrics: dict[str, list[torch.Tensor]], training: bool) -> None:
        """Add a batch's per-pair metrics to the sums that ``log`` turns into means.

        Evaluation values are first gathered over processes with ``gather_for_metrics``, which drops
        the pairs accelerate repeats to even out the last batches across processes: every held-out
        pair counts once, and the evaluation sums are already over all processes.
        """
        if not batch_metrics:
            return
        names = list(batch_metrics)
        table = torch.stack([column for name in names for column in batch_metrics[name]], dim=1)
        if not training:
            table = self.accelerator.gather_for_metrics(table)
        totals = table.sum(0).tolist()
        sums = self._metric_sums["train" if training else "eval"]
        for k, name in enumerate(names):
            sums[name][0] += totals[2 * k]
            sums[name][1] += totals[2 * k + 1]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Evaluation logs carry "<prefix>_loss" (eval_loss, or test_loss for metric_key_prefix="test").
        eval_prefix = next((key[: -len("loss")] for key in logs if key.endswith("_loss") and key != "train_loss"), None)
        mode = "train" if eval_prefix is None else "eval"
        sums = self._metric_sums[mode]
        if sums:
            names = sorted(sums)
            totals = torch.tensor([sums[n] for n in names], dtype=torch.float64, device=self.accelerator.device)
            if mode == "train":  # evaluation sums are already over all processes (_add_metrics)
                totals = self.accelerator.reduce(totals, reduction="sum")
            prefix = eval_prefix or ""
            for name, (total, count) in zip(names, totals.tolist()):
                if count > 0:
                    logs[prefix + name] = total / count
            sums.clear()
        if mode == "train" and self.args.skip_nonfinite_batches:
            logs["nonfinite_batches_skipped"] = self.nonfinite_batches_skipped
        super().log(logs, start_time)

    # -- the step ---------------------------------------------------------------------------
    def _logps(
        self, model: Any, inputs: dict[str, torch.Tensor], return_logits: bool, return_hidden: bool = False
    ) -> CompletionLogps:
        return batch_logps(
            model,
            inputs,
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
        training = self.model.training
        self._batch_metrics = {}
        try:
            return_hidden = self.objective.hidden_states(args)
            policy = self._logps(model, inputs, args.needs_token_kl, return_hidden=return_hidden)
            mask = inputs["completion_mask"]
            if not self.objective.pairs:
                loss = self._step_mean(-(policy.logps * mask).sum(), mask.sum(), num_items_in_batch)
                self._record("logps/chosen", losses.masked_sum(policy.logps, mask))
                if not training:  # eval_loss: the NLL per completion token over the whole set
                    self._record("loss", -losses.masked_sum(policy.logps, mask), mask.sum(-1))
            else:
                per_pair = self._preference_loss(model, inputs, policy)
                loss = self._step_mean(per_pair.sum(), torch.tensor(per_pair.numel()), num_items_in_batch)
                if not training:  # eval_loss: the mean over the pairs of the whole set
                    self._record("loss", per_pair)
            batch_metrics = self._batch_metrics
        finally:
            self._batch_metrics = None
        if not training:  # a collective (gather_for_metrics): every process takes part, finite or not
            self._add_metrics(batch_metrics, training)
        if not torch.isfinite(loss):
            pairs = _pairs_text(inputs["pair_index"].tolist())
            if not training:
                raise NonFiniteLossError(
                    f"non-finite evaluation loss ({loss.item()}) after step {self.state.global_step} "
                    f"on pairs {pairs}; {NONFINITE_EVAL_HINT}"
                )
            step = self.state.global_step + 1
            what = f"non-finite loss ({loss.item()}) at step {step} on pairs {pairs}"
            deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
            if not args.skip_nonfinite_batches or deepspeed:  # DeepSpeed steps inside backward: no skipping
                raise NonFiniteLossError(f"{what}; {NONFINITE_HINT}")
            # Skipped at the optimizer step (see _check_step): its gradients are dropped, whatever they are.
            self._step_nonfinite_loss = self._step_nonfinite_loss or what
        elif training:
            self._add_metrics(batch_metrics, training)
        return (loss, {}) if return_outputs else loss

    # -- numerical guards -------------------------------------------------------------------
    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """Transformers' step (forward, backward), then, on the micro-batch that ends an optimizer step
        (gradient accumulation), the check of the loss and of the gradient before the optimizer moves."""
        self._step_pairs.append(inputs["pair_index"])
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            try:
                self._check_step(model)
            finally:
                self._step_pairs = []
                self._step_nonfinite_loss = None
        return loss

    def _check_step(self, model: Any) -> None:
        """Stop (or skip the step) when this step's loss or gradient norm is not finite.

        The gradients are checked after the last backward of the step, before clipping and the
        optimizer: under DDP they are already averaged over processes; the decision is reduced over
        processes anyway (sharded gradients under FSDP), so every process stops or skips together.
        Under fp16 the gradient scaler already skips steps with inf/NaN gradients (part of its loss
        scaling), and under DeepSpeed the optimizer steps inside backward; there only the loss is checked.
        """
        problem = self._step_nonfinite_loss
        norm = None
        check_grads = self.accelerator.scaler is None and self.accelerator.distributed_type != DistributedType.DEEPSPEED
        if check_grads:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
            if grads:
                norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g.detach(), dtype=torch.float32) for g in grads])
                )
        flags = torch.tensor(
            [float(problem is not None), 0.0 if norm is None else float(not torch.isfinite(norm))],
            device=self.accelerator.device,
        )
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        bad_loss, bad_grad = (bool(v > 0) for v in flags.tolist())
        if not bad_loss and not bad_grad:
            return
        step = self.state.global_step + 1
        if problem is None and bad_grad:
            pairs = _pairs_text(torch.cat([p.reshape(-1) for p in self._step_pairs]).tolist())
            value = f" (gradient norm {norm.item()})" if norm is not None and not torch.isfinite(norm) else ""
            problem = f"non-finite gradient{value} at step {step} on pairs {pairs}"
        elif problem is None:
            problem = f"non-finite loss on another process at step {step}"
        if not self.args.skip_nonfinite_batches:
            raise NonFiniteLossError(f"{problem}; {NONFINITE_HINT}")
        # Skip: no gradient at all, so the optimizer leaves every parameter (and its own state) as it is.
        model.zero_grad(set_to_none=True)
        self.nonfinite_batches_skipped += 1
        logger.warning("skipped the batch of step %d: %s", step, problem)

    # -- checkpoints, resume and the final save -----------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        elif isinstance(resume_from_checkpoint, str):
            if not os.path.isdir(resume_from_checkpoint):
                raise UserError("checkpoint folder not found", source=resume_from_checkpoint)
            if not checkpoint_is_complete(resume_from_checkpoint):
                fallback = last_complete_checkpoint(os.path.dirname(os.path.abspath(resume_from_checkpoint)))
                logger.warning(
                    "%s is incomplete (no readable %s: a save cut short?); %s",
                    resume_from_checkpoint,
                    TRAINER_STATE,
                    f"resuming from {fallback} instead" if fallback else "starting from the beginning",
                )
                resume_from_checkpoint = fallback
        result = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        if self.args.skip_nonfinite_batches:
            result.metrics["nonfinite_batches_skipped"] = self.nonfinite_batches_skipped
        return result

    def _get_output_dir(self, trial: Any) -> str:
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Transformers' checkpoint, written in a staging folder and renamed to ``checkpoint-N`` when complete."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, CHECKPOINT_STAGING)
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.exists(staged):
            shutil.rmtree(staged)  # left by a run killed while saving
        self.accelerator.wait_for_everyone()
        self._checkpoint_staging = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_staging = None
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG states ...)
        if self.args.should_save:
            if self.state.best_model_checkpoint == staged:
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE))
            if os.path.isdir(final):
                shutil.rmtree(final)  # an older or incomplete checkpoint of the same step
            os.replace(staged, final)
            with contextlib.suppress(OSError):
                os.rmdir(staging_root)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (and tokenizer) so that every file in ``output_dir`` is complete.

        Checkpoints are staged by ``_save_checkpoint``. A final save is written in a staging folder
        and each file is then moved in with an atomic rename: a kill leaves either the previous
        file or the new one, never a truncated one.
        """
        with config_values_restored(self._dropout_config_changes):  # the model's own dropout in its saved config
            self._save_model(output_dir, _internal_call)

    def _save_model(self, output_dir: str | None, _internal_call: bool) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if _internal_call or self._checkpoint_staging is not None:
            super().save_model(output_dir, _internal_call)
            return
        staging = os.path.join(output_dir, MODEL_STAGING)
        if self.args.should_save and os.path.exists(staging):
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        super().save_model(staging, _internal_call)
        self.accelerator.wait_for_everyone()
        if self.args.should_save and os.path.isdir(staging):
            for name in sorted(os.listdir(staging)):
                target = os.path.join(output_dir, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                os.replace(os.path.join(staging, name), target)
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def save_state(self) -> None:
        """``trainer_state.json`` of the finished run, written atomically."""
        if not self.is_world_process_zero():
            return
        with atomic_path(os.path.join(self.args.output_dir, TRAINER_STATE)) as tmp:
            self.state.save_to_json(tmp)

    def _preference_loss(self, model: Any, inputs: dict[str, torch.Tensor], policy: CompletionLogps) -> torch.Tensor:
        """The loss of each pair of the batch (their mean is the step's loss); records the metrics."""
        args, objective = self.args, self.objective
        mask = inputs["completion_mask"]
        pairs = inputs["pair_index"].shape[0]
        c, r = slice(0, pairs), slice(pairs, 2 * pairs)
        record = self._record
        record("logps/chosen", losses.masked_sum(policy.logps[c], mask[c]))
        record("logps/rejected", losses.masked_sum(policy.logps[r], mask[r]))
        record("logits/chosen", losses.masked_sum(policy.mean_logits[c], mask[c]), mask[c].sum(-1))
        record("logits/rejected", losses.masked_sum(policy.mean_logits[r], mask[r]), mask[r].sum(-1))
        batch = PairBatch(
            args,
            policy.logps,
            mask,
            weights=inputs.get("weights") if objective.token_weights else None,
            scores=inputs.get(objective.score_column) if objective.score_column else None,
            hidden=policy.hidden,
            training=self.model.training,
        )
        if not objective.reference_free:
            if "ref_logps" in inputs:
                batch.ref_logps = inputs["ref_logps"]
            else:
                reference = self._reference(model, inputs)
                batch.ref_logps = reference.logps
                if args.needs_token_kl:
                    batch.token_kl = torch.zeros_like(policy.logps).masked_scatter(
                        mask, losses.token_kl(policy.logits, reference.logits)
                    )
        if objective.hidden_states(args):
            batch.mask_head = getattr(self.accelerator.unwrap_model(model), sparsepo.HEAD_ATTRIBUTE)
        output = objective.compute(batch)
        self._record_rewards(output.loss.chosen_rewards, output.loss.rejected_rewards)
        for name, (values, counts) in output.metrics.items():
            record(name, values, counts)
        return output.loss.losses

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
