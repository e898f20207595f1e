"""``tisdpo pipeline --config recipe.yaml [--run_dir DIR] [--dry_run]``."""

from __future__ import annotations

from typing import Any

from tisdpo.config import load_yaml_config
from tisdpo.errors import UserError, did_you_mean
from tisdpo.pipeline.engine import Pipeline
from tisdpo.pipeline.recipe import Recipe, StageBuilder
from tisdpo.utils import quiet_libraries

USAGE = "usage: tisdpo pipeline --config recipe.yaml [--run_dir DIR] [--dry_run]"


def parse_argv(argv: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {"config": None, "run_dir": None, "dry_run": False}
    iterator = iter(argv)
    for arg in iterator:
        key, _, inline = arg.partition("=")
        if key in ("--config", "--run_dir"):
            value = inline or next(iterator, None)
            if not value:
                raise UserError(f"{key} needs a value ({USAGE})")
            options[key[2:]] = value
        elif key == "--dry_run":
            options["dry_run"] = inline.lower() not in ("false", "0", "no") if inline else True
        elif key in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        else:
            raise UserError(
                f"unknown argument '{arg}'{did_you_mean(key, ['--config', '--run_dir', '--dry_run'])} ({USAGE})"
            )
    if not options["config"]:
        raise UserError(f"tisdpo pipeline needs --config ({USAGE})")
    return options


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
    options = parse_argv(argv)
    recipe = load_recipe(options["config"], options["run_dir"])
    return run_pipeline(build_pipeline(recipe), options["dry_run"])
