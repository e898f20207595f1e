"""``tisdpo demo --study --output_dir OUT``: when do token weights beat DPO on the ground-truth task?

The study is a pipeline (:mod:`tisdpo.pipeline.engine`: fingerprinted, resumable stages); the stages
that train many models run them as units side by side in worker processes (:mod:`.units`).

    task -> base -> sft -> models (contrastive models per regime, P weights, SFT evaluations)
         -> weights (S/D per regime; oracle, oracle_sign, random and transform variants derived)
         -> explore_main (every arm x beta x explore seed, main regime)
         -> explore_regimes (DPO and D with the chosen transform in every other regime)
         -> confirm (the chosen settings on fresh seeds) -> report (study.json, study.md, plots)

Selection happens on the explore seeds only: the D transform variant with the best paired score
against DPO in the main regime, then the regime where D beats DPO by most. The confirmation seeds
are used once, on those choices.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

from tisdpo.demo.study.layout import Layout, derive_weights, finished_grid, sft_rewards
from tisdpo.demo.study.plan import DEFAULT_VARIANT, DPO, DPO_REACH, Arm, StudyPlan
from tisdpo.demo.study.report import write_study
from tisdpo.demo.study.units import Unit, run_units
from tisdpo.pipeline.engine import Pipeline, Stage, StageContext
from tisdpo.report.frontier import best, compare_arms, kl_levels


# -- data and models ----------------------------------------------------------------------------------
def task_action(plan: StudyPlan):
    def action(ctx: StageContext) -> None:
        from tisdpo.demo.stages import sft_rows
        from tisdpo.demo.task import TaskConfig, generate_pairs, generate_prompts
        from tisdpo.weights.io import write_rows

        pool = generate_pairs(TaskConfig(n_pairs=plan.sft_pairs, seed=plan.task_seed))
        write_rows(os.path.join(ctx.work_dir, "sft.jsonl"), sft_rows(pool))  # label-free: every response once
        prompts = generate_prompts(plan.n_eval_prompts, plan.task_seed)
        write_rows(os.path.join(ctx.work_dir, "prompts.jsonl"), [{"prompt": p} for p in prompts])
        summary = {}
        for name, regime in plan.regimes.items():
            # The same draws as the pool (same seed): a regime is the pool's first n pairs, relabelled.
            rows = generate_pairs(
                TaskConfig(n_pairs=regime.n_pairs, seed=plan.task_seed, label_temperature=regime.label_temperature)
            )
            os.makedirs(os.path.join(ctx.work_dir, name))
            write_rows(os.path.join(ctx.work_dir, name, "train.jsonl"), rows)
            summary[name] = {
                **dataclasses.asdict(regime),
                "flipped_labels": sum(r["label_flipped"] for r in rows) / len(rows),
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


def contrast_regimes(plan: StudyPlan) -> dict[str, list[str]]:
    """Which contrastive models each regime needs: S and D in the main regime, D elsewhere."""
    needs = {plan.main_regime: [m for m in ("S", "D") if m in plan.sources or m == "D"]}
    for regime in plan.other_regimes():
        needs[regime] = ["D"]
    return needs


def models_action(plan: StudyPlan, progress):
    def action(ctx: StageContext) -> None:
        layout = Layout(plan, ctx.inputs)
        units = []
        for regime, methods in contrast_regimes(plan).items():
            for method in methods:
                for side, reverse in (("pos", False), ("neg", True)):
                    args = layout.train_args(
                        {
                            **plan.contrastive_args,
                            "loss_type": "sft" if method == "S" else "dpo",
                            "reverse_pairs": reverse,
                            "model_name_or_path": layout.sft,
                            "dataset_name": layout.train_file(regime),
                        }
                    )
                    folder = os.path.join(ctx.work_dir, "contrast", regime, f"{method}_{side}")
                    units.append(
                        Unit(f"{method}{'+' if side == 'pos' else '-'} {regime}", folder, train=args, keep_model=True)
                    )
        if "P" in plan.sources:
            weights = {
                **layout.common(),
                **plan.weights,
                **plan.contrastive_prompts,
                "model_name_or_path": layout.sft,
                "dataset_name": layout.train_file(plan.main_regime),
            }
            units.append(
                Unit(f"weights P {plan.main_regime}", os.path.join(ctx.work_dir, "weights_P"), weights=weights)
            )
        for seed in [*plan.explore_seeds, *plan.confirm_seeds]:
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
        for regime, methods in contrast_regimes(plan).items():
            for method in methods:
                args = {
                    **layout.common(),
                    **plan.weights,
                    "positive_model_name_or_path": layout.contrast_model(regime, method, "pos"),
                    "negative_model_name_or_path": layout.contrast_model(regime, method, "neg"),
                    "dataset_name": layout.train_file(regime),
                }
                units.append(
                    Unit(f"weights {method} {regime}", os.path.join(ctx.work_dir, regime, method), weights=args)
                )
        run_units(units, plan.workers, "weights", progress)
        layout.inputs = {**ctx.inputs, "weights": ctx.work_dir}
        for arm in [*plan.main_arms(), *plan.variant_arms()]:
            if arm.source is not None:
                derive_weights(layout, arm, plan.main_regime, os.path.join(ctx.work_dir, "derived"))

    return action


# -- training grids -----------------------------------------------------------------------------------
def grid_units(
    layout: Layout,
    arms: list[Arm],
    regime: str,
    seeds: list[int],
    work_dir: str,
    weights_dir: str,
    betas: list[float] | None = None,
    extra_args: dict[str, Any] | None = None,
) -> list[Unit]:
    """Every arm x beta x seed in one regime: train from SFT, evaluate checkpoints and final model."""
    plan = layout.plan
    units = []
    for arm in arms:
        dataset = layout.train_file(regime) if arm.source is None else derive_weights(layout, arm, regime, weights_dir)
        loss = {"loss_type": "dpo"} if arm.source is None else {"loss_type": "tisdpo"}
        for beta in betas or plan.betas:
            for seed in seeds:
                args = layout.train_args(
                    {
                        **plan.policy_args,
                        **(extra_args or {}),
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
    """The D transform (default or a variant) with the best paired score against DPO, explore seeds."""
    levels = kl_levels(main_runs[DPO.name], plan.kl_fractions)
    compared = compare_arms(main_runs, sft_rewards(layout, plan.explore_seeds), levels)
    candidates = [Arm("D").name, *(Arm("D", v).name for v in plan.variants)]
    chosen = best(compared, [c for c in candidates if c in compared])
    variant = chosen.split("/", 1)[1] if "/" in chosen else DEFAULT_VARIANT
    return {"arm": chosen, "variant": variant, "levels": levels, "score": compared[chosen]["score"]}


def grid_action(plan: StudyPlan, progress, phase: str):
    def action(ctx: StageContext) -> None:
        layout = Layout(plan, ctx.inputs)
        derived = os.path.join(ctx.work_dir, "derived")
        if phase == "explore_main":
            arms = [*plan.main_arms(), *plan.variant_arms()]
            units = grid_units(layout, arms, plan.main_regime, plan.explore_seeds, ctx.work_dir, derived)
            if plan.dpo_reach:
                reach = plan.dpo_reach
                units += grid_units(
                    layout,
                    [DPO_REACH],
                    plan.main_regime,
                    plan.explore_seeds,
                    ctx.work_dir,
                    derived,
                    betas=reach["betas"],
                    extra_args=reach.get("args"),
                )
            run_units(units, plan.workers, phase, progress)
            return
        main_runs = finished_grid(ctx.inputs["explore_main"])[plan.main_regime]
        choice = choose_variant(plan, layout, main_runs)
        chosen_d = Arm("D", choice["variant"])
        if phase == "explore_regimes":
            units = []
            for regime in plan.other_regimes():
                arms = plan.regime_arms(chosen_d)
                units += grid_units(layout, arms, regime, plan.explore_seeds, ctx.work_dir, derived)
            run_units(units, plan.workers, phase, progress)
            return
        regime_choice = choose_regime(plan, layout, ctx.inputs, chosen_d)
        units = []
        confirm_regimes = list(dict.fromkeys([plan.main_regime, regime_choice["regime"]]))
        for regime in confirm_regimes:
            arms = [DPO, chosen_d]
            if regime == plan.main_regime and "oracle" in plan.sources:
                oracle_variant = choice["variant"] if choice["variant"] in plan.oracle_variants else DEFAULT_VARIANT
                arms.append(Arm("oracle", oracle_variant))
            units += grid_units(layout, arms, regime, plan.confirm_seeds, ctx.work_dir, derived)
        run_units(units, plan.workers, phase, progress)
        with open(os.path.join(ctx.work_dir, "choices.json"), "w", encoding="utf-8") as handle:
            json.dump({"variant": choice, "regime": regime_choice}, handle, indent=2)

    return action


def choose_regime(plan: StudyPlan, layout: Layout, inputs: dict[str, str], chosen_d: Arm) -> dict[str, Any]:
    """The regime where D (chosen transform) beats DPO by most on the explore seeds."""
    runs = {
        **finished_grid(inputs["explore_regimes"]),
        plan.main_regime: finished_grid(inputs["explore_main"])[plan.main_regime],
    }
    sft = sft_rewards(layout, plan.explore_seeds)
    scores = {}
    for regime in plan.regimes:
        arms = {name: runs[regime][name] for name in (DPO.name, chosen_d.name)}
        compared = compare_arms(arms, sft, kl_levels(arms[DPO.name], plan.kl_fractions))
        scores[regime] = compared[chosen_d.name]["score"]
    regime = max(plan.regimes, key=lambda r: scores[r]["mean"])
    return {"regime": regime, "scores": scores}


# -- the pipeline ----------------------------------------------------------------------------------------
def build_study(plan: StudyPlan, run_dir: str, progress=print) -> Pipeline:
    """The study's stages. Each stage's fingerprint holds the settings it reads (its inputs' fingerprints
    are added by the engine), so e.g. new confirmation seeds rerun only the confirmation and the report."""
    training = ("data_args", "train_defaults")
    grid = (*training, "evaluate_args", "betas", "policy_args", "weights", "variants", "explore_seeds")

    def stage(name: str, action, keys: tuple[str, ...], deps: list[str], description: str) -> Stage:
        return Stage(name, action, plan.settings(*keys), deps, description)

    stages = [
        stage(
            "task", task_action(plan), ("task_seed", "sft_pairs", "n_eval_prompts", "regimes"), [], "the task's pairs"
        ),
        stage(
            "base", base_action(plan), ("factory", "task_seed", "sft_pairs"), ["task"], "word tokenizer + tiny Llama"
        ),
        stage("sft", sft_action(plan), (*training, "sft_args"), ["task", "base"], "SFT on every response"),
        stage(
            "models",
            models_action(plan, progress),
            (
                *training,
                "contrastive_args",
                "contrastive_prompts",
                "weights",
                "sources",
                "main_regime",
                "evaluate_args",
                "explore_seeds",
                "confirm_seeds",
            ),
            ["task", "sft"],
            "contrastive models (S, D) per regime, P weights, SFT evaluations",
        ),
        stage(
            "weights",
            weights_action(plan, progress),
            ("data_args", "weights", "variants", "oracle_variants", "sources", "main_regime"),
            ["task", "sft", "models"],
            "S/D weights per regime; oracle, random and transform variants",
        ),
        stage(
            "explore_main",
            grid_action(plan, progress, "explore_main"),
            (*grid, "sources", "oracle_variants", "main_regime", "dpo_reach"),
            ["task", "sft", "models", "weights"],
            "every arm x beta x explore seed in the main regime",
        ),
        stage(
            "explore_regimes",
            grid_action(plan, progress, "explore_regimes"),
            (*grid, "sources", "main_regime", "kl_fractions"),
            ["task", "sft", "models", "weights", "explore_main"],
            "DPO, D (chosen transform) and the oracle in every other regime",
        ),
        stage(
            "confirm",
            grid_action(plan, progress, "confirm"),
            (*grid, "sources", "oracle_variants", "main_regime", "kl_fractions", "confirm_seeds"),
            ["task", "sft", "models", "weights", "explore_main", "explore_regimes"],
            "the chosen settings on fresh seeds",
        ),
        Stage(
            "report",
            report_action(plan),
            {"plan": {k: v for k, v in dataclasses.asdict(plan).items() if k != "workers"}, "version": 1},
            ["task", "models", "weights", "explore_main", "explore_regimes", "confirm"],
            "study.json, study.md and frontier plots",
        ),
    ]
    return Pipeline(run_dir, stages)


def report_action(plan: StudyPlan):
    def action(ctx: StageContext) -> None:
        write_study(plan, Layout(plan, ctx.inputs), ctx.work_dir)

    return action


def run_study(output_dir: str, config: str | None, workers: int | None, dry_run: bool) -> dict[str, str] | None:
    """Build and run the study; copy its report files into ``output_dir``."""
    from tisdpo.pipeline.command import run_pipeline

    plan = StudyPlan.load(config)
    if workers is not None:
        plan.workers = workers
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
