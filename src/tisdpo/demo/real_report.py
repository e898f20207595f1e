"""The real-model tour's report: results.json, results.md and one self-contained report.html.

Every number comes from the files the tour's stages wrote (weights, heatmap summary, evaluation and
training results, generations); nothing is typed in.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
from dataclasses import asdict
from typing import Any

from tisdpo.pipeline.engine import Stage, StageContext
from tisdpo.utils import atomic_path, write_json

OBJECTIVES = {"dpo": "DPO (LoRA)", "tisdpo_P": "TIS-DPO(P) (LoRA)"}
REPORT_FILES = ("results.json", "results.md", "report.html", "heatmap.png", "heatmap.html", "histogram.png")
STAGES = (
    "data",
    "weights_P",
    "heatmap",
    "eval_start",
    "train_dpo",
    "generate_dpo",
    "train_tisdpo_P",
    "generate_tisdpo_P",
)
LIMITS = (
    "What the tour cannot show: there is no reward model or safety judge offline, so nothing here scores whether a "
    "response is safer; the held-out metrics measure agreement with the human preference labels of Anthropic HH "
    "(implicit rewards against the starting model), and the responses are for reading. The model is small "
    "(135M parameters, dequantized from a 4-bit GGUF file), the training set tiny and the run one epoch with one "
    "seed, so differences between DPO and TIS-DPO(P) of a few pairs are noise."
)


def read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# -- numbers -----------------------------------------------------------------------------------
def weight_statistics(rows: list[dict[str, Any]], low: float, high: float) -> dict[str, Any]:
    """Means of the weights per side, the share at a clamp bound, and how often the P rewards side with the
    human label (summed over a response's tokens, chosen against rejected)."""
    stats: dict[str, Any] = {"pairs": len(rows)}
    all_weights = []
    for side in ("chosen", "rejected"):
        weights = [w for row in rows for w in row[f"{side}_weights"]]
        all_weights += weights
        stats[f"{side}_tokens"] = len(weights)
        stats[f"{side}_weight_mean"] = sum(weights) / len(weights)
    stats["share_at_bounds"] = sum(w in (low, high) for w in all_weights) / len(all_weights)
    agree = sum(sum(row["chosen_token_rewards"]) > sum(row["rejected_token_rewards"]) for row in rows)
    stats["reward_sum_agrees_with_label"] = agree / len(rows)
    return stats


def end_of_turn_weights(rows: list[dict[str, Any]], end_id: int) -> dict[str, float]:
    """Mean weight of the end-of-turn token against the other tokens, per side: a weight that differs between
    the sides rewards the policy for moving that token's probability everywhere."""
    out = {}
    for side in ("chosen", "rejected"):
        end, other, end_rewards = [], [], []
        for row in rows:
            for token, weight, reward in zip(
                row[f"{side}_token_ids"], row[f"{side}_weights"], row[f"{side}_token_rewards"]
            ):
                (end if token == end_id else other).append(weight)
                if token == end_id:
                    end_rewards.append(reward)
        out[f"{side}_end"] = sum(end) / len(end) if end else float("nan")
        out[f"{side}_other"] = sum(other) / len(other) if other else float("nan")
        out[f"{side}_end_reward"] = sum(end_rewards) / len(end_rewards) if end_rewards else float("nan")
    return out


def preference_row(metrics: dict[str, Any]) -> dict[str, float]:
    keys = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen", "eval_logps/rejected")
    return {key.removeprefix("eval_"): metrics[key] for key in keys if key in metrics}


def training_summary(folder: str) -> dict[str, Any]:
    history = read_json(os.path.join(folder, "trainer_state.json"))["log_history"]
    steps = sum("loss" in entry for entry in history)
    return {"steps": steps, "train_loss": read_json(os.path.join(folder, "all_results.json")).get("train_loss")}


def responses(generation_dirs: dict[str, str]) -> list[dict[str, Any]]:
    """Per request: the starting model's greedy response and each trained model's, side by side."""
    per_objective = {
        name: read_jsonl(os.path.join(folder, "generations.jsonl")) for name, folder in generation_dirs.items()
    }
    first = next(iter(per_objective.values()))
    out = []
    for index, record in enumerate(first):
        request = record["messages"][-1]["content"] if record.get("messages") else record["prompt"]
        entry = {
            "request": request,
            "start": record["baseline_response"],
            "start_finished": record["baseline_finished"],
        }
        for name, records in per_objective.items():
            entry[name] = records[index]["response"]
            entry[f"{name}_finished"] = records[index]["finished"]
        out.append(entry)
    return out


def stage_seconds(inputs: dict[str, str]) -> dict[str, float]:
    seconds = {}
    for name in STAGES:
        path = os.path.join(inputs[name], "stage.json")
        if os.path.exists(path):
            seconds[name] = read_json(path).get("seconds")
    return seconds


def collect_results(inputs: dict[str, str], settings: Any, model_dir: str, dataset: str) -> dict[str, Any]:
    from tisdpo.modeling import load_tokenizer

    meta = read_json(os.path.join(inputs["weights_P"], "weights.jsonl.meta.json"))
    transform = meta["transform"]
    weights = read_jsonl(os.path.join(inputs["weights_P"], "weights.jsonl"))
    tokenizer = load_tokenizer(meta["tokenizer"])
    heatmap = read_json(os.path.join(inputs["heatmap"], "summary.json"))
    preference = {"start": preference_row(read_json(os.path.join(inputs["eval_start"], "eval_results.json")))}
    training, generation = {}, {}
    for name in OBJECTIVES:
        preference[name] = preference_row(read_json(os.path.join(inputs[f"train_{name}"], "all_results.json")))
        training[name] = training_summary(inputs[f"train_{name}"])
        gen = read_json(os.path.join(inputs[f"generate_{name}"], "eval_results.json"))
        generation[name] = {
            key: gen[key] for key in ("gen/kl", "gen/length_mean", "gen/baseline_length_mean") if key in gen
        }
    return {
        "model": f"SmolLM2-135M-Instruct ({model_dir})",
        "dataset": dataset,
        "settings": asdict(settings),
        "data": read_json(os.path.join(inputs["data"], "data.json")),
        "weights": {
            **weight_statistics(weights, transform["min_weight"], transform["max_weight"]),
            "end_of_turn": {"token": tokenizer.eos_token, **end_of_turn_weights(weights, tokenizer.eos_token_id)},
            "transform": transform,
            "top_tokens": heatmap.get("top_tokens"),
        },
        "preference": preference,
        "training": training,
        "generation": generation,
        "responses": responses({name: inputs[f"generate_{name}"] for name in OBJECTIVES}),
        "stage_seconds": stage_seconds(inputs),
    }


# -- tables ------------------------------------------------------------------------------------
def number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def preference_table(results: dict[str, Any]) -> list[list[str]]:
    header = ["model", "held-out reward accuracy", "reward margin", "held-out loss", "logps/chosen", "logps/rejected"]
    rows = [header + ["train loss (epoch mean)"]]
    start = results["preference"]["start"]
    logps = [number(start["logps/chosen"], 2), number(start["logps/rejected"], 2)]
    loss = number(start.get("loss"), 4)
    rows.append(["SmolLM2-135M-Instruct (start)", "- (policy = reference)", "0 (by definition)", loss, *logps, "-"])
    baseline = results["data"].get("eval_shorter_chosen_share")
    if baseline is not None:
        rows.append(["no model: the shorter response wins", number(baseline), "-", "-", "-", "-", "-"])
    for name, label in OBJECTIVES.items():
        values, train = results["preference"][name], results["training"][name]
        rows.append(
            [
                label,
                number(values.get("rewards/accuracies")),
                number(values.get("rewards/margins"), 4),
                number(values.get("loss"), 4),
                number(values.get("logps/chosen"), 2),
                number(values.get("logps/rejected"), 2),
                f"{number(train['train_loss'], 4)} ({train['steps']} steps)",
            ]
        )
    return rows


def generation_table(results: dict[str, Any]) -> list[list[str]]:
    rows = [
        [
            "model",
            "log-ratio to the start on its greedy responses (nats)",
            "mean length (tokens)",
            "ended with <|im_end|>",
        ]
    ]
    entries = results["responses"]
    start_done = sum(entry["start_finished"] for entry in entries)
    start_length = next(iter(results["generation"].values())).get("gen/baseline_length_mean")
    rows.append(["SmolLM2-135M-Instruct (start)", "0", number(start_length, 1), f"{start_done} of {len(entries)}"])
    for name, label in OBJECTIVES.items():
        values = results["generation"][name]
        done = sum(entry[f"{name}_finished"] for entry in entries)
        rows.append(
            [
                label,
                number(values.get("gen/kl"), 2),
                number(values.get("gen/length_mean"), 1),
                f"{done} of {len(entries)}",
            ]
        )
    return rows


def weights_line(results: dict[str, Any]) -> str:
    w = results["weights"]
    eot = w["end_of_turn"]
    return (
        f"P weights on {w['pairs']} training pairs ({w['chosen_tokens']} chosen and {w['rejected_tokens']} rejected "
        f"tokens): mean weight {w['chosen_weight_mean']:.3f} (chosen) and {w['rejected_weight_mean']:.3f} (rejected), "
        f"{w['share_at_bounds']:.0%} of the weights at a clamp bound; the summed P rewards prefer the human-chosen "
        f"response in {w['reward_sum_agrees_with_label']:.0%} of the pairs. The end-of-turn token {eot['token']} has "
        f"mean weight {eot['chosen_end']:.2f} in chosen and {eot['rejected_end']:.2f} in rejected responses (other "
        f"tokens {eot['chosen_other']:.2f} and {eot['rejected_other']:.2f}); its mean P reward is "
        f"{eot.get('chosen_end_reward', float('nan')):+.2f} in chosen and {eot.get('rejected_end_reward', float('nan')):+.2f} "
        "in rejected responses (a structural token: weight 1 unless --weight_structural estimated)."
    )


def markdown(rows: list[list[str]]) -> str:
    def clean(cell: str) -> str:
        return " ".join(str(cell).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(clean(c) for c in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def response_rows(results: dict[str, Any], limit: int | None = 160) -> list[list[str]]:
    def cut(text: str, finished: bool) -> str:
        text = text if limit is None or len(text) <= limit else text[:limit] + " …"
        return text if finished else text + " [cut at max_new_tokens]"

    rows = [["request", "start", *OBJECTIVES.values()]]
    for entry in results["responses"]:
        rows.append(
            [entry["request"], cut(entry["start"], entry["start_finished"])]
            + [cut(entry[name], entry[f"{name}_finished"]) for name in OBJECTIVES]
        )
    return rows


def results_markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    seconds = results["stage_seconds"]
    return "\n\n".join(
        [
            f"Real-model tour: SmolLM2-135M-Instruct, {s['train_pairs']} HH-harmless training pairs, "
            f"{s['eval_pairs']} held-out pairs, LoRA r {s['lora_r']}, learning rate {s['learning_rate']}, "
            f"{s['epochs']} epoch(s) of batches of {s['batch_size']}, beta {s['beta']}, max_length {s['max_length']}.",
            markdown(preference_table(results)),
            weights_line(results),
            markdown(generation_table(results)),
            markdown(response_rows(results)),
            "Stage times (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items() if v is not None)
            + f"; total {sum(v for v in seconds.values() if v):.0f}",
        ]
    )


# -- HTML --------------------------------------------------------------------------------------
def html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def embedded_png(path: str) -> str:
    with open(path, "rb") as handle:
        data = base64.b64encode(handle.read()).decode()
    return f"<img style='max-width:100%' src='data:image/png;base64,{data}'>"


def report_html(results: dict[str, Any], heatmap_dir: str) -> str:
    with open(os.path.join(heatmap_dir, "heatmap.html"), encoding="utf-8") as handle:
        heatmap_page = handle.read()
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}th{background:#f3f3f3}"
        "iframe{width:100%;height:700px;border:1px solid #ccc}"
    )
    text = results_markdown(results).split("\n\n")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>tisdpo: real-model tour</title><style>{style}</style></head><body>",
        "<h1>TIS-DPO on a real model: SmolLM2-135M-Instruct on Anthropic HH-harmless</h1>",
        f"<p>{html.escape(text[0])}</p>",
        "<h2>Held-out preference metrics, before and after</h2>",
        html_table(preference_table(results)),
        "<p>Reward accuracy: the share of held-out pairs whose implicit reward (beta times the policy's log-ratio "
        "to the starting model, summed over the response) is higher for the human-chosen response. A policy that "
        "lowers every token's log-probability alike ranks the shorter response first: its accuracy is the "
        "'shorter response wins' row, a baseline to beat.</p>",
        "<h2>P-method token weights</h2>",
        f"<p>{html.escape(weights_line(results))}</p>",
        "<p>A token weighted lower in chosen than in rejected responses is one the weighted objective pays the "
        "policy to make less likely wherever it occurs, whatever the context; a token weighted higher, more likely."
        "</p>",
        embedded_png(os.path.join(heatmap_dir, "heatmap.png")),
        embedded_png(os.path.join(heatmap_dir, "histogram.png")),
        "<p>Every token of the first training pairs (hover for the weight and the raw reward):</p>",
        f'<iframe srcdoc="{html.escape(heatmap_page, quote=True)}"></iframe>',
        "<h2>Greedy responses to held-out requests, before and after</h2>",
        html_table(generation_table(results)),
        html_table(response_rows(results, limit=None)),
        f"<h2>What this shows, and what it cannot</h2><p>{html.escape(LIMITS)}</p>",
        f"<p>{html.escape(text[-1])}</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def add_report_stage(stages: list[Stage], settings: Any, model_dir: str, dataset: str) -> None:
    def action(ctx: StageContext) -> None:
        results = collect_results(ctx.inputs, settings, model_dir, dataset)
        write_json(os.path.join(ctx.work_dir, "results.json"), results)
        with atomic_path(os.path.join(ctx.work_dir, "results.md")) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            handle.write(results_markdown(results) + "\n")
        with atomic_path(os.path.join(ctx.work_dir, "report.html")) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            handle.write(report_html(results, ctx.inputs["heatmap"]))
        for name in ("heatmap.png", "heatmap.html", "histogram.png"):
            shutil.copy(os.path.join(ctx.inputs["heatmap"], name), os.path.join(ctx.work_dir, name))

    stages.append(Stage("report", action, {"version": 3}, list(STAGES), "results.json, results.md, report.html"))


def copy_report(report_dir: str, output_dir: str, names: tuple[str, ...]) -> dict[str, Any]:
    for name in names:
        shutil.copy(os.path.join(report_dir, name), os.path.join(output_dir, name))
    return read_json(os.path.join(report_dir, "results.json"))
