"""The study's report: ``study.json`` (every number), ``study.md`` (the answers) and frontier plots.

Every comparison is made twice: on the oracle reward and on the reward per word (the length-controlled
headline: the task's reward is a sum over words, so a policy that stops later collects more of it).
Both are frontiers against KL compared at the same levels, spanning the union of the arms' KL ranges;
a verdict that differs between the two is reported as flipping under length control.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from tisdpo.demo.study.layout import Layout, finished_grid, finished_results, sft_values
from tisdpo.demo.study.plan import DPO, Arm, StudyPlan
from tisdpo.pipeline.report import length_controlled_cell
from tisdpo.report.frontier import compare_arms, interval, union_kl_levels, verdict
from tisdpo.report.plots import frontier_bands_plot, frontier_panel
from tisdpo.report.tables import fmt_interval, markdown_table
from tisdpo.utils import write_json

REWARD_LABEL = "oracle reward of sampled responses"
PER_WORD_LABEL = "oracle reward per word"
PHASES = ("explore", "confirm")


def clean(value: Any) -> Any:
    """NaN and infinities become null (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def length_stats(results: list[dict[str, Any]], regime: str) -> dict[str, dict[str, Any]]:
    """Per arm: the response length and the share of responses that ended before the token limit, of
    the model with the highest reward of each seed (over betas and checkpoints), as intervals over seeds."""
    best_points: dict[str, dict[int, dict[str, Any]]] = {}
    for stored in results:
        tags = stored["unit"]["tags"]
        if tags["regime"] != regime:
            continue
        by_seed = best_points.setdefault(tags["arm"], {})
        for point in stored["points"]:
            seed = int(tags["seed"])
            if seed not in by_seed or point["reward"] > by_seed[seed]["reward"]:
                by_seed[seed] = point
    return {
        arm: {
            "length": interval([p.get("length") for p in by_seed.values()]),
            "ended": interval([p.get("eos_rate") for p in by_seed.values()]),
        }
        for arm, by_seed in best_points.items()
    }


def compare_phase(plan: StudyPlan, layout: Layout, phase: str) -> dict[str, Any]:
    """Every regime of a grid stage: the arms' frontiers at the union KL levels, on the reward and on
    the reward per word, each paired with DPO, and the arms' lengths and end-of-response rates."""
    seeds = plan.explore_seeds if phase == "explore" else plan.confirm_seeds
    rewards = finished_grid(layout.inputs[phase])
    per_word = finished_grid(layout.inputs[phase], "reward_per_word")
    results = finished_results(layout.inputs[phase])
    sft, sft_per_word = sft_values(layout, seeds), sft_values(layout, seeds, "reward_per_word")
    out = {}
    for regime in plan.regimes:
        levels = union_kl_levels(rewards[regime], plan.kl_fractions)
        out[regime] = {
            "kl_levels": levels,
            "arms": compare_arms(rewards[regime], sft, levels),
            "per_word": compare_arms(per_word[regime], sft_per_word, levels),
            "lengths": length_stats(results, regime),
        }
    return out


def flips(entry: dict[str, Any], arm: str) -> bool:
    """Whether the arm's verdict against DPO differs between the reward and the reward per word."""
    return verdict(entry["arms"][arm]["score"]) != verdict(entry["per_word"][arm]["score"])


def comparison_table(entry: dict[str, Any], length_unit: str = "words") -> str:
    levels = entry["kl_levels"]
    header = [
        "arm",
        *(f"reward at KL {k:g}" for k in levels),
        *(f"- DPO at KL {k:g}" for k in levels),
        "score (reward)",
        "score (reward per word)",
        "best reward at any KL",
        "- DPO's best",
        "largest KL",
        f"length ({length_unit})",
        "ended",
    ]
    rows = []
    for arm in [DPO.name, *sorted(a for a in entry["arms"] if a != DPO.name)]:
        stats, lengths = entry["arms"][arm], entry["lengths"].get(arm, {})
        rewards = [fmt_interval(level["reward"]) for level in stats["levels"]]
        if arm == DPO.name:
            diffs, score, per_word, best_diff = ["-"] * len(levels), "-", "-", "-"
        else:
            diffs = [fmt_interval(level["vs_baseline"], signed=True) for level in stats["levels"]]
            score = f"{fmt_interval(stats['score'], signed=True)} ({verdict(stats['score'])})"
            per_word = length_controlled_cell(stats["score"], entry["per_word"][arm]["score"])
            best_diff = fmt_interval(stats["vs_baseline_best_reward"], signed=True)
        rows.append(
            [
                arm,
                *rewards,
                *diffs,
                score,
                per_word,
                fmt_interval(stats["best_reward"]),
                best_diff,
                f"{stats['max_kl']['mean']:.1f}",
                fmt_interval(lengths.get("length", interval([])), digits=1),
                fmt_interval(lengths.get("ended", interval([]))),
            ]
        )
    return markdown_table(header, rows)


def arm_line(entry: dict[str, Any], arm: str) -> str:
    """An arm's score against DPO on the reward and on the reward per word, marked when it flips."""
    stats = entry["arms"][arm]
    return (
        f"{fmt_interval(stats['score'], signed=True)} ({verdict(stats['score'])}); per word "
        f"{length_controlled_cell(stats['score'], entry['per_word'][arm]['score'])}"
    )


def answers(plan: StudyPlan, phases: dict[str, Any], choice: dict[str, Any]) -> dict[str, str]:
    """The answers to the study's questions, in words, from the confirmation seeds' numbers (the
    explore seeds chose the transform only)."""
    confirm = phases["confirm"]
    out: dict[str, str] = {}
    seeds = f"fresh seeds {plan.confirm_seeds}"
    oracle = Arm("oracle").name
    if all(oracle in entry["arms"] for entry in confirm.values()):
        out["a"] = (
            f"Oracle weights minus DPO, frontier reward averaged over each regime's KL levels, {seeds}: "
            + "; ".join(f"{regime} {arm_line(entry, oracle)}" for regime, entry in confirm.items())
            + "."
        )
    margin = choice["best_minus_runner_up"]
    scores = ", ".join(f"{arm} {fmt_interval(stat, signed=True)}" for arm, stat in choice["scores"].items())
    if choice["runner_up"] is None:
        pick = f"Only one transform of D was run ({choice['arm']})."
    elif choice["tie"]:
        pick = (
            f"The best transform of D on the explore seeds, {choice['best']}, minus the runner-up "
            f"{choice['runner_up']}: {fmt_interval(margin, signed=True)} ({verdict(margin)}): the pick is a tie, "
            f"so D keeps the default transform ({choice['arm']})."
        )
    else:
        pick = (
            f"The best transform of D on the explore seeds, {choice['best']}, beats the runner-up "
            f"{choice['runner_up']} by {fmt_interval(margin, signed=True)}; D is confirmed with it."
        )
    estimated = [a.name for a in plan.confirm_arms(choice["variant"]) if a.source not in (None, "oracle")]
    out["b"] = (
        f"Scores of the transforms against DPO ({plan.main_regime}, explore seeds {plan.explore_seeds}): {scores}. "
        f"{pick} Estimated sources minus DPO, {seeds}: "
        + "; ".join(
            f"{arm} in {regime} {arm_line(entry, arm)}"
            for regime, entry in confirm.items()
            for arm in estimated
            if arm in entry["arms"]
        )
        + "."
    )
    chosen = choice["arm"]
    better = [r for r, e in confirm.items() if chosen in e["arms"] and verdict(e["arms"][chosen]["score"]) == "better"]
    out["c"] = (
        f"{chosen} beats DPO at equal KL (interval above 0, {seeds}) in: {', '.join(better) or 'no regime'}. "
        f"Per regime: "
        + "; ".join(
            f"{regime} {arm_line(entry, chosen)}" for regime, entry in confirm.items() if chosen in entry["arms"]
        )
        + "."
    )
    flipped = [
        f"{arm} in {regime}"
        for regime, entry in confirm.items()
        for arm in entry["arms"]
        if arm != DPO.name and arm in entry["per_word"] and flips(entry, arm)
    ]
    out["length"] = (
        "Verdicts that flip under length control (reward per word instead of reward), "
        f"{seeds}: {', '.join(flipped) if flipped else 'none'}."
    )
    out["best"] = (
        f"Best reward at any KL minus DPO's best (every arm had the same {plan.policy_args.get('max_steps')} steps "
        f"and betas {plan.betas}), {seeds}: "
        + "; ".join(
            f"{arm} in {regime} {fmt_interval(entry['arms'][arm]['vs_baseline_best_reward'], signed=True)} "
            f"({verdict(entry['arms'][arm]['vs_baseline_best_reward'])})"
            for regime, entry in confirm.items()
            for arm in entry["arms"]
            if arm != DPO.name
        )
        + "."
    )
    return out


def write_study(plan: StudyPlan, layout: Layout, out_dir: str) -> dict[str, Any]:
    """Analyse every finished run and write the report files into ``out_dir``; return study.json's content."""
    with open(os.path.join(layout.inputs["task"], "regimes.json"), encoding="utf-8") as handle:
        regime_info = json.load(handle)
    with open(os.path.join(layout.inputs["confirm"], "choices.json"), encoding="utf-8") as handle:
        choice = json.load(handle)["variant"]
    phases = {phase: compare_phase(plan, layout, phase) for phase in PHASES}
    text = answers(plan, phases, choice)

    images = {}
    for phase in PHASES:
        seeds = plan.explore_seeds if phase == "explore" else plan.confirm_seeds
        for metric, label, suffix in (("reward", REWARD_LABEL, ""), ("reward_per_word", PER_WORD_LABEL, "_per_word")):
            runs = finished_grid(layout.inputs[phase], metric)
            sft = sft_values(layout, seeds, metric)
            filename = f"frontier_{phase}{suffix}.png"
            panels = [
                frontier_panel(f"{regime}, {phase} seeds", runs[regime], sft, phases[phase][regime]["kl_levels"])
                for regime in plan.regimes
            ]
            frontier_bands_plot(panels, os.path.join(out_dir, filename), reward_label=label)
            images[filename] = label

    study = {
        "question": "when do token weights beat DPO at equal KL?",
        "plan": json.loads(json.dumps(plan, default=lambda o: o.__dict__)),
        "regimes": regime_info,
        "choices": {"variant": choice},
        "explore": phases["explore"],
        "confirm": phases["confirm"],
        "answers": text,
        "images": list(images),
    }
    write_json(os.path.join(out_dir, "study.json"), clean(study))
    with open(os.path.join(out_dir, "study.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(plan, study))
    return study


def markdown(plan: StudyPlan, study: dict[str, Any]) -> str:
    regimes = ", ".join(
        f"{name}: {info['n_pairs']} pairs, {100 * info['flipped_labels']:.0f}% flipped labels, "
        f"{100 * info['label_ties']:.0f}% of drawn pairs were exact ties"
        + (" (dropped)" if info["label_ties_dropped"] else " (kept, labelled by a coin flip)")
        for name, info in study["regimes"].items()
    )
    answers_text = study["answers"]
    lines = [
        "# Evidence study: when do token weights beat DPO?",
        "",
        "Produced by `tisdpo demo --study` (every number below comes from the command; nothing is tuned by hand). "
        "The ground-truth task of the demo (known reward for every response word), a tiny Llama trained from "
        "scratch, SFT on every response, then DPO and TIS-DPO trained from SFT with one budget for every arm: "
        f"{plan.policy_args.get('max_steps')} steps at beta in {plan.betas}, evaluated every "
        f"{plan.policy_args.get('save_steps')} steps on {plan.n_eval_prompts} held-out prompts x "
        f"{plan.evaluate_args.get('num_samples')} samples (at most {plan.evaluate_args.get('max_new_tokens')} words): "
        "oracle reward of the sampled responses against their sampled KL to the SFT model. Each seed draws its own "
        "training pairs and trains its own contrastive models, so the intervals include weight estimation.",
        "",
        "**Frontier.** For one arm and seed, `f(K)` is the best reward reached at KL <= K over all betas and "
        "checkpoints (the upper envelope with the SFT point, linear between its corners, flat after the arm's "
        "largest KL). Arms are compared at the KL levels "
        f"{', '.join(f'{100 * f:g}%' for f in plan.kl_fractions)} of the largest KL any arm reaches in the regime "
        "(median over seeds), i.e. over the union of their ranges. Intervals are 95% t-intervals over seeds; "
        "differences to DPO are paired (same seeds, same data). `score` is the difference averaged over the levels. "
        "**Length control** (the headline): the same comparison on the reward per word; a verdict that differs "
        "from the reward's is marked `flips under length control`. Length and `ended` (share of responses that "
        "stopped before the word limit) are those of each seed's highest-reward model.",
        "",
        f"**Regimes** (a fresh draw per seed): {regimes}.",
        "",
        f"**Selection, then confirmation.** The D transform is chosen on seeds {plan.explore_seeds} in "
        f"{plan.main_regime}; every arm is then re-run in every regime on fresh seeds {plan.confirm_seeds}, and the "
        "answers below are read from those.",
        "",
        "## Answers",
        "",
        f"**(a) Do oracle weights beat DPO at equal KL?** {answers_text.get('a', 'not run (no oracle source)')}",
        "",
        f"**(b) Which estimated source and transform comes closest?** {answers_text['b']}",
        "",
        f"**(c) In which regime, if any, does TIS-DPO(D) beat DPO at equal KL?** {answers_text['c']}",
        "",
        f"**Length.** {answers_text['length']}",
        "",
        f"**Best reward at any KL.** {answers_text['best']}",
        "",
    ]
    for phase, title, seeds in (
        ("confirm", "Confirmation", plan.confirm_seeds),
        ("explore", "Exploration", plan.explore_seeds),
    ):
        lines += [f"## {title} (seeds {seeds})", ""]
        for regime, entry in study[phase].items():
            lines += [f"### {regime} (KL levels {', '.join(f'{k:g}' for k in entry['kl_levels'])})", ""]
            lines += [comparison_table(entry), ""]
        lines += [
            f"![frontiers, {phase}](frontier_{phase}.png)",
            "",
            f"![frontiers of the reward per word, {phase}](frontier_{phase}_per_word.png)",
            "",
        ]
    return "\n".join(lines)
