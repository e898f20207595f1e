"""The training flags: the model, the data, and the trainer with its preference objective.

Every field is a flag (``--name value``) and a key of a ``--config`` YAML; see :mod:`tisdpo.config.parsing`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import TrainingArguments

from tisdpo.config.ranges import check_ranges
from tisdpo.errors import UserError
from tisdpo.gguf_names import join_gguf
from tisdpo.logprobs import DEFAULT_CHUNK_SIZE
from tisdpo.objectives import OBJECTIVES, Objective, objective_for

LOSS_TYPES = tuple(OBJECTIVES)

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Policy model: a hub id or a local save_pretrained folder."}
    )
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reference model (default: the policy's starting weights)."}
    )
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Tokenizer (default: the policy's)."})
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "The policy is this GGUF file inside --model_name_or_path (a folder or hub repo); it loads "
            "dequantized, with its tokenizer and chat template (needs the gguf package). A path ending in .gguf "
            "works as any model name too."
        },
    )
    ref_gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "The reference is this GGUF file inside --ref_model_name_or_path (default: the policy's folder)."
        },
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "Weights dtype; losses are always computed in fp32."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flash_attention_2 ..."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code from the hub to run. Off unless asked."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the model."})
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train a LoRA adapter; the reference is the base model with the adapter disabled."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names, or all-linear."}
    )
    lora_layers: str | None = field(
        default=None,
        metadata={
            "help": "Only these decoder layers get the adapter, e.g. 24-29 or 0,2,4 (default: every layer); "
            "needs module names in --lora_target_modules. Backward stops at the lowest adapted layer."
        },
    )

    def __post_init__(self) -> None:
        # A GGUF model is named by its file's path from here on (loading, fingerprints, provenance).
        policy_folder = self.model_name_or_path
        self.model_name_or_path = join_gguf(policy_folder, self.gguf_file)
        if self.ref_gguf_file:
            self.ref_model_name_or_path = join_gguf(self.ref_model_name_or_path or policy_folder, self.ref_gguf_file)
        self.gguf_file = self.ref_gguf_file = None


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Local .json/.jsonl(.gz)/.parquet file, saved dataset folder, or hub dataset name."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Held-out pairs for evaluation (same formats)."}
    )
    eval_dataset_split: str = field(default="test", metadata={"help": "Split of a hub evaluation dataset."})
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "Hold out this fraction of the training pairs for evaluation when no eval dataset is given."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    max_length: int | None = field(
        default=512,
        metadata={"help": "Maximum prompt + completion tokens; completions are cut at the end."},
    )
    max_prompt_length: int | None = field(
        default=256, metadata={"help": "Maximum prompt tokens; prompts keep their end."}
    )
    reverse_pairs: bool = field(
        default=False,
        metadata={"help": "Swap chosen and rejected (reverse DPO; SFT on rejected responses)."},
    )
    preference_key: Literal["better", "safer"] = field(
        default="better",
        metadata={"help": "PKU-SafeRLHF: use better_response_id or safer_response_id."},
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Template for plain-text prompts, e.g. '\\n\\nHuman: {prompt}\\n\\nAssistant:'."},
    )
    skip_empty_responses: bool = field(
        default=False,
        metadata={"help": "Drop pairs with an empty response instead of stopping with an error."},
    )
    drop_identical_pairs: bool = field(
        default=False,
        metadata={"help": "Drop pairs whose chosen and rejected are identical (always counted in the log)."},
    )


@dataclass
class TisdpoConfig(TrainingArguments):
    """Training arguments of transformers plus the preference objective's own."""

    loss_type: Literal[LOSS_TYPES] = field(  # type: ignore[valid-type]
        default="dpo",
        metadata={"help": "Objective: " + ", ".join(OBJECTIVES) + " (formulas: docs/method.md)."},
    )
    beta: float | None = field(
        default=None,
        metadata={
            "help": "Temperature beta (SimPO's beta for simpo). Default: the objective's own, "
            "2.0 for simpo and 0.1 for every other."
        },
    )
    label_smoothing: float | None = field(
        default=None, metadata={"help": "cDPO label noise eps (default 0.1 for cdpo, 0 otherwise)."}
    )
    tdpo_alpha: float = field(default=0.5, metadata={"help": "TDPO2's alpha on the sequential KL term."})
    simpo_gamma_beta_ratio: float = field(default=0.5, metadata={"help": "SimPO margin gamma / beta."})
    dlma_gamma: float = field(default=0.2, metadata={"help": "DLMA: weight gamma of the self-rewarding score margin."})
    dlma_clamp: float = field(default=40.0, metadata={"help": "DLMA: the score is clamped to [-c, c]."})
    sparsepo_mask: Literal["reference", "learned"] = field(
        default="reference",
        metadata={"help": "SparsePO masks: from the reference's token probabilities, or a learned head."},
    )
    sparsepo_threshold: float = field(
        default=0.05, metadata={"help": "SparsePO reference masks: tokens with p_ref below this get mask 0."}
    )
    sparsepo_kl_coef: float = field(
        default=0.0, metadata={"help": "SparsePO: coefficient of the masked sequential-KL term (0 = off)."}
    )
    tisdpo_kl_coef: float = field(
        default=0.0,
        metadata={"help": "Coefficient of TIS-DPO's weighted sequential-KL term (0 = off, the default)."},
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Set every dropout of the policy to 0 while training (as TRL does): the policy then matches its "
            "eval-mode reference at the start. false keeps the model's dropout; with --shared_prompt or "
            "--pack_tokens a pair's prompt is computed once, so both responses see one dropout mask of the prompt "
            "(the plain layout draws two)."
        },
    )
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={
            "help": "Compute reference log-probs once before training (cached) instead of running the reference model every step."
        },
    )
    ref_logps_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where precomputed reference log-probs are cached (default ~/.cache/tisdpo)."},
    )
    logprob_path: Literal["chunked", "logits"] = field(
        default="chunked",
        metadata={
            "help": "chunked: LM head on completion positions in chunks, no full logits; logits: the model's own forward."
        },
    )
    lm_head_chunk_size: int = field(
        default=DEFAULT_CHUNK_SIZE, metadata={"help": "Tokens per LM-head chunk on the chunked path."}
    )
    shared_prompt: bool = field(
        default=True,
        metadata={
            "help": "Compute each pair's prompt once: [prompt, chosen, rejected] as one sequence whose attention "
            "mask hides chosen from rejected (exact; off by itself, with a log line, for a model or attention "
            "implementation that cannot take the mask, and for every model family not known to be exact: see "
            "docs/models.md). With dropout kept (--disable_dropout false) both responses share the prompt's "
            "dropout mask. false: one padded row per response."
        },
    )
    pack_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Pack several pairs (prompt once) into a row of up to this many tokens: less padding, a "
            "longer attention span per row (default: one pair a row)."
        },
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the model, checkpoints and metrics are written."}
    )
    auto_resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint found in output_dir."})
    group_by_length: bool = field(
        default=False,
        metadata={"help": "Batch pairs of similar length (TRL's name for --train_sampling_strategy group_by_length)."},
    )
    skip_nonfinite_batches: bool = field(
        default=False,
        metadata={
            "help": "Skip an optimizer step whose loss or gradient is NaN/inf (no parameter moves; counted as "
            "nonfinite_batches_skipped) instead of stopping with the step and the pairs."
        },
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate."})
    logging_steps: float = field(default=10, metadata={"help": "Log metrics every N steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the trainer needs its own columns."}
    )

    def __post_init__(self) -> None:
        check_ranges(self)  # the Python API and every command refuse the same values
        if self.output_dir is None:
            raise UserError("--output_dir is required")
        if os.path.isfile(self.output_dir):
            raise UserError("is a file; --output_dir must be a folder", source=self.output_dir, field="output_dir")
        self.remove_unused_columns = False
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"  # transformers 5 dropped the flag TRL users know
        objective = self.objective
        if self.label_smoothing is None:
            self.label_smoothing = objective.default_label_smoothing
        if self.beta is None:
            self.beta = objective.default_beta
            if objective.pairs:
                logger.info(
                    "loss_type %s: beta %s (%s; set --beta to change)", self.loss_type, self.beta, objective.beta_source
                )
        if self.needs_token_kl:
            self.precompute_ref_log_probs = False  # the KL terms need the full reference distribution
        if self.dataloader_pin_memory and not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns on every run without one
        super().__post_init__()

    @property
    def objective(self) -> Objective:
        """The objective's entry in :data:`tisdpo.objectives.OBJECTIVES`: what it needs, its defaults."""
        return objective_for(self.loss_type)

    @property
    def needs_reference(self) -> bool:
        return not self.objective.reference_free

    @property
    def needs_weights(self) -> bool:
        return self.objective.token_weights

    @property
    def needs_token_kl(self) -> bool:
        return self.objective.token_kl(self)
