"""Turn per-token rewards into per-token weights.

A token reward is ``r_t = log pi+(y_t | ...) - log pi-(y_t | ...)`` (docs/method.md, section "Token
rewards and weights"). On the chosen (winning) side a high reward marks an important token; on the
rejected (losing) side a *low* reward does. Every transform therefore works on the signed score

    s_t = r_t   (chosen side)        s_t = -r_t   (rejected side)

so that "higher s means more important" on both sides. With ``exp`` this gives the paper's
``mu > 0`` on the winning side and ``mu < 0`` on the losing side from one positive ``mu``.

==========================  ==============================================================
name                        weight w_t (config fields in brackets)
==========================  ==============================================================
``exp`` (default)           ``clip(k * exp(mu * s_t), min_weight, max_weight)``
``rank_based``              average rank of s_t in the response (ties share a rank), mapped
                            linearly from [0, n-1] onto [rank_min, rank_max]; midpoint when
                            n == 1 or all scores are equal
``threshold_and_scale``     ``clip(s_t, -T, T)`` with T = scale_threshold, mapped linearly
                            from [-T, T] onto [rank_min, rank_max]
``threshold``               ``clip(s_t, -threshold, threshold)`` (may be negative)
``binary``                  1 for the top ``ceil(binary_top_fraction * n)`` scores, 0 else;
                            every score equal to the cut-off value also gets 1
``random``                  uniform in [rank_min, rank_max], seeded by
                            (seed, example_index, side); ignores the rewards (an ablation)
``origin``                  ``s_t`` itself (may be negative)
==========================  ==============================================================

Unlike the reference code, ties never produce a position ramp (equal scores always get equal
weights) and ranking is O(n log n).

**Structural tokens** (``structural``): the completion tokens that the chat template or the
tokenizer adds around the response text (end-of-turn marker, the newline after it, EOS; their
positions come from :mod:`tisdpo.data.tokenize`) are format, not content. With ``neutral`` (default)
they get weight exactly 1, the transform sees only the content tokens (ranks, top fractions and random
draws are over those), and normalisation averages over content tokens only. ``estimated`` weights them
like any token (the paper's literal form). Why: their reward measures length and format (a contrast
that prefers one side's length prices the end-of-turn token), and weighting it teaches a chat model not
to end its turn (docs/method.md, "Structural tokens").

**Normalisation** (the paper's k, after the transform; ``normalize``): ``none`` keeps the weights
as they are; ``response`` divides each response's weights by their mean (every response then has
mean weight 1); ``dataset`` divides every weight by the mean weight over all tokens of both sides
of the whole file (one k for the dataset). A mean weight above 1 acts like a larger beta (the
margin in the loss is a weighted sum), so without normalisation a transform changes the step size
as well as the emphasis; normalised weights may exceed the clamp bounds.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TRANSFORM_NAMES: tuple[str, ...] = (
    "exp",
    "rank_based",
    "threshold_and_scale",
    "threshold",
    "binary",
    "random",
    "origin",
)
SIDES: tuple[str, ...] = ("chosen", "rejected")
NORMALIZE_MODES: tuple[str, ...] = ("none", "response", "dataset")
STRUCTURAL_MODES: tuple[str, ...] = ("neutral", "estimated")

# exp(80) ~ 5.5e34 still fits in float64 and float32 after clamping; beyond it would only overflow.
_EXP_ARG_LIMIT = 80.0

RewardsLike = Sequence[float] | np.ndarray


@dataclass
class WeightTransformConfig:
    """How token rewards become token weights (see the module docstring for the formulas).

    Attributes:
        name: one of :data:`TRANSFORM_NAMES`. Default ``"exp"``, the paper's form.
        mu: ``exp`` temperature; applied to the signed score, so one positive value gives the
            paper's +mu on the chosen side and -mu on the rejected side. Default 1.0 (paper).
        k: ``exp`` scale, must be > 0. Default 1.0 (paper).
        min_weight: ``exp`` lower clamp L. Default 0.5.
        max_weight: ``exp`` upper clamp U. Default 2.0. The paper clamps to [L, U] but its values
            could not be confirmed; [0.5, 2.0] is our choice: symmetric in log space around the
            neutral weight 1 (a token counts at most twice, at least half as much as in DPO), and
            it keeps every weight positive so no token's gradient is flipped.
        rank_min: lower end of the output range of ``rank_based``, ``threshold_and_scale`` and
            ``random``. Default 0.7 (reference code).
        rank_max: upper end of that range. Default 1.3 (reference code).
        threshold: clip bound of ``threshold``. Default 1.0 (reference code).
        scale_threshold: clip bound T of ``threshold_and_scale``. Default 1.5 (reference code).
        binary_top_fraction: share of tokens that ``binary`` sets to 1, in (0, 1]. Default 0.5.
        seed: base seed of ``random``. Default 0.
        normalize: ``none``, ``response`` or ``dataset`` (see the module docstring). Default ``none``.
        structural: ``neutral`` (structural tokens get weight 1; default) or ``estimated`` (weighted like
            content tokens); see the module docstring.
    """

    name: str = "exp"
    mu: float = 1.0
    k: float = 1.0
    min_weight: float = 0.5
    max_weight: float = 2.0
    rank_min: float = 0.7
    rank_max: float = 1.3
    threshold: float = 1.0
    scale_threshold: float = 1.5
    binary_top_fraction: float = 0.5
    seed: int = 0
    normalize: str = "none"
    structural: str = "neutral"

    def validate(self) -> WeightTransformConfig:
        """Raise ValueError with a readable message if a field is out of range; return self."""
        if self.name not in TRANSFORM_NAMES:
            close = difflib.get_close_matches(str(self.name), TRANSFORM_NAMES, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"unknown weight transform '{self.name}'{hint}; choose one of: {', '.join(TRANSFORM_NAMES)}"
            )
        for field in (
            "mu",
            "k",
            "min_weight",
            "max_weight",
            "rank_min",
            "rank_max",
            "threshold",
            "scale_threshold",
            "binary_top_fraction",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"weight transform '{field}' must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"weight transform '{field}' must be finite, got {value}")
        if self.k <= 0:
            raise ValueError(f"weight transform 'k' must be > 0, got {self.k}")
        if self.min_weight < 0:
            raise ValueError(
                f"weight transform 'min_weight' must be >= 0 (a negative weight flips the "
                f"token's gradient), got {self.min_weight}"
            )
        if self.min_weight > self.max_weight:
            raise ValueError(
                f"weight transform 'min_weight' ({self.min_weight}) must not exceed 'max_weight' ({self.max_weight})"
            )
        if self.rank_min < 0:
            raise ValueError(
                f"weight transform 'rank_min' must be >= 0 (a negative weight flips the "
                f"token's gradient), got {self.rank_min}"
            )
        if self.rank_min > self.rank_max:
            raise ValueError(
                f"weight transform 'rank_min' ({self.rank_min}) must not exceed 'rank_max' ({self.rank_max})"
            )
        if self.threshold <= 0:
            raise ValueError(f"weight transform 'threshold' must be > 0, got {self.threshold}")
        if self.scale_threshold <= 0:
            raise ValueError(f"weight transform 'scale_threshold' must be > 0, got {self.scale_threshold}")
        if not 0 < self.binary_top_fraction <= 1:
            raise ValueError(
                f"weight transform 'binary_top_fraction' must be in (0, 1], got {self.binary_top_fraction}"
            )
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(
                f"weight normalisation '{self.normalize}' is unknown; choose one of: {', '.join(NORMALIZE_MODES)}"
            )
        if self.structural not in STRUCTURAL_MODES:
            raise ValueError(
                f"structural-token mode '{self.structural}' is unknown; choose one of: {', '.join(STRUCTURAL_MODES)}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"weight transform 'seed' must be an integer, got {self.seed!r}")
        if self.seed < 0:
            raise ValueError(f"weight transform 'seed' must be >= 0, got {self.seed}")
        return self


def _signed_scores(rewards: RewardsLike, side: str) -> np.ndarray:
    if side not in SIDES:
        raise ValueError(f"side must be 'chosen' or 'rejected', got {side!r}")
    scores = np.asarray(rewards, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"token rewards must be a flat sequence (one per token), got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"token rewards must be finite; position {bad} is {scores[bad]}")
    return scores if side == "chosen" else -scores


def _linear_map(x: np.ndarray, lo: float, hi: float, out_lo: float, out_hi: float) -> np.ndarray:
    return out_lo + (x - lo) / (hi - lo) * (out_hi - out_lo)


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """0-based ranks in ascending order; tied scores share the mean of their ranks. O(n log n)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # rank of the first member of each group of equal scores
    return (first + (counts - 1) / 2.0)[inverse.reshape(-1)]


