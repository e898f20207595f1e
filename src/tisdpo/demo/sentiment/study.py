"""``tisdpo demo --real-study --output_dir OUT [--quick] [--dry_run]``: TIS-DPO against DPO on a real
pretrained model with a known reward (docs/real-study.md).

SmolLM2-135M-Instruct writes short reviews and notes; VADER's compound score is the gold reward and its
word valences the token oracle (:mod:`tisdpo.demo.sentiment.vader`, :mod:`tisdpo.demo.sentiment.oracle`).
The run, every step resumable (a killed run redoes at most the units in flight):

1. ``task``: training and held-out prompts, two sampled responses per training prompt with their gold
   rewards, and per seed the Bradley-Terry labels (:mod:`tisdpo.demo.sentiment.task`);
2. ``models``: per seed the start model's evaluation, D's two contrastive models (DPO and reverse DPO
   on the seed's pairs); once, the P token rewards (the start model under two tone prompts);
3. ``weights_D``: per seed the D token rewards;
4. per seed, every arm's weights file (oracle, D, P, random: the toolkit's transform, structural
   tokens at 1, sides set by the seed's labels);
5. ``arms``: every arm x beta x seed trains with the same flags and budget, and every checkpoint is
   evaluated (held-out responses sampled at temperature 1: gold reward, KL to the start, length);
6. the report (:mod:`tisdpo.demo.sentiment.report`): ``study.json``, ``study.md``, ``frontier.png``,
   ``samples.jsonl``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tisdpo.demo.sentiment.plan import REGIME, Paths, RealStudyPlan, read_jsonl, write_jsonl
from tisdpo.demo.sentiment.vader import SCORERS
from tisdpo.demo.sentiment.weights import write_seed_weights
from tisdpo.demo.study.units import Unit, run_units
from tisdpo.utils import write_json


# -- 1. the task ------------------------------------------------------------------------------------
def task_spec(plan: RealStudyPlan, model_dir: str) -> dict[str, Any]:
    keys = ("direction", "n_train_prompts", "n_eval_prompts", "max_new_tokens", "max_length", "max_prompt_length")
    return {"model": model_dir, **{key: getattr(plan, key) for key in keys}}


def make_task(plan: RealStudyPlan, paths: Paths, model_dir: str, progress: Any) -> None:
    from tisdpo.demo.sentiment.prompts import split_prompts
    from tisdpo.demo.sentiment.task import label_pairs, orientation_pairs, sample_pairs, swap_sides, user_message

    marker = os.path.join(paths.task, "task.json")
    spec = task_spec(plan, model_dir)
    done = False
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as handle:
            done = json.load(handle).get("spec") == spec
    if not done:
        train_prompts, eval_prompts = split_prompts(plan.n_train_prompts, plan.n_eval_prompts)
        write_jsonl(paths.prompts, [{"prompt": user_message(p)} for p in eval_prompts])
        progress(f"  task: sampling 2 responses to each of {len(train_prompts)} training prompts")
        records = sample_pairs(
            model_dir,
            train_prompts,
            plan.max_new_tokens,
            plan.direction,
            batch_size=plan.sample_batch_size,
            max_length=plan.max_length,
            max_prompt_length=plan.max_prompt_length,
        )
        write_jsonl(paths.responses, records)
        write_jsonl(paths.orientation, orientation_pairs(records))
        write_json(marker, {"spec": spec})
    records = read_jsonl(paths.responses)
    for seed in plan.seeds:
        rows, stats = label_pairs(records, plan.label_temperature, seed)
        write_jsonl(paths.train_file(seed), rows)
        write_jsonl(paths.train_file(seed, reverse=True), [swap_sides(row) for row in rows])
        write_json(paths.labels(seed), stats)


# -- 2-5. units ---------------------------------------------------------------------------------------
def lengths(plan: RealStudyPlan) -> dict[str, Any]:
    return {"max_length": plan.max_length, "max_prompt_length": plan.max_prompt_length}


def quiet_flags() -> dict[str, Any]:
    return {"report_to": "none", "disable_tqdm": True}


def evaluate_args(plan: RealStudyPlan, paths: Paths, model_dir: str, seed: int) -> dict[str, Any]:
    return {
        "generate": True,
        "sample_baseline": False,
        "dataset_name": paths.prompts,
        "max_prompts": plan.eval_prompts,
        "ref_model_name_or_path": model_dir,
        "scorer": SCORERS[plan.direction],
        "max_new_tokens": plan.max_new_tokens,
        "temperature": 1.0,
        "generation_batch_size": plan.sample_batch_size,
        "seed": seed,
        **lengths(plan),
        **quiet_flags(),
    }


def train_args(plan: RealStudyPlan, model_dir: str, dataset: str, loss_type: str, beta: float, seed: int) -> dict:
    return {
        **plan.train,
        **lengths(plan),
        **quiet_flags(),
        "model_name_or_path": model_dir,
        "dataset_name": dataset,
        "loss_type": loss_type,
        "beta": beta,
        "seed": seed,
    }


def model_units(plan: RealStudyPlan, paths: Paths, model_dir: str) -> list[Unit]:
    units = []
    for seed in plan.seeds:
        units.append(
            Unit(
                f"start_eval_s{seed}",
                paths.start_eval(seed),
                evaluate={**evaluate_args(plan, paths, model_dir, seed), "model_name_or_path": model_dir},
                tags={"seed": seed},
            )
        )
        if "D" in plan.sources:
            for side, reverse in (("dpo", False), ("reverse", True)):
                dataset = paths.train_file(seed, reverse)
                units.append(
                    Unit(
                        f"D_{side}_s{seed}",
                        paths.contrast(seed, side),
                        train=train_args(plan, model_dir, dataset, "dpo", plan.contrast_beta, seed)
                        | {"save_strategy": "no"},
                        keep_model=True,
                        tags={"seed": seed, "contrast": side},
                    )
                )
    if "P" in plan.sources:
        units.append(
            Unit(
                "weights_P",
                paths.weights_p,
                weights={
                    "model_name_or_path": model_dir,
                    "dataset_name": paths.orientation,
                    "positive_prompt": plan.target_tone_prompt,
                    "negative_prompt": plan.opposite_tone_prompt,
                    **plan.weights,
                    **lengths(plan),
                },
            )
        )
    return units


def d_weight_units(plan: RealStudyPlan, paths: Paths) -> list[Unit]:
    if "D" not in plan.sources:
        return []
    return [
        Unit(
            f"weights_D_s{seed}",
            paths.weights_d(seed),
            weights={
                "positive_model": os.path.join(paths.contrast(seed, "dpo"), "model"),
                "negative_model": os.path.join(paths.contrast(seed, "reverse"), "model"),
                "dataset_name": paths.orientation,
                **plan.weights,
                **lengths(plan),
            },
        )
        for seed in plan.seeds
    ]


def arm_units(plan: RealStudyPlan, paths: Paths, model_dir: str) -> list[Unit]:
    units = []
    for seed in plan.seeds:
        for arm in plan.arms():
            for beta in plan.betas:
                if arm.source is None:
                    dataset, loss_type = paths.train_file(seed), "dpo"
                else:
                    dataset, loss_type = paths.arm_weights(seed, arm.source), "tisdpo"
                units.append(
                    Unit(
                        f"{arm.name}_b{beta:g}_s{seed}",
                        os.path.join(paths.arms, arm.folder, f"b{beta:g}", f"s{seed}"),
                        train=train_args(plan, model_dir, dataset, loss_type, beta, seed),
                        evaluate=evaluate_args(plan, paths, model_dir, seed),
                        tags={"regime": REGIME, "arm": arm.name, "beta": beta, "seed": seed},
                    )
                )
    return units


def derive_arm_weights(plan: RealStudyPlan, paths: Paths, model_dir: str) -> None:
    """Every TIS-DPO arm's weights file for every seed (see :mod:`tisdpo.demo.sentiment.weights`)."""
    for seed in plan.seeds:
        for source in plan.sources:
            write_seed_weights(plan, paths, model_dir, seed, source)


