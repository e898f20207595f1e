"""``tisdpo pipeline --config recipe.yaml [--run_dir DIR] [--dry_run]``."""

from __future__ import annotations

from typing import Any

from tisdpo.config import PipelineArguments, load_yaml_config, parse_config
from tisdpo.errors import UserError
from tisdpo.pipeline.engine import Pipeline
from tisdpo.pipeline.recipe import Recipe, StageBuilder
from tisdpo.utils import quiet_libraries

USAGE = "usage: tisdpo pipeline --config recipe.yaml [--run_dir DIR] [--dry_run]"


def parse_argv(argv: list[str]) -> PipelineArguments:
    (args,) = parse_config(
        [PipelineArguments],
        argv,
        prog="tisdpo pipeline",
        config_flag=False,  # the recipe, not a file of flags
        description="The whole method from a recipe: SFT, contrastive pairs, weights, training, evaluation.",
    )
    if not args.config:
        raise UserError(f"tisdpo pipeline needs --config ({USAGE})")
    return args


def load_recipe(path: str, run_dir: str | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    values = {**load_yaml_config(path), **(overrides or {})}
    if run_dir:
        values["run_dir"] = run_dir
    return Recipe.from_dict(values, path)


def build_pipeline(recipe: Recipe) -> Pipeline:
    return Pipeline(recipe.run_dir, StageBuilder(recipe).build())


def run_pipeline(pipeline: Pipeline, dry_run: bool) -> dict[str, str] | None:
    print(pipeline.describe_plan(), flush=True)
    if dry_run:
        return None
    with quiet_libraries(logs=True):  # the stage lines are the output (all of it with --verbose)
        return pipeline.run(progress=lambda line: print(line, flush=True))


def run(argv: list[str]) -> dict[str, str] | None:
    args = parse_argv(argv)
    recipe = load_recipe(args.config, args.run_dir)
    return run_pipeline(build_pipeline(recipe), args.dry_run)
