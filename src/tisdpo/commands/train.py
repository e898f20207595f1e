"""``tisdpo train``: DPO-family, TIS-DPO and SFT training of a causal LM on preference pairs.

A thin command over the Python API: the flags are ``ModelArguments`` (which model, LoRA),
``DatasetArguments`` (which data) and :class:`tisdpo.TISDPOConfig` (everything the trainer takes);
the work is :class:`tisdpo.TISDPOTrainer`.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
from transformers import set_seed

from tisdpo.api import TISDPOConfig, TISDPOTrainer, lora_config
from tisdpo.config import ModelArguments, parse_config
from tisdpo.config.trainer import DatasetArguments
from tisdpo.data.formats import RawRecords
from tisdpo.data.load import read_pairs
from tisdpo.data.tokenize import tokenizer_fingerprint
from tisdpo.errors import require
from tisdpo.modeling import (
    distributed_state,
    load_model,
    load_tokenizer_for,
    unsharded_loading,
    weights_materialized,
)
from tisdpo.utils import write_json
from tisdpo.weights.io import check_tokenizer, read_meta


def split_records(records: RawRecords, fraction: float, seed: int) -> tuple[RawRecords, RawRecords]:
    """``--eval_fraction``: hold out that share of the pairs (a seeded shuffle, as datasets splits)."""
    split = datasets.Dataset.from_dict({"row": list(range(len(records.rows)))}).train_test_split(
        test_size=fraction, seed=seed
    )

    def subset(rows: list[int]) -> RawRecords:
        # Each row keeps its location in the file: messages name the line it came from.
        return RawRecords([records.rows[i] for i in rows], records.source, [records.where(i) for i in rows])

    return subset(split["train"]["row"]), subset(split["test"]["row"])


def run(argv: list[str]) -> dict[str, float]:
    model_args, data_args, config = parse_config(
        [ModelArguments, DatasetArguments, TISDPOConfig], argv, prog="tisdpo train"
    )
    model_name = require(model_args.model_name_or_path, "model_name_or_path", "tisdpo train")
    dataset_name = require(data_args.dataset_name, "dataset_name", "tisdpo train")
    set_seed(config.seed)
    distributed_state()  # the Trainer's process group (config made it); logs this process's rank

    tokenizer = load_tokenizer_for(model_args)
    for name in (dataset_name, data_args.eval_dataset_name):
        if name:  # a weights file made with another tokenizer is refused before any model loads
            check_tokenizer(name, tokenizer_fingerprint(tokenizer))
    train_rows = read_pairs(dataset_name, data_args.dataset_split, data_args.max_samples)
    eval_rows = None
    if data_args.eval_dataset_name:
        eval_rows = read_pairs(data_args.eval_dataset_name, data_args.eval_dataset_split, data_args.max_eval_samples)
    elif data_args.eval_fraction > 0:
        train_rows, eval_rows = split_records(train_rows, data_args.eval_fraction, config.seed)

    policy = load_model(model_args, model_name)
    # The reference, when the policy cannot be it (default: the policy's starting weights, held by the trainer).
    ref_name = model_args.ref_model_name_or_path
    ref_model = None
    if config.needs_reference and config.precompute_ref_log_probs and (ref_name or not weights_materialized(policy)):
        with unsharded_loading():  # scored before training starts: every process holds it whole
            ref_model = load_model(model_args, ref_name or model_name)
    elif config.needs_reference and ref_name:
        ref_model = load_model(model_args, ref_name)
    peft_config = None
    if model_args.use_peft:
        peft_config = lora_config(
            model_args.lora_r,
            model_args.lora_alpha,
            model_args.lora_dropout,
            model_args.lora_target_modules,
            model_args.lora_layers,
        )
    trainer = TISDPOTrainer(
        policy,
        config,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        ref_model=ref_model,
        peft_config=peft_config,
    )
    del ref_model  # the trainer holds it if it needs it
    result = trainer.train()
    trainer.save_model(config.output_dir)
    metrics: dict[str, Any] = dict(result.metrics)
    if eval_rows is not None:
        metrics.update(trainer.evaluate())
    if trainer.is_world_process_zero():
        write_json(os.path.join(config.output_dir, "all_results.json"), metrics)
        trainer.create_model_card(dataset_name, read_meta(dataset_name) if config.needs_weights else None)
        trainer.save_state()
    return metrics
