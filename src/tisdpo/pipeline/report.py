"""The pipeline's last stage: results.json, report.html, a reward-vs-KL frontier and token heatmaps.

Every number comes from the evaluation folders of this run. Objectives are compared twice: at the
end of training, and at a matched KL to the SFT model (reward interpolated along each run's
checkpoints), because a single (step, reward) point can favour either method.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from typing import Any

import numpy as np

from tisdpo.pipeline.engine import StageContext
from tisdpo.utils import atomic_path, write_json

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


def frontier_png(summary: dict[str, Any], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reward_name = summary["reward_name"]
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    colors = {}
    for index, (objective, values) in enumerate(summary["objectives"].items()):
        color = colors.setdefault(objective, f"C{index % 10}")
        for seed, curve in values["seeds"].items():
            kls = [p["gen/kl"] for p in curve]
            rewards = [p["gen/reward_mean"] for p in curve]
            axes.plot(
                kls,
                rewards,
                "-o",
                color=color,
                alpha=0.6,
                markersize=3,
                label=objective if seed == next(iter(values["seeds"])) else None,
            )
    if math.isfinite(summary["matched_kl"]):
        axes.axvline(summary["matched_kl"], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("KL(policy || SFT), nats per response (sampled)")
    axes.set_ylabel(reward_name)
    axes.set_title("reward against KL: checkpoints of every run (dotted: the matched KL)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def _fmt(stat: dict[str, float], digits: int = 2) -> str:
    if not stat or not math.isfinite(stat.get("mean", float("nan"))):
        return "-"
    return (
        f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
        if stat.get("n", 1) > 1
        else f"{stat['mean']:.{digits}f}"
    )


def markdown_tables(results: dict[str, Any]) -> str:
    summary, reward = results["summary"], results["summary"]["reward_name"]
    lines = [
        f"| model | {reward} | win rate vs SFT | KL vs SFT | {reward} at KL {summary['matched_kl']:.2f} | length |",
        "|---|---|---|---|---|---|",
    ]
    for objective, values in summary["objectives"].items():
        lines.append(
            f"| {objective} | {_fmt(values[reward])} | {_fmt(values['win_rate_vs_sft'])} | {_fmt(values['kl_vs_sft'])} "
            f"| {_fmt(values.get(f'{reward}_at_matched_kl', {}))} | {_fmt(values['length'], 1)} |"
        )
    if results.get("weight_auc"):
        lines += [
            "",
            "| weights from | token AUC (all) | context-dependent | context-free | tokens |",
            "|---|---|---|---|---|",
        ]
        for method, auc in results["weight_auc"].items():
            lines.append(
                f"| {method} | {auc['all']:.3f} | {auc['context_dependent']:.3f} | {auc['context_free']:.3f} | {auc['tokens']} |"
            )
    return "\n".join(lines)


def _embed(path: str) -> str:
    with open(path, "rb") as handle:
        return "data:image/png;base64," + base64.b64encode(handle.read()).decode()


def _markdown_to_html(table: str) -> str:
    out, rows = [], [line for line in table.splitlines()]
    in_table = False
    for line in rows:
        if not line.startswith("|"):
            if in_table:
                out.append("</table>")
                in_table = False
            continue
        cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
        if set("".join(cells)) <= {"-"}:
            continue
        if not in_table:
            out.append("<table>")
            in_table = True
            out.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
        else:
            out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def write_report(out_dir: str, results: dict[str, Any], images: dict[str, str], notes: str) -> None:
    style = "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>tisdpo report</title><style>{style}</style></head><body>",
        "<h1>TIS-DPO pipeline report</h1>",
    ]
    if notes:
        parts.append(f"<p>{html.escape(notes)}</p>")
    parts.append(_markdown_to_html(markdown_tables(results)))
    for title, path in images.items():
        parts.append(f"<h2>{html.escape(title)}</h2><img style='max-width:100%' src='{_embed(path)}'>")
    parts.append("</body></html>")
    with atomic_path(os.path.join(out_dir, "report.html")) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write("\n".join(parts))


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def add_report_stage(builder: Any, eval_stages: list[str], weight_stages: list[str], data: dict[str, Any]) -> None:
    recipe = builder.recipe
    reward_name = (recipe.evaluate or {}).get("reward_name", "reward")

    def action(ctx: StageContext) -> None:
        from tisdpo.report.heatmap import render_html, render_png

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
            examples = heatmap_examples(rows[:30], os.path.join(ctx.inputs[stage], "weights.jsonl"))
            if examples:
                render_html(examples, os.path.join(ctx.work_dir, f"heatmap_{method}.html"))
                png = os.path.join(ctx.work_dir, f"heatmap_{method}.png")
                render_png(examples, png, max_examples=3)
                images[f"Token weights, method {method} (red: weight above 1, blue: below)"] = png
        flat = {
            name: {k: v for k, v in values.items() if k != "seeds"} for name, values in summary["objectives"].items()
        }
        write_json(os.path.join(ctx.work_dir, "results.json"), {**results, "table": flat})
        with atomic_path(os.path.join(ctx.work_dir, "results.md")) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            handle.write(markdown_tables(results) + "\n")
        write_report(ctx.work_dir, results, images, recipe.notes)

    config = {"evals": eval_stages, "weights": weight_stages, "reward_name": reward_name, "version": 1}
    builder.add(
        "report", action, config, eval_stages + weight_stages, "results.json, report.html, frontier and heatmaps"
    )


def heatmap_examples(rows: list[dict[str, Any]], weights_file: str) -> list[Any]:
    """Heatmap examples of a weights file, decoded with the tokenizer named in its provenance."""
    from tisdpo.commands.visualize import heatmap_examples as build
    from tisdpo.data.formats import RawRecords
    from tisdpo.modeling import load_tokenizer
    from tisdpo.weights.io import read_meta

    meta = read_meta(weights_file) or {}
    if not rows or not meta.get("tokenizer"):
        return []
    records = RawRecords(rows, weights_file, [f"line {i + 1}" for i in range(len(rows))])
    return build(records, load_tokenizer(meta["tokenizer"]), "weights")
