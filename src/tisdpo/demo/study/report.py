"""The study's report: ``study.json`` (every number), ``study.md`` (the answers) and frontier plots."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from tisdpo.demo.study.layout import Layout, derive_weights, finished_grid, sft_rewards
from tisdpo.demo.study.plan import DPO, DPO_REACH, Arm, StudyPlan
from tisdpo.report.frontier import compare_arms, kl_levels, verdict
from tisdpo.report.plots import frontier_bands_plot, frontier_panel
from tisdpo.report.tables import fmt_interval, markdown_table
from tisdpo.utils import write_json

REWARD_LABEL = "oracle reward of sampled responses"


def clean(value: Any) -> Any:
    """NaN and infinities become null (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def comparison_table(compared: dict[str, Any], levels: list[float], arms: list[str]) -> str:
    header = ["arm", *(f"reward at KL {k:g}" for k in levels), *(f"vs DPO at KL {k:g}" for k in levels), "score"]
    rows = []
    for arm in arms:
        if arm not in compared:
            continue
        entry = compared[arm]
        rewards = [fmt_interval(level["reward"]) for level in entry["levels"]]
        if arm == DPO.name:
            diffs, score = ["-"] * len(levels), "-"
        else:
            diffs = [fmt_interval(level["vs_baseline"], signed=True) for level in entry["levels"]]
            score = f"{fmt_interval(entry['score'], signed=True)} ({verdict(entry['score'])})"
        rows.append([arm, *rewards, *diffs, score])
    return markdown_table(header, rows)


def weight_aucs(layout: Layout, plan: StudyPlan) -> dict[str, Any]:
    from tisdpo.data.formats import read_records
    from tisdpo.demo.metrics import weight_auc

    out = {}
    for source in ("D", "S", "P"):
        if source in plan.sources:
            path = layout.estimated_weights(plan.main_regime, source)
            out[source] = weight_auc(list(read_records(path).rows))
    return out


def weight_stats(plan: StudyPlan, layout: Layout, scratch: str) -> dict[str, Any]:
    """Per TIS-DPO arm of the main regime: the mean weight on each side, and for unnormalised ``exp``
    the share of weights at the clamp bounds (a saturated transform is a sign its mu is too large)."""
    from tisdpo.data.formats import read_records

    out = {}
    for arm in [*plan.main_arms(), *plan.variant_arms()]:
        if arm.source is None:
            continue
        rows = read_records(derive_weights(layout, arm, plan.main_regime, scratch)).rows
        chosen = np.concatenate([np.asarray(r["chosen_weights"], dtype=np.float64) for r in rows])
        rejected = np.concatenate([np.asarray(r["rejected_weights"], dtype=np.float64) for r in rows])
        flags = plan.transform(arm.variant) if arm.source != "random" else {"weight_transform": "random"}
        entry = {"chosen_mean": float(chosen.mean()), "rejected_mean": float(rejected.mean())}
        if flags.get("weight_transform", "exp") == "exp" and flags.get("weight_normalize", "none") == "none":
            both = np.concatenate([chosen, rejected])
            entry["at_lower_bound"] = float(np.mean(np.isclose(both, flags.get("weight_min", 0.5))))
            entry["at_upper_bound"] = float(np.mean(np.isclose(both, flags.get("weight_max", 2.0))))
        out[arm.name] = entry
    return out


def panel(title: str, runs: dict[str, dict[int, list]], sft: dict[int, float], levels: list[float], arms: list[str]):
    return frontier_panel(title, {arm: runs[arm] for arm in arms if arm in runs}, sft, levels)


def answers(
    plan: StudyPlan, main: dict[str, Any], choices: dict[str, Any], regimes: dict[str, Any], confirm: dict[str, Any]
) -> dict[str, str]:
    """The answers to the study's three questions, in words, from the numbers."""

    def at_levels(entry: dict[str, Any]) -> str:
        return "; ".join(
            f"KL {level['kl']:g}: {fmt_interval(level['vs_baseline'], signed=True)} ({verdict(level['vs_baseline'])})"
            for level in entry["levels"]
        )

    out: dict[str, str] = {}
    oracle = Arm("oracle").name
    if oracle in main:
        entry = main[oracle]
        out["a"] = (
            f"Oracle weights against DPO in the main regime ({plan.main_regime}), paired differences of the frontier "
            f"reward over explore seeds {plan.explore_seeds}: {at_levels(entry)}. Averaged over the levels: "
            f"{fmt_interval(entry['score'], signed=True)} ({verdict(entry['score'])})."
        )
        confirmed = [c for c in confirm.get(plan.main_regime, {}).items() if c[0].startswith("tisdpo_oracle")]
        for name, entry in confirmed:
            out["a"] += (
                f" On fresh seeds {plan.confirm_seeds} ({name}): {at_levels(entry)}; averaged "
                f"{fmt_interval(entry['score'], signed=True)} ({verdict(entry['score'])})."
            )
    ranking = sorted(
        (arm for arm in [*main] if arm.startswith("tisdpo_") and not arm.startswith("tisdpo_oracle")),
        key=lambda arm: -main[arm]["score"]["mean"],
    )
    best_oracle = max(
        (a for a in main if a.startswith("tisdpo_oracle")), key=lambda a: main[a]["score"]["mean"], default=None
    )
    lines = [f"{arm} {fmt_interval(main[arm]['score'], signed=True)}" for arm in ranking]
    out["b"] = (
        "Estimated sources and transforms ranked by their score (frontier reward minus DPO's, averaged over the "
        f"three KL levels, explore seeds): {', '.join(lines)}."
    )
    if best_oracle:
        out["b"] += (
            f" The best oracle arm ({best_oracle}) scores {fmt_interval(main[best_oracle]['score'], signed=True)}."
        )
    if ranking:
        gap = main[best_oracle]["score"]["mean"] - main[ranking[0]]["score"]["mean"] if best_oracle else math.nan
        out["b"] += f" Closest to the oracle: {ranking[0]}" + (f" ({gap:.2f} below it)." if math.isfinite(gap) else ".")
    chosen = choices["variant"]["arm"]
    regime_lines = [
        f"{regime} {fmt_interval(entry[chosen]['score'], signed=True)} ({verdict(entry[chosen]['score'])})"
        for regime, entry in regimes.items()
        if chosen in entry
    ]
    ceilings = [
        f"{regime} {fmt_interval(entry[oracle]['score'], signed=True)}"
        for regime, entry in regimes.items()
        if oracle in entry
    ]
    selected = choices["regime"]["regime"]
    out["c"] = (
        f"TIS-DPO(D) with the chosen transform ({chosen}) minus DPO, averaged over each regime's KL levels, explore "
        f"seeds: {', '.join(regime_lines)}. Selected regime: {selected}."
    )
    if ceilings:
        out["c"] += f" The oracle's score in the same regimes (the ceiling): {', '.join(ceilings)}."
    for regime, entry in confirm.items():
        if chosen in entry:
            out["c"] += (
                f" Confirmation in {regime} on fresh seeds {plan.confirm_seeds}: {at_levels(entry[chosen])}; averaged "
                f"{fmt_interval(entry[chosen]['score'], signed=True)} ({verdict(entry[chosen]['score'])})."
            )
    return out


REACH_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def reach_comparison(runs: dict[str, dict[int, list]], sft: dict[int, float], chosen: str) -> dict[str, Any] | None:
    """The arms at KL levels up to the largest KL that DPO reaches with its smallest betas and longest
    training (quarters of its median over seeds), paired with that DPO: does DPO alone get to where
    TIS-DPO goes? Arms that stop earlier are held at their best reward (they were not trained longer)."""
    if DPO_REACH.name not in runs:
        return None
    levels = kl_levels(runs[DPO_REACH.name], REACH_FRACTIONS)
    arms = [a for a in (DPO_REACH.name, DPO.name, "tisdpo_oracle", "tisdpo_D", chosen, "tisdpo_S") if a in runs]
    compared = compare_arms({a: runs[a] for a in dict.fromkeys(arms)}, sft, levels, baseline=DPO_REACH.name)
    top = {arm: compared[arm]["levels"][-1]["reward"] for arm in compared}
    text = (
        f"DPO trained 3x longer at smaller betas ({DPO_REACH.name}) reaches a median KL of {levels[-1]:g}, where its "
        f"frontier reward is {fmt_interval(top[DPO_REACH.name])}; the best the other arms reached within that KL: "
        + ", ".join(
            f"{arm} {fmt_interval(top[arm])} (at KL <= {compared[arm]['max_kl']['mean']:.0f})"
            for arm in compared
            if arm != DPO_REACH.name
        )
        + ". The table below gives the rewards at the intermediate levels."
    )
    return {"kl_levels": levels, "arms": compared, "text": text}


def write_study(plan: StudyPlan, layout: Layout, out_dir: str) -> dict[str, Any]:
    """Analyse every finished run and write the report files into ``out_dir``; return study.json's content."""
    with open(os.path.join(layout.inputs["task"], "regimes.json"), encoding="utf-8") as handle:
        regime_info = json.load(handle)
    with open(os.path.join(layout.inputs["confirm"], "choices.json"), encoding="utf-8") as handle:
        choices = json.load(handle)
    explore_sft = sft_rewards(layout, plan.explore_seeds)
    confirm_sft = sft_rewards(layout, plan.confirm_seeds)
    main_runs = finished_grid(layout.inputs["explore_main"])[plan.main_regime]
    other_runs = finished_grid(layout.inputs["explore_regimes"])
    confirm_runs = finished_grid(layout.inputs["confirm"])

    levels = kl_levels(main_runs[DPO.name], plan.kl_fractions)
    main = compare_arms(main_runs, explore_sft, levels)
    source_arms = [DPO.name, *([DPO_REACH.name] if plan.dpo_reach else []), *(a.name for a in plan.main_arms()[1:])]
    variant_arms = [DPO.name, Arm("D").name, *(a.name for a in plan.variant_arms())]

    regime_levels, regimes = {}, {}
    all_regimes = {plan.main_regime: main_runs, **other_runs}
    chosen = choices["variant"]["arm"]
    regime_arms = [arm.name for arm in plan.regime_arms(Arm("D", choices["variant"]["variant"]))]
    for name in plan.regimes:
        runs = {arm: all_regimes[name][arm] for arm in regime_arms if arm in all_regimes.get(name, {})}
        regime_levels[name] = kl_levels(runs[DPO.name], plan.kl_fractions)
        regimes[name] = compare_arms(runs, explore_sft, regime_levels[name])
    confirm = {name: compare_arms(runs, confirm_sft, regime_levels[name]) for name, runs in confirm_runs.items()}
    text = answers(plan, main, choices, regimes, confirm)
    reach = reach_comparison(main_runs, explore_sft, chosen)
    if reach:
        text["reach"] = reach["text"]

    images = {
        "frontier_sources.png": [
            panel(f"weight sources, {plan.main_regime}", main_runs, explore_sft, levels, source_arms)
        ],
        "frontier_transforms.png": [
            panel(f"transforms and normalisation, {plan.main_regime}", main_runs, explore_sft, levels, variant_arms)
        ],
        "frontier_regimes.png": [
            panel(name, all_regimes[name], explore_sft, regime_levels[name], regime_arms) for name in plan.regimes
        ],
        "frontier_confirm.png": [
            panel(f"{name}, fresh seeds", runs, confirm_sft, regime_levels[name], list(runs))
            for name, runs in confirm_runs.items()
        ],
    }
    for filename, panels in images.items():
        frontier_bands_plot(panels, os.path.join(out_dir, filename), reward_label=REWARD_LABEL)

    study = {
        "question": "when do token weights beat DPO at equal KL?",
        "plan": {k: v for k, v in json.loads(json.dumps(plan, default=lambda o: o.__dict__)).items()},
        "regimes": regime_info,
        "weight_auc": weight_aucs(layout, plan),
        "weight_stats": weight_stats(plan, layout, os.path.join(out_dir, "scratch")),
        "main": {"regime": plan.main_regime, "kl_levels": levels, "arms": main},
        "choices": choices,
        "regimes_explore": {name: {"kl_levels": regime_levels[name], "arms": regimes[name]} for name in plan.regimes},
        "confirm": {name: {"kl_levels": regime_levels[name], "arms": entry} for name, entry in confirm.items()},
        "answers": text,
        "dpo_reach": reach,
        "images": list(images),
    }
    write_json(os.path.join(out_dir, "study.json"), clean(study))
    with open(os.path.join(out_dir, "study.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(plan, study, source_arms, variant_arms, chosen))
    return study


def reach_section(study: dict[str, Any]) -> list[str]:
    reach = study["dpo_reach"]
    arms = list(reach["arms"])
    header = ["arm", *(f"reward at KL {k:g}" for k in reach["kl_levels"]), "largest KL reached (mean)"]
    rows = [
        [
            arm,
            *(fmt_interval(level["reward"]) for level in reach["arms"][arm]["levels"]),
            f"{reach['arms'][arm]['max_kl']['mean']:.1f}",
        ]
        for arm in arms
    ]
    return [
        f"**Does DPO get there with a smaller beta or more steps?** {reach['text']}",
        "",
        markdown_table(header, rows),
        "",
    ]


def markdown(
    plan: StudyPlan, study: dict[str, Any], source_arms: list[str], variant_arms: list[str], chosen: str
) -> str:
    main, levels = study["main"]["arms"], study["main"]["kl_levels"]
    flips = ", ".join(
        f"{name}: {info['n_pairs']} pairs, {100 * info['flipped_labels']:.0f}% flipped labels"
        for name, info in study["regimes"].items()
    )
    stats_rows = [
        [
            arm,
            f"{entry['chosen_mean']:.2f}",
            f"{entry['rejected_mean']:.2f}",
            f"{100 * entry['at_lower_bound']:.0f}% / {100 * entry['at_upper_bound']:.0f}%"
            if "at_lower_bound" in entry
            else "-",
        ]
        for arm, entry in study["weight_stats"].items()
    ]
    auc_rows = [
        [source, f"{auc['all']:.3f}", f"{auc['context_dependent']:.3f}", f"{auc['context_free']:.3f}"]
        for source, auc in study["weight_auc"].items()
    ]
    regime_rows = []
    for name, entry in study["regimes_explore"].items():
        arms = entry["arms"]
        if chosen not in arms:
            continue
        oracle = arms.get("tisdpo_oracle")
        regime_rows.append(
            [
                name,
                f"{100 * study['regimes'][name]['flipped_labels']:.0f}%",
                ", ".join(f"{k:g}" for k in entry["kl_levels"]),
                ", ".join(fmt_interval(level["reward"]) for level in arms[DPO.name]["levels"]),
                ", ".join(fmt_interval(level["vs_baseline"], signed=True) for level in arms[chosen]["levels"]),
                f"{fmt_interval(arms[chosen]['score'], signed=True)} ({verdict(arms[chosen]['score'])})",
                f"{fmt_interval(oracle['score'], signed=True)} ({verdict(oracle['score'])})" if oracle else "-",
            ]
        )
    confirm_parts = []
    for name, entry in study["confirm"].items():
        confirm_parts += [f"### {name} (KL levels {', '.join(f'{k:g}' for k in entry['kl_levels'])})", ""]
        ordered = [DPO.name, *sorted(arm for arm in entry["arms"] if arm != DPO.name)]
        confirm_parts += [comparison_table(entry["arms"], entry["kl_levels"], ordered), ""]
    answers_text = study["answers"]
    lines = [
        "# Evidence study: when do token weights beat DPO?",
        "",
        "Produced by `tisdpo demo --study` (every number below comes from the command; nothing is tuned by hand). "
        "The ground-truth task of the demo (known reward for every response word), a tiny Llama trained from "
        f"scratch, SFT on every response, then DPO and TIS-DPO trained from SFT for {plan.policy_args.get('max_steps')} "
        f"steps at beta in {plan.betas}, evaluated at every checkpoint ({plan.policy_args.get('save_steps')} steps "
        f"apart) on {plan.n_eval_prompts} held-out prompts x {plan.evaluate_args.get('num_samples')} samples: oracle "
        "reward of the sampled responses against their sampled KL to the SFT model.",
        "",
        "**Frontier.** For one arm and seed, `f(K)` is the best oracle reward reached at KL <= K over all betas and "
        "checkpoints (the upper envelope with the SFT point, linear between its corners). Arms are compared at three "
        f"KL levels, {', '.join(f'{100 * f:g}%' for f in plan.kl_fractions)} of the median largest KL DPO reached in "
        "the regime. Intervals are 95% t-intervals over seeds; differences to DPO are paired (same seeds, same data). "
        "`score` is the difference averaged over the three levels.",
        "",
        f"**Regimes** (the first n pairs of one draw, relabelled): {flips}. Main regime: {plan.main_regime}.",
        "",
        f"**Selection, then confirmation.** Settings are chosen on seeds {plan.explore_seeds}: the D transform with the "
        f"best score in the main regime ({study['choices']['variant']['arm']}), then the regime where it beats DPO most "
        f"({study['choices']['regime']['regime']}). Those choices are re-run once on fresh seeds {plan.confirm_seeds}.",
        "",
        "## Answers",
        "",
        f"**(a) Do oracle weights beat DPO at equal KL?** {answers_text.get('a', 'not run (no oracle source)')}",
        "",
        f"**(b) Which estimated source / transform / normalisation comes closest to the oracle?** {answers_text['b']}",
        "",
        f"**(c) In which regime, if any, does TIS-DPO(D) beat DPO at equal KL?** {answers_text['c']}",
        "",
        *(reach_section(study) if study.get("dpo_reach") else []),
        f"## Weight sources ({plan.main_regime}, default transform, seeds {plan.explore_seeds})",
        "",
        comparison_table(main, levels, source_arms),
        "",
        "![frontiers of the weight sources](frontier_sources.png)",
        "",
        "Token AUC of the estimated rewards (good vs bad words, the demo's weight_auc):",
        "",
        markdown_table(["source", "all", "context-dependent", "context-free"], auc_rows),
        "",
        f"## Transforms and normalisation ({plan.main_regime}, seeds {plan.explore_seeds})",
        "",
        f"Default transform: {plan.weights}. Variants: "
        + "; ".join(f"{name}: {flags}" for name, flags in plan.variants.items())
        + ".",
        "",
        comparison_table(main, levels, variant_arms),
        "",
        "Weights as trained on (mean weight per side; share of weights at the clamp's lower / upper bound for "
        "unnormalised exp):",
        "",
        markdown_table(["arm", "chosen mean", "rejected mean", "at a clamp bound"], stats_rows),
        "",
        "![frontiers of the transforms](frontier_transforms.png)",
        "",
        f"## Regimes: DPO and {chosen} (seeds {plan.explore_seeds})",
        "",
        markdown_table(
            [
                "regime",
                "flipped",
                "KL levels",
                "DPO reward at the levels",
                f"{chosen} - DPO at the levels",
                f"{chosen} score",
                "oracle score (ceiling)",
            ],
            regime_rows,
        ),
        "",
        "![frontiers per regime](frontier_regimes.png)",
        "",
        f"## Confirmation on fresh seeds {plan.confirm_seeds}",
        "",
        *confirm_parts,
        "![frontiers on the confirmation seeds](frontier_confirm.png)",
        "",
    ]
    return "\n".join(lines)
