"""The pipeline's last stage: results.json, results.md, report.html, a reward-vs-KL frontier and token heatmaps.

Every number comes from the evaluation folders of this run. Objectives are compared twice: at the
end of training, and on their reward-KL frontiers (:mod:`tisdpo.report.frontier`: the best reward
each run reached at KL at most K over its checkpoints) at three common KL levels, with 95%
intervals over seeds and paired differences to DPO, because a single (step, reward) point, or one
interpolated matched-KL point, can favour either method. A reward that sums over words grows with
length, so every objective is also reported with its mean length, its share of responses that ended
(EOS before the token limit) and its reward per token (``gen/reward_per_token_mean``), and the frontier
comparison is repeated on that length-controlled reward: a verdict that changes under length control is
marked as such. This module decides what is compared; the
tables, plots, heatmaps and page are drawn by :mod:`tisdpo.report`.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tisdpo.pipeline.engine import StageContext
from tisdpo.report.examples import weights_file_examples
from tisdpo.report.frontier import compare_arms, kl_levels, verdict
from tisdpo.report.heatmap import render_html, render_png
from tisdpo.report.page import figure_html, html_page, write_text
from tisdpo.report.plots import frontier_bands_plot, frontier_panel
from tisdpo.report.tables import Table, fmt_interval, fmt_stat
from tisdpo.utils import write_json

KL_FRACTIONS = (0.25, 0.5, 0.75)  # of the baseline's median largest KL
STAGE_NAME = re.compile(r"^eval_(?P<objective>.+?)(?:_b(?P<beta>[0-9.e+-]+))?_s(?P<seed>\d+)$")


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


def summarize(eval_dirs: dict[str, str], reward_name: str) -> dict[str, Any]:
    """Per run (an objective, at one beta when the recipe sweeps betas): final metrics over seeds. Per
    objective: its frontier over every beta and checkpoint, and its reward there at three common KL
    levels (paired with DPO's, or with the first objective's when there is no DPO)."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    merged: dict[str, dict[int, list[tuple[float, float]]]] = {}
    merged_per_token: dict[str, dict[int, list[tuple[float, float]]]] = {}
    sft_reward: dict[int, float] = {}
    sft_per_token: dict[int, float] = {}
    for name, folder in eval_dirs.items():
        match = STAGE_NAME.match(name)
        if not match:
            continue
        seed, objective = int(match["seed"]), match["objective"]
        label = objective if match["beta"] is None else f"{objective} (beta {match['beta']})"
        curve = runs.setdefault(label, {})[seed] = load_curve(folder)
        if not curve:
            continue
        # Every evaluation samples the SFT model with its seed too: that is the frontier's KL-0 point.
        sft_reward[seed] = curve[-1]["gen/baseline_reward_mean"]
        per_token = all("gen/reward_per_token_mean" in p for p in curve)
        if per_token:
            sft_per_token[seed] = curve[-1]["gen/baseline_reward_per_token_mean"]
        if objective != "sft":
            points = merged.setdefault(objective, {}).setdefault(seed, [])
            points += [(p["gen/kl"], p["gen/reward_mean"]) for p in curve]
            if per_token:
                points = merged_per_token.setdefault(objective, {}).setdefault(seed, [])
                points += [(p["gen/kl"], p["gen/reward_per_token_mean"]) for p in curve]
    objectives: dict[str, Any] = {}
    for label, seeds in runs.items():
        finals = [curve[-1] for curve in seeds.values() if curve]
        objectives[label] = {
            reward_name: mean_std([f["gen/reward_mean"] for f in finals]),
            "win_rate_vs_sft": mean_std([f["gen/win_rate"] for f in finals]),
            "kl_vs_sft": mean_std([f["gen/kl"] for f in finals]),
            "length": mean_std([f["gen/length_mean"] for f in finals]),
            "ended": mean_std([f.get("gen/eos_rate") for f in finals]),
            "reward_per_token": mean_std([f.get("gen/reward_per_token_mean") for f in finals]),
            "seeds": {
                str(seed): [
                    {k: p.get(k) for k in ("label", "gen/reward_mean", "gen/kl", "gen/win_rate")} for p in curve
                ]
                for seed, curve in seeds.items()
            },
        }
    summary: dict[str, Any] = {
        "objectives": objectives,
        "reward_name": reward_name,
        "sft_reward": {str(seed): value for seed, value in sft_reward.items()},
        "frontier": {},
        "frontier_points": {o: {str(s): p for s, p in seeds.items()} for o, seeds in merged.items()},
        "kl_levels": [],
        "baseline": None,
        "frontier_per_token": {},
    }
    if merged:
        baseline = "dpo" if "dpo" in merged else next(iter(merged))
        levels = kl_levels(merged[baseline], KL_FRACTIONS)
        summary.update(frontier=compare_arms(merged, sft_reward, levels, baseline), kl_levels=levels, baseline=baseline)
        if set(merged_per_token) == set(merged) and baseline in merged_per_token:
            summary["frontier_per_token"] = compare_arms(merged_per_token, sft_per_token, levels, baseline)
    return summary


