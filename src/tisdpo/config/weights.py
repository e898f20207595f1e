"""The flags of weight estimation (``tisdpo weights``): sources, transform, batching, resumable parts.

The ``weight_*`` options are the fields of :class:`~tisdpo.weights.transforms.WeightTransformConfig`
under flag names (:data:`TRANSFORM_FLAGS`); their defaults are that class's, declared once there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from tisdpo.errors import UserError
from tisdpo.logprobs import DEFAULT_CHUNK_SIZE
from tisdpo.weights.transforms import NORMALIZE_MODES, STRUCTURAL_MODES, TRANSFORM_NAMES, WeightTransformConfig

# WeightTransformConfig field -> its flag.
TRANSFORM_FLAGS: dict[str, str] = {
    "name": "weight_transform",
    "mu": "weight_mu",
    "k": "weight_k",
    "min_weight": "weight_min",
    "max_weight": "weight_max",
    "rank_min": "weight_rank_min",
    "rank_max": "weight_rank_max",
    "threshold": "weight_threshold",
    "scale_threshold": "weight_scale_threshold",
    "binary_top_fraction": "weight_binary_top_fraction",
    "seed": "weight_seed",
    "normalize": "weight_normalize",
    "structural": "weight_structural",
}
_TRANSFORM_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(WeightTransformConfig)}


def _transform_option(name: str, help_text: str) -> Any:
    """The flag of the transform field ``name``, with that field's default."""
    return field(default=_TRANSFORM_DEFAULTS[name], metadata={"help": help_text})


@dataclass
class WeightsArguments:
    output_file: str | None = field(
        default=None, metadata={"help": "Where to write the weights file (.jsonl or .parquet)."}
    )
    positive_model_name_or_path: str | None = field(default=None, metadata={"help": "pi+ (S: SFT on chosen; D: DPO)."})
    negative_model_name_or_path: str | None = field(
        default=None, metadata={"help": "pi- (S: SFT on rejected; D: reverse DPO)."}
    )
    positive_prompt: str | None = field(
        default=None,
        metadata={"help": "P: preset name or text (a system prompt, or a template with {prompt})."},
    )
    negative_prompt: str | None = field(
        default=None, metadata={"help": "P: preset name or text for the negative side."}
    )
    from_rewards: str | None = field(
        default=None,
        metadata={"help": "Re-derive weights from a weights file's stored rewards (no model needed)."},
    )
    weight_transform: Literal[TRANSFORM_NAMES] = _transform_option(
        "name", "exp, rank_based, threshold_and_scale, threshold, binary, random, origin."
    )  # type: ignore[valid-type]
    weight_mu: float = _transform_option(
        "mu", "exp: w = clamp(k * exp(+-mu * r), min, max); +mu on chosen, -mu on rejected."
    )
    weight_k: float = _transform_option("k", "exp: the scale k.")
    weight_min: float = _transform_option("min_weight", "exp: the lower clamp L.")
    weight_max: float = _transform_option("max_weight", "exp: the upper clamp U.")
    weight_rank_min: float = _transform_option("rank_min", "rank_based / threshold_and_scale / random: lowest weight.")
    weight_rank_max: float = _transform_option("rank_max", "rank_based / threshold_and_scale / random: highest weight.")
    weight_threshold: float = _transform_option("threshold", "threshold: clip rewards to [-t, t].")
    weight_scale_threshold: float = _transform_option(
        "scale_threshold", "threshold_and_scale: clip to [-t, t] before scaling."
    )
    weight_binary_top_fraction: float = _transform_option(
        "binary_top_fraction", "binary: the share of tokens that get weight 1."
    )
    weight_seed: int = _transform_option("seed", "random: the seed.")
    weight_normalize: Literal[NORMALIZE_MODES] = _transform_option(
        "normalize",
        "After the transform, rescale weights to mean 1: none, response (each response) or dataset (one k for "
        "all tokens of the file).",
    )  # type: ignore[valid-type]
    weight_structural: Literal[STRUCTURAL_MODES] = _transform_option(
        "structural",
        "neutral: the tokens the chat template or tokenizer adds around a response (end-of-turn, EOS, the newline "
        "after it) get weight 1 and are left out of ranks and normalisation; estimated: weight them like words "
        "(the paper's literal form, which teaches chat models not to end their turn).",
    )  # type: ignore[valid-type]
    batch_size: int = field(default=16, metadata={"help": "Responses per forward pass (length-sorted; a pair is two)."})
    shared_prompt: bool = field(
        default=True,
        metadata={
            "help": "Score a pair's two responses in one sequence with its (contrastive) prompt computed once "
            "(exact; off by itself for a model that cannot take the mask). false: one row per response."
        },
    )
    max_batch_tokens: int | None = field(
        default=None, metadata={"help": "Also cap a batch at this many padded tokens."}
    )
    logprob_path: Literal["chunked", "logits"] = field(
        default="chunked", metadata={"help": "Log-prob path (see tisdpo train)."}
    )
    lm_head_chunk_size: int = field(default=DEFAULT_CHUNK_SIZE, metadata={"help": "Tokens per LM-head chunk."})
    rows_per_part: int = field(default=256, metadata={"help": "Rows per resumable part."})


def transform_config(args: WeightsArguments) -> WeightTransformConfig:
    """The transform the ``weight_*`` options name, checked (a UserError when out of range)."""
    config = WeightTransformConfig(**{name: getattr(args, flag) for name, flag in TRANSFORM_FLAGS.items()})
    try:
        config.validate()
    except ValueError as err:
        raise UserError(str(err)) from None
    return config