def content_mask(size: int, structural: Sequence[int] | None, config: WeightTransformConfig) -> np.ndarray:
    """True at the positions the transform weighs: all of them, or (``neutral``) all but ``structural``."""
    mask = np.ones(size, dtype=bool)
    if structural and config.structural == "neutral":
        positions = np.asarray(structural, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= size):
            raise ValueError(f"structural token positions must lie in [0, {size}), got {list(structural)}")
        mask[positions] = False
    return mask


def transform_rewards(
    rewards: RewardsLike,
    side: str,
    config: WeightTransformConfig,
    example_index: int = 0,
    structural: Sequence[int] | None = None,
) -> np.ndarray:
    """Weights (float32, one per token) for one response's token rewards.

    ``side`` is ``"chosen"`` or ``"rejected"``; ``example_index`` only seeds ``random``; ``structural``
    lists the positions of structural tokens (weight 1 unless ``config.structural`` is ``estimated``).
    """
    config.validate()
    s = _signed_scores(rewards, side)
    mask = content_mask(s.shape[0], structural, config)
    weights = np.ones(s.shape[0], dtype=np.float32)
    weights[mask] = _content_weights(s[mask], side, config, example_index)
    return weights


def _content_weights(s: np.ndarray, side: str, config: WeightTransformConfig, example_index: int) -> np.ndarray:
    n = s.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float32)

    name = config.name
    if name == "exp":
        arg = np.clip(config.mu * s, -_EXP_ARG_LIMIT, _EXP_ARG_LIMIT)
        weights = np.clip(config.k * np.exp(arg), config.min_weight, config.max_weight)
    elif name == "origin":
        weights = s
    elif name == "threshold":
        weights = np.clip(s, -config.threshold, config.threshold)
    elif name == "threshold_and_scale":
        t = config.scale_threshold
        weights = _linear_map(np.clip(s, -t, t), -t, t, config.rank_min, config.rank_max)
    elif name == "rank_based":
        if n == 1:
            weights = np.full(1, (config.rank_min + config.rank_max) / 2.0)
        else:
            weights = _linear_map(_average_ranks(s), 0.0, n - 1.0, config.rank_min, config.rank_max)
    elif name == "binary":
        # round() guards against 0.7 * 10 == 7.000000000000001 turning into 8 tokens.
        top = min(n, max(1, math.ceil(round(config.binary_top_fraction * n, 9))))
        cutoff = np.partition(s, n - top)[n - top]  # the top-th largest score
        weights = (s >= cutoff).astype(np.float64)
    elif name == "random":
        if example_index < 0:
            raise ValueError(f"example_index must be >= 0, got {example_index}")
        rng = np.random.default_rng([int(config.seed), int(example_index), SIDES.index(side)])
        weights = rng.uniform(config.rank_min, config.rank_max, size=n)
    else:  # pragma: no cover - validate() rejects unknown names
        raise AssertionError(name)
    return np.asarray(weights, dtype=np.float32)


