"""Summary metrics of scored generations (the ``gen/*`` keys of eval_results.json).

Every response record holds ``prompt_index``, ``sample``, ``scores`` / ``baseline_scores`` (one value
per scorer key), ``kl``, ``length`` / ``baseline_length`` and ``finished`` / ``baseline_finished``.

* ``gen/reward_mean``, ``gen/reward_std``, ``gen/reward_stderr`` and ``gen/baseline_reward_*``: the
  primary reward (the ``--scorer`` callable when given, else the reward model) of the policy's and
  the baseline's responses; std over responses (ddof 0), stderr = sample std / sqrt(n).
* ``gen/win_rate``: sample k of prompt i of the policy against sample k of prompt i of the
  baseline, 1 when its reward is higher, 0.5 on a tie, 0 when lower; mean over all pairs.
  ``gen/win_rate_ci_low`` / ``_high``: 95% percentile bootstrap interval resampling prompts
  (``numpy.random.default_rng(seed).integers(0, P, size=(B, P))`` over the per-prompt means,
  ``numpy.percentile`` at 2.5 and 97.5). ``gen/tie_rate``: share of ties.
* ``gen/reward_per_token_mean``, ``gen/baseline_reward_per_token_mean``: the primary reward divided by the
  response's length (``max(length, 1)``), mean over responses: a length-controlled reward (a reward that
  sums over words grows with length; on a word-level tokenizer this is the reward per word).
* A second reward (the reward model when a callable is the primary one) gets the same keys named
  ``gen/reward_model_mean``, ``gen/baseline_reward_model_mean``, ``gen/reward_model_win_rate`` ...
* ``gen/kl``, ``gen/kl_std``, ``gen/kl_stderr``: per response, the sum over its generated tokens
  (EOS included when generated) of ``log pi_policy(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)``;
  mean and spread over responses. With temperature 1, top_p 1 and top_k 0 the mean is an unbiased
  estimate of KL(policy || reference) over responses of at most max_new_tokens tokens; with another
  sampler it is the mean log-ratio under that sampler (not a KL).
* ``gen/length_mean``, ``gen/baseline_length_mean``: generated tokens per response, EOS excluded;
  ``gen/eos_rate``, ``gen/baseline_eos_rate``: share of responses that ended with EOS (the others
  were cut at max_new_tokens).
* ``gen/safe_rate``, ``gen/baseline_safe_rate``: share of responses whose argmax label is safe.
* ``gen/rouge1``, ``gen/rouge2``, ``gen/rougeL`` (and ``gen/baseline_rouge*``): mean F1 over the
  responses of prompts with references; ``gen/rouge_num_prompts`` counts those prompts.
* ``gen/num_prompts``, ``gen/num_samples`` (per prompt), ``gen/num_responses``.

Records without ``baseline_*`` fields (``--sample_baseline false``) give the policy's keys only: no
``gen/baseline_*`` key and no win rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tisdpo.evaluation.rouge import ROUGE_KEYS

REWARD_KEYS = ("scorer", "reward_model")  # in order of precedence for the primary reward


def win_value(policy: float, baseline: float) -> float:
    """1 if the policy's score is higher, 0.5 on a tie, 0 if lower."""
    if policy > baseline:
        return 1.0
    if policy == baseline:
        return 0.5
    return 0.0


