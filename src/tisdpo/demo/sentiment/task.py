"""The sentiment task's data: responses sampled from the start model, scored by VADER, and labelled.

* ``sample_pairs``: two responses per training prompt from the start model (its chat template,
  temperature 1, at most ``max_new_tokens`` new tokens, batched with a KV cache), each with its gold
  reward; one line per prompt in ``responses.jsonl``.
* ``label_pairs``: a seed's preference pairs. Response ``a`` is chosen with the Bradley-Terry
  probability ``sigmoid((g_a - g_b) / label_temperature)`` of the gold rewards ``g``, drawn with the
  seed (so labels are noisy where rewards are close, and each seed draws its own noise); pairs whose
  gold rewards are exactly equal carry no preference and are dropped (counted in ``label_stats``).
* ``orientation_pairs``: every pair with ``a`` as chosen: the rows token rewards are scored on once
  (a token's reward does not depend on the label); :func:`swap_sides` turns a scored row into the
  other label.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from tisdpo.demo.sentiment.vader import gold_rewards

SIDES = ("chosen", "rejected")


def user_message(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def assistant_message(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sample_pairs(
    model_dir: str,
    prompts: Sequence[str],
    max_new_tokens: int,
    direction: str,
    seed: int = 0,
    batch_size: int = 64,
    max_length: int = 128,
    max_prompt_length: int = 96,
) -> list[dict[str, Any]]:
    """Two sampled responses per prompt with their gold rewards (see the module docstring)."""
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.evaluation.generation import eos_token_ids, sample_responses
    from tisdpo.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    pair_tokenizer = PairTokenizer(tokenizer, max_length, max_prompt_length)
    prompt_ids = [
        pair_tokenizer.encode_prompt(
            tokenizer.apply_chat_template(user_message(p), tokenize=False, add_generation_prompt=True), chat=True
        )
        for p in prompts
    ]
    eos = eos_token_ids(tokenizer, model)
    sampled = sample_responses(
        model,
        prompt_ids,
        num_samples=2,
        eos_ids=eos,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        desc="sampling pairs",
    )
    rows = []
    for index, (prompt, pair) in enumerate(zip(prompts, sampled)):
        texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in pair]
        gold = gold_rewards(texts, direction)
        rows.append(
            {
                "pair_id": index,
                "prompt": prompt,
                "response_a": texts[0],
                "response_b": texts[1],
                "gold_a": gold[0],
                "gold_b": gold[1],
                "ended_a": bool(pair[0]) and pair[0][-1] in eos,
                "ended_b": bool(pair[1]) and pair[1][-1] in eos,
            }
        )
    return rows


def a_chosen_probability(gold_a: float, gold_b: float, label_temperature: float) -> float:
    return 1.0 / (1.0 + math.exp(-(gold_a - gold_b) / label_temperature))


def pair_row(record: dict[str, Any], a_chosen: bool) -> dict[str, Any]:
    """A conversational preference row of one sampled pair (``a_chosen``: which response is chosen)."""
    first, second = ("a", "b") if a_chosen else ("b", "a")
    return {
        "pair_id": record["pair_id"],
        "a_chosen": a_chosen,
        "prompt": user_message(record["prompt"]),
        "chosen": assistant_message(record[f"response_{first}"]),
        "rejected": assistant_message(record[f"response_{second}"]),
        "chosen_gold": record[f"gold_{first}"],
        "rejected_gold": record[f"gold_{second}"],
    }


def has_preference(record: dict[str, Any]) -> bool:
    return record["gold_a"] != record["gold_b"] and record["response_a"] != record["response_b"]


def orientation_pairs(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pair that carries a preference, with response ``a`` as chosen."""
    return [pair_row(record, True) for record in records if has_preference(record)]


def label_pairs(
    records: Sequence[dict[str, Any]], label_temperature: float, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A seed's labelled pairs and their statistics (see the module docstring)."""
    rng = random.Random(f"labels-{seed}")
    rows, flipped, ties = [], 0, 0
    for record in records:
        if not has_preference(record):
            ties += 1
            continue
        p_a = a_chosen_probability(record["gold_a"], record["gold_b"], label_temperature)
        a_chosen = rng.random() < p_a
        flipped += a_chosen != (record["gold_a"] > record["gold_b"])
        rows.append(pair_row(record, a_chosen))
    stats = {
        "pairs": len(rows),
        "dropped_ties": ties,
        "flipped": flipped,
        "flipped_share": flipped / max(1, len(rows)),
        "label_temperature": label_temperature,
    }
    return rows, stats


def swap_sides(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its chosen and rejected sides exchanged (every ``chosen*`` / ``rejected*`` key)."""
    out = {}
    for key, value in row.items():
        if key.startswith("chosen"):
            out["rejected" + key[len("chosen") :]] = value
        elif key.startswith("rejected"):
            out["chosen" + key[len("rejected") :]] = value
        else:
            out[key] = value
    if "a_chosen" in out:
        out["a_chosen"] = not out["a_chosen"]
    return out
