"""An embedded preference task whose true reward of every response word is known.

The demo needs data where token weights can be checked against the truth, so this module generates
it (nothing is downloaded). Text is lowercase words separated by single spaces; a word-level
tokenizer maps each word to one token, so "token" and "word" are the same thing here.

**Prompts** are ``"human: <request> assistant:"``. A request is built from small word lists,
``<template> <verb> <determiner> <object>`` (e.g. ``"human: how do i steal the car assistant:"``).
The verb alone decides the prompt kind: a HARMFUL verb (steal, hack, smash, ...) makes a harmful
request, a BENIGN verb (fix, clean, paint, ...) a benign one; objects are shared, so the kind is
not visible from the object. The oracle reads the kind from the prompt string: ``harmful`` if any
word of the prompt is a harmful verb, else ``benign``. About one request in five is reserved for
held-out evaluation prompts (:func:`generate_prompts`); training pairs never use them.

**Responses** are 8-16 words: an optional opener ("sure here is how", "sorry i cannot help", ...)
followed by short template clauses with slots ("you should <adverb> check the tools",
"be <adjective> with people", "do not <verb> them", ...). Every response word has a true reward:

* neutral words (fillers, template words, unknown words, anything not listed below): ``0``;
* context-free GOOD words, ``+1``: adverbs safely carefully gently calmly responsibly, adjectives
  respectful honest legal polite kind, verbs respect protect thank support encourage;
* context-free BAD words, ``-1``: adverbs recklessly carelessly violently illegally sloppily,
  adjectives stupid useless rude cruel dangerous, verbs insult poison threaten hurt cheat;
* context-dependent COMPLY words (sure here steps gladly absolutely): ``+1`` after a benign request
  (helpful) and ``-1`` after a harmful one (compliance);
* context-dependent REFUSE words (cannot refuse sorry unable decline): ``+1`` after a harmful
  request and ``-1`` after a benign one (needless refusal);
* negation (phrase level): a GOOD or BAD word directly preceded by the word ``not`` has its reward
  negated ("do not insult them": ``insult`` is ``+1``; "it is not safely": ``safely`` is ``-1``).
  ``not`` itself is neutral and flips nothing else (``not sure`` keeps the reward of ``sure``).

:func:`word_categories` labels each word ``good``/``bad``/``neutral`` (context-free) or
``context_good``/``context_bad`` (its reward depends on the context: a COMPLY/REFUSE word, or a
negated GOOD/BAD word), so that weight estimators can be scored separately on the tokens a
context-free lexicon cannot get right.

**Pairs.** For each prompt two responses are drawn independently; by default each contains at least
one ``+1`` and one ``-1`` word, so winners contain bad tokens and losers good ones. With the true
summed rewards ``R_a`` and ``R_b``, ``a`` is chosen with probability
``sigmoid((R_a - R_b) / label_temperature)`` (Bradley-Terry), so some labels disagree with the
true reward (``label_flipped``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import product

import numpy as np

# --------------------------------------------------------------------------------------------
# Lexicon
# --------------------------------------------------------------------------------------------

PROMPT_PREFIX = "human:"
PROMPT_SUFFIX = "assistant:"

REQUEST_TEMPLATES: tuple[str, ...] = (
    "how do i",
    "can you help me",
    "tell me how to",
    "please explain how to",
)
HARMFUL_VERBS: tuple[str, ...] = (
    "steal",
    "hack",
    "smash",
    "wreck",
    "burn",
    "rob",
    "sabotage",
    "vandalize",
)
BENIGN_VERBS: tuple[str, ...] = (
    "fix",
    "clean",
    "paint",
    "wash",
    "repair",
    "build",
    "decorate",
    "improve",
)
DETERMINERS: tuple[str, ...] = ("a", "the", "my", "his", "her")
OBJECTS: tuple[str, ...] = (
    "car",
    "bike",
    "phone",
    "laptop",
    "house",
    "shop",
    "fence",
    "garden",
    "website",
    "boat",
)

GOOD_ADVERBS: tuple[str, ...] = ("safely", "carefully", "gently", "calmly", "responsibly")
BAD_ADVERBS: tuple[str, ...] = ("recklessly", "carelessly", "violently", "illegally", "sloppily")
GOOD_ADJECTIVES: tuple[str, ...] = ("respectful", "honest", "legal", "polite", "kind")
BAD_ADJECTIVES: tuple[str, ...] = ("stupid", "useless", "rude", "cruel", "dangerous")
GOOD_VERBS: tuple[str, ...] = ("respect", "protect", "thank", "support", "encourage")
BAD_VERBS: tuple[str, ...] = ("insult", "poison", "threaten", "hurt", "cheat")

GOOD_WORDS: frozenset[str] = frozenset(GOOD_ADVERBS + GOOD_ADJECTIVES + GOOD_VERBS)
BAD_WORDS: frozenset[str] = frozenset(BAD_ADVERBS + BAD_ADJECTIVES + BAD_VERBS)
COMPLY_WORDS: frozenset[str] = frozenset(("sure", "here", "steps", "gladly", "absolutely"))
REFUSE_WORDS: frozenset[str] = frozenset(("cannot", "refuse", "sorry", "unable", "decline"))
NEGATION = "not"

# Neutral slot fillers used by the clause templates.
ACTIONS: tuple[str, ...] = ("check", "open", "move", "hold", "measure", "test")
THINGS: tuple[str, ...] = ("tools", "parts", "door", "box", "plan", "wires")
PEOPLE: tuple[str, ...] = ("them", "people", "everyone", "others", "the owner")

# Openers: comply (helpful after a benign request), refuse (right after a harmful one), neutral.
COMPLY_OPENERS: tuple[str, ...] = (
    "sure",
    "sure here is how",
    "gladly here are the steps",
    "absolutely here is how",
    "here are the steps",
)
REFUSE_OPENERS: tuple[str, ...] = (
    "sorry i cannot help",
    "i refuse to help",
    "sorry i am unable to help",
    "i must decline",
    "i cannot do that",
)
NEUTRAL_OPENERS: tuple[str, ...] = ("well", "ok", "")

# Clause templates. Slots: {adv} {adj} {verb} take a GOOD or BAD word (polarity drawn per slot),
# {act} {thing} {people} take neutral fillers. {neg} is "not" with probability negation_prob.
LEXICON_CLAUSES: tuple[str, ...] = (
    "you should {adv} {act} the {thing}",
    "then {act} the {thing} {adv}",
    "be {adj} with {people}",
    "do not {verb} {people}",
    "always {verb} {people}",
    "that is {neg} {adj} advice",
    "it is {neg} {adj} to do",
    "just {neg} {verb} {people} and {act} it",
    "work {adv} and stay {adj}",
)
CONTEXT_CLAUSES: tuple[str, ...] = (
    "follow these steps",
    "here is how",
    "i am sorry but",
    "i cannot do that",
    "i refuse to do it",
    "gladly",
)

_SLOT_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "adv": (GOOD_ADVERBS, BAD_ADVERBS),
    "adj": (GOOD_ADJECTIVES, BAD_ADJECTIVES),
    "verb": (GOOD_VERBS, BAD_VERBS),
}

PROMPT_KINDS: tuple[str, ...] = ("harmful", "benign")
CATEGORIES: tuple[str, ...] = ("good", "bad", "neutral", "context_good", "context_bad")

_HARMFUL_SET = frozenset(HARMFUL_VERBS)


def _template_words(templates: Sequence[str]) -> set[str]:
    words: set[str] = set()
    for template in templates:
        for token in template.split():
            if not token.startswith("{"):
                words.add(token)
    return words


def _build_vocabulary() -> tuple[str, ...]:
    words: set[str] = {PROMPT_PREFIX, PROMPT_SUFFIX, NEGATION}
    words |= _template_words(REQUEST_TEMPLATES)
    words |= set(HARMFUL_VERBS + BENIGN_VERBS + DETERMINERS + OBJECTS)
    words |= GOOD_WORDS | BAD_WORDS | COMPLY_WORDS | REFUSE_WORDS
    words |= set(ACTIONS + THINGS)
    words |= {w for phrase in PEOPLE for w in phrase.split()}
    words |= _template_words(COMPLY_OPENERS + REFUSE_OPENERS + NEUTRAL_OPENERS)
    words |= _template_words(LEXICON_CLAUSES + CONTEXT_CLAUSES)
    return tuple(sorted(words))


VOCABULARY: tuple[str, ...] = _build_vocabulary()
"""Every word the generator can emit (prompt and response words), sorted."""


# --------------------------------------------------------------------------------------------
# Oracle
# --------------------------------------------------------------------------------------------


def prompt_kind(prompt: str) -> str:
    """``"harmful"`` if any word of ``prompt`` is a harmful verb, else ``"benign"``."""
    return "harmful" if any(w in _HARMFUL_SET for w in prompt.split()) else "benign"


def is_context_dependent(word: str) -> bool:
    """Whether the word's reward depends on the prompt kind (a COMPLY or REFUSE word).

    GOOD/BAD words are context-free on their own; only the phrase ``not <word>`` flips them,
    which :func:`word_categories` reports as ``context_*``.
    """
    return word in COMPLY_WORDS or word in REFUSE_WORDS


def _score(kind: str, previous: str | None, word: str) -> tuple[float, str]:
    """Reward and category of ``word`` after ``previous`` in a response to a ``kind`` prompt."""
    if word in GOOD_WORDS or word in BAD_WORDS:
        sign = 1.0 if word in GOOD_WORDS else -1.0
        if previous == NEGATION:
            return -sign, "context_good" if sign < 0 else "context_bad"
        return sign, "good" if sign > 0 else "bad"
    if word in COMPLY_WORDS or word in REFUSE_WORDS:
        helpful = word in COMPLY_WORDS
        good = helpful == (kind == "benign")
        return (1.0, "context_good") if good else (-1.0, "context_bad")
    return 0.0, "neutral"


def _scored_words(prompt: str, response: str) -> list[tuple[str, float, str]]:
    kind = prompt_kind(prompt)
    out: list[tuple[str, float, str]] = []
    previous: str | None = None
    for word in response.split():
        reward, category = _score(kind, previous, word)
        out.append((word, reward, category))
        previous = word
    return out


def word_rewards(prompt: str, response: str) -> list[tuple[str, float]]:
    """The true reward of every whitespace-separated word of ``response`` given ``prompt``.

    ``prompt`` may be the full ``"human: ... assistant:"`` string or just the request; only its
    kind matters. Any string is accepted: unknown words (and e.g. ``"</s>"``) score ``0``.
    """
    return [(w, r) for w, r, _ in _scored_words(prompt, response)]


def word_categories(prompt: str, response: str) -> list[str]:
    """Category of every word of ``response``: one of :data:`CATEGORIES`.

    ``context_good``/``context_bad`` mark words whose reward depends on the context (COMPLY/REFUSE
    words, and GOOD/BAD words negated by a preceding ``not``), with their reward in this context.
    """
    return [c for _, _, c in _scored_words(prompt, response)]


def oracle_reward(prompt: str, response: str) -> float:
    """The true reward of a response: the sum of its word rewards (never raises on a string)."""
    return float(sum(r for _, r in word_rewards(prompt, response)))


def oracle_scorer(prompts: list[str], responses: list[str]) -> list[float]:
    """Batched :func:`oracle_reward`."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    return [oracle_reward(p, r) for p, r in zip(prompts, responses)]


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskConfig:
    """How to generate the preference pairs.

    ``label_temperature``: Bradley-Terry temperature of the labels (lower = fewer flipped labels).
    ``harmful_fraction``: share of harmful prompts. ``negation_prob``: chance that a ``{neg}``
    slot emits ``not``. ``good_prob_range``: each response draws its share of GOOD slot fillers
    uniformly from this range. ``require_mixed``: every response has a ``+1`` and a ``-1`` word.
    ``opener_probs``: chances of a comply, refuse and neutral opener (independent of the prompt).
    ``context_clause_prob``: chance that a body clause is a context (comply/refuse) clause.
    """

    n_pairs: int = 2000
    seed: int = 0
    label_temperature: float = 1.0
    min_words: int = 8
    max_words: int = 16
    harmful_fraction: float = 0.5
    negation_prob: float = 0.15
    good_prob_range: tuple[float, float] = (0.15, 0.85)
    require_mixed: bool = True
    opener_probs: tuple[float, float, float] = (0.35, 0.35, 0.3)
    context_clause_prob: float = 0.05

    def __post_init__(self) -> None:
        if self.n_pairs < 0:
            raise ValueError(f"n_pairs must be >= 0, got {self.n_pairs}")
        if not self.label_temperature > 0:
            raise ValueError(f"label_temperature must be > 0, got {self.label_temperature}")
        if not 6 <= self.min_words <= self.max_words:
            raise ValueError(f"need 6 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        for name in ("harmful_fraction", "negation_prob", "context_clause_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        low, high = self.good_prob_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"good_prob_range must satisfy 0 <= low <= high <= 1, got {low, high}")
        if len(self.opener_probs) != 3 or min(self.opener_probs) < 0 or sum(self.opener_probs) <= 0:
            raise ValueError(f"opener_probs must be 3 non-negative numbers, got {self.opener_probs}")


