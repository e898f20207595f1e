"""The arguments of :class:`tisdpo.TISDPOTrainer` and of ``tisdpo train``, split as TRL splits them.

* :class:`TISDPOConfig`: what the trainer needs, like TRL's ``DPOConfig``: transformers' training arguments,
  the objective's (:class:`~tisdpo.config.training.TisdpoConfig`) and how raw pairs are read and tokenized
  (``max_length``, ``max_prompt_length`` ...);
* :class:`DatasetArguments`: where ``tisdpo train`` reads its pairs (the rest of ``DataArguments``).

Every field is declared once, in ``DataArguments``: both classes copy its fields, so that flags, defaults
and help texts of ``tisdpo train`` stay what they are, and a recipe's ``train`` section keeps its names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from tisdpo.config.training import DataArguments, TisdpoConfig

_DATA_FIELDS = {item.name: item for item in dataclasses.fields(DataArguments)}


def _data_field(name: str) -> Any:
    """The field ``name`` of ``DataArguments``: its default and its help text."""
    original = _DATA_FIELDS[name]
    return field(default=original.default, metadata=dict(original.metadata))


@dataclass
class TISDPOConfig(TisdpoConfig):
    """Training arguments of :class:`tisdpo.TISDPOTrainer`: transformers' ``TrainingArguments``, the preference
    objective's (``loss_type``, ``beta`` ...) and how raw preference rows are read and tokenized. The same fields
    and defaults as the flags of ``tisdpo train``; values out of range are refused at construction."""

    max_length: int | None = _data_field("max_length")
    max_prompt_length: int | None = _data_field("max_prompt_length")
    reverse_pairs: bool = _data_field("reverse_pairs")
    preference_key: Literal["better", "safer"] = _data_field("preference_key")
    prompt_template: str | None = _data_field("prompt_template")
    skip_empty_responses: bool = _data_field("skip_empty_responses")
    drop_identical_pairs: bool = _data_field("drop_identical_pairs")


@dataclass
class DatasetArguments:
    """Where ``tisdpo train`` reads its training and evaluation pairs."""

    dataset_name: str | None = _data_field("dataset_name")
    dataset_split: str = _data_field("dataset_split")
    eval_dataset_name: str | None = _data_field("eval_dataset_name")
    eval_dataset_split: str = _data_field("eval_dataset_split")
    eval_fraction: float = _data_field("eval_fraction")
    max_samples: int | None = _data_field("max_samples")
    max_eval_samples: int | None = _data_field("max_eval_samples")
