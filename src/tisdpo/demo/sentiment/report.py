"""The sentiment study's report: ``study.json`` (every number), ``study.md`` (the answers), ``frontier.png``
and ``samples.jsonl`` (one line per evaluated response).

Arms are compared on their gold-reward-KL frontiers (:mod:`tisdpo.report.frontier`, the same machinery as
the embedded study) at KL levels spanning the union of the arms' ranges, paired seed by seed with DPO,
and again on the reward per token (a longer response can collect more sentiment). Beside them: each
arm's length and ended share, the start model's reward distribution, the labels' noise, how well the
token oracle's sum ranks responses by their compound score, and each estimated source's token AUC
against the oracle.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

import numpy as np

from tisdpo.demo.sentiment.plan import REGIME, Paths, RealStudyPlan, read_jsonl, write_jsonl
from tisdpo.demo.study.layout import finished_grid, finished_results
from tisdpo.demo.study.plan import DPO
from tisdpo.demo.study.report import clean, comparison_table, flips, length_stats
from tisdpo.demo.task import token_auc
from tisdpo.report.frontier import compare_arms, interval, kl_levels, union_kl_levels, verdict
from tisdpo.report.plots import frontier_bands_plot, frontier_panel
from tisdpo.report.tables import fmt_interval, markdown_table
from tisdpo.utils import write_json

REWARD_LABEL = "gold reward (-VADER compound) of sampled responses"


def start_points(plan: RealStudyPlan, paths: Paths) -> dict[int, dict[str, Any]]:
    out = {}
    for seed in plan.seeds:
        with open(os.path.join(paths.start_eval(seed), "result.json"), encoding="utf-8") as handle:
            out[seed] = json.load(handle)["points"][0]
    return out


def collect_samples(plan: RealStudyPlan, paths: Paths, results: list[dict[str, Any]], out_file: str) -> int:
    """``samples.jsonl``: every evaluated response of the start model and of every arm's checkpoints."""
    rows: list[dict[str, Any]] = []

    def add(folder: str, arm: str, seed: int, beta: float | None, label: str, step: int | None) -> None:
        for record in read_jsonl(os.path.join(folder, "eval", label, "generations.jsonl")):
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "beta": beta,
                    "step": step,
                    "prompt": record["prompt"],
                    "response": record["response"],
                    "gold_reward": record["reward"],
                    "kl": record["kl"],
                    "length": record["length"],
                    "ended": record["finished"],
                }
            )

    for seed in plan.seeds:
        add(paths.start_eval(seed), "start", seed, None, "final", 0)
    for stored in sorted(results, key=lambda s: s["unit"]["name"]):
        tags = stored["unit"]["tags"]
        folder = os.path.join(paths.arms, tags["arm"].replace("/", "__"), f"b{tags['beta']:g}", f"s{tags['seed']}")
        for point in stored["points"]:
            add(folder, tags["arm"], int(tags["seed"]), float(tags["beta"]), point["label"], point["step"])
    write_jsonl(out_file, rows)
    return len(rows)


def oracle_ranking(plan: RealStudyPlan, paths: Paths) -> dict[str, Any]:
    """How well each attribution's word sum orders the sampled responses as their compound score does:
    Spearman correlation over responses and agreement on the order of each pair (pairs with distinct
    compound scores)."""
    from tisdpo.demo.sentiment.vader import ATTRIBUTIONS, compound, word_attributions

    records = read_jsonl(paths.responses)
    texts = [r[f"response_{side}"] for r in records for side in ("a", "b")]
    scores = [compound(t) for t in texts]
    out = {}
    for attribution in ATTRIBUTIONS:
        sums = [sum(w.valence for w in word_attributions(t, attribution)) for t in texts]
        agree = [
            (sums[2 * i] - sums[2 * i + 1]) * (scores[2 * i] - scores[2 * i + 1]) > 0
            for i in range(len(records))
            if scores[2 * i] != scores[2 * i + 1]
        ]
        out[attribution] = {
            "spearman": spearman(sums, scores),
            "pair_order_agreement": float(np.mean(agree)) if agree else math.nan,
            "pairs": len(agree),
        }
    return out


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(values: list[float]) -> np.ndarray:
        _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def weight_quality(plan: RealStudyPlan, paths: Paths) -> dict[str, Any]:
    """Token AUC of each estimated source's rewards against the oracle: over content tokens whose oracle
    reward is not 0, how often a token the oracle rewards outranks one it penalises (0.5: no information)."""
    out: dict[str, Any] = {}
    estimated = [source for source in ("D", "P") if source in plan.sources]
    if "oracle" not in plan.sources:
        return out
    for seed in plan.seeds:
        oracle_rows = read_jsonl(paths.arm_weights(seed, "oracle"))
        for source in estimated:
            rows = read_jsonl(paths.arm_weights(seed, source))
            scores, labels = [], []
            for truth_row, row in zip(oracle_rows, rows):
                for side in ("chosen", "rejected"):
                    structural = set(row.get(f"{side}_structural_positions") or [])
                    pairs = zip(truth_row[f"{side}_token_rewards"], row[f"{side}_token_rewards"])
                    for position, (truth, estimate) in enumerate(pairs):
                        if truth != 0 and position not in structural:
                            scores.append(float(estimate))
                            labels.append(int(truth > 0))
            out.setdefault(source, {})[seed] = {"auc": token_auc(scores, labels), "tokens": len(scores)}
    return {
        source: {"by_seed": by_seed, "auc": interval([v["auc"] for v in by_seed.values()])}
        for source, by_seed in out.items()
    }


