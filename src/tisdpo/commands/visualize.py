"""``tisdpo visualize``: token heatmaps (HTML + PNG) and summary statistics of a weights file.

A thin command: reading and checking the file is :mod:`tisdpo.report.examples`, drawing is
:mod:`tisdpo.report.heatmap`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tisdpo.config import VisualizeArguments, parse_config
from tisdpo.data.formats import read_records
from tisdpo.errors import UserError
from tisdpo.report.examples import heatmap_examples, weights_tokenizer
from tisdpo.report.heatmap import render_histogram_png, render_html, render_png, summary_statistics
from tisdpo.utils import write_json
from tisdpo.weights.io import read_meta

logger = logging.getLogger(__name__)


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
