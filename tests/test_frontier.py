"""The study's statistics: frontiers, rewards at common KL levels, intervals, paired differences."""

from __future__ import annotations

import math

import pytest

from tisdpo.report.frontier import (
    best,
    compare_arms,
    envelope,
    frontier_at,
    interval,
    kl_levels,
    mean_curve,
    union_kl_levels,
    verdict,
)


def test_envelope_keeps_only_points_that_raise_the_best_reward():
    points = [(4.0, 1.0), (1.0, 0.5), (2.0, 0.2), (6.0, 3.0), (-0.3, 0.1), (5.0, 2.0)]
    assert envelope(points, sft_reward=-0.2) == [(0.0, 0.1), (1.0, 0.5), (4.0, 1.0), (5.0, 2.0), (6.0, 3.0)]
    assert envelope([(float("nan"), 9.0), (1.0, -1.0)], sft_reward=0.0) == [(0.0, 0.0)]  # nothing beats SFT


def test_frontier_is_linear_between_corners_and_flat_after_the_last():
    corners = [(0.0, 0.0), (2.0, 1.0), (4.0, 3.0)]
    assert frontier_at(corners, 1.0) == pytest.approx(0.5)
    assert frontier_at(corners, 3.0) == pytest.approx(2.0)
    assert frontier_at(corners, 10.0) == 3.0
    assert frontier_at([(0.0, -0.5)], 7.0) == -0.5


def test_interval_is_a_student_t_interval():
    stat = interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)
    assert stat["mean"] == pytest.approx(2.0) and stat["n"] == 3
    assert stat["lo"] == pytest.approx(2.0 - half) and stat["hi"] == pytest.approx(2.0 + half)
    one = interval([5.0, float("nan")])
    assert one["mean"] == 5.0 and math.isnan(one["lo"]) and one["n"] == 1
    assert verdict(one) == "undecided"
    assert verdict(interval([0.4, 0.5, 0.6])) == "better"
    assert verdict(interval([-0.4, -0.5, -0.6])) == "worse"
    assert verdict(interval([-1.0, 0.5, 1.0])) == "no clear difference"


def test_kl_levels_are_fractions_of_the_baselines_median_reach():
    runs = {0: [(2.0, 0.1), (8.0, 0.5)], 1: [(10.0, 1.0)], 2: [(3.0, 0.2), (12.0, 0.4)]}
    assert kl_levels(runs, [0.25, 0.5, 1.0]) == [2.5, 5.0, 10.0]


def test_paired_differences_are_taken_seed_by_seed():
    # Seed effects are large (a whole unit of reward) but the same for both arms: the arm is better by
    # 0.5 + 0.1 * seed at every KL, which a paired interval sees and an unpaired one would not.
    dpo = {s: [(1.0, s + 0.2), (4.0, s + 1.0)] for s in range(3)}
    arm = {s: [(k, r + 0.5 + 0.1 * s) for k, r in dpo[s]] for s in range(3)}
    sft = {s: float(s) for s in range(3)}
    compared = compare_arms({"dpo": dpo, "arm": arm}, sft, [1.0, 4.0])
    diffs = [level["vs_baseline"]["mean"] for level in compared["arm"]["levels"]]
    assert diffs == pytest.approx([0.6, 0.6])
    assert compared["arm"]["score"]["mean"] == pytest.approx(0.6)
    assert verdict(compared["arm"]["score"]) == "better"
    assert compared["arm"]["levels"][0]["reward"]["hi"] - compared["arm"]["levels"][0]["reward"]["lo"] > 2.0
    assert best(compared, ["dpo", "arm"]) == "arm"


def test_mean_curve_averages_seed_frontiers():
    runs = {0: [(2.0, 1.0)], 1: [(2.0, 3.0)]}
    mean, lo, hi = mean_curve(runs, {0: 0.0, 1: 0.0}, [0.0, 1.0, 2.0, 3.0])
    assert mean == pytest.approx([0.0, 1.0, 2.0, 2.0])
    assert lo[2] < 2.0 < hi[2]


def test_union_kl_levels_span_the_arm_that_reaches_furthest():
    # DPO stops at KL 10 (median over seeds), the other arm reaches 40: levels are fractions of 40,
    # and DPO's frontier stays at its best reward beyond its own range.
    runs = {
        "dpo": {0: [(2.0, 0.5), (8.0, 1.0)], 1: [(10.0, 1.0)], 2: [(12.0, 1.5)]},
        "arm": {0: [(40.0, 3.0)], 1: [(20.0, 2.0), (44.0, 3.0)], 2: [(36.0, 2.5)]},
    }
    levels = union_kl_levels(runs, [0.25, 0.5, 1.0])
    assert levels == [10.0, 20.0, 40.0]
    compared = compare_arms(runs, {0: 0.0, 1: 0.0, 2: 0.0}, levels)
    assert [level["reward"]["mean"] for level in compared["dpo"]["levels"]][-1] == pytest.approx(7 / 6)
    assert compared["arm"]["best_reward"]["mean"] == pytest.approx(8.5 / 3)
    assert compared["arm"]["vs_baseline_best_reward"]["mean"] == pytest.approx(8.5 / 3 - 3.5 / 3)
    assert union_kl_levels({"dpo": {}}, [0.5]) == [0.0]
