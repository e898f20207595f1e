"""The sentiment task's token oracle: VADER's word valences spread over each word's tokens.

For a response, VADER's words (whitespace-separated, :func:`tisdpo.demo.sentiment.vader.word_attributions`)
carry their valences (``rules`` by default). A completion token's true reward is

    r*_t = sign * sum over words w that token t overlaps of  valence(w) / (number of tokens overlapping w)

so the tokens of a word split into several tokens share its valence equally and sum to it; tokens that
cover only spaces or punctuation outside any word, and the structural tokens the chat template adds
(end-of-turn marker, its newline), get 0 (their weight is 1 anyway). ``sign`` is +1 when the task
asks for positive text and -1 for critical text, as for the gold reward.

Tokens come from the one tokenization path (:class:`tisdpo.data.tokenize.PairTokenizer`): the
completion is rendered by the chat template exactly as for training, and a token's characters are
found with the tokenizer's offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tisdpo.data.tokenize import PairTokenizer
from tisdpo.demo.sentiment.vader import Word, direction_sign, word_attributions
from tisdpo.errors import UserError

SIDES = ("chosen", "rejected")


def spread_over_tokens(words: Sequence[Word], offsets: Sequence[tuple[int, int]], shift: int = 0) -> list[float]:
    """Each word's valence divided equally among the tokens whose character span overlaps it (word spans
    are relative to the response text, which starts at ``shift`` in the text the offsets index)."""
    rewards = [0.0] * len(offsets)
    for word in words:
        start, end = word.start + shift, word.end + shift
        covering = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
        for i in covering:
            rewards[i] += word.valence / len(covering)
    return rewards


def completion_token_rewards(
    pair_tokenizer: PairTokenizer, row: dict[str, Any], direction: str, attribution: str = "rules"
) -> dict[str, list[float]]:
    """``{side}_token_rewards`` (the oracle's ``r*_t``) for every completion token of a conversational pair,
    untruncated (see the module docstring)."""
    tokenizer = pair_tokenizer.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("the token oracle needs a fast tokenizer (one that reports character offsets)")
    sign = direction_sign(direction)
    rendered = pair_tokenizer.render(row)
    out = {}
    for side in SIDES:
        completion, spans = getattr(rendered, side), getattr(rendered, f"{side}_content")
        if not rendered.chat or not spans or len(spans) != 1:
            raise UserError(f"{side}: the token oracle needs a conversational pair with one assistant message")
        start, end = spans[0]
        offsets = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        words = word_attributions(completion[start:end], attribution)
        out[f"{side}_token_rewards"] = [sign * r for r in spread_over_tokens(words, offsets, shift=start)]
    return out


def oracle_rewards_of_rows(
    pair_tokenizer: PairTokenizer, rows: Sequence[dict[str, Any]], direction: str, attribution: str = "rules"
) -> list[dict[str, Any]]:
    """Weights-file rows (token ids as trained) with their token rewards replaced by the oracle's."""
    out = []
    for index, row in enumerate(rows):
        rewards = completion_token_rewards(pair_tokenizer, row, direction, attribution)
        for side in SIDES:
            n = len(row[f"{side}_token_ids"])
            if n > len(rewards[f"{side}_token_rewards"]):
                raise UserError(f"row {index + 1}: {side} has more tokens than its rendered completion")
            rewards[f"{side}_token_rewards"] = rewards[f"{side}_token_rewards"][:n]
        out.append({**row, **rewards})
    return out
