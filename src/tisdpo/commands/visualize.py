"""``tisdpo visualize``: token heatmaps (HTML + PNG) and summary statistics of a weights file.

A thin command over :func:`tisdpo.render_heatmaps` (reading and checking the file is
:mod:`tisdpo.report.examples`, drawing is :mod:`tisdpo.report.heatmap`).
"""

from __future__ import annotations

import logging
from typing import Any

from tisdpo.api import render_heatmaps
from tisdpo.config import VisualizeArguments, parse_config
from tisdpo.errors import UserError

logger = logging.getLogger(__name__)


def run(argv: list[str]) -> dict[str, Any]:
    (args,) = parse_config([VisualizeArguments], argv, prog="tisdpo visualize")
    if not args.weights_file or not args.output_dir:
        raise UserError("tisdpo visualize needs --weights_file and --output_dir")
    summary = render_heatmaps(
        args.weights_file,
        args.output_dir,
        tokenizer=args.tokenizer_name_or_path,
        value=args.value,
        max_examples=args.max_examples,
        png_examples=args.png_examples,
        trust_remote_code=args.trust_remote_code,
    )
    logger.info("wrote heatmap.html, heatmap.png, histogram.png and summary.json to %s", args.output_dir)
    return summary
