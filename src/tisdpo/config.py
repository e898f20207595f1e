"""Command-line and YAML configuration: dataclasses whose every field is a flag.

``--config recipe.yaml`` sets the same fields (keys are field names); flags given on the command
line override the file. Unknown keys and flags are refused with the closest valid name.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from tisdpo.errors import UserError, did_you_mean, one_line
from tisdpo.logprobs import DEFAULT_CHUNK_SIZE
from tisdpo.modeling import join_gguf
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
            "eval-mode reference at the start. false keeps the model's dropout."
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


def load_yaml_config(path: str) -> dict[str, Any]:
    """Read a YAML recipe with the safe loader; it must be a mapping of field names to values."""
    if not os.path.exists(path):
        raise UserError("config file not found", source=path)
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            raise UserError(
                f"not valid YAML ({getattr(err, 'problem', err)})",
                source=path,
                location=f"line {mark.line + 1}" if mark else None,
            ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"expected a mapping of field names to values, got {type(data).__name__}", source=path)
    return data


def field_names(types: Sequence[type]) -> set[str]:
    return {f.name for t in types for f in dataclasses.fields(t) if f.init}


def check_keys(keys: Sequence[str], types: Sequence[type], source: str) -> None:
    known = field_names(types)
    for key in keys:
        if key not in known:
            raise UserError(f"unknown setting '{key}'{did_you_mean(key, known)}", source=source)


def extract_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config PATH`` (or ``--config=PATH``) out of argv."""
    rest, config = [], None
    iterator = iter(argv)
    for arg in iterator:
        if arg == "--config":
            config = next(iterator, None)
            if config is None:
                raise UserError("--config needs a path to a YAML file")
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return config, rest


def _choices_text(choices: Sequence[Any]) -> str:
    return ", ".join(str(c) for c in choices)


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser whose errors are one-line UserErrors (with the closest valid value) instead of
    argparse's usage text and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        head, _, detail = message.removeprefix("argument ").partition(": ")
        flag = head.split("/")[0].strip()  # "--max_steps/--max-steps" -> "--max_steps"
        action = self._option_string_actions.get(flag)
        if action is not None and action.choices and detail.startswith("invalid choice"):
            value = detail.removeprefix("invalid choice:").split("(choose from", 1)[0].strip().strip("'\"")
            choices = [str(c) for c in action.choices]
            raise UserError(
                f"{flag}: unknown value '{value}'{did_you_mean(value, choices)}; choose one of {_choices_text(choices)}"
            )
        raise UserError(one_line(f"{flag}: {detail}" if action is not None and detail else message))


_EXPECTED = {int: "an integer", float: "a number", string_to_bool: "true or false"}
_ACCEPTED = {int: (int, str), float: (int, float, str), string_to_bool: (bool, str)}


def _coerce(action: argparse.Action, value: Any, source: str) -> Any:
    """A YAML value checked like the same flag on the command line (choices, numbers, booleans)."""
    name = action.dest
    if action.choices:
        choices = [str(c) for c in action.choices]
        if str(value) not in choices:
            raise UserError(
                f"unknown value '{value}'{did_you_mean(str(value), choices)}; choose one of {_choices_text(choices)}",
                source=source,
                field=name,
            )
        return action.type(str(value)) if action.type else value
    if value is None or action.nargs in ("+", "*") or action.type in (None, str):
        return value
    expected = _EXPECTED.get(action.type, "another value")
    accepted = _ACCEPTED.get(action.type, (str,))
    if (isinstance(value, bool) and bool not in accepted) or not isinstance(value, accepted):
        if action.type in _ACCEPTED:
            raise UserError(f"expected {expected}, got {value!r}", source=source, field=name)
        return value
    if isinstance(value, str):
        try:
            return action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise UserError(f"expected {expected}, got {value!r}", source=source, field=name) from None
    return value


def parse_config(types: Sequence[type], argv: list[str], prog: str = "tisdpo") -> tuple[Any, ...]:
    """Parse flags (and an optional ``--config`` YAML) into instances of ``types``.

    YAML values are checked like flags (choices, numbers, booleans); every mistake is a one-line
    UserError naming the file, the field and, for an unknown name or value, the closest valid one.
    """
    config_path, argv = extract_config_flag(list(argv))
    parser = ArgumentParser(list(types), prog=prog)
    for action in parser._actions:
        if action.dest == "loss_type":  # objectives registered after this module was imported count too
            action.choices = list(OBJECTIVES)
    if config_path:
        values = load_yaml_config(config_path)
        check_keys(list(values), types, config_path)
        actions = {action.dest: action for action in parser._actions}
        parser.set_defaults(
            **{
                key: _coerce(actions[key], value, config_path) if key in actions else value
                for key, value in values.items()
            }
        )
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except (ValueError, TypeError) as err:
        raise UserError(one_line(str(err)), source=config_path) from None
    if remaining:
        flag = remaining[0]
        name = flag.lstrip("-").split("=", 1)[0]
        raise UserError(f"unknown flag '{flag}'{did_you_mean(name, field_names(types))}")
    return tuple(parsed)
