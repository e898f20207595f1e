"""Token reward -> weight transforms: hand-computed expectations for every transform and side."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from tisdpo.weights.transforms import (
    TRANSFORM_NAMES,
    WeightTransformConfig,
    transform_pair,
    transform_rewards,
)


def weights(name: str, rewards, side: str = "chosen", **overrides) -> np.ndarray:
    return transform_rewards(rewards, side, WeightTransformConfig(name=name, **overrides))


def assert_weights(actual: np.ndarray, expected: list[float]) -> None:
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, np.array(expected), rtol=1e-6, atol=1e-6)


def test_defaults_are_documented_values():
    config = WeightTransformConfig()
    assert (config.name, config.mu, config.k) == ("exp", 1.0, 1.0)
    assert (config.min_weight, config.max_weight) == (0.5, 2.0)
    assert (config.rank_min, config.rank_max) == (0.7, 1.3)
    assert (config.threshold, config.scale_threshold) == (1.0, 1.5)
    assert (config.binary_top_fraction, config.seed) == (0.5, 0)
    assert config.validate() is config
    assert set(TRANSFORM_NAMES) == {
        "exp",
        "rank_based",
        "threshold_and_scale",
        "threshold",
        "binary",
        "random",
        "origin",
    }


# ----------------------------------------------------------------------------- exp


def test_exp_chosen_side_uses_plus_mu():
    rewards = [0.0, 0.5, -0.5, math.log(1.5)]
    assert_weights(weights("exp", rewards), [1.0, math.exp(0.5), math.exp(-0.5), 1.5])


def test_exp_rejected_side_flips_the_sign():
    rewards = [0.0, 0.5, -0.5, math.log(1.5)]
    assert_weights(weights("exp", rewards, "rejected"), [1.0, math.exp(-0.5), math.exp(0.5), 1 / 1.5])


def test_exp_clamps_at_both_ends_without_overflow_warnings():
    rewards = [-1e6, -5.0, 5.0, 1e6, 1e300]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chosen = weights("exp", rewards)
        rejected = weights("exp", rewards, "rejected")
    assert_weights(chosen, [0.5, 0.5, 2.0, 2.0, 2.0])
    assert_weights(rejected, [2.0, 2.0, 0.5, 0.5, 0.5])


def test_exp_k_mu_and_custom_clamp():
    rewards = [0.0, 1.0, -1.0]
    got = weights("exp", rewards, k=2.0, mu=0.5, min_weight=0.1, max_weight=10.0)
    assert_weights(got, [2.0, 2.0 * math.exp(0.5), 2.0 * math.exp(-0.5)])
    # k itself is clamped too: k * exp(0) = 3 > U = 2.5
    assert_weights(weights("exp", [0.0], k=3.0, max_weight=2.5), [2.5])


# ----------------------------------------------------------------------------- origin / threshold


def test_origin_is_the_signed_score():
    rewards = [1.5, -0.25, 0.0, 3.0]
    assert_weights(weights("origin", rewards), [1.5, -0.25, 0.0, 3.0])
    assert_weights(weights("origin", rewards, "rejected"), [-1.5, 0.25, 0.0, -3.0])


def test_threshold_clips_the_signed_score():
    rewards = [2.0, -3.0, 0.4, -0.9, 1.0]
    assert_weights(weights("threshold", rewards), [1.0, -1.0, 0.4, -0.9, 1.0])
    assert_weights(weights("threshold", rewards, "rejected"), [-1.0, 1.0, -0.4, 0.9, -1.0])
    assert_weights(weights("threshold", rewards, threshold=0.5), [0.5, -0.5, 0.4, -0.5, 0.5])


def test_threshold_and_scale_maps_clipped_score_onto_range():
    # T = 1.5: -1.5 -> 0.7, 0 -> 1.0, 1.5 -> 1.3, slope 0.6 / 3 = 0.2 per unit of score.
    rewards = [-3.0, -1.5, 0.0, 0.75, 1.5, 10.0]
    assert_weights(weights("threshold_and_scale", rewards), [0.7, 0.7, 1.0, 1.15, 1.3, 1.3])
    assert_weights(weights("threshold_and_scale", rewards, "rejected"), [1.3, 1.3, 1.0, 0.85, 0.7, 0.7])
    assert_weights(
        weights("threshold_and_scale", [-1.0, 0.5], scale_threshold=1.0, rank_min=0.0, rank_max=2.0),
        [0.0, 1.5],
    )


# ----------------------------------------------------------------------------- rank_based


def test_rank_based_averages_tied_ranks():
    # sorted: 0 (rank 0), 1, 1 (ranks 1 and 2 -> 1.5), 2 (rank 3); weight = 0.7 + 0.2 * rank
    assert_weights(weights("rank_based", [1, 1, 0, 2]), [1.0, 1.0, 0.7, 1.3])
    # rejected: scores -1, -1, 0, -2 -> ranks 1.5, 1.5, 3, 0
    assert_weights(weights("rank_based", [1, 1, 0, 2], "rejected"), [1.0, 1.0, 1.3, 0.7])


def test_rank_based_distinct_values_and_several_tie_groups():
    assert_weights(weights("rank_based", [0.3, -2.0, 5.0]), [1.0, 0.7, 1.3])
    # scores 2,2,2,0,0,5: zeros take ranks 0,1 -> 0.5; twos ranks 2,3,4 -> 3; five rank 5
    # weight = 0.7 + 0.6 * rank / 5 = 0.7 + 0.12 * rank
    assert_weights(weights("rank_based", [2, 2, 2, 0, 0, 5]), [1.06, 1.06, 1.06, 0.76, 0.76, 1.3])


def test_rank_based_single_token_and_all_equal_get_midpoint():
    assert_weights(weights("rank_based", [7.0]), [1.0])
    assert_weights(weights("rank_based", [7.0], "rejected"), [1.0])
    assert_weights(weights("rank_based", [0.2, 0.2, 0.2]), [1.0, 1.0, 1.0])
    assert_weights(weights("rank_based", [0.2, 0.2], rank_min=0.0, rank_max=1.0), [0.5, 0.5])


def test_rank_based_on_many_tokens_is_fast_and_monotone():
    rng = np.random.default_rng(0)
    rewards = np.round(rng.normal(size=200_000), 2)  # many ties
    got = weights("rank_based", rewards)
    assert got.shape == rewards.shape
    order = np.argsort(rewards, kind="stable")
    assert np.all(np.diff(got[order]) >= 0)
    # equal rewards, equal weights
    for value in rewards[:20]:
        assert np.unique(got[rewards == value]).size == 1
    assert got.min() == pytest.approx(0.7, abs=1e-3) and got.max() == pytest.approx(1.3, abs=1e-3)
    rejected = weights("rank_based", rewards, "rejected")
    assert np.all(np.diff(rejected[order]) <= 0)


# ----------------------------------------------------------------------------- binary


def test_binary_top_half_distinct():
    assert_weights(weights("binary", [0.1, 0.9, 0.5, 0.3]), [0.0, 1.0, 1.0, 0.0])
    assert_weights(weights("binary", [0.1, 0.9, 0.5, 0.3], "rejected"), [1.0, 0.0, 0.0, 1.0])


def test_binary_ties_at_the_threshold_all_get_one():
    # top ceil(0.5 * 5) = 3; the 3rd largest is 1 and every 1 is kept
    assert_weights(weights("binary", [3, 1, 1, 1, 0]), [1.0, 1.0, 1.0, 1.0, 0.0])
    # rejected scores -3, -1, -1, -1, 0: top 3 cut-off -1 -> everything but the 3
    assert_weights(weights("binary", [3, 1, 1, 1, 0], "rejected"), [0.0, 1.0, 1.0, 1.0, 1.0])
    assert_weights(weights("binary", [2.0, 2.0, 2.0, 2.0]), [1.0, 1.0, 1.0, 1.0])


def test_binary_fraction_rounding():
    rewards = list(range(10))
    # 0.7 * 10 is 7.000000000000001 in floating point: still 7 tokens
    assert weights("binary", rewards, binary_top_fraction=0.7).sum() == 7
    assert weights("binary", rewards, binary_top_fraction=0.01).sum() == 1
    assert weights("binary", rewards, binary_top_fraction=1.0).sum() == 10
    assert_weights(weights("binary", [4.0], binary_top_fraction=0.1), [1.0])


# ----------------------------------------------------------------------------- random


def test_random_is_deterministic_in_range_and_ignores_values():
    config = WeightTransformConfig(name="random", seed=3)
    a = transform_rewards([0.0] * 50, "chosen", config, example_index=7)
    b = transform_rewards(np.arange(50.0), "chosen", config, example_index=7)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32
    assert np.all((a >= np.float32(0.7)) & (a <= np.float32(1.3)))
    assert np.unique(a).size > 40
    other_side = transform_rewards([0.0] * 50, "rejected", config, example_index=7)
    other_example = transform_rewards([0.0] * 50, "chosen", config, example_index=8)
    other_seed = transform_rewards([0.0] * 50, "chosen", WeightTransformConfig(name="random", seed=4), example_index=7)
    for different in (other_side, other_example, other_seed):
        assert not np.array_equal(a, different)


# ----------------------------------------------------------------------------- shapes and errors


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
@pytest.mark.parametrize("side", ["chosen", "rejected"])
def test_empty_input_gives_empty_float32(name, side):
    got = transform_rewards([], side, WeightTransformConfig(name=name))
    assert got.shape == (0,) and got.dtype == np.float32


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_single_token(name):
    got = transform_rewards([0.25], "chosen", WeightTransformConfig(name=name))
    assert got.shape == (1,) and np.isfinite(got).all()


def test_transform_pair_applies_each_side():
    config = WeightTransformConfig(name="origin")
    chosen, rejected = transform_pair([1.0, -2.0], [0.5], config)
    assert_weights(chosen, [1.0, -2.0])
    assert_weights(rejected, [-0.5])


def test_bad_side_and_bad_rewards():
    config = WeightTransformConfig()
    with pytest.raises(ValueError, match="side must be 'chosen' or 'rejected', got 'winner'"):
        transform_rewards([1.0], "winner", config)
    with pytest.raises(ValueError, match="flat sequence"):
        transform_rewards([[1.0, 2.0]], "chosen", config)
    with pytest.raises(ValueError, match="finite; position 1"):
        transform_rewards([1.0, float("nan")], "chosen", config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"name": "rank_base"},
            "unknown weight transform 'rank_base' (did you mean 'rank_based'?)",
        ),
        ({"name": "zzz"}, "choose one of: exp, rank_based"),
        ({"k": 0.0}, "'k' must be > 0"),
        ({"min_weight": 3.0}, "'min_weight' (3.0) must not exceed 'max_weight' (2.0)"),
        ({"min_weight": -0.1}, "'min_weight' must be >= 0"),
        ({"rank_min": 1.5}, "'rank_min' (1.5) must not exceed 'rank_max' (1.3)"),
        ({"rank_min": -1.0}, "'rank_min' must be >= 0"),
        ({"threshold": 0.0}, "'threshold' must be > 0"),
        ({"scale_threshold": -1.0}, "'scale_threshold' must be > 0"),
        ({"binary_top_fraction": 0.0}, "'binary_top_fraction' must be in (0, 1]"),
        ({"binary_top_fraction": 1.5}, "'binary_top_fraction' must be in (0, 1]"),
        ({"mu": float("inf")}, "'mu' must be finite"),
        ({"mu": "1"}, "'mu' must be a number"),
        ({"seed": -1}, "'seed' must be >= 0"),
        ({"seed": 1.5}, "'seed' must be an integer"),
    ],
)
def test_validation_messages(overrides, message):
    config = WeightTransformConfig(**overrides)
    with pytest.raises(ValueError) as info:
        config.validate()
    assert message in str(info.value)
    with pytest.raises(ValueError):
        transform_rewards([1.0], "chosen", config)
