"""The pipeline's last stage: results.json, results.md, report.html, a reward-vs-KL frontier and token heatmaps.

Every number comes from the evaluation folders of this run. Objectives are compared twice: at the
end of training, and at a matched KL to the SFT model (reward interpolated along each run's
checkpoints), because a single (step, reward) point can favour either method. This module decides
what is compared; the tables, plots, heatmaps and page are drawn by :mod:`tisdpo.report`.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from typing import Any

import numpy as np

from tisdpo.pipeline.engine import StageContext
from tisdpo.report.examples import weights_file_examples
from tisdpo.report.heatmap import render_html, render_png
from tisdpo.report.page import figure_html, html_page, write_text
from tisdpo.report.plots import FrontierPoint, FrontierSeries, frontier_plot
from tisdpo.report.tables import Table, fmt_stat
from tisdpo.utils import write_json

STAGE_NAME = re.compile(r"^eval_(?P<objective>.+)_s(?P<seed>\d+)$")


def load_curve(eval_dir: str) -> list[dict[str, Any]]:
    """Evaluation results along training: checkpoints in step order, then the final model."""
    labels = sorted(
        (d for d in os.listdir(eval_dir) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1])
    )
    points = []
    for label in [*labels, "final"]:
        path = os.path.join(eval_dir, label, "eval_results.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                points.append({"label": label, **json.load(handle)})
    return points


def mean_std(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {
        "mean": float(np.mean(finite)),
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
        "n": len(finite),
    }


def reward_at_kl(curve: list[tuple[float, float]], kl: float) -> float | None:
    """Linear interpolation of reward at ``kl`` along a run's (kl, reward) points; None outside them."""
    points = sorted(curve)
    for (k0, r0), (k1, r1) in zip(points, points[1:]):
        if k0 <= kl <= k1:
            return r0 if k1 == k0 else r0 + (r1 - r0) * (kl - k0) / (k1 - k0)
    return None


def summarize(eval_dirs: dict[str, str], reward_name: str) -> dict[str, Any]:
    """Per objective: final metrics over seeds, and reward at a KL every objective reaches."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for name, folder in eval_dirs.items():
        match = STAGE_NAME.match(name)
        if match:
            runs.setdefault(match["objective"], {})[int(match["seed"])] = load_curve(folder)
    sft_reward = {seed: curve[-1]["gen/baseline_reward_mean"] for seed, curve in runs.get("sft", {}).items() if curve}
    objectives: dict[str, Any] = {}
    for objective, seeds in runs.items():
        finals = [curve[-1] for curve in seeds.values() if curve]
        objectives[objective] = {
            reward_name: mean_std([f["gen/reward_mean"] for f in finals]),
            "win_rate_vs_sft": mean_std([f["gen/win_rate"] for f in finals]),
            "kl_vs_sft": mean_std([f["gen/kl"] for f in finals]),
            "length": mean_std([f["gen/length_mean"] for f in finals]),
            "seeds": {
                str(seed): [
                    {k: p.get(k) for k in ("label", "gen/reward_mean", "gen/kl", "gen/win_rate")} for p in curve
                ]
                for seed, curve in seeds.items()
            },
        }
    trained = [o for o in objectives if o != "sft"]
    # The largest KL that every run reaches, so each one's reward there is interpolated, not extrapolated.
    final_kls = [max(p["gen/kl"] for p in curve) for o in trained for curve in runs[o].values() if curve]
    matched_kl = min(final_kls, default=float("nan"))
    for objective in trained:
        values = []
        for seed, curve in runs[objective].items():
            start = [(0.0, sft_reward[seed])] if seed in sft_reward else []
            values.append(reward_at_kl(start + [(p["gen/kl"], p["gen/reward_mean"]) for p in curve], matched_kl))
        objectives[objective][f"{reward_name}_at_matched_kl"] = mean_std([v for v in values if v is not None])
    return {"objectives": objectives, "matched_kl": matched_kl, "reward_name": reward_name}


def frontier_series(summary: dict[str, Any]) -> list[FrontierSeries]:
    """One series per (objective, seed): its checkpoints' (KL, reward), then the final model's."""
    return [
        FrontierSeries(
            f"{objective} seed {seed}",
            [FrontierPoint(p["gen/kl"], p["gen/reward_mean"]) for p in curve],
            group=objective,
        )
        for objective, values in summary["objectives"].items()
        for seed, curve in values["seeds"].items()
    ]


def frontier_png(summary: dict[str, Any], path: str) -> None:
    """Every run's checkpoints on the reward-against-KL plane, with the matched KL marked."""
    frontier_plot(
        frontier_series(summary),
        path,
        reward_label=summary["reward_name"],
        kl_label="KL(policy ‖ SFT), nats per response (sampled estimate)",
        title="Reward against KL: checkpoints of every run (dotted: the matched KL)",
        matched_kl=summary["matched_kl"],
    )