def bootstrap_interval(
    values_per_group: Sequence[float], samples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of equally weighted groups (here: prompts)."""
    values = np.asarray(values_per_group, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, values.size, size=(samples, values.size))
    means = values[indices].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, std with ddof 0, standard error of the mean)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan, math.nan
    stderr = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else 0.0
    return float(array.mean()), float(array.std()), stderr


def primary_reward_key(score_keys: Sequence[str]) -> str | None:
    return next((key for key in REWARD_KEYS if key in score_keys), None)


def per_prompt_means(records: Sequence[dict[str, Any]], values: Sequence[float]) -> list[float]:
    groups: dict[int, list[float]] = {}
    for record, value in zip(records, values):
        groups.setdefault(record["prompt_index"], []).append(value)
    return [float(np.mean(group)) for _, group in sorted(groups.items())]


def add_win_values(records: list[dict[str, Any]]) -> str | None:
    """Set ``reward``, ``baseline_reward`` and ``win`` on every record (primary reward); its key."""
    keys = list(records[0]["scores"]) if records else []
    primary = primary_reward_key(keys)
    for record in records:
        if primary is None:
            continue
        record["reward"] = record["scores"][primary]
        if "baseline_scores" not in record:
            continue
        record["baseline_reward"] = record["baseline_scores"][primary]
        record["win"] = win_value(record["reward"], record["baseline_reward"])
    return primary


def summarize(
    records: Sequence[dict[str, Any]],
    num_prompts: int,
    num_samples: int,
    seed: int = 0,
    bootstrap_samples: int = 1000,
) -> dict[str, float]:
    metrics: dict[str, float] = {
        "gen/num_prompts": num_prompts,
        "gen/num_samples": num_samples,
        "gen/num_responses": len(records),
    }
    if not records:
        return metrics
    kl_mean, kl_std, kl_stderr = spread([r["kl"] for r in records])
    metrics.update({"gen/kl": kl_mean, "gen/kl_std": kl_std, "gen/kl_stderr": kl_stderr})
    has_baseline = "baseline_length" in records[0]
    sides = (("", ""), ("baseline_", "baseline_")) if has_baseline else (("", ""),)
    for side, prefix in sides:
        lengths = [r[f"{side}length"] for r in records]
        metrics[f"gen/{prefix}length_mean"], metrics[f"gen/{prefix}length_std"], _ = spread(lengths)
        metrics[f"gen/{prefix}eos_rate"] = float(np.mean([r[f"{side}finished"] for r in records]))

    keys = list(records[0]["scores"])
    primary = primary_reward_key(keys)
    for key in REWARD_KEYS:
        if key not in keys:
            continue
        name = "reward" if key == primary else key
        values_by_side = {side: [float(r[f"{side}scores"][key]) for r in records] for side, _ in sides}
        for side, prefix in sides:
            mean, std, stderr = spread(values_by_side[side])
            metrics[f"gen/{prefix}{name}_mean"] = mean
            metrics[f"gen/{prefix}{name}_std"] = std
            metrics[f"gen/{prefix}{name}_stderr"] = stderr
            if key == primary:
                per_token = [v / max(r[f"{side}length"], 1) for v, r in zip(values_by_side[side], records)]
                metrics[f"gen/{prefix}reward_per_token_mean"] = float(np.mean(per_token))
        if not has_baseline:
            continue
        wins = [win_value(p, b) for p, b in zip(values_by_side[""], values_by_side["baseline_"])]
        win_name = "win_rate" if key == primary else f"{key}_win_rate"
        low, high = bootstrap_interval(per_prompt_means(records, wins), bootstrap_samples, seed)
        metrics[f"gen/{win_name}"] = float(np.mean(wins))
        metrics[f"gen/{win_name}_ci_low"] = low
        metrics[f"gen/{win_name}_ci_high"] = high
        if key == primary:
            metrics["gen/tie_rate"] = float(np.mean([w == 0.5 for w in wins]))

    if "safe" in keys:
        metrics["gen/safe_rate"] = float(np.mean([r["scores"]["safe"] for r in records]))
        if has_baseline:
            metrics["gen/baseline_safe_rate"] = float(np.mean([r["baseline_scores"]["safe"] for r in records]))
    if ROUGE_KEYS[0] in keys:
        with_references = [r for r in records if r["scores"][ROUGE_KEYS[0]] is not None]
        if with_references:
            metrics["gen/rouge_num_prompts"] = len({r["prompt_index"] for r in with_references})
            for key in ROUGE_KEYS:
                metrics[f"gen/{key}"] = float(np.mean([r["scores"][key] for r in with_references]))
                if has_baseline:
                    metrics[f"gen/baseline_{key}"] = float(
                        np.mean([r["baseline_scores"][key] for r in with_references])
                    )
    return metrics
