"""Token heatmaps in Python: ``render_heatmaps`` draws what ``tisdpo visualize`` draws, from a weights file or
from rows in memory (:func:`tisdpo.estimate_weights`' result)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from tisdpo.data.formats import RawRecords, read_records
from tisdpo.errors import UserError
from tisdpo.report.examples import heatmap_examples, weights_tokenizer
from tisdpo.report.heatmap import render_histogram_png, render_html, render_png, summary_statistics
from tisdpo.utils import write_json
from tisdpo.weights.io import read_meta


def render_heatmaps(
    weights: str | Sequence[Mapping[str, Any]],
    output_dir: str,
    *,
    tokenizer: Any | None = None,
    value: Literal["weights", "rewards"] = "weights",
    max_examples: int = 50,
    png_examples: int = 4,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Write ``heatmap.html``, ``heatmap.png``, ``histogram.png`` and ``summary.json`` into ``output_dir``; return
    the summary statistics. ``weights``: a weights file, or rows with token ids and weights (``meta`` naming
    their tokenizer, or ``tokenizer``: a tokenizer or its name)."""
    if isinstance(weights, str):
        records = read_records(weights)
        meta, source = read_meta(weights) or {}, weights
    else:
        rows = [dict(row) for row in weights]
        records = RawRecords(rows, "weights", [f"row {i}" for i in range(len(rows))])
        meta, source = dict(getattr(weights, "meta", {})), "weights"
    if os.path.isfile(output_dir):
        raise UserError("is a file; --output_dir must be a folder", source=output_dir, field="output_dir")
    if tokenizer is None or isinstance(tokenizer, str):
        tokenizer = weights_tokenizer(source, meta, tokenizer, trust_remote_code)
    examples = heatmap_examples(records, tokenizer, value)
    if not examples:
        raise UserError("the file has no rows", source=source)
    label = "weight" if value == "weights" else "reward"
    os.makedirs(output_dir, exist_ok=True)
    render_html(examples[:max_examples], os.path.join(output_dir, "heatmap.html"), value_label=label)
    render_png(examples, os.path.join(output_dir, "heatmap.png"), max_examples=png_examples, value_label=label)
    render_histogram_png(examples, os.path.join(output_dir, "histogram.png"), value_label=label)
    summary = summary_statistics(examples)
    write_json(os.path.join(output_dir, "summary.json"), summary)
    return summary
