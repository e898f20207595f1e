"""How well estimated token rewards separate truly good from truly bad tokens (the demo's weight_auc)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tisdpo.demo.task import token_auc, word_categories

GOOD = ("good", "context_good")
BAD = ("bad", "context_bad")


def labelled_tokens(rows: Iterable[dict[str, Any]]) -> list[tuple[float, int, bool]]:
    """(estimated reward, 1 if truly good else 0, context-dependent?) for every non-neutral response word.

    The demo's tokenizer is word-level, so completion token j is response word j (EOS follows).
    """
    out = []
    for row in rows:
        for side in ("chosen", "rejected"):
            words = row[side].split()
            rewards = row[f"{side}_token_rewards"]
            for category, reward in zip(word_categories(row["prompt"], row[side]), rewards[: len(words)]):
                if category in GOOD or category in BAD:
                    out.append((float(reward), int(category in GOOD), category.startswith("context")))
    return out


def weight_auc(rows: list[dict[str, Any]]) -> dict[str, float]:
    """ROC-AUC of r_t for good-vs-bad tokens: over all, context-dependent and context-free tokens."""
    tokens = labelled_tokens(rows)

    def auc(selected: list[tuple[float, int, bool]]) -> float:
        return float(token_auc([t[0] for t in selected], [t[1] for t in selected])) if selected else float("nan")

    return {
        "all": auc(tokens),
        "context_dependent": auc([t for t in tokens if t[2]]),
        "context_free": auc([t for t in tokens if not t[2]]),
        "tokens": len(tokens),
    }
