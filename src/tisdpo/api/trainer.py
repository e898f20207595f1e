"""``TISDPOTrainer``: TRL's ``DPOTrainer`` shape over the preference trainer, raw preference rows in.

    trainer = TISDPOTrainer(model, TISDPOConfig(output_dir="out", loss_type="tisdpo"), train_dataset=rows,
                            processing_class=tokenizer, peft_config=LoraConfig(...))
    trainer.train()

The trainer reads raw rows (standard, conversational or implicit-prompt; with or without
``chosen_weights`` / ``rejected_weights``) from a ``datasets.Dataset`` or a list of dicts, normalizes,
validates and tokenizes them exactly as ``tisdpo train`` does (which runs this class), attaches the
reference log-probs when ``precompute_ref_log_probs`` asks for them, and trains with
:class:`tisdpo.trainer.PreferenceTrainer`. Every mistake is a one-line :class:`~tisdpo.errors.UserError`.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed
from transformers.trainer_utils import get_last_checkpoint

from tisdpo.config.trainer import TISDPOConfig
from tisdpo.data.formats import RawRecords
from tisdpo.data.load import tokenize_records
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.errors import UserError
from tisdpo.modeling import load_causal_lm, load_tokenizer, unsharded_loading, weights_materialized
from tisdpo.reference import with_reference_logps
from tisdpo.report.model_card import ModelCardInfo, write_model_card
from tisdpo.trainer import PreferenceTrainer

logger = logging.getLogger(__name__)

# What the trainer takes as a dataset: raw rows (a datasets.Dataset, a list of dicts, or records read from a
# file with their line numbers), or a table this package tokenized already (it has prompt_input_ids).
PreferenceData = datasets.Dataset | Sequence[Mapping[str, Any]] | RawRecords
TOKENIZED_COLUMN = "prompt_input_ids"


def as_records(data: PreferenceData, source: str) -> RawRecords:
    """Rows in memory as records whose locations are their positions (``row 3``)."""
    if isinstance(data, RawRecords):
        return data
    if isinstance(data, datasets.Dataset):
        rows = data.to_list()
    elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
        bad = next((i for i, row in enumerate(data) if not isinstance(row, Mapping)), None)
        if bad is not None:
            raise UserError(f"row {bad} is {type(data[bad]).__name__}; expected a dict of columns", source=source)
        rows = [dict(row) for row in data]
    else:
        raise UserError(
            f"expected a datasets.Dataset or a list of dicts (prompt/chosen/rejected rows), got {type(data).__name__}",
            source=source,
        )
    return RawRecords(rows, source, [f"row {i}" for i in range(len(rows))])


def tokenize_preference_data(
    data: PreferenceData | None,
    tokenizer: PreTrainedTokenizerBase,
    args: TISDPOConfig,
    need_weights: bool,
    source: str,
) -> datasets.Dataset | None:
    """The training table of ``data`` (None stays None; a table tokenized already is kept as it is)."""
    if data is None:
        return None
    if isinstance(data, datasets.Dataset) and TOKENIZED_COLUMN in data.column_names:
        return data
    pair_tokenizer = PairTokenizer(tokenizer, args.max_length, args.max_prompt_length)
    return tokenize_records(as_records(data, source), args, pair_tokenizer, need_weights)


def model_name_of(model: str | PreTrainedModel) -> str:
    return model if isinstance(model, str) else str(getattr(model, "name_or_path", "") or "")


def is_peft_model(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def lora_config(
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str = "all-linear",
    layers: str | None = None,
) -> Any:
    """A ``peft.LoraConfig`` for a causal LM (``target_modules``: comma-separated names, or all-linear): the
    adapter ``tisdpo train --use_peft true`` trains. ``layers`` (e.g. ``"24-29"`` or ``"0,2,4"``) puts the
    adapter on those decoder layers only: backward then stops at the lowest of them, so a top-layers adapter
    trains faster (peft needs module names for this, not all-linear)."""
    try:
        from peft import LoraConfig  # optional dependency: only LoRA training needs it
    except ImportError:
        raise UserError("LoRA needs the peft package: pip install 'tisdpo[peft]'") from None
    targets: str | list[str] = (
        target_modules
        if target_modules == "all-linear"
        else [m.strip() for m in target_modules.split(",") if m.strip()]
    )
    layer_indices = parse_layers(layers) if layers else None
    if layer_indices is not None and isinstance(targets, str):
        raise UserError(
            "--lora_layers needs module names in --lora_target_modules (e.g. "
            "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj), not all-linear",
            field="lora_layers",
        )
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        layers_to_transform=layer_indices,
        task_type="CAUSAL_LM",
    )


def parse_layers(spec: str) -> list[int]:
    """``"24-29"`` / ``"0,2,4"`` / ``"0-3,8"`` -> the layer indices, ascending."""
    indices: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        try:
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
        except ValueError:
            raise UserError(
                f"expected layer indices like '24-29' or '0,2,4', got '{spec}'", field="lora_layers"
            ) from None
        if first < 0 or last < first:
            raise UserError(f"expected layer indices like '24-29' or '0,2,4', got '{spec}'", field="lora_layers")
        indices.update(range(first, last + 1))
    return sorted(indices)


class TISDPOTrainer(PreferenceTrainer):
    """Train ``model`` on preference rows with the objective ``args.loss_type`` (DPO family, TIS-DPO, TDPO,
    SimPO, SFT, DLMA, SparsePO).

    ``model``: a causal LM or its name/path (loaded in its own dtype). ``train_dataset`` / ``eval_dataset``:
    raw preference rows (see :data:`PreferenceData`); TIS-DPO needs ``chosen_weights`` / ``rejected_weights``
    (from :func:`tisdpo.estimate_weights`). ``processing_class``: the tokenizer (default: the model's).
    ``ref_model``: the reference (default: the model's starting weights; with a LoRA adapter, the model with
    the adapter disabled). ``peft_config``: a ``peft.LoraConfig`` to train an adapter instead of the model.
    Other keyword arguments go to ``transformers.Trainer`` (``callbacks``, ``optimizers`` ...).
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: TISDPOConfig,
        train_dataset: PreferenceData | None = None,
        eval_dataset: PreferenceData | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        ref_model: str | PreTrainedModel | None = None,
        peft_config: Any | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, TISDPOConfig):
            raise UserError(f"args must be a tisdpo.TISDPOConfig, got {type(args).__name__}")
        self.model_name = model_name_of(model)
        if processing_class is None:
            if not self.model_name:
                raise UserError("processing_class is required when the model has no name_or_path to load it from")
            processing_class = load_tokenizer(self.model_name)
        elif processing_class.pad_token_id is None:
            processing_class.pad_token = processing_class.eos_token  # batches are padded; as TRL does
        policy = load_causal_lm(model) if isinstance(model, str) else model
        if not args.needs_reference:
            ref_model = None  # SimPO, SFT: reference-free
        elif isinstance(ref_model, str):
            ref_model = load_causal_lm(ref_model)
        if peft_config is not None:
            policy = self._with_adapter(policy, peft_config, args.seed)
        self.is_adapter = is_peft_model(policy)
        train_table = tokenize_preference_data(
            train_dataset, processing_class, args, args.needs_weights, "train_dataset"
        )
        # Held-out pairs without weights are scored with unit weights (the DPO loss).
        eval_table = tokenize_preference_data(eval_dataset, processing_class, args, False, "eval_dataset")
        if args.needs_reference and args.precompute_ref_log_probs:
            train_table, eval_table = self._precompute_reference(
                policy, ref_model, processing_class, args, [train_table, eval_table]
            )
            ref_model = None  # no reference model is held while training
        elif args.needs_reference and ref_model is None and not self.is_adapter:
            ref_model = copy.deepcopy(policy).eval()  # the starting weights (with an adapter: the adapter disabled)
        if args.ddp_find_unused_parameters is None and args.logprob_path == "chunked":
            # The chunked log-prob path applies the LM head after the model's forward. DDP's search for
            # unused parameters (transformers' default) would mark the head's weight ready at the end of
            # the forward and again when its gradient arrives ("marked as ready twice"). Every parameter
            # of a causal LM is used in every step, so the search is not needed.
            args.ddp_find_unused_parameters = False
        super().__init__(
            policy,
            args,
            processing_class,
            ref_model=ref_model,
            train_dataset=train_table,
            eval_dataset=eval_table,
            **kwargs,
        )

    @staticmethod
    def _with_adapter(policy: Any, peft_config: Any, seed: int) -> Any:
        try:
            from peft import get_peft_model  # optional dependency: only LoRA training needs it
        except ImportError:
            raise UserError("peft_config needs the peft package: pip install 'tisdpo[peft]'") from None
        set_seed(seed)  # the adapter's initial weights
        return get_peft_model(policy, peft_config)

    def _precompute_reference(
        self,
        policy: Any,
        ref_model: Any | None,
        tokenizer: PreTrainedTokenizerBase,
        args: TISDPOConfig,
        tables: list[datasets.Dataset | None],
    ) -> list[datasets.Dataset | None]:
        """The tables with ``ref_chosen_logps`` / ``ref_rejected_logps``: of ``ref_model`` if given, else of the
        policy's starting weights (with a LoRA adapter, the policy with its adapter disabled). A policy whose
        weights are sharded at load (FSDP CPU-RAM-efficient loading, ZeRO-3) is loaded whole for the scoring."""
        if ref_model is None and not weights_materialized(policy):
            if not self.model_name:
                raise UserError(
                    "the model's weights are sharded across processes; pass ref_model (a full copy) to precompute "
                    "the reference log-probs"
                )
            with unsharded_loading():
                ref_model = load_causal_lm(self.model_name)
        if ref_model is not None:
            tables = with_reference_logps(tables, ref_model, model_name_of(ref_model), tokenizer, args)
            del ref_model
            gc.collect()
            return tables
        context = policy.disable_adapter if self.is_adapter else None
        return with_reference_logps(tables, policy, self.model_name, tokenizer, args, context)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``; with ``args.auto_resume`` (the default) it resumes from the last checkpoint in
        ``args.output_dir`` when there is one and no checkpoint is named."""
        checkpoint = resume_from_checkpoint if resume_from_checkpoint is not None else self.args.resume_from_checkpoint
        if checkpoint is None and self.args.auto_resume and os.path.isdir(self.args.output_dir):
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint:
                logger.info("resuming from %s", checkpoint)
        return super().train(resume_from_checkpoint=checkpoint, **kwargs)

    def create_model_card(self, dataset_name: str | None = None, weights_meta: dict[str, Any] | None = None) -> None:
        """Write ``README.md`` (the model card) into ``args.output_dir``: base model, objective, data, metrics.
        ``weights_meta``: the provenance of the token weights (``tisdpo.load_weights(path).meta``)."""
        if not self.is_world_process_zero():
            return
        card = ModelCardInfo.from_training(
            self.args,
            self.model_name,
            dataset_name,
            self.state.log_history,
            weights_meta=weights_meta if self.args.needs_weights else None,
            num_pairs=len(self.train_dataset) if self.train_dataset is not None else None,
            is_adapter=self.is_adapter,
        )
        write_model_card(self.args.output_dir, card)