def report_tables(results: dict[str, Any]) -> list[Table]:
    """The objectives' table, and the token-AUC table of the weight methods when there is one."""
    summary, reward = results["summary"], results["summary"]["reward_name"]
    header = [
        "model",
        reward,
        "win rate vs SFT",
        "KL vs SFT",
        f"{reward} at KL {summary['matched_kl']:.2f}",
        "length",
    ]
    rows = [
        [
            objective,
            fmt_stat(values[reward]),
            fmt_stat(values["win_rate_vs_sft"]),
            fmt_stat(values["kl_vs_sft"]),
            fmt_stat(values.get(f"{reward}_at_matched_kl", {})),
            fmt_stat(values["length"], 1),
        ]
        for objective, values in summary["objectives"].items()
    ]
    tables = [Table(header, rows)]
    if results.get("weight_auc"):
        auc_header = ["weights from", "token AUC (all)", "context-dependent", "context-free", "tokens"]
        auc_rows = [
            [
                method,
                f"{auc['all']:.3f}",
                f"{auc['context_dependent']:.3f}",
                f"{auc['context_free']:.3f}",
                str(auc["tokens"]),
            ]
            for method, auc in results["weight_auc"].items()
        ]
        tables.append(Table(auc_header, auc_rows))
    return tables


def markdown_tables(results: dict[str, Any]) -> str:
    """results.md: the report's tables in Markdown."""
    return "\n\n".join(table.markdown() for table in report_tables(results))


def write_report(out_dir: str, results: dict[str, Any], images: dict[str, str], notes: str) -> None:
    """report.html: the notes, the tables and every image, in one self-contained page."""
    body = [f"<p>{html.escape(notes)}</p>"] if notes else []
    body += [table.html() for table in report_tables(results)]
    body += [figure_html(title, path) for title, path in images.items()]
    write_text(os.path.join(out_dir, "report.html"), html_page("tisdpo report", body, "TIS-DPO pipeline report"))


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def add_report_stage(builder: Any, eval_stages: list[str], weight_stages: list[str], data: dict[str, Any]) -> None:
    recipe = builder.recipe
    reward_name = (recipe.evaluate or {}).get("reward_name", "reward")

    def action(ctx: StageContext) -> None:
        summary = summarize({name: ctx.inputs[name] for name in eval_stages}, reward_name)
        results: dict[str, Any] = {"summary": summary, "weight_auc": {}}
        images = {"Reward against KL to the SFT model": os.path.join(ctx.work_dir, "frontier.png")}
        frontier_png(summary, images["Reward against KL to the SFT model"])
        for stage in weight_stages:
            method = stage.removeprefix("weights_")
            rows = read_jsonl(os.path.join(ctx.inputs[stage], "weights.jsonl"))
            # Random weights keep the rewards they were drawn beside, so an AUC of those would mislead.
            if rows and "chosen_true_rewards" in rows[0] and method != "random":
                from tisdpo.demo.metrics import weight_auc

                results["weight_auc"][method] = weight_auc(rows)
            examples = weights_file_examples(rows[:30], os.path.join(ctx.inputs[stage], "weights.jsonl"))
            if examples:
                render_html(examples, os.path.join(ctx.work_dir, f"heatmap_{method}.html"))
                png = os.path.join(ctx.work_dir, f"heatmap_{method}.png")
                render_png(examples, png, max_examples=3)
                images[f"Token weights, method {method} (red: weight above 1, blue: below)"] = png
        flat = {
            name: {k: v for k, v in values.items() if k != "seeds"} for name, values in summary["objectives"].items()
        }
        write_json(os.path.join(ctx.work_dir, "results.json"), {**results, "table": flat})
        write_text(os.path.join(ctx.work_dir, "results.md"), markdown_tables(results))
        write_report(ctx.work_dir, results, images, recipe.notes)

    config = {"evals": eval_stages, "weights": weight_stages, "reward_name": reward_name, "version": 1}
    builder.add(
        "report", action, config, eval_stages + weight_stages, "results.json, report.html, frontier and heatmaps"
    )