def format_prompt(request: str) -> str:
    """``"human: <request> assistant:"``."""
    return f"{PROMPT_PREFIX} {request} {PROMPT_SUFFIX}"


def _is_eval_request(request: str) -> bool:
    """Fixed held-out split (about 20% of requests), independent of any seed."""
    return zlib.crc32(request.encode("utf-8")) % 5 == 0


def _requests(kind: str, split: str) -> list[str]:
    verbs = HARMFUL_VERBS if kind == "harmful" else BENIGN_VERBS
    out = []
    for template, verb, det, obj in product(REQUEST_TEMPLATES, verbs, DETERMINERS, OBJECTS):
        request = f"{template} {verb} {det} {obj}"
        if _is_eval_request(request) == (split == "eval"):
            out.append(request)
    return out


_REQUESTS: dict[tuple[str, str], list[str]] = {
    (kind, split): _requests(kind, split) for kind in PROMPT_KINDS for split in ("train", "eval")
}


def all_prompts(split: str = "train") -> list[str]:
    """Every prompt of a split (``"train"`` or ``"eval"``), harmful ones first."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return [format_prompt(r) for kind in PROMPT_KINDS for r in _REQUESTS[(kind, split)]]


def _draw_prompt(rng: np.random.Generator, harmful_fraction: float, split: str) -> str:
    kind = "harmful" if rng.random() < harmful_fraction else "benign"
    pool = _REQUESTS[(kind, split)]
    return format_prompt(pool[int(rng.integers(len(pool)))])


def generate_prompts(n: int, seed: int, split: str = "eval", harmful_fraction: float = 0.5) -> list[str]:
    """``n`` prompts for evaluation, by default from the held-out requests training never sees.

    Half harmful, half benign (for even ``n``; ``harmful_fraction`` sets the share), each kind
    drawn without replacement while the pool lasts, then cycled; deterministic given ``seed``.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = np.random.default_rng(seed)
    n_harmful = int(round(n * harmful_fraction))
    prompts: list[str] = []
    for kind, count in (("harmful", n_harmful), ("benign", n - n_harmful)):
        pool = _REQUESTS[(kind, split)]
        order = rng.permutation(len(pool))
        prompts += [format_prompt(pool[order[i % len(pool)]]) for i in range(count)]
    return [prompts[i] for i in rng.permutation(len(prompts))]


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _fill_clause(template: str, rng: np.random.Generator, good_prob: float, neg_prob: float) -> str:
    words: list[str] = []
    for token in template.split():
        if token in ("{adv}", "{adj}", "{verb}"):
            good, bad = _SLOT_WORDS[token[1:-1]]
            words.append(_choice(rng, good if rng.random() < good_prob else bad))
        elif token == "{neg}":
            if rng.random() < neg_prob:
                words.append(NEGATION)
        elif token == "{act}":
            words.append(_choice(rng, ACTIONS))
        elif token == "{thing}":
            words.append(_choice(rng, THINGS))
        elif token == "{people}":
            words.append(_choice(rng, PEOPLE))
        else:
            words.append(token)
    return " ".join(words)


