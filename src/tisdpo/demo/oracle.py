"""Oracle token weights for the ground-truth task: the ceiling of what token weighting can do on it.

Two sources, both turned into weights by the same transform (and normalisation) as estimated ones:

* ``oracle``: ``r_t`` is the task's true reward of response word ``t`` (+1, -1 or 0; the EOS that
  follows the words gets 0). The best an estimator could possibly deliver.
* ``oracle_sign``: an estimated source's rewards (D in the demo) with the *sign* of every token that
  truly matters set by the truth: ``r_t = sign(true_t) * |r_est_t|`` where ``true_t != 0``, ``r_est_t``
  elsewhere. It keeps the estimate's magnitudes and its noise on neutral tokens, so comparing it with
  the estimate and with the oracle separates the cost of wrong signs from the cost of wrong magnitudes.

Both read a weights file of the task's pairs (token ids and estimated rewards, plus the task's
``chosen_true_rewards`` / ``rejected_true_rewards`` columns, which a weights file keeps from its input).
The demo's tokenizer is word-level, so completion token ``j`` is response word ``j``.
"""

from __future__ import annotations

import math
from typing import Any

from tisdpo.errors import UserError
from tisdpo.weights.estimate import add_weights, normalize_rows
from tisdpo.weights.io import read_meta, write_weights_file
from tisdpo.weights.transforms import WeightTransformConfig

ORACLE_SOURCES: tuple[str, ...] = ("oracle", "oracle_sign")
SIDES = ("chosen", "rejected")


def token_truth(row: dict[str, Any], side: str, where: str) -> list[float]:
    """True rewards aligned to the side's completion tokens (0 for the EOS after the words)."""
    truth = [float(r) for r in row.get(f"{side}_true_rewards") or []]
    n_tokens = len(row[f"{side}_token_ids"])
    if not truth:
        raise UserError(f"has no {side}_true_rewards: oracle weights need the demo task's pairs", location=where)
    if n_tokens > len(truth) + 1:
        raise UserError(
            f"{side}: {n_tokens} completion tokens for {len(truth)} words; oracle weights need the demo's "
            "word-level tokenizer (one token per word, then EOS)",
            location=where,
        )
    return (truth + [0.0])[:n_tokens]


def oracle_rewards(row: dict[str, Any], kind: str, where: str = "") -> dict[str, list[float]]:
    """``{side}_token_rewards`` of one pair for the oracle ``kind`` (see the module docstring)."""
    if kind not in ORACLE_SOURCES:
        raise ValueError(f"unknown oracle source {kind!r}; expected one of {ORACLE_SOURCES}")
    out = {}
    for side in SIDES:
        truth = token_truth(row, side, where)
        if kind == "oracle":
            rewards = truth
        else:
            estimate = [float(r) for r in row[f"{side}_token_rewards"]]
            rewards = [math.copysign(abs(e), t) if t != 0 else e for e, t in zip(estimate, truth)]
        out[f"{side}_token_rewards"] = rewards
    return out


def oracle_weight_rows(rows: list[dict[str, Any]], kind: str, config: WeightTransformConfig) -> list[dict[str, Any]]:
    """The rows with oracle rewards and their weights (``config``'s transform, then its normalisation)."""
    weighted = []
    for index, row in enumerate(rows):
        where = f"row {index + 1}"
        weighted.append(add_weights({**row, **oracle_rewards(row, kind, where)}, config, index, where=where))
    return normalize_rows(weighted, config)


def write_oracle_weights(source_file: str, output_file: str, kind: str, config: WeightTransformConfig) -> None:
    """Oracle weights for the pairs of the weights file ``source_file``, written like ``tisdpo weights``
    writes (rows, then provenance: the source's, with the oracle method and the transform)."""
    import dataclasses

    from tisdpo.data.formats import read_records

    rows = list(read_records(source_file).rows)
    meta = read_meta(source_file) or {}
    provenance = {**meta, "method": kind, "derived_from": source_file, "transform": dataclasses.asdict(config)}
    write_weights_file(output_file, oracle_weight_rows(rows, kind, config), provenance)
