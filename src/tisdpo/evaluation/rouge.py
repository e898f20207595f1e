"""ROUGE-1, ROUGE-2 and ROUGE-L F1, computed here (no extra dependency).

Tokenization: the text is lowercased, every character that is not a letter or a digit becomes a
space, and the result is split on whitespace (``"The cat, sat."`` -> ``the cat sat``). This is the
default of Google's ``rouge-score`` without stemming, except that letters outside ASCII are kept.

* ROUGE-N: ``overlap = sum over n-grams g of min(count_ref(g), count_hyp(g))``,
  ``P = overlap / #hyp n-grams``, ``R = overlap / #ref n-grams``, ``F1 = 2PR / (P + R)``.
* ROUGE-L: with ``L`` the length of the longest common subsequence of the two token lists,
  ``P = L / len(hyp)``, ``R = L / len(ref)``, ``F1 = 2PR / (P + R)``.

F1 is 0 when either side has no n-gram (or no token). With several references, each measure is the
best F1 over them. Values are fractions in [0, 1].
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def rouge_tokenize(text: str) -> list[str]:
    return _NON_WORD.sub(" ", text.lower()).split()


def _f1(overlap: float, hyp_total: int, ref_total: int) -> float:
    if hyp_total == 0 or ref_total == 0 or overlap == 0:
        return 0.0
    precision, recall = overlap / hyp_total, overlap / ref_total
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(hypothesis: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F1 of two token lists."""
    hyp, ref = _ngrams(hypothesis, n), _ngrams(reference, n)
    overlap = sum(min(count, ref[gram]) for gram, count in hyp.items())
    return _f1(overlap, sum(hyp.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)))."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 (sentence level) of two token lists."""
    return _f1(lcs_length(hypothesis, reference), len(hypothesis), len(reference))


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge_scores(hypothesis: str, references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 of ``hypothesis`` against the best-matching of ``references`` (per measure)."""
    if not references:
        raise ValueError("rouge_scores needs at least one reference")
    hyp = rouge_tokenize(hypothesis)
    best = dict.fromkeys(ROUGE_KEYS, 0.0)
    for reference in references:
        ref = rouge_tokenize(reference)
        values = {"rouge1": rouge_n(hyp, ref, 1), "rouge2": rouge_n(hyp, ref, 2), "rougeL": rouge_l(hyp, ref)}
        best = {key: max(best[key], values[key]) for key in ROUGE_KEYS}
    return best