def transform_pair(
    chosen_rewards: RewardsLike,
    rejected_rewards: RewardsLike,
    config: WeightTransformConfig,
    example_index: int = 0,
    structural: tuple[Sequence[int] | None, Sequence[int] | None] = (None, None),
) -> tuple[np.ndarray, np.ndarray]:
    """Weights for the chosen and the rejected response of one preference pair (``structural``: the
    structural token positions of each side)."""
    return (
        transform_rewards(chosen_rewards, "chosen", config, example_index, structural[0]),
        transform_rewards(rejected_rewards, "rejected", config, example_index, structural[1]),
    )


def normalize_weights(
    weights: Sequence[np.ndarray], mode: str, masks: Sequence[np.ndarray] | None = None
) -> list[np.ndarray]:
    """Rescale every response's weights (chosen and rejected of every pair, in any order) to mean 1:
    per response (``response``) or over all tokens together (``dataset``); ``none`` returns them as
    they are. A response (or dataset) whose mean weight is 0 is left unchanged. ``masks`` (one boolean
    array per response, :func:`content_mask`) restricts both the mean and the rescaling to the tokens
    it marks; the others keep their weight."""
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"weight normalisation '{mode}' is unknown; choose one of: {', '.join(NORMALIZE_MODES)}")
    arrays = [np.asarray(w, dtype=np.float64) for w in weights]
    if masks is None:
        masks = [np.ones(a.size, dtype=bool) for a in arrays]
    if mode == "none":
        return [a.astype(np.float32) for a in arrays]
    if mode == "response":
        scales = [float(a[m].mean()) if m.any() and a[m].mean() > 0 else 1.0 for a, m in zip(arrays, masks)]
    else:
        total = sum(float(a[m].sum()) for a, m in zip(arrays, masks))
        count = sum(int(m.sum()) for m in masks)
        scales = [total / count if count and total > 0 else 1.0] * len(arrays)
    return [np.where(m, a / scale, a).astype(np.float32) for a, m, scale in zip(arrays, masks, scales)]
