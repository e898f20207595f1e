"""Token weights in Python: ``estimate_weights`` (what ``tisdpo weights`` writes, in memory), ``load_weights`` and
``save_weights`` (the weights file: JSONL or Parquet rows beside ``<file>.meta.json``, their provenance).

    weighted = estimate_weights(rows, model="HuggingFaceTB/SmolLM2-135M-Instruct",
                                positive_prompt="harmless", negative_prompt="harmful")
    save_weights("weights.jsonl", weighted)

The scoring is :func:`tisdpo.weights.estimate.estimate_weights`, the function ``tisdpo weights`` runs.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from tisdpo.api.trainer import PreferenceData, as_records
from tisdpo.config import DataArguments, ModelArguments, WeightsArguments, check_values
from tisdpo.config.weights import TRANSFORM_FLAGS
from tisdpo.data.formats import read_records
from tisdpo.errors import UserError
from tisdpo.weights import estimate
from tisdpo.weights.io import check_output_extension, read_meta, write_weights_file
from tisdpo.weights.transforms import WeightTransformConfig

OPTION_GROUPS = (ModelArguments, DataArguments, WeightsArguments)
# Set by estimate_weights' own arguments (the data, the models, the prompts, the transform) or not its business.
NOT_OPTIONS = (
    "model_name_or_path",
    "positive_model_name_or_path",
    "negative_model_name_or_path",
    "positive_prompt",
    "negative_prompt",
    "weight_transform",
    "dataset_name",
    "output_file",
    "from_rewards",
)


class WeightedRows(list[dict[str, Any]]):
    """Preference rows with ``chosen_token_ids`` / ``rejected_token_ids``, ``*_token_rewards`` and ``*_weights``
    (one value per completion token, EOS included), and ``meta``: their provenance (models, prompts,
    tokenizer, transform), written as ``<file>.meta.json`` by :func:`save_weights`."""

    def __init__(self, rows: Sequence[Mapping[str, Any]] = (), meta: Mapping[str, Any] | None = None) -> None:
        super().__init__(dict(row) for row in rows)
        self.meta: dict[str, Any] = dict(meta or {})


def transform_options(transform: str | WeightTransformConfig | None) -> dict[str, Any]:
    """``transform`` as the ``weight_*`` options of ``tisdpo weights`` (a name keeps the other defaults)."""
    if transform is None:
        return {}
    if isinstance(transform, str):
        return {"weight_transform": transform}
    if isinstance(transform, WeightTransformConfig):
        return {TRANSFORM_FLAGS[name]: value for name, value in dataclasses.asdict(transform).items()}
    raise UserError(f"transform must be a name or a WeightTransformConfig, got {type(transform).__name__}")


def option_group(values: Mapping[str, Any], group: type) -> dict[str, Any]:
    names = {item.name for item in dataclasses.fields(group) if item.init}
    return {key: value for key, value in values.items() if key in names}


def estimate_weights(
    data: PreferenceData,
    *,
    model: str | None = None,
    positive_prompt: str | None = None,
    negative_prompt: str | None = None,
    positive_model: str | None = None,
    negative_model: str | None = None,
    transform: str | WeightTransformConfig | None = None,
    work_dir: str | None = None,
    **options: Any,
) -> WeightedRows | None:
    """Token rewards and TIS-DPO weights of every pair of ``data`` (raw rows: a ``datasets.Dataset`` or a list of
    dicts, as the trainer takes them).

    The contrast: ``model`` (a name or path) under ``positive_prompt`` / ``negative_prompt`` (a preset name
    such as ``harmless`` / ``harmful``, or a text; method P), or ``positive_model`` / ``negative_model`` (S, D).
    ``transform``: a transform name (``rank_based``, ``exp`` ...) or a full ``WeightTransformConfig``.
    ``options``: any other option of ``tisdpo weights`` by its flag name (``max_length``, ``batch_size``,
    ``dtype``, ``weight_mu`` ...), checked like the flag. ``work_dir``: where resumable parts are kept (default:
    a temporary folder; under ``accelerate launch`` give one every process sees). Returns the rows (None on
    processes other than the main one).
    """
    given = sorted(set(options) & set(NOT_OPTIONS))
    if given:
        raise UserError(f"estimate_weights sets '{given[0]}' itself (see its arguments)")
    values = check_values({**options, **transform_options(transform)}, OPTION_GROUPS, source="estimate_weights")
    model_args = ModelArguments(model_name_or_path=model, **option_group(values, ModelArguments))
    data_args = DataArguments(**option_group(values, DataArguments))
    records = as_records(data, "data")
    with tempfile.TemporaryDirectory(prefix="tisdpo-weights-") as scratch:
        args = WeightsArguments(
            output_file=os.path.join(work_dir or scratch, "weights.jsonl"),
            positive_model_name_or_path=positive_model,
            negative_model_name_or_path=negative_model,
            positive_prompt=positive_prompt,
            negative_prompt=negative_prompt,
            **option_group(values, WeightsArguments),
        )
        estimated = estimate.estimate_weights(model_args, data_args, args, records)
    if estimated is None:
        return None
    return WeightedRows(estimated.rows, estimated.meta)


def save_weights(path: str, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> None:
    """Write a weights file (``.jsonl`` or ``.parquet``) and its provenance ``<path>.meta.json`` (``meta``, else
    the rows' own ``meta``), atomically: what ``tisdpo weights --output_file`` writes."""
    check_output_extension(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    provenance = dict(meta if meta is not None else getattr(rows, "meta", {}))
    write_weights_file(path, [dict(row) for row in rows], provenance)


def load_weights(path: str) -> WeightedRows:
    """The rows of a weights file with their provenance (``meta``; empty when the file has none)."""
    if not os.path.exists(path):
        raise UserError("file not found", source=path)
    return WeightedRows(read_records(path).rows, read_meta(path))