def start_distribution(paths: Paths) -> dict[str, float]:
    records = read_jsonl(paths.responses)
    gold = [r[f"gold_{side}"] for r in records for side in ("a", "b")]
    ended = [r[f"ended_{side}"] for r in records for side in ("a", "b")]
    return {
        "responses": len(gold),
        "mean": statistics.fmean(gold),
        "sd": statistics.pstdev(gold),
        "min": min(gold),
        "max": max(gold),
        "ended_share": statistics.fmean(ended),
        "mean_abs_pair_difference": statistics.fmean(abs(r["gold_a"] - r["gold_b"]) for r in records),
    }


def compare(
    plan: RealStudyPlan,
    starts: dict[int, dict[str, Any]],
    rewards: dict[str, dict[int, list]],
    per_token: dict[str, dict[int, list]],
    results: list[dict[str, Any]],
) -> dict[str, Any]:
    """The arms' frontiers (``rewards`` / ``per_token``: arm -> seed -> (KL, value) points) against DPO at
    the union KL levels, and again at levels inside DPO's own KL range (``within_dpo_range``: beyond its
    reach DPO's frontier is flat at its best reward, a point DPO was not trained to; inside it every arm is
    measured where DPO was), their lengths and ended shares (``results``: the runs' result files), and the
    start's."""
    sft = {seed: point["reward"] for seed, point in starts.items()}
    sft_per_token = {seed: point["reward_per_word"] for seed, point in starts.items()}
    lengths = length_stats(results, REGIME)

    def at(levels: list[float]) -> dict[str, Any]:
        return {
            "kl_levels": levels,
            "arms": compare_arms(rewards, sft, levels),
            "per_word": compare_arms(per_token, sft_per_token, levels),
            "lengths": lengths,
        }

    return {
        **at(union_kl_levels(rewards, plan.kl_fractions)),
        "within_dpo_range": at(kl_levels(rewards[DPO.name], plan.kl_fractions)),
        "start": {
            "reward": interval(list(sft.values())),
            "length": interval([p["length"] for p in starts.values()]),
            "ended": interval([p["eos_rate"] for p in starts.values()]),
        },
    }


def answers(entry: dict[str, Any], quality: dict[str, Any]) -> dict[str, str]:
    def line(comparison: dict[str, Any], arm: str) -> str:
        stats = comparison["arms"][arm]
        flipped = " (flips under length control)" if flips(comparison, arm) else ""
        return f"{fmt_interval(stats['score'], signed=True)}: {verdict(stats['score'])}{flipped}"

    out = {}
    for arm in entry["arms"]:
        if arm != DPO.name:
            out[arm] = (
                f"{arm} minus DPO, frontier gold reward averaged over the KL levels: {line(entry, arm)}; "
                f"within DPO's KL range: {line(entry['within_dpo_range'], arm)}"
            )
    for source, stats in quality.items():
        out[f"auc_{source}"] = f"token AUC of {source}'s rewards against the oracle: {fmt_interval(stats['auc'])}"
    return out


