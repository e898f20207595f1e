"""The ``tisdpo`` command: ``tisdpo <subcommand> [--flags] [--config recipe.yaml]``."""

from __future__ import annotations

import importlib
import logging
import sys

from tisdpo.errors import UserError, did_you_mean, one_line
from tisdpo.utils import library_output

SUBCOMMANDS = {
    "train": ("tisdpo.commands.train", "train a policy (dpo, ipo, cdpo, tdpo1/2, simpo, tisdpo, dlma, sparsepo, sft)"),
    "evaluate": (
        "tisdpo.commands.evaluate",
        "preference metrics against a reference; --generate: sample, score, win rate, KL",
    ),
    "weights": ("tisdpo.commands.weights", "token rewards from a contrastive pair (P, S, D) and their weights"),
    "visualize": ("tisdpo.commands.visualize", "token heatmaps (HTML, PNG) and statistics of a weights file"),
    "compare": ("tisdpo.commands.compare", "several evaluation outputs side by side: one table, one reward-vs-KL plot"),
    "pipeline": (
        "tisdpo.pipeline.command",
        "the whole method from a recipe: SFT, contrastive pairs, weights, training, evaluation",
    ),
    "dlma": ("tisdpo.commands.dlma", "DLMA: `tisdpo dlma generate` makes self-rewarded preference pairs"),
    "demo": ("tisdpo.demo.run", "the embedded ground-truth demo (tiny model, known token rewards)"),
}

USAGE = (
    "usage: tisdpo <command> [--flags] [--config recipe.yaml] [--debug] [--verbose]\n\ncommands:\n"
    + "\n".join(f"  {name:<10} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items())
    + "\n\n'tisdpo <command> --help' lists the command's flags.\n"
    + "--debug: a failure shows its traceback. --verbose: the libraries' own output too (transformers'\n"
    + "per-model progress bars ...), which is left out by default."
)


def run_command(name: str, argv: list[str]) -> object:
    """Run one subcommand in this process; its UserError propagates (the pipeline names its stage with it)."""
    if name not in SUBCOMMANDS:
        raise UserError(f"unknown command '{name}'{did_you_mean(name, SUBCOMMANDS)}")
    return importlib.import_module(SUBCOMMANDS[name][0]).run(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = "--debug" in argv, "--verbose" in argv
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(
            f"tisdpo: unknown command '{name}'{did_you_mean(name, SUBCOMMANDS)}\n\n{USAGE}",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="[tisdpo] %(message)s")
    try:
        importlib.import_module(SUBCOMMANDS[name][0])  # first: library_output sees what the command imports
        with library_output(verbose):
            run_command(name, rest)
    except UserError as err:
        if debug:
            raise
        print(f"tisdpo {name}: error: {one_line(err.format())}", file=sys.stderr)
        return 1
    except OSError as err:  # the environment, not the code: disk full, permission denied ...
        if debug:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(
            f"tisdpo {name}: error: {one_line(err.strerror or err)}{where} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"tisdpo {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug or a library failure: still one line, the traceback on request
        if debug:
            raise
        print(
            f"tisdpo {name}: error: {type(err).__name__}: {one_line(err)} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
