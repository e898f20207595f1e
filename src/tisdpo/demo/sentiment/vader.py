"""The sentiment task's gold reward and its word-level truth, from VADER (``vaderSentiment``, optional).

VADER scores English text from a lexicon of word valences (-4 to +4) and a few rules: a booster
("very") or a negation ("not", "never") in the three words before a word scales or flips it, words
after "but" count 1.5 times and before it 0.5 times, an all-capitals word in mixed text is boosted.
The per-word valences after the rules are summed, exclamation and question marks add emphasis, and
the sum ``s`` is squashed to ``compound = s / sqrt(s^2 + 15)`` in (-1, 1).

* **Gold reward** (``gold_rewards``): ``sign * compound`` of the response text, ``sign`` +1 when the
  task asks for positive text and -1 for critical (negative) text; VADER rounds ``compound`` to 4
  decimals.
* **Word truth** (``word_attributions``): each whitespace-separated word of the response (VADER's own
  split) with its character span and one of two valences:

  - ``lexicon``: the word's lexicon valence (0 outside the lexicon), rules ignored;
  - ``rules``: the word's valence after VADER's rules, the exact terms whose sum is ``s`` before the
    punctuation emphasis. The token oracle uses it by default: it follows negation and "but", and
    its sum orders responses as ``compound`` does whenever their punctuation emphasis is equal
    (``docs/real-study.md`` reports how well each ranks the sampled responses).

``vaderSentiment`` is not a dependency of tisdpo: only this task imports it, and its absence stops the
task with one line that says how to install it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tisdpo.errors import UserError

INSTALL_HINT = "pip install vaderSentiment"
ATTRIBUTIONS: tuple[str, ...] = ("rules", "lexicon")
DIRECTIONS: dict[str, float] = {"positive": 1.0, "negative": -1.0}


@functools.lru_cache(maxsize=1)
def analyzer() -> Any:
    """VADER's analyzer (loaded once: reading the lexicon takes about 0.1 s)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise UserError(f"the sentiment study scores text with VADER, which is not installed: {INSTALL_HINT}") from None
    return SentimentIntensityAnalyzer()


def direction_sign(direction: str) -> float:
    if direction not in DIRECTIONS:
        raise UserError(f"direction must be one of {', '.join(DIRECTIONS)}, got '{direction}'", field="direction")
    return DIRECTIONS[direction]


def compound(text: str) -> float:
    """VADER's compound score of ``text``."""
    return float(analyzer().polarity_scores(text)["compound"])


def gold_rewards(responses: Sequence[str], direction: str = "negative") -> list[float]:
    sign = direction_sign(direction)
    return [sign * compound(text) for text in responses]


def negative_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """``--scorer tisdpo.demo.sentiment.vader:negative_reward``: minus VADER's compound score."""
    return gold_rewards(responses, "negative")


def positive_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """``--scorer tisdpo.demo.sentiment.vader:positive_reward``: VADER's compound score."""
    return gold_rewards(responses, "positive")


SCORERS = {"negative": f"{__name__}:negative_reward", "positive": f"{__name__}:positive_reward"}


@dataclass(frozen=True)
class Word:
    start: int  # character span [start, end) in the text
    end: int
    valence: float


def _with_emoji_names(chunk: str, emojis: dict[str, str]) -> str:
    """A word with its emojis replaced by their names, as VADER rewrites the text before splitting."""
    out, previous_space = "", True
    for char in chunk:
        if char in emojis:
            out += ("" if previous_space else " ") + emojis[char]
            previous_space = False
        else:
            out += char
            previous_space = char == " "
    return out


def rule_valences(text: str) -> list[float]:
    """VADER's per-word valences after its rules (one per word of its split), as ``polarity_scores`` sums them."""
    from vaderSentiment.vaderSentiment import BOOSTER_DICT, SentiText

    vader = analyzer()
    sentitext = SentiText(text)
    words = sentitext.words_and_emoticons
    sentiments: list[float] = []
    for i, item in enumerate(words):
        if item.lower() in BOOSTER_DICT or (
            i < len(words) - 1 and item.lower() == "kind" and words[i + 1].lower() == "of"
        ):
            sentiments.append(0)
            continue
        sentiments = vader.sentiment_valence(0, sentitext, item, i, sentiments)
    return [float(v) for v in vader._but_check(words, sentiments)]


def word_attributions(text: str, attribution: str = "rules") -> list[Word]:
    """Every whitespace-separated word of ``text`` with its span and valence (see the module docstring).

    A word that holds emojis gets the summed valence of the emoji names VADER reads in its place."""
    if attribution not in ATTRIBUTIONS:
        raise UserError(f"attribution must be one of {', '.join(ATTRIBUTIONS)}, got '{attribution}'")
    vader = analyzer()
    spans = [match.span() for match in re.finditer(r"\S+", text)]  # VADER splits on whitespace
    expanded = [_with_emoji_names(text[s:e], vader.emojis).split() for s, e in spans]
    rewritten = " ".join(part for parts in expanded for part in parts)
    if attribution == "rules":
        values = rule_valences(rewritten)
    else:
        from vaderSentiment.vaderSentiment import SentiText

        values = [float(vader.lexicon.get(w.lower(), 0.0)) for w in SentiText(rewritten).words_and_emoticons]
    words, cursor = [], 0
    for (start, end), parts in zip(spans, expanded):
        words.append(Word(start, end, float(sum(values[cursor : cursor + len(parts)]))))
        cursor += len(parts)
    return words
