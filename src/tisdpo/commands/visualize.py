"""``tisdpo visualize``: token heatmaps (HTML + PNG) and summary statistics of a weights file.

A thin command: reading and checking the file is :mod:`tisdpo.report.examples`, drawing is
:mod:`tisdpo.report.heatmap`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from tisdpo.config import parse_config
from tisdpo.data.formats import read_records
from tisdpo.errors import UserError
from tisdpo.report.examples import heatmap_examples, weights_tokenizer
from tisdpo.report.heatmap import render_histogram_png, render_html, render_png, summary_statistics
from tisdpo.utils import write_json
from tisdpo.weights.io import read_meta

logger = logging.getLogger(__name__)


@dataclass
class VisualizeArguments:
    weights_file: str | None = field(default=None, metadata={"help": "A file written by `tisdpo weights`."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where heatmap.html, heatmap.png, histogram.png and summary.json go."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to decode tokens (default: the one named in the file's provenance)."}
    )
    value: Literal["weights", "rewards"] = field(
        default="weights", metadata={"help": "Colour tokens by their weight or by their raw reward r_t."}
    )
    max_examples: int = field(default=50, metadata={"help": "Examples on the HTML page."})
    png_examples: int = field(default=4, metadata={"help": "Examples in the PNG figure."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow tokenizer code from the hub."})


def run(argv: list[str]) -> dict[str, Any]:
    (args,) = parse_config([VisualizeArguments], argv, prog="tisdpo visualize")
    if not args.weights_file or not args.output_dir:
        raise UserError("tisdpo visualize needs --weights_file and --output_dir")
    records = read_records(args.weights_file)
    meta = read_meta(args.weights_file) or {}
    if os.path.isfile(args.output_dir):
        raise UserError("is a file; --output_dir must be a folder", source=args.output_dir, field="output_dir")
    tokenizer = weights_tokenizer(args.weights_file, meta, args.tokenizer_name_or_path, args.trust_remote_code)
    examples = heatmap_examples(records, tokenizer, args.value)
    if not examples:
        raise UserError("the file has no rows", source=args.weights_file)
    label = "weight" if args.value == "weights" else "reward"
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    render_html(examples[: args.max_examples], os.path.join(out, "heatmap.html"), value_label=label)
    render_png(examples, os.path.join(out, "heatmap.png"), max_examples=args.png_examples, value_label=label)
    render_histogram_png(examples, os.path.join(out, "histogram.png"), value_label=label)
    summary = summary_statistics(examples)
    write_json(os.path.join(out, "summary.json"), summary)
    logger.info("wrote heatmap.html, heatmap.png, histogram.png and summary.json to %s", out)
    return summary
