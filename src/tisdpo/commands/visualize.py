"""``tisdpo visualize``: token heatmaps (HTML + PNG) and summary statistics of a weights file."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from tisdpo.config import parse_config
from tisdpo.data.formats import RawRecords, read_records, split_implicit_prompt
from tisdpo.data.tokenize import tokenizer_fingerprint
from tisdpo.errors import UserError
from tisdpo.modeling import load_tokenizer
from tisdpo.report.heatmap import (
    HeatmapExample,
    render_histogram_png,
    render_html,
    render_png,
    summary_statistics,
    token_pieces,
)
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


def prompt_text(row: dict[str, Any]) -> str:
    prompt = row.get("prompt")
    if prompt is None:
        prompt = split_implicit_prompt(row["chosen"], row["rejected"])[0]
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)
    return str(prompt)


def check_values(row: dict[str, Any], side: str, key: str, vocab_size: int, source: str, where: str) -> None:
    """One finite value per token id, and ids the tokenizer knows."""
    ids, values = row[f"{side}_token_ids"], row[f"{side}_{key}"]
    bad_id = next(
        (i for i, t in enumerate(ids) if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size), None
    )
    if bad_id is not None:
        raise UserError(
            f"token id {bad_id} is {ids[bad_id]!r}, not an id of this tokenizer (vocabulary of {vocab_size}); "
            "was the file made with another tokenizer?",
            source=source,
            location=where,
            field=f"{side}_token_ids",
        )
    if len(values) != len(ids):
        raise UserError(
            f"has {len(values)} values but {side}_token_ids has {len(ids)} tokens (expected one per token)",
            source=source,
            location=where,
            field=f"{side}_{key}",
        )
    for position, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise UserError(
                f"value {position} is {v!r} (expected a finite number)",
                source=source,
                location=where,
                field=f"{side}_{key}",
            )


def heatmap_examples(records: RawRecords, tokenizer: Any, value: str) -> list[HeatmapExample]:
    key = "weights" if value == "weights" else "token_rewards"
    examples = []
    for index, row in enumerate(records.rows):
        for column in ("chosen_token_ids", "rejected_token_ids", f"chosen_{key}", f"rejected_{key}"):
            if not isinstance(row.get(column), list):
                raise UserError(
                    "is missing: expected a file written by `tisdpo weights`",
                    source=records.source,
                    location=records.where(index),
                    field=column,
                )
        for side in ("chosen", "rejected"):
            check_values(row, side, key, len(tokenizer), records.source, records.where(index))
        examples.append(
            HeatmapExample(
                prompt=prompt_text(row),
                chosen_tokens=token_pieces(tokenizer, row["chosen_token_ids"]),
                chosen_values=list(row[f"chosen_{key}"]),
                rejected_tokens=token_pieces(tokenizer, row["rejected_token_ids"]),
                rejected_values=list(row[f"rejected_{key}"]),
                title=f"example {index}",
                chosen_rewards=row.get("chosen_token_rewards"),
                rejected_rewards=row.get("rejected_token_rewards"),
            )
        )
    return examples


def run(argv: list[str]) -> dict[str, Any]:
    (args,) = parse_config([VisualizeArguments], argv, prog="tisdpo visualize")
    if not args.weights_file or not args.output_dir:
        raise UserError("tisdpo visualize needs --weights_file and --output_dir")
    records = read_records(args.weights_file)
    meta = read_meta(args.weights_file) or {}
    tokenizer_name = args.tokenizer_name_or_path or meta.get("tokenizer")
    if not tokenizer_name:
        raise UserError(
            "no tokenizer named in the file's provenance; pass --tokenizer_name_or_path", source=args.weights_file
        )
    if os.path.isfile(args.output_dir):
        raise UserError("is a file; --output_dir must be a folder", source=args.output_dir, field="output_dir")
    tokenizer = load_tokenizer(tokenizer_name, args.trust_remote_code)
    recorded = meta.get("tokenizer_fingerprint")
    if recorded and tokenizer_fingerprint(tokenizer) != recorded:
        raise UserError(
            f"this weights file was made with another tokenizer ({meta.get('tokenizer')}, fingerprint {recorded}) "
            f"than {tokenizer_name}; its token ids would decode to other text",
            source=args.weights_file,
        )
    examples = heatmap_examples(records, tokenizer, args.value)
    if not examples:
        raise UserError("the file has no rows", source=args.weights_file)
    label = "weight" if args.value == "weights" else "reward"
    os.makedirs(args.output_dir, exist_ok=True)
    render_html(examples[: args.max_examples], os.path.join(args.output_dir, "heatmap.html"), value_label=label)
    render_png(
        examples, os.path.join(args.output_dir, "heatmap.png"), max_examples=args.png_examples, value_label=label
    )
    render_histogram_png(examples, os.path.join(args.output_dir, "histogram.png"), value_label=label)
    summary = summary_statistics(examples)
    write_json(os.path.join(args.output_dir, "summary.json"), summary)
    logger.info("wrote heatmap.html, heatmap.png, histogram.png and summary.json to %s", args.output_dir)
    return summary
