"""``tisdpo demo [--quick] --output_dir OUT [--dry_run]``: the whole method on the ground-truth task.

``tisdpo demo --study --output_dir OUT``: the evidence study on the same task (:mod:`tisdpo.demo.study`).

``tisdpo demo --real-study --output_dir OUT``: TIS-DPO against DPO on a real model with a known reward
(:mod:`tisdpo.demo.sentiment`).

``tisdpo demo --real``: the tour on a real pretrained model and real HH dialogues (:mod:`tisdpo.demo.real_tour`).
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from typing import Any

from tisdpo.config import DemoArguments, load_yaml_config, parse_config
from tisdpo.pipeline.command import build_pipeline, run_pipeline
from tisdpo.pipeline.recipe import Recipe

DESCRIPTION = (
    "The whole method on the embedded ground-truth task (a tiny model, known token rewards); "
    "--real: the tour on a real pretrained model and real HH dialogues."
)
TRUE = ("true", "yes", "t", "y", "1")
REPORT_FILES = (
    "results.json",
    "results.md",
    "report.html",
    "frontier.png",
    "heatmap_P.png",
    "heatmap_S.png",
    "heatmap_D.png",
    "heatmap_D.html",
)


def recipe_path() -> str:
    return str(resources.files("tisdpo.demo").joinpath("recipe.yaml"))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update: mappings merge, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def demo_recipe(quick: bool, output_dir: str) -> Recipe:
    values = load_yaml_config(recipe_path())
    overrides = values.pop("quick_overrides", {})
    if quick:
        values = merge(values, overrides)
    values["run_dir"] = output_dir
    return Recipe.from_dict(values, recipe_path())


def parse_argv(argv: list[str]) -> DemoArguments:
    (args,) = parse_config([DemoArguments], argv, prog="tisdpo demo", config_flag=False, description=DESCRIPTION)
    return args


def is_real(argv: list[str]) -> bool:
    """``--real`` (or ``--real=true``) anywhere: the real-model tour, which has flags of its own."""
    return any(arg == "--real" or (arg.startswith("--real=") and arg.split("=", 1)[1].lower() in TRUE) for arg in argv)


def run(argv: list[str]) -> None:
    if is_real(argv):
        from tisdpo.demo.real_tour import run as run_real

        run_real([arg for arg in argv if arg != "--real" and not arg.startswith("--real=")])
        return
    args = parse_argv(argv)
    if args.real_study:
        from tisdpo.demo.sentiment.study import run_real_study

        run_real_study(args.output_dir, args.study_config, args.workers, args.dry_run, args.quick)
        return
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        # A 64-wide model is latency-bound: extra threads only spin against each other.
        torch.set_num_threads(1)
    if args.study:
        from tisdpo.demo.study.run import run_study

        run_study(args.output_dir, args.study_config, args.workers, args.dry_run, args.quick)
        return
    pipeline = build_pipeline(demo_recipe(args.quick, args.output_dir))
    folders = run_pipeline(pipeline, args.dry_run)
    if folders is None:
        return
    report = folders["report"]
    for name in REPORT_FILES:
        if os.path.exists(os.path.join(report, name)):
            shutil.copy(os.path.join(report, name), os.path.join(args.output_dir, name))
    with open(os.path.join(report, "results.md"), encoding="utf-8") as handle:
        print("\n" + handle.read())
    print(f"report: {os.path.join(args.output_dir, 'report.html')}")
