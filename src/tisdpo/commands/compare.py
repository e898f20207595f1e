"""``tisdpo compare RUN_A RUN_B ... [--output_dir DIR] [--labels a,b]``: evaluation outputs side by side.

Each RUN is an evaluation output folder (holding ``eval_results.json``) or such a file. The command
prints one Markdown table (one row per run: reward mean ± std, baseline reward, win rate with its
95% interval, KL mean ± std, length, and the safe rate, ROUGE and preference metrics when present)
and, with ``--output_dir``, writes ``DIR/compare.md`` and ``DIR/frontier.png`` (reward against KL,
one labelled point per run with ±1 standard-error bars).

Labels default to the shortest trailing part of each run's path that tells the runs apart.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from tisdpo.config import CompareArguments, parse_config
from tisdpo.errors import UserError
from tisdpo.evaluation.report import compare_markdown, frontier_plot, write_text

logger = logging.getLogger(__name__)
DESCRIPTION = "Several evaluation outputs side by side: one Markdown table and one reward-vs-KL plot."


def results_path(run: str) -> str:
    path = os.path.join(run, "eval_results.json") if os.path.isdir(run) else run
    if not os.path.isfile(path):
        where = "no eval_results.json in this folder" if os.path.isdir(run) else "not found"
        raise UserError(f"{where} (expected the output folder of tisdpo evaluate)", source=run)
    return path


def read_results(run: str) -> dict[str, Any]:
    path = results_path(run)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise UserError(f"not valid JSON ({err.msg})", source=path, location=f"line {err.lineno}") from None
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text (expected the JSON written by tisdpo evaluate)", source=path) from None
    if not isinstance(data, dict):
        raise UserError(f"expected a JSON object of metrics, got {type(data).__name__}", source=path)
    for key, value in data.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UserError(f"expected a number, got {value!r}", source=path, field=key)
    return data


def default_labels(runs: list[str]) -> list[str]:
    """The shortest path suffixes (in components) that are all different."""
    parts = [os.path.normpath(os.path.abspath(r)).split(os.sep) for r in runs]
    parts = [p[:-1] if p[-1] == "eval_results.json" else p for p in parts]
    longest = max(len(p) for p in parts)
    for depth in range(1, longest + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} ({i + 1})" for i, label in enumerate(labels)]


def run(argv: list[str]) -> dict[str, dict[str, Any]]:
    (args,) = parse_config(
        [CompareArguments],
        argv,
        prog="tisdpo compare",
        positional="runs",
        description=DESCRIPTION,
    )
    if args.output_dir and os.path.isfile(args.output_dir):
        raise UserError("is a file; --output_dir must be a folder", source=args.output_dir, field="output_dir")
    runs = [read_results(r) for r in args.runs]
    if args.labels is not None:
        labels = [label.strip() for label in args.labels.split(",")]
        if len(labels) != len(runs):
            raise UserError(f"got {len(labels)} labels for {len(runs)} runs", field="labels")
    else:
        labels = default_labels(args.runs)
    text = compare_markdown(labels, runs)
    print(text)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        write_text(os.path.join(args.output_dir, "compare.md"), text)
        drawn = frontier_plot(labels, runs, os.path.join(args.output_dir, "frontier.png"), args.title)
        if drawn < len(runs):
            missing = [
                label for label, m in zip(labels, runs) if m.get("gen/kl") is None or m.get("gen/reward_mean") is None
            ]
            logger.warning("not in the plot (no gen/kl or gen/reward_mean): %s", ", ".join(missing))
        logger.info(
            "wrote %s and %s",
            os.path.join(args.output_dir, "compare.md"),
            os.path.join(args.output_dir, "frontier.png"),
        )
    return dict(zip(labels, runs))