def write_report(plan: RealStudyPlan, paths: Paths, model_dir: str) -> dict[str, Any]:
    out_dir = paths.root
    starts = start_points(plan, paths)
    results = finished_results(paths.arms)
    rewards = finished_grid(paths.arms)[REGIME]
    per_token = finished_grid(paths.arms, "reward_per_word")[REGIME]
    entry = compare(plan, starts, rewards, per_token, results)
    quality = weight_quality(plan, paths)
    labels = {}
    for seed in plan.seeds:
        with open(paths.labels(seed), encoding="utf-8") as handle:
            labels[seed] = json.load(handle)
    n_samples = collect_samples(plan, paths, results, os.path.join(out_dir, "samples.jsonl"))
    panels = [
        frontier_panel("gold reward", rewards, {s: p["reward"] for s, p in starts.items()}, entry["kl_levels"]),
        frontier_panel(
            "gold reward per token", per_token, {s: p["reward_per_word"] for s, p in starts.items()}, entry["kl_levels"]
        ),
    ]
    frontier_bands_plot(panels, os.path.join(out_dir, "frontier.png"), reward_label="gold reward")
    study = {
        "question": "does TIS-DPO beat DPO at equal KL on a real model with a known reward?",
        "model": model_dir,
        "plan": clean(json.loads(json.dumps(plan.__dict__))),
        "labels": labels,
        "start_distribution": start_distribution(paths),
        "oracle_ranking": oracle_ranking(plan, paths),
        "comparison": entry,
        "weight_quality": quality,
        "answers": answers(entry, quality),
        "samples": n_samples,
    }
    write_json(os.path.join(out_dir, "study.json"), clean(study))
    with open(os.path.join(out_dir, "study.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(plan, study))
    return study


def markdown(plan: RealStudyPlan, study: dict[str, Any]) -> str:
    entry, start = study["comparison"], study["start_distribution"]
    flipped = [v["flipped_share"] for v in study["labels"].values()]
    ties = [v["dropped_ties"] for v in study["labels"].values()]
    lines = [
        "# TIS-DPO against DPO on a real model with a known reward",
        "",
        f"SmolLM2-135M-Instruct, LoRA on layers {plan.train.get('lora_layers', 'all')}; gold reward "
        f"{'minus ' if plan.direction == 'negative' else ''}VADER's compound score ({plan.direction} text wanted); "
        f"{plan.n_train_prompts} training prompts x 2 sampled responses, Bradley-Terry labels at temperature "
        f"{plan.label_temperature} ({100 * statistics.fmean(flipped):.0f}% of labels against the gold order, "
        f"{statistics.fmean(ties):.0f} exact ties dropped); betas {plan.betas}, seeds {plan.seeds}; "
        f"{plan.eval_prompts} held-out prompts, one response each at temperature 1, at every checkpoint.",
        "",
        f"Start model's sampled responses: gold reward mean {start['mean']:.3f} (sd {start['sd']:.3f}, "
        f"min {start['min']:.3f}, max {start['max']:.3f}), {100 * start['ended_share']:.0f}% end within "
        f"{plan.max_new_tokens} tokens; two responses to one prompt differ by {start['mean_abs_pair_difference']:.3f} "
        "on average.",
        "",
        "## Answers",
        "",
        *(f"* {text}" for text in study["answers"].values()),
        "",
        f"## Frontiers at KL levels {entry['kl_levels']} (95% intervals over seeds)",
        "",
        comparison_table(entry, length_unit="tokens"),
        "",
        f"## Within DPO's KL range: levels {entry['within_dpo_range']['kl_levels']}",
        "",
        "Beyond the KL DPO reached, its frontier is flat at its best reward; these levels measure every arm "
        "where DPO was trained to.",
        "",
        comparison_table(entry["within_dpo_range"], length_unit="tokens"),
        "",
        "![frontiers](frontier.png)",
        "",
        "## The token oracle",
        "",
        markdown_table(
            ["attribution", "Spearman with compound (responses)", "pairs ordered as compound", "pairs"],
            [
                [name, f"{v['spearman']:.3f}", f"{v['pair_order_agreement']:.3f}", v["pairs"]]
                for name, v in study["oracle_ranking"].items()
            ],
        ),
        "",
        f"The oracle arm uses `{plan.attribution}`.",
        "",
    ]
    return "\n".join(lines)
