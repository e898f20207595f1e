"""Markdown tables of evaluation results, and the reward-against-KL frontier plot.

``run_markdown`` writes one run's eval_results.md; ``compare_markdown`` puts several runs side by
side (one row per run, a column only where some run has the value); ``frontier_plot`` draws
``gen/reward_mean`` against ``gen/kl`` (one point per run, error bars of +-1 standard error over
responses), the frontier plot of the DPO paper. Rendering is :mod:`tisdpo.report`'s (one table
format and one plot style for every report); this module decides which metrics go where.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from tisdpo.evaluation.rouge import ROUGE_KEYS
from tisdpo.report.page import write_text
from tisdpo.report.plots import FrontierPoint, FrontierSeries
from tisdpo.report.plots import frontier_plot as draw_frontier
from tisdpo.report.tables import fmt
from tisdpo.report.tables import markdown_table as table

__all__ = [
    "COLUMNS",
    "compare_markdown",
    "fmt",
    "frontier_plot",
    "interval",
    "mean_pm",
    "rouge_cell",
    "run_markdown",
    "table",
    "write_text",
]


def mean_pm(metrics: dict[str, Any], mean_key: str, std_key: str) -> str | None:
    if metrics.get(mean_key) is None:
        return None
    std = metrics.get(std_key)
    return fmt(metrics[mean_key]) if std is None else f"{fmt(metrics[mean_key])} ± {fmt(std)}"


def interval(metrics: dict[str, Any], key: str) -> str | None:
    if metrics.get(key) is None:
        return None
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is None or high is None:
        return fmt(metrics[key])
    return f"{fmt(metrics[key])} [{fmt(low)}, {fmt(high)}]"


def rouge_cell(metrics: dict[str, Any], prefix: str = "") -> str | None:
    values = [metrics.get(f"gen/{prefix}{key}") for key in ROUGE_KEYS]
    if all(v is None for v in values):
        return None
    return " / ".join(fmt(v) for v in values)


# Columns of the comparison table: (header, function of one run's metrics -> cell or None).
COLUMNS = (
    ("reward (mean ± std)", lambda m: mean_pm(m, "gen/reward_mean", "gen/reward_std")),
    ("baseline reward", lambda m: mean_pm(m, "gen/baseline_reward_mean", "gen/baseline_reward_std")),
    ("win rate [95% CI]", lambda m: interval(m, "gen/win_rate")),
    ("reward model", lambda m: mean_pm(m, "gen/reward_model_mean", "gen/reward_model_std")),
    ("reward-model win rate", lambda m: interval(m, "gen/reward_model_win_rate")),
    ("KL (mean ± std)", lambda m: mean_pm(m, "gen/kl", "gen/kl_std")),
    ("length", lambda m: None if m.get("gen/length_mean") is None else fmt(m["gen/length_mean"], 1)),
    ("safe rate", lambda m: None if m.get("gen/safe_rate") is None else fmt(m["gen/safe_rate"])),
    (
        "baseline safe rate",
        lambda m: None if m.get("gen/baseline_safe_rate") is None else fmt(m["gen/baseline_safe_rate"]),
    ),
    ("ROUGE-1/2/L", lambda m: rouge_cell(m)),
    (
        "pref. accuracy",
        lambda m: None if m.get("eval_rewards/accuracies") is None else fmt(m["eval_rewards/accuracies"]),
    ),
    ("pref. margin", lambda m: None if m.get("eval_rewards/margins") is None else fmt(m["eval_rewards/margins"])),
    (
        "prompts × samples",
        lambda m: (
            None if m.get("gen/num_prompts") is None else f"{m['gen/num_prompts']} × {m.get('gen/num_samples', '?')}"
        ),
    ),
)


def compare_markdown(labels: Sequence[str], runs: Sequence[dict[str, Any]]) -> str:
    cells = [[column(metrics) for _, column in COLUMNS] for metrics in runs]
    used = [j for j in range(len(COLUMNS)) if any(row[j] is not None for row in cells)]
    header = ["run"] + [COLUMNS[j][0] for j in used]
    rows = [[label] + [fmt(row[j]) for j in used] for label, row in zip(labels, cells)]
    return table(header, rows)


def run_markdown(metrics: dict[str, Any], context: dict[str, Any]) -> str:
    """eval_results.md of one run: settings, policy-vs-baseline table, then every metric."""
    parts = ["# Evaluation", ""]
    if context:
        parts += [table(["setting", "value"], [[k, fmt(v)] for k, v in context.items()]), ""]
    rows = []
    for name, key in (("reward", "reward"), ("reward model", "reward_model")):
        policy = mean_pm(metrics, f"gen/{key}_mean", f"gen/{key}_std")
        if policy is not None:
            rows.append(
                [
                    f"{name} (mean ± std)",
                    policy,
                    fmt(mean_pm(metrics, f"gen/baseline_{key}_mean", f"gen/baseline_{key}_std")),
                ]
            )
    if metrics.get("gen/safe_rate") is not None:
        rows.append(["safe rate", fmt(metrics["gen/safe_rate"]), fmt(metrics.get("gen/baseline_safe_rate"))])
    if rouge_cell(metrics) is not None:
        rows.append(["ROUGE-1/2/L", rouge_cell(metrics), fmt(rouge_cell(metrics, "baseline_"))])
    if metrics.get("gen/length_mean") is not None:
        rows.append(
            ["length (tokens)", fmt(metrics["gen/length_mean"], 1), fmt(metrics.get("gen/baseline_length_mean"), 1)]
        )
        rows.append(["ended with EOS", fmt(metrics.get("gen/eos_rate")), fmt(metrics.get("gen/baseline_eos_rate"))])
    if rows:
        parts += ["## Generations", "", table(["", "policy", "baseline"], rows), ""]
        lines = []
        for label, key in (
            ("win rate vs baseline", "gen/win_rate"),
            ("reward-model win rate", "gen/reward_model_win_rate"),
        ):
            if metrics.get(key) is not None:
                lines.append(f"- {label} (ties count half) [95% bootstrap CI]: {interval(metrics, key)}")
        if metrics.get("gen/kl") is not None:
            lines.append(f"- KL(policy ‖ reference) per response: {mean_pm(metrics, 'gen/kl', 'gen/kl_std')}")
        parts += [*lines, ""]
    parts += [
        "## All metrics",
        "",
        table(["metric", "value"], [[k, fmt(v, 4)] for k, v in sorted(metrics.items())]),
        "",
    ]
    return "\n".join(parts)


def frontier_plot(
    labels: Sequence[str], runs: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str | None = None
) -> int:
    """Reward (y) against KL (x), one labelled point per run with +-1 stderr bars; returns the points drawn.

    Runs without ``gen/kl`` or ``gen/reward_mean`` are left out; the dashed line is the mean of the
    runs' baseline rewards, when they have one.
    """
    series = [
        FrontierSeries(
            label,
            [
                FrontierPoint(
                    metrics["gen/kl"],
                    metrics["gen/reward_mean"],
                    metrics.get("gen/kl_stderr") or 0.0,
                    metrics.get("gen/reward_stderr") or 0.0,
                )
            ],
        )
        for label, metrics in zip(labels, runs)
        if metrics.get("gen/kl") is not None and metrics.get("gen/reward_mean") is not None
    ]
    baselines = [m["gen/baseline_reward_mean"] for m in runs if m.get("gen/baseline_reward_mean") is not None]
    return draw_frontier(
        series,
        path,
        title=title or "Reward against KL (error bars: ±1 standard error)",
        baseline_reward=sum(baselines) / len(baselines) if baselines else None,
    )
