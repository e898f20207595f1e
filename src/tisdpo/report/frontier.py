"""Reward-KL frontiers, rewards at common KL levels, intervals and paired differences (the pipeline's report
and the evidence study both compare objectives with these).

A run gives (KL, reward) points: every beta of the sweep, at every checkpoint. For one arm and one
seed the **frontier** is the upper-left envelope of its points together with the SFT model's point
``(0, reward_sft)``: ``f(K)`` is the highest reward the arm reached at KL at most ``K``, linear
between the envelope's corners (a non-decreasing function; beyond the arm's largest KL it stays at
its best reward). Comparing ``f`` at fixed KL levels compares arms at equal KL, whatever beta or
number of steps got them there.

Every comparison is paired: the same seeds (same data order and evaluation samples) and the same
data for both arms, so an arm's difference to DPO is taken seed by seed and its 95% interval is a
t-interval over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Two-sided 95% Student t quantiles by degrees of freedom (1-10); larger samples use 1.96 + 2.4/df.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}

Point = tuple[float, float]


def t_quantile(df: int) -> float:
    return _T95.get(df, 1.96 + 2.4 / df) if df >= 1 else math.nan


def interval(values: Sequence[float]) -> dict[str, float]:
    """Mean and 95% t-interval over seeds (``lo``/``hi`` NaN with fewer than two values)."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = float(data.mean())
    if data.size < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": 1}
    half = t_quantile(data.size - 1) * float(data.std(ddof=1)) / math.sqrt(data.size)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": int(data.size)}


def verdict(stat: dict[str, float]) -> str:
    """``better`` / ``worse`` when the interval excludes 0, else ``no clear difference``."""
    if stat["n"] < 2 or not math.isfinite(stat["lo"]):
        return "undecided"
    if stat["lo"] > 0:
        return "better"
    if stat["hi"] < 0:
        return "worse"
    return "no clear difference"


def envelope(points: Sequence[Point], sft_reward: float) -> list[Point]:
    """The frontier's corners: the SFT point, then every point that beats the reward of all points at
    lower or equal KL, in KL order (negative sampled KLs count as 0)."""
    ordered = sorted((max(0.0, float(k)), float(r)) for k, r in points if math.isfinite(k) and math.isfinite(r))
    corners = [(0.0, float(sft_reward))]
    for kl, reward in ordered:
        if reward > corners[-1][1]:
            if kl == corners[-1][0]:
                corners[-1] = (kl, reward)
            else:
                corners.append((kl, reward))
    return corners


def frontier_at(corners: Sequence[Point], kl: float) -> float:
    """``f(kl)`` on the envelope: linear between corners, flat after the last one."""
    for (k0, r0), (k1, r1) in zip(corners, corners[1:]):
        if kl <= k1:
            return r0 + (r1 - r0) * (kl - k0) / (k1 - k0)
    return corners[-1][1]


def max_kl(points: Sequence[Point]) -> float:
    finite = [k for k, r in points if math.isfinite(k) and math.isfinite(r)]
    return max(finite) if finite else 0.0


def kl_levels(baseline_runs: dict[int, Sequence[Point]], fractions: Sequence[float]) -> list[float]:
    """The common KL levels: ``fractions`` of the median (over seeds) largest KL the baseline reached."""
    reach = float(np.median([max_kl(points) for points in baseline_runs.values()]))
    return [round(f * reach, 3) for f in fractions]


def union_kl_levels(runs: dict[str, dict[int, Sequence[Point]]], fractions: Sequence[float]) -> list[float]:
    """Common KL levels over the union of the arms' ranges: ``fractions`` of the largest KL any arm
    reaches (each arm's reach is its median over seeds of the largest KL it reached)."""
    reach = max(
        (float(np.median([max_kl(p) for p in by_seed.values()])) for by_seed in runs.values() if by_seed), default=0.0
    )
    return [round(f * reach, 3) for f in fractions]


def compare_arms(
    runs: dict[str, dict[int, Sequence[Point]]],
    sft: dict[int, float],
    levels: Sequence[float],
    baseline: str = "dpo",
) -> dict[str, Any]:
    """For each arm: its frontier reward at every level (mean and interval over seeds), the paired
    difference to ``baseline`` at every level, and ``score``: the paired difference averaged over
    the levels (one number per seed, then its interval), ``best_reward``: the highest reward reached at
    any KL, and its paired difference to the baseline's."""
    frontiers = {
        arm: {seed: envelope(points, sft[seed]) for seed, points in by_seed.items()} for arm, by_seed in runs.items()
    }
    base = frontiers.get(baseline, {})
    out: dict[str, Any] = {}
    for arm, by_seed in frontiers.items():
        seeds = sorted(by_seed)
        paired = [s for s in seeds if s in base]
        rewards = {level: [frontier_at(by_seed[s], level) for s in seeds] for level in levels}
        diffs = {
            level: [frontier_at(by_seed[s], level) - frontier_at(base[s], level) for s in paired] for level in levels
        }
        per_seed_score = [float(np.mean([diffs[level][i] for level in levels])) for i in range(len(paired))]
        out[arm] = {
            "seeds": seeds,
            "levels": [
                {
                    "kl": level,
                    "reward": interval(rewards[level]),
                    "vs_baseline": interval(diffs[level]),
                    "rewards_by_seed": rewards[level],
                }
                for level in levels
            ],
            "score": interval(per_seed_score),
            "mean_reward": interval(
                [float(np.mean([frontier_at(by_seed[s], level) for level in levels])) for s in seeds]
            ),
            "max_kl": interval([max_kl(runs[arm][s]) for s in seeds]),
            "best_reward": interval([by_seed[s][-1][1] for s in seeds]),
            "vs_baseline_best_reward": interval([by_seed[s][-1][1] - base[s][-1][1] for s in paired]),
        }
    return out


def mean_curve(
    runs: dict[int, Sequence[Point]], sft: dict[int, float], grid: Sequence[float]
) -> tuple[list[float], list[float], list[float]]:
    """The frontier averaged over seeds on ``grid``, with its pointwise 95% interval (for plots)."""
    curves = [[frontier_at(envelope(points, sft[seed]), k) for k in grid] for seed, points in runs.items()]
    stats = [interval([curve[i] for curve in curves]) for i in range(len(grid))]
    return [s["mean"] for s in stats], [s["lo"] for s in stats], [s["hi"] for s in stats]


def best(compared: dict[str, Any], candidates: Sequence[str]) -> str:
    """The candidate arm with the highest mean score (ties: the first listed)."""
    return max(candidates, key=lambda arm: (compared[arm]["score"]["mean"], -list(candidates).index(arm)))