# -- the command -----------------------------------------------------------------------------------------
def run_real_study(
    output_dir: str, config: str | None = None, workers: int | None = None, dry_run: bool = False, quick: bool = False
) -> dict[str, Any] | None:
    from tisdpo.demo.real import real_model_dir
    from tisdpo.demo.sentiment.report import write_report
    from tisdpo.demo.sentiment.vader import analyzer

    plan = RealStudyPlan.load(config, quick)
    if workers is not None:
        plan.workers = workers
    counts = plan.unit_counts()
    print(
        f"tisdpo demo --real-study{' --quick' if quick else ''}: "
        + ", ".join(f"{n} {name}" for name, n in counts.items())
        + f"; {plan.workers} worker(s)"
    )
    if dry_run:
        return None
    analyzer()  # a missing vaderSentiment stops here, before any model work
    model_dir = plan.model or real_model_dir()
    paths = Paths(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    print("1/5 task")
    make_task(plan, paths, model_dir, print)
    print("2/5 start evaluations, contrastive models, P rewards")
    run_units(model_units(plan, paths, model_dir), plan.workers, "models")
    print("3/5 D rewards")
    run_units(d_weight_units(plan, paths), plan.workers, "weights_D")
    print("4/5 arms: weights, then every arm x beta x seed trained and evaluated at its checkpoints")
    derive_arm_weights(plan, paths, model_dir)
    run_units(arm_units(plan, paths, model_dir), plan.workers, "arms")
    print("5/5 report")
    study = write_report(plan, paths, model_dir)
    with open(os.path.join(output_dir, "study.md"), encoding="utf-8") as handle:
        print("\n" + handle.read())
    return study