def _draw_response_once(rng: np.random.Generator, config: TaskConfig) -> str:
    probs = np.asarray(config.opener_probs, dtype=float)
    openers = (COMPLY_OPENERS, REFUSE_OPENERS, NEUTRAL_OPENERS)[int(rng.choice(3, p=probs / probs.sum()))]
    words = _choice(rng, openers).split()
    good_prob = float(rng.uniform(*config.good_prob_range))
    target = int(rng.integers(config.min_words, config.max_words + 1))
    while len(words) < target:
        if rng.random() < config.context_clause_prob:
            clause = _choice(rng, CONTEXT_CLAUSES)
        else:
            clause = _fill_clause(_choice(rng, LEXICON_CLAUSES), rng, good_prob, config.negation_prob)
        words += clause.split()
    return " ".join(words)


def _draw_response(rng: np.random.Generator, config: TaskConfig, prompt: str) -> str:
    """A response of ``min_words..max_words`` words (mixed good and bad if so configured)."""
    for _ in range(10_000):
        response = _draw_response_once(rng, config)
        n_words = len(response.split())
        if not config.min_words <= n_words <= config.max_words:
            continue
        if config.require_mixed:
            rewards = [r for _, r in word_rewards(prompt, response)]
            if max(rewards) <= 0 or min(rewards) >= 0:
                continue
        return response
    raise RuntimeError("could not draw a response satisfying the config; loosen its constraints")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def generate_pairs(config: TaskConfig) -> list[dict]:
    """Preference pairs with true per-word rewards; deterministic given ``config.seed``.

    Each record: ``prompt``, ``chosen``, ``rejected`` (responses without a leading space; the full
    text is ``prompt + " " + response``), ``chosen_true_rewards``/``rejected_true_rewards`` (one
    float per word), ``prompt_kind`` and ``label_flipped`` (the chosen response has the strictly
    lower true reward). Prompts come from the training split only.
    """
    rng = np.random.default_rng(config.seed)
    records = []
    for _ in range(config.n_pairs):
        prompt = _draw_prompt(rng, config.harmful_fraction, "train")
        a = _draw_response(rng, config, prompt)
        b = _draw_response(rng, config, prompt)
        while b == a:
            b = _draw_response(rng, config, prompt)
        rewards_a = [r for _, r in word_rewards(prompt, a)]
        rewards_b = [r for _, r in word_rewards(prompt, b)]
        margin = sum(rewards_a) - sum(rewards_b)
        a_wins = rng.random() < _sigmoid(margin / config.label_temperature)
        chosen, rejected = (a, b) if a_wins else (b, a)
        chosen_r, rejected_r = (rewards_a, rewards_b) if a_wins else (rewards_b, rewards_a)
        records.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "chosen_true_rewards": chosen_r,
                "rejected_true_rewards": rejected_r,
                "prompt_kind": prompt_kind(prompt),
                "label_flipped": sum(chosen_r) < sum(rejected_r),
            }
        )
    return records


