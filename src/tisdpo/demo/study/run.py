"""``tisdpo demo --study --output_dir OUT``: when do token weights beat DPO on the ground-truth task?

The study is a pipeline (:mod:`tisdpo.pipeline.engine`: fingerprinted, resumable stages); the stages
that train many models run them as units side by side in worker processes (:mod:`.units`).

    task -> base -> sft -> models (per seed and regime: contrastive models, P weights; SFT evaluations)
         -> weights (per seed and regime: S/D weights; oracle and transform variants derived)
         -> explore (every arm x regime x beta x explore seed; D's transform variants in the main regime)
         -> confirm (every arm x regime x beta x fresh seed, D with the chosen transform)
         -> report (study.json, study.md, plots)

Every seed draws its own task data (so its own contrastive models and weights): intervals over seeds
include the variance of weight estimation. Every arm gets the same training budget and betas.
Selection happens on the explore seeds only (the D transform, kept only when it beats the runner-up
with an interval above 0); the confirmation seeds rerun every arm in every regime.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

from tisdpo.demo.study.layout import Layout, derive_weights, finished_grid, sft_values
from tisdpo.demo.study.plan import DEFAULT_VARIANT, DPO, Arm, StudyPlan
from tisdpo.demo.study.report import write_study
from tisdpo.demo.study.units import Unit, run_units
from tisdpo.pipeline.engine import Pipeline, Stage, StageContext
from tisdpo.report.frontier import compare_arms, interval, union_kl_levels, verdict


# -- data and models ----------------------------------------------------------------------------------
def seed_task_seed(plan: StudyPlan, seed: int) -> int:
    """The task draw of training seed ``seed`` (the SFT pool is drawn with ``task_seed`` itself)."""
    return plan.task_seed + 1 + seed


def task_action(plan: StudyPlan):
    def action(ctx: StageContext) -> None:
        from tisdpo.demo.stages import sft_rows
        from tisdpo.demo.task import TaskConfig, generate_pairs, generate_prompts, is_label_tie, untied_pairs
        from tisdpo.weights.io import write_rows

        pool = generate_pairs(TaskConfig(n_pairs=plan.sft_pairs, seed=plan.task_seed))
        write_rows(os.path.join(ctx.work_dir, "sft.jsonl"), sft_rows(pool))  # label-free: every response once
        prompts = generate_prompts(plan.n_eval_prompts, plan.task_seed)
        write_rows(os.path.join(ctx.work_dir, "prompts.jsonl"), [{"prompt": p} for p in prompts])
        summary: dict[str, Any] = {}
        for name, regime in plan.regimes.items():
            flipped, ties = [], []
            for seed in plan.train_seeds():
                config = TaskConfig(
                    n_pairs=regime.n_pairs, seed=seed_task_seed(plan, seed), label_temperature=regime.label_temperature
                )
                if plan.drop_label_ties:
                    rows, tie_share = untied_pairs(config)
                else:
                    rows = generate_pairs(config)
                    tie_share = sum(is_label_tie(r) for r in rows) / len(rows)
                os.makedirs(os.path.join(ctx.work_dir, f"s{seed}", name))
                write_rows(os.path.join(ctx.work_dir, f"s{seed}", name, "train.jsonl"), rows)
                flipped.append(sum(r["label_flipped"] for r in rows) / len(rows))
                ties.append(tie_share)
            summary[name] = {
                **dataclasses.asdict(regime),
                "flipped_labels": sum(flipped) / len(flipped),
                "label_ties": sum(ties) / len(ties),
                "label_ties_dropped": plan.drop_label_ties,
            }
        with open(os.path.join(ctx.work_dir, "regimes.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)

    return action


def base_action(plan: StudyPlan):
    def action(ctx: StageContext) -> None:
        from tisdpo.demo.stages import build_base
        from tisdpo.demo.task import TaskConfig

        build_base(TaskConfig(n_pairs=plan.sft_pairs, seed=plan.task_seed), plan.factory, ctx.work_dir)

    return action


def sft_action(plan: StudyPlan):
    def action(ctx: StageContext) -> None:
        from tisdpo.pipeline.recipe import invoke

        layout = Layout(plan, ctx.inputs)
        args = layout.train_args({**plan.sft_args, "loss_type": "sft"})
        model = {
            "model_name_or_path": ctx.inputs["base"],
            "dataset_name": os.path.join(ctx.inputs["task"], "sft.jsonl"),
        }
        invoke("train", {**args, **model, "output_dir": ctx.work_dir}, None, "sft")

    return action


def models_action(plan: StudyPlan, progress):
    def action(ctx: StageContext) -> None:
        layout = Layout(plan, ctx.inputs)
        units = []
        for seed in plan.train_seeds():
            for regime in plan.regimes:
                for method in plan.contrast_methods():
                    for side, reverse in (("pos", False), ("neg", True)):
                        args = layout.train_args(
                            {
                                **plan.contrastive_args,
                                "loss_type": "sft" if method == "S" else "dpo",
                                "reverse_pairs": reverse,
                                "seed": seed,
                                "model_name_or_path": layout.sft,
                                "dataset_name": layout.train_file(regime, seed),
                            }
                        )
                        folder = os.path.join(ctx.work_dir, "contrast", f"s{seed}", regime, f"{method}_{side}")
                        name = f"{method}{'+' if side == 'pos' else '-'} {regime} s{seed}"
                        units.append(Unit(name, folder, train=args, keep_model=True))
                if "P" in plan.sources:
                    weights = {
                        **layout.common(),
                        **plan.weights,
                        **plan.contrastive_prompts,
                        "model_name_or_path": layout.sft,
                        "dataset_name": layout.train_file(regime, seed),
                    }
                    folder = os.path.join(ctx.work_dir, "weights_P", f"s{seed}", regime)
                    units.append(Unit(f"weights P {regime} s{seed}", folder, weights=weights))
            evaluate = {**layout.evaluate_args(seed), "model_name_or_path": layout.sft}
            units.append(
                Unit(f"evaluate SFT s{seed}", os.path.join(ctx.work_dir, "sft_eval", f"s{seed}"), evaluate=evaluate)
            )
        run_units(units, plan.workers, "models", progress)

    return action


def weights_action(plan: StudyPlan, progress):
    def action(ctx: StageContext) -> None:
        layout = Layout(plan, ctx.inputs)
        units = []
        for seed in plan.train_seeds():
            for regime in plan.regimes:
                for method in plan.contrast_methods():
                    args = {
                        **layout.common(),
                        **plan.weights,
                        "positive_model_name_or_path": layout.contrast_model(regime, seed, method, "pos"),
                        "negative_model_name_or_path": layout.contrast_model(regime, seed, method, "neg"),
                        "dataset_name": layout.train_file(regime, seed),
                    }
                    folder = os.path.join(ctx.work_dir, f"s{seed}", regime, method)
                    units.append(Unit(f"weights {method} {regime} s{seed}", folder, weights=args))
        run_units(units, plan.workers, "weights", progress)
        layout.inputs = {**ctx.inputs, "weights": ctx.work_dir}
        derived = os.path.join(ctx.work_dir, "derived")
        for seed in plan.train_seeds():
            for regime in plan.regimes:
                for arm in [*plan.main_arms(), *plan.variant_arms()]:
                    if arm.source is not None:
                        derive_weights(layout, arm, regime, seed, derived)

    return action


# -- training grids -----------------------------------------------------------------------------------
def grid_units(layout: Layout, arms: list[Arm], regime: str, seeds: list[int], work_dir: str) -> list[Unit]:
    """Every arm x beta x seed in one regime: train from SFT on the seed's data (and weights), evaluate
    the checkpoints and the final model."""
    plan = layout.plan
    units = []
    for arm in arms:
        loss = {"loss_type": "dpo"} if arm.source is None else {"loss_type": "tisdpo"}
        for beta in plan.betas:
            for seed in seeds:
                if arm.source is None:
                    dataset = layout.train_file(regime, seed)
                else:
                    dataset = derive_weights(layout, arm, regime, seed, os.path.join(work_dir, "derived"))
                args = layout.train_args(
                    {
                        **plan.policy_args,
                        **loss,
                        "beta": beta,
                        "seed": seed,
                        "model_name_or_path": layout.sft,
                        "dataset_name": dataset,
                    }
                )
                tags = {"regime": regime, "arm": arm.name, "beta": beta, "seed": seed}
                units.append(
                    Unit(
                        f"{regime} {arm.name} beta={beta} s{seed}",
                        os.path.join(work_dir, regime, arm.folder, f"beta{beta}_s{seed}"),
                        train=args,
                        evaluate=layout.evaluate_args(seed),
                        tags=tags,
                    )
                )
    return units


def choose_variant(plan: StudyPlan, layout: Layout, main_runs: dict[str, dict[int, list]]) -> dict[str, Any]:
    """The D transform with the best paired score against DPO on the explore seeds, kept only when it
    beats the runner-up (paired, averaged over the levels) with an interval above 0; otherwise a tie,
    and D keeps the default transform (the simpler one)."""
    candidates = [c for c in [Arm("D").name, *(Arm("D", v).name for v in plan.variants)] if c in main_runs]
    runs = {name: main_runs[name] for name in [DPO.name, *candidates]}
    levels = union_kl_levels(runs, plan.kl_fractions)
    sft = sft_values(layout, plan.explore_seeds)
    compared = compare_arms(runs, sft, levels)
    ranked = sorted(candidates, key=lambda arm: -compared[arm]["score"]["mean"])
    top, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    margin = None
    if runner_up is not None:
        versus = compare_arms({top: runs[top], runner_up: runs[runner_up]}, sft, levels, baseline=runner_up)
        margin = versus[top]["score"]
    decided = runner_up is None or verdict(margin) == "better"
    chosen = top if decided else Arm("D").name
    variant = chosen.split("/", 1)[1] if "/" in chosen else DEFAULT_VARIANT
    return {
        "arm": chosen,
        "variant": variant,
        "best": top,
        "runner_up": runner_up,
        "best_minus_runner_up": margin if margin is not None else interval([]),
        "tie": not decided,
        "levels": levels,
        "scores": {arm: compared[arm]["score"] for arm in candidates},
    }


def grid_action(plan: StudyPlan, progress, phase: str):
    def action(ctx: StageContext) -> None:
        layout = Layout(plan, ctx.inputs)
        units = []
        if phase == "explore":
            for regime in plan.regimes:
                arms = plan.main_arms() + (plan.variant_arms() if regime == plan.main_regime else [])
                units += grid_units(layout, arms, regime, plan.explore_seeds, ctx.work_dir)
            run_units(units, plan.workers, phase, progress)
            return
        main_runs = finished_grid(ctx.inputs["explore"])[plan.main_regime]
        choice = choose_variant(plan, layout, main_runs)
        for regime in plan.regimes:
            units += grid_units(layout, plan.confirm_arms(choice["variant"]), regime, plan.confirm_seeds, ctx.work_dir)
        run_units(units, plan.workers, phase, progress)
        with open(os.path.join(ctx.work_dir, "choices.json"), "w", encoding="utf-8") as handle:
            json.dump({"variant": choice}, handle, indent=2)

    return action


# -- the pipeline ----------------------------------------------------------------------------------------
def build_study(plan: StudyPlan, run_dir: str, progress=print) -> Pipeline:
    """The study's stages. Each stage's fingerprint holds the settings it reads (its inputs' fingerprints
    are added by the engine), so e.g. other betas rerun only the grids and the report."""
    training = ("data_args", "train_defaults")
    seeds = ("explore_seeds", "confirm_seeds")
    grid = (*training, "evaluate_args", "betas", "policy_args", "weights", "variants", "sources", "main_regime")

    def stage(name: str, action, keys: tuple[str, ...], deps: list[str], description: str) -> Stage:
        return Stage(name, action, plan.settings(*keys), deps, description)

    counts = plan.unit_counts()
    stages = [
        stage(
            "task",
            task_action(plan),
            ("task_seed", "sft_pairs", "n_eval_prompts", "regimes", "drop_label_ties", *seeds),
            [],
            "the task's pairs: a draw per seed and regime",
        ),
        stage(
            "base", base_action(plan), ("factory", "task_seed", "sft_pairs"), ["task"], "word tokenizer + tiny Llama"
        ),
        stage("sft", sft_action(plan), (*training, "sft_args"), ["task", "base"], "SFT on every response"),
        stage(
            "models",
            models_action(plan, progress),
            (*training, "contrastive_args", "contrastive_prompts", "weights", "sources", "evaluate_args", *seeds),
            ["task", "sft"],
            f"{counts['models']} units: contrastive models (S, D) and P weights per seed and regime, SFT evaluations",
        ),
        stage(
            "weights",
            weights_action(plan, progress),
            ("data_args", "weights", "variants", "sources", *seeds),
            ["task", "sft", "models"],
            f"{counts['weights']} units: S/D weights per seed and regime; oracle and transform variants",
        ),
        stage(
            "explore",
            grid_action(plan, progress, "explore"),
            (*grid, "explore_seeds"),
            ["task", "sft", "models", "weights"],
            f"{counts['explore']} units: every arm x regime x beta x explore seed, D's variants in the main regime",
        ),
        stage(
            "confirm",
            grid_action(plan, progress, "confirm"),
            (*grid, "explore_seeds", "kl_fractions", "confirm_seeds"),
            ["task", "sft", "models", "weights", "explore"],
            f"{counts['confirm']} units: every arm x regime x beta on fresh seeds, D with the chosen transform",
        ),
        Stage(
            "report",
            report_action(plan),
            {"plan": {k: v for k, v in dataclasses.asdict(plan).items() if k != "workers"}, "version": 2},
            ["task", "models", "weights", "explore", "confirm"],
            "study.json, study.md and frontier plots",
        ),
    ]
    return Pipeline(run_dir, stages)


def report_action(plan: StudyPlan):
    def action(ctx: StageContext) -> None:
        write_study(plan, Layout(plan, ctx.inputs), ctx.work_dir)

    return action


def run_study(
    output_dir: str, config: str | None, workers: int | None, dry_run: bool, quick: bool = False
) -> dict[str, str] | None:
    """Build and run the study (``quick``: its smoke-test variant); copy its report files into ``output_dir``."""
    from tisdpo.pipeline.command import run_pipeline

    plan = StudyPlan.load(config, quick=quick)
    if workers is not None:
        plan.workers = workers
    counts = plan.unit_counts()
    print(
        f"study plan: {sum(counts.values())} units ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
        f"estimated {plan.estimated_minutes():.0f} min with {plan.workers} worker(s)",
        flush=True,
    )
    pipeline = build_study(plan, output_dir, lambda line: print(line, flush=True))
    folders = run_pipeline(pipeline, dry_run)
    if folders is None:
        return None
    report = folders["report"]
    for name in os.listdir(report):
        if name.endswith((".json", ".md", ".png")) and name != "stage.json":
            shutil.copy(os.path.join(report, name), os.path.join(output_dir, name))
    with open(os.path.join(report, "study.md"), encoding="utf-8") as handle:
        print("\n" + handle.read())
    return folders
