"""Pipeline stages of the embedded demo: the ground-truth task's data, a tiny model from scratch and oracle
weights, registered as stage kinds of the generic pipeline (:mod:`tisdpo.pipeline.kinds`) by
:func:`register_demo_kinds`, which ``import tisdpo.demo`` calls:

    data: {demo_task: {...}}   base_model: {demo_factory: {...}}   objectives.X.weights: oracle | oracle_sign
"""

from __future__ import annotations

import json
import os
from typing import Any

from tisdpo.demo.metrics import weight_auc
from tisdpo.demo.oracle import ORACLE_SOURCES, write_oracle_weights
from tisdpo.demo.task import TaskConfig, corpus_texts, generate_pairs, generate_prompts
from tisdpo.errors import UserError
from tisdpo.pipeline.engine import StageContext
from tisdpo.pipeline.kinds import StageKind, register_stage_kind
from tisdpo.pipeline.recipe import Ref, StageBuilder
from tisdpo.weights.io import write_rows

TRUTH_COLUMNS = ("chosen_true_rewards", "rejected_true_rewards", "prompt_kind", "label_flipped")


def task_config(spec: dict[str, Any], n_pairs: int, seed: int) -> TaskConfig:
    options = {k: v for k, v in spec.items() if k not in ("n_train_pairs", "n_eval_pairs", "n_eval_prompts", "seed")}
    for key in ("good_prob_range", "opener_probs"):
        if key in options:
            options[key] = tuple(options[key])
    try:
        return TaskConfig(n_pairs=n_pairs, seed=seed, **options)
    except (TypeError, ValueError) as err:
        raise UserError(f"demo_task: {err}") from None


def sft_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT rows that need no labels: every pair as it is, then swapped, so each response is once a target."""
    plain = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in pairs]
    swapped = [{"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"]} for r in pairs]
    return plain + swapped


def build_base(config: TaskConfig, factory: dict[str, Any], out_dir: str) -> None:
    """A word-level tokenizer trained on the task's text and an untrained tiny Llama, saved in ``out_dir``."""
    from tisdpo.demo.factory import build_tiny_llama, train_tokenizer

    tokenizer = train_tokenizer(corpus_texts(config), out_dir, kind="word", vocab_size=1000)
    build_tiny_llama(tokenizer, out_dir, **factory)


def add_task_stage(builder: StageBuilder, spec: dict[str, Any]) -> dict[str, Ref]:
    """Stage ``task``: train / eval pairs, held-out prompts, and SFT rows (every response once as chosen)."""
    seed = int(spec.get("seed", 0))
    train_config = task_config(spec, int(spec.get("n_train_pairs", 2000)), seed)
    eval_config = task_config(spec, int(spec.get("n_eval_pairs", 200)), seed + 10_000)
    n_prompts = int(spec.get("n_eval_prompts", 200))

    def action(ctx: StageContext) -> None:
        train = generate_pairs(train_config)
        write_rows(os.path.join(ctx.work_dir, "train.jsonl"), train)
        write_rows(os.path.join(ctx.work_dir, "eval.jsonl"), generate_pairs(eval_config))
        write_rows(
            os.path.join(ctx.work_dir, "prompts.jsonl"), [{"prompt": p} for p in generate_prompts(n_prompts, seed)]
        )
        write_rows(os.path.join(ctx.work_dir, "sft.jsonl"), sft_rows(train))

    builder.add("task", action, {"spec": spec}, [], f"generate the ground-truth task ({train_config.n_pairs} pairs)")
    return {name: Ref("task", f"{name}.jsonl") for name in ("train", "eval", "prompts", "sft")}


def add_base_stage(builder: StageBuilder, factory: dict[str, Any]) -> Ref:
    """Stage ``base``: a word-level tokenizer trained on the task's text and an untrained tiny Llama."""
    spec = builder.recipe.data.get("demo_task") or {}
    config = task_config(spec, int(spec.get("n_train_pairs", 2000)), int(spec.get("seed", 0)))

    def action(ctx: StageContext) -> None:
        build_base(config, factory, ctx.work_dir)
        with open(os.path.join(ctx.work_dir, "factory.json"), "w", encoding="utf-8") as handle:
            json.dump(factory, handle)

    builder.add(
        "base", action, {"factory": factory, "task": spec}, ["task"], "word tokenizer + tiny Llama from scratch"
    )
    return Ref("base", "")


def add_oracle_stage(builder: StageBuilder, kind: str, weights: dict[str, Ref], weight_flags: dict[str, Any]) -> Ref:
    """Stage ``weights_<kind>``: oracle weights (:mod:`tisdpo.demo.oracle`) for the pairs of D's weights file,
    with the recipe's transform; returns the Ref of the new weights file."""
    from tisdpo.config import WeightsArguments, transform_config

    source = weights["D"]
    flags = {k: v for k, v in weight_flags.items() if k.startswith("weight_")}
    config = transform_config(WeightsArguments(**flags))

    def action(ctx: StageContext) -> None:
        write_oracle_weights(source.resolve(ctx), os.path.join(ctx.work_dir, "weights.jsonl"), kind, config)

    what = "true token rewards" if kind == "oracle" else "D's rewards with the true signs"
    builder.add(
        f"weights_{kind}",
        action,
        {"source": source.identity(), "transform": flags, "kind": kind},
        source.deps,
        f"{kind} weights ({what}; the ceiling)",
    )
    return Ref(f"weights_{kind}", "weights.jsonl")


def oracle_needs(recipe: Any) -> str | None:
    """What a recipe lacks for oracle weights (None: nothing)."""
    if recipe.data.get("demo_task") is None or "D" not in recipe.contrastive:
        return (
            "the demo task (data.demo_task), whose true token rewards they read, and contrastive D (the token "
            "alignment, and oracle_sign's magnitudes)"
        )
    return None


def task_weight_auc(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """The demo's weight AUC of a weights file's rewards, when its rows kept the task's true rewards."""
    return weight_auc(rows) if "chosen_true_rewards" in rows[0] else None


DEMO_KINDS = (
    StageKind("data", "demo_task", add_task_stage, weight_metric=task_weight_auc),
    StageKind("base_model", "demo_factory", add_base_stage),
    *(StageKind("weights", kind, add_oracle_stage, unmet_needs=oracle_needs) for kind in ORACLE_SOURCES),
)


def register_demo_kinds() -> None:
    """Make the demo's task, tiny model and oracle weights available to recipes (``import tisdpo.demo`` does)."""
    for kind in DEMO_KINDS:
        register_stage_kind(kind)
