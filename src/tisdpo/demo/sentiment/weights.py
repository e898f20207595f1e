"""Every TIS-DPO arm's weights file for one seed of the sentiment study.

Token rewards are scored once on the pairs with response ``a`` as chosen (a token's reward does not
depend on its label): P's by ``tisdpo weights`` with the two tone prompts, D's by ``tisdpo weights`` with
the seed's DPO and reverse-DPO models, the oracle's from VADER (:mod:`tisdpo.demo.sentiment.oracle`).
For a seed, each pair takes the side its label gives it (:func:`~tisdpo.demo.sentiment.task.swap_sides`),
then the toolkit's transform turns rewards into weights (structural tokens at 1, then the configured
normalisation), exactly as ``tisdpo weights --from_rewards`` does. ``random`` draws weights with the
``random`` transform seeded by the seed, on the same tokens.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from tisdpo.data.formats import read_records
from tisdpo.demo.sentiment.plan import Paths, RealStudyPlan
from tisdpo.demo.sentiment.task import swap_sides
from tisdpo.demo.study.layout import transform_config_of
from tisdpo.weights.estimate import add_weights, normalize_rows
from tisdpo.weights.io import read_meta, write_weights_file


def scored_file(plan: RealStudyPlan, paths: Paths, seed: int, source: str) -> str:
    """The weights file (``a`` as chosen) whose token ids and rewards ``source`` starts from."""
    if source == "D" or (source != "P" and "P" not in plan.sources):
        return os.path.join(paths.weights_d(seed), "weights.jsonl")
    return os.path.join(paths.weights_p, "weights.jsonl")


def labelled_rows(orientation_rows: list[dict[str, Any]], labels_file: str) -> list[dict[str, Any]]:
    """The scored rows in the order of the seed's labelled pairs, each with the side its label gives it."""
    by_id = {row["pair_id"]: row for row in orientation_rows}
    out = []
    for labelled in read_records(labels_file).rows:
        row = by_id[labelled["pair_id"]]
        out.append(row if labelled["a_chosen"] else swap_sides(row))
    return out


def seed_weight_rows(
    plan: RealStudyPlan, paths: Paths, model_dir: str, seed: int, source: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows (with weights) and provenance of ``source``'s weights file for ``seed``."""
    source_file = scored_file(plan, paths, seed, source)
    rows = list(read_records(source_file).rows)
    if source == "oracle":
        from tisdpo.data.tokenize import PairTokenizer
        from tisdpo.demo.sentiment.oracle import oracle_rewards_of_rows
        from tisdpo.modeling import load_tokenizer

        pair_tokenizer = PairTokenizer(load_tokenizer(model_dir), plan.max_length, plan.max_prompt_length)
        rows = oracle_rewards_of_rows(pair_tokenizer, rows, plan.direction, plan.attribution)
    flags = dict(plan.weights)
    if source == "random":
        flags.update({"weight_transform": "random", "weight_seed": seed})
    config = transform_config_of(flags)
    rows = labelled_rows(rows, paths.train_file(seed))
    weighted = [add_weights(row, config, index) for index, row in enumerate(rows)]
    meta = {
        **(read_meta(source_file) or {}),
        "method": source,
        "derived_from": source_file,
        "labels": paths.train_file(seed),
        "transform": dataclasses.asdict(config),
    }
    if source == "oracle":
        meta.update({"attribution": plan.attribution, "direction": plan.direction})
    return normalize_rows(weighted, config), meta


def write_seed_weights(plan: RealStudyPlan, paths: Paths, model_dir: str, seed: int, source: str) -> str:
    path = paths.arm_weights(seed, source)
    rows, meta = seed_weight_rows(plan, paths, model_dir, seed, source)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_weights_file(path, rows, meta)
    return path