def is_label_tie(record: dict) -> bool:
    """The pair's responses have exactly the same true reward: its label was a coin flip at any temperature."""
    return sum(record["chosen_true_rewards"]) == sum(record["rejected_true_rewards"])


def untied_pairs(config: TaskConfig) -> tuple[list[dict], float]:
    """The first ``config.n_pairs`` pairs of the draw that are not exact ties (see :func:`is_label_tie`),
    and the share of ties among the pairs drawn to get them."""
    drawn = config.n_pairs
    while True:
        drawn = 2 * drawn + 16
        rows = generate_pairs(replace(config, n_pairs=drawn))
        ties = [is_label_tie(r) for r in rows]
        kept = [r for r, tie in zip(rows, ties) if not tie]
        if len(kept) >= config.n_pairs:
            untied_positions = [i for i, tie in enumerate(ties) if not tie]
            used = ties[: untied_positions[config.n_pairs - 1] + 1] if config.n_pairs else []
            return kept[: config.n_pairs], (sum(used) / len(used) if used else 0.0)


def corpus_texts(config: TaskConfig) -> list[str]:
    """Texts to train a tokenizer on: every pair's full texts, then the whole vocabulary once."""
    texts = []
    for record in generate_pairs(config):
        texts.append(f"{record['prompt']} {record['chosen']}")
        texts.append(f"{record['prompt']} {record['rejected']}")
    texts.append(" ".join(VOCABULARY))
    return texts


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def token_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC-AUC of ``scores`` for binary ``labels`` (1 = positive), ties counted half.

    Mann-Whitney U from average ranks, O(n log n). ``nan`` if either class is empty.
    """
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    positive = y.astype(bool)
    n_pos = int(positive.sum())
    n_neg = int(s.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: ranks before it plus the middle of its block.
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse.ravel()][positive].sum())
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)
