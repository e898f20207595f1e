"""``tisdpo train``: DPO-family, TIS-DPO and SFT training of a causal LM on preference pairs."""

from __future__ import annotations

import logging
import os

from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from tisdpo.config import DataArguments, ModelArguments, TisdpoConfig, parse_config
from tisdpo.data.load import load_pairs
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.errors import require
from tisdpo.modeling import distributed_state, load_model, load_tokenizer_for, wrap_with_lora
from tisdpo.reference import precompute_reference
from tisdpo.report.model_card import ModelCardInfo, write_model_card
from tisdpo.trainer import PreferenceTrainer
from tisdpo.utils import write_json
from tisdpo.weights.io import read_meta

logger = logging.getLogger(__name__)


def run(argv: list[str]) -> dict[str, float]:
    model_args, data_args, config = parse_config(
        [ModelArguments, DataArguments, TisdpoConfig], argv, prog="tisdpo train"
    )
    model_name = require(model_args.model_name_or_path, "model_name_or_path", "tisdpo train")
    dataset_name = require(data_args.dataset_name, "dataset_name", "tisdpo train")
    set_seed(config.seed)
    distributed_state()  # the Trainer's process group (config made it); logs this process's rank

    tokenizer = load_tokenizer_for(model_args)
    pair_tokenizer = PairTokenizer(tokenizer, data_args.max_length, data_args.max_prompt_length)
    train_dataset = load_pairs(
        dataset_name,
        data_args.dataset_split,
        data_args,
        pair_tokenizer,
        config.needs_weights,
        data_args.max_samples,
    )
    eval_dataset = None
    if data_args.eval_dataset_name:
        eval_dataset = load_pairs(
            data_args.eval_dataset_name,
            data_args.eval_dataset_split,
            data_args,
            pair_tokenizer,
            False,  # held-out pairs without weights are scored with unit weights (the DPO loss)
            data_args.max_eval_samples,
        )
    elif data_args.eval_fraction > 0:
        split = train_dataset.train_test_split(test_size=data_args.eval_fraction, seed=config.seed)
        train_dataset, eval_dataset = split["train"], split["test"]

    policy = load_model(model_args, model_name)
    if model_args.use_peft:
        policy = wrap_with_lora(
            policy,
            model_args.lora_r,
            model_args.lora_alpha,
            model_args.lora_dropout,
            model_args.lora_target_modules,
        )
    ref_model = None
    if config.needs_reference:
        if config.precompute_ref_log_probs:
            train_dataset, eval_dataset = precompute_reference(
                model_args, model_name, policy, tokenizer, config, [train_dataset, eval_dataset]
            )
        elif model_args.ref_model_name_or_path or not model_args.use_peft:
            # With PEFT and no reference model the reference is the policy with its adapter disabled.
            ref_model = load_model(model_args, model_args.ref_model_name_or_path or model_name)

    if config.ddp_find_unused_parameters is None and config.logprob_path == "chunked":
        # The chunked log-prob path applies the LM head after the model's forward. DDP's search for
        # unused parameters (transformers' default) would mark the head's weight ready at the end of
        # the forward and again when its gradient arrives ("marked as ready twice"). Every parameter
        # of a causal LM is used in every step, so the search is not needed.
        config.ddp_find_unused_parameters = False
    trainer = PreferenceTrainer(
        policy,
        config,
        tokenizer,
        ref_model=ref_model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
    )
    checkpoint = config.resume_from_checkpoint
    if checkpoint is None and config.auto_resume and os.path.isdir(config.output_dir):
        checkpoint = get_last_checkpoint(config.output_dir)
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(config.output_dir)
    metrics = dict(result.metrics)
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
    if trainer.is_world_process_zero():
        write_json(os.path.join(config.output_dir, "all_results.json"), metrics)
        card = ModelCardInfo.from_training(
            config,
            model_name,
            dataset_name,
            trainer.state.log_history,
            weights_meta=read_meta(dataset_name) if config.needs_weights else None,
            num_pairs=len(train_dataset),
            is_adapter=model_args.use_peft,
        )
        write_model_card(config.output_dir, card)
        trainer.save_state()
    return metrics
