"""The allowed range of every numeric setting, by field name, and the check that enforces it.

One table for every command's dataclasses (a name means the same thing wherever it appears) and for the
fields ``TisdpoConfig`` inherits from ``transformers.TrainingArguments``, which cannot carry metadata of
ours. :func:`check_ranges` runs when a config is constructed (``TISDPOConfig(...)``, ``TisdpoConfig(...)``),
on every dataclass :func:`~tisdpo.config.parsing.parse_config` returns, and on each value of a YAML section
that :func:`~tisdpo.config.parsing.check_values` checks: the Python API and the command line refuse the same
values with the same one-line error.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from tisdpo.errors import UserError


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (each bound optional, each strict or not); ``unset`` is also accepted
    (e.g. ``max_steps -1``: no step limit). ``None`` is always accepted: it means "not given"."""

    low: float | None = None
    high: float | None = None
    low_strict: bool = False
    high_strict: bool = False
    unset: float | None = None

    def contains(self, value: float) -> bool:
        if self.unset is not None and value == self.unset:
            return True
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_strict else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_strict else value <= self.high)

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_strict else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_strict else '<='} {_number(self.high)}")
        text = " and ".join(parts)
        return f"{text}, or {_number(self.unset)} (unset)" if self.unset is not None else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def at_least(low: float, unset: float | None = None) -> Range:
    return Range(low=low, unset=unset)


def above(low: float) -> Range:
    return Range(low=low, low_strict=True)


PROBABILITY = Range(low=0.0, high=1.0)
POSITIVE = above(0.0)
NON_NEGATIVE = at_least(0.0)
COUNT = at_least(1)  # lengths, sizes, steps, counts

RANGES: dict[str, Range] = {
    # -- the preference objectives (TisdpoConfig)
    "beta": POSITIVE,  # a negative beta reverses the objective: chosen is pushed down
    # cDPO's eps: at 0.5 the two labels weigh the same and the loss no longer prefers chosen; above it reverses
    "label_smoothing": Range(low=0.0, high=0.5, high_strict=True),
    "tdpo_alpha": NON_NEGATIVE,
    "simpo_gamma_beta_ratio": NON_NEGATIVE,
    "dlma_gamma": NON_NEGATIVE,
    "dlma_clamp": POSITIVE,
    "sparsepo_threshold": PROBABILITY,
    "sparsepo_kl_coef": NON_NEGATIVE,
    "tisdpo_kl_coef": NON_NEGATIVE,
    "lm_head_chunk_size": COUNT,
    "pack_tokens": COUNT,
    # -- transformers.TrainingArguments, as TisdpoConfig inherits them
    "per_device_train_batch_size": COUNT,
    "per_device_eval_batch_size": COUNT,
    "num_train_epochs": POSITIVE,
    "max_steps": at_least(1, unset=-1),
    "learning_rate": NON_NEGATIVE,
    "warmup_steps": NON_NEGATIVE,  # below 1: a fraction of the steps
    "weight_decay": NON_NEGATIVE,
    "adam_beta1": Range(low=0.0, high=1.0, high_strict=True),
    "adam_beta2": Range(low=0.0, high=1.0, high_strict=True),
    "adam_epsilon": NON_NEGATIVE,
    "gradient_accumulation_steps": COUNT,
    "max_grad_norm": NON_NEGATIVE,  # 0: no clipping
    "label_smoothing_factor": PROBABILITY,
    "neftune_noise_alpha": NON_NEGATIVE,
    "torch_empty_cache_steps": COUNT,
    "logging_steps": POSITIVE,  # below 1: a fraction of the steps
    "eval_steps": POSITIVE,
    "eval_delay": NON_NEGATIVE,
    "eval_accumulation_steps": COUNT,
    "save_steps": POSITIVE,
    "save_total_limit": COUNT,
    "seed": NON_NEGATIVE,
    "data_seed": NON_NEGATIVE,
    "dataloader_num_workers": NON_NEGATIVE,
    "dataloader_prefetch_factor": COUNT,
    "ddp_bucket_cap_mb": COUNT,
    "ddp_timeout": COUNT,
    "local_rank": at_least(-1),  # -1: not distributed
    # -- the model (ModelArguments)
    "lora_r": COUNT,
    "lora_alpha": POSITIVE,
    "lora_dropout": Range(low=0.0, high=1.0, high_strict=True),
    # -- the data (DataArguments, TISDPOConfig)
    "eval_fraction": Range(low=0.0, high=1.0, high_strict=True),
    "max_samples": COUNT,
    "max_eval_samples": COUNT,
    "max_length": COUNT,
    "max_prompt_length": COUNT,
    # -- weight estimation (WeightsArguments; the weight_* transform options are WeightTransformConfig.validate's)
    "batch_size": COUNT,
    "max_batch_tokens": COUNT,
    "rows_per_part": COUNT,
}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_range(name: str, value: Any, field: str | None = None, source: str | None = None) -> None:
    """A UserError naming ``field`` (default ``name``) when ``value`` is outside the range of ``name``."""
    allowed = RANGES.get(name)
    if allowed is None or not is_number(value) or allowed.contains(value):
        return
    raise UserError(f"must be {allowed.describe()} (got {value})", source=source, field=field or name)


def check_ranges(settings: Any) -> None:
    """Every numeric field of the dataclass instance ``settings`` in its range (see :data:`RANGES`)."""
    for item in dataclasses.fields(settings):
        check_range(item.name, getattr(settings, item.name, None))