def frontier_png(summary: dict[str, Any], path: str) -> None:
    """Each objective's frontier (every beta and checkpoint), averaged over seeds with a 95% band."""
    sft = {int(seed): value for seed, value in summary.get("sft_reward", {}).items()}
    runs = {
        objective: {int(seed): [tuple(p) for p in points] for seed, points in seeds.items()}
        for objective, seeds in summary["frontier_points"].items()
    }
    title = "Best reward at KL <= K per objective (mean over seeds, 95% band)"  # the frontier
    frontier_bands_plot(
        [frontier_panel(title, runs, sft, summary["kl_levels"])],
        path,
        reward_label=summary["reward_name"],
        kl_label="KL(policy ‖ SFT), nats per response (sampled estimate)",
    )


def length_controlled_cell(score: dict[str, float], per_token: dict[str, float]) -> str:
    """The per-token score with its verdict, marked when the verdict differs from the reward's."""
    raw, controlled = verdict(score), verdict(per_token)
    flip = f"; {raw} on the reward: flips under length control" if controlled != raw else ""
    return f"{fmt_interval(per_token, signed=True, digits=3)} ({controlled}{flip})"


def report_tables(results: dict[str, Any]) -> list[Table]:
    """The objectives' final table, their frontier table at the KL levels, and the token-AUC table of
    the weight methods when there is one."""
    summary, reward = results["summary"], results["summary"]["reward_name"]
    header = ["model", reward, "win rate vs SFT", "KL vs SFT", "length", "ended", f"{reward} per token"]
    rows = [
        [
            objective,
            fmt_stat(values[reward]),
            fmt_stat(values["win_rate_vs_sft"]),
            fmt_stat(values["kl_vs_sft"]),
            fmt_stat(values["length"], 1),
            fmt_stat(values.get("ended", {"n": 0})),
            fmt_stat(values.get("reward_per_token", {"n": 0}), 3),
        ]
        for objective, values in summary["objectives"].items()
    ]
    tables = [Table(header, rows)]
    levels, baseline = summary.get("kl_levels") or [], summary.get("baseline")
    if levels:
        frontier_header = [
            "model",
            *(f"{reward} at KL {k:g}" for k in levels),
            *(f"- {baseline} at KL {k:g}" for k in levels),
            f"- {baseline}, mean over levels",
        ]
        per_token = summary.get("frontier_per_token") or {}
        if per_token:
            frontier_header.append(f"per token: - {baseline}, mean over levels")
        frontier_rows = []
        for objective, entry in summary["frontier"].items():
            cells = [fmt_interval(level["reward"]) for level in entry["levels"]]
            if objective == baseline:
                cells += ["-"] * (len(levels) + 1 + bool(per_token))
            else:
                cells += [fmt_interval(level["vs_baseline"], signed=True) for level in entry["levels"]]
                cells.append(f"{fmt_interval(entry['score'], signed=True)} ({verdict(entry['score'])})")
                if per_token:
                    cells.append(length_controlled_cell(entry["score"], per_token[objective]["score"]))
            frontier_rows.append([objective, *cells])
        tables.append(Table(frontier_header, frontier_rows))
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


def add_report_stage(
    builder: Any,
    eval_stages: list[str],
    weight_stages: list[str],
    data: dict[str, Any],
    weight_metric: Callable[[list[dict[str, Any]]], dict[str, float] | None] | None = None,
    measured_stages: Sequence[str] = (),
) -> None:
    """The report stage; ``weight_metric`` (the data kind's, when its pairs carry true token rewards) judges
    the rewards of ``measured_stages``."""
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
            measured = weight_metric(rows) if rows and weight_metric and stage in measured_stages else None
            if measured is not None:
                results["weight_auc"][method] = measured
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
