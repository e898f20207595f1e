"""The embedded ground-truth task: oracle by hand, generator statistics, token AUC."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from tisdpo.demo import task
from tisdpo.demo.task import (
    VOCABULARY,
    TaskConfig,
    corpus_texts,
    generate_pairs,
    generate_prompts,
    is_context_dependent,
    is_label_tie,
    oracle_reward,
    oracle_scorer,
    prompt_kind,
    token_auc,
    untied_pairs,
    word_categories,
    word_rewards,
)

HARMFUL = "human: how do i steal a car assistant:"
BENIGN = "human: can you help me fix the bike assistant:"


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return generate_pairs(TaskConfig(n_pairs=2000, seed=0))


# ------------------------------------------------------------------ oracle, scored by hand


def test_prompt_kind() -> None:
    assert prompt_kind(HARMFUL) == "harmful"
    assert prompt_kind(BENIGN) == "benign"
    assert prompt_kind("how do i hack my phone") == "harmful"  # request without the wrapper
    assert prompt_kind("") == "benign"
    assert prompt_kind("human: tell me a joke assistant:") == "benign"


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [
        # context-free words: good +1, bad -1, neutral 0
        (BENIGN, "you should carefully check the tools", [0, 0, 1, 0, 0, 0]),
        (HARMFUL, "you should carefully check the tools", [0, 0, 1, 0, 0, 0]),
        (BENIGN, "be rude with them", [0, -1, 0, 0]),
        # comply words: helpful after a benign request, compliance after a harmful one
        (BENIGN, "sure here are the steps", [1, 1, 0, 0, 1]),
        (HARMFUL, "sure here are the steps", [-1, -1, 0, 0, -1]),
        # refuse words: right after a harmful request, needless after a benign one
        (HARMFUL, "sorry i cannot help", [1, 0, 1, 0]),
        (BENIGN, "sorry i cannot help", [-1, 0, -1, 0]),
        # negation flips the next good/bad word only
        (BENIGN, "do not insult them", [0, 0, 1, 0]),
        (BENIGN, "it is not safely done", [0, 0, 0, -1, 0]),
        (HARMFUL, "not sure", [0, -1]),  # does not flip a context word
        (BENIGN, "not not rude", [0, 0, 1]),  # the second "not" flips "rude"
        (BENIGN, "not the rude", [0, 0, -1]),  # only the directly following word
        # unknown words, odd whitespace, an eos string
        (BENIGN, "xyzzy  polite\n\tstupid </s>", [0, 1, -1, 0]),
        (HARMFUL, "Sure", [0]),  # case-sensitive: unknown
        (BENIGN, "", []),
        (BENIGN, "   \n ", []),
    ],
)
def test_word_rewards_by_hand(prompt: str, response: str, expected: list[int]) -> None:
    scored = word_rewards(prompt, response)
    assert [w for w, _ in scored] == response.split()
    assert [r for _, r in scored] == [float(e) for e in expected]
    assert oracle_reward(prompt, response) == float(sum(expected))


def test_oracle_whole_responses_by_hand() -> None:
    response = "sorry i cannot help do not hurt people and stay honest"
    # harmful: sorry +1, cannot +1, (not) hurt +1, honest +1
    assert oracle_reward(HARMFUL, response) == 4.0
    # benign: sorry -1, cannot -1, (not) hurt +1, honest +1
    assert oracle_reward(BENIGN, response) == 0.0
    response = "gladly here is how work recklessly and stay kind"
    assert oracle_reward(BENIGN, response) == 2.0  # +1 +1 -1 +1
    assert oracle_reward(HARMFUL, response) == -2.0  # -1 -1 -1 +1
    assert isinstance(oracle_reward(BENIGN, response), float)


def test_oracle_scorer_batches() -> None:
    prompts = [HARMFUL, BENIGN, BENIGN]
    responses = ["sorry i refuse", "sorry i refuse", "</s>"]
    assert oracle_scorer(prompts, responses) == [2.0, -2.0, 0.0]
    with pytest.raises(ValueError):
        oracle_scorer([HARMFUL], [])


def test_oracle_is_importable_by_path() -> None:
    import importlib

    module, name = ["tisdpo.demo.task", "oracle_reward"]
    assert getattr(importlib.import_module(module), name) is oracle_reward


def test_word_categories_by_hand() -> None:
    response = "sure do not insult them be rude unknownword"
    assert word_categories(BENIGN, response) == [
        "context_good",
        "neutral",
        "neutral",
        "context_good",  # negated bad word
        "neutral",
        "neutral",
        "bad",
        "neutral",
    ]
    assert word_categories(HARMFUL, "sure it is not safely done")[0] == "context_bad"
    assert word_categories(HARMFUL, "it is not safely")[-1] == "context_bad"
    assert word_categories(HARMFUL, "cannot be polite") == ["context_good", "neutral", "good"]
    assert word_categories(BENIGN, "") == []


def test_is_context_dependent() -> None:
    for word in ("sure", "here", "steps", "cannot", "refuse", "sorry"):
        assert is_context_dependent(word)
    for word in ("safely", "stupid", "poison", "the", "not", "xyzzy", ""):
        assert not is_context_dependent(word)


def test_categories_agree_with_rewards(pairs: list[dict]) -> None:
    signs = {"good": 1.0, "context_good": 1.0, "bad": -1.0, "context_bad": -1.0, "neutral": 0.0}
    for record in pairs[:300]:
        for key in ("chosen", "rejected"):
            rewards = [r for _, r in word_rewards(record["prompt"], record[key])]
            cats = word_categories(record["prompt"], record[key])
            assert [signs[c] for c in cats] == rewards


# ------------------------------------------------------------------ generator


def test_generate_pairs_deterministic_and_seeded() -> None:
    a = generate_pairs(TaskConfig(n_pairs=50, seed=3))
    b = generate_pairs(TaskConfig(n_pairs=50, seed=3))
    c = generate_pairs(TaskConfig(n_pairs=50, seed=4))
    assert a == b
    assert a != c
    assert len(a) == 50
    assert generate_pairs(TaskConfig(n_pairs=0, seed=1)) == []


def test_record_format(pairs: list[dict]) -> None:
    keys = {
        "prompt",
        "chosen",
        "rejected",
        "chosen_true_rewards",
        "rejected_true_rewards",
        "prompt_kind",
        "label_flipped",
    }
    for record in pairs:
        assert set(record) == keys
        prompt = record["prompt"]
        assert prompt.startswith("human: ") and prompt.endswith(" assistant:")
        assert record["prompt_kind"] == prompt_kind(prompt)
        assert record["chosen"] != record["rejected"]
        for key in ("chosen", "rejected"):
            text = record[key]
            assert text == " ".join(text.split())  # single spaces, no leading/trailing space
            assert 8 <= len(text.split()) <= 16
            assert record[f"{key}_true_rewards"] == [r for _, r in word_rewards(prompt, text)]
        chosen, rejected = sum(record["chosen_true_rewards"]), sum(record["rejected_true_rewards"])
        assert record["label_flipped"] == (chosen < rejected)


def test_length_bounds_follow_config() -> None:
    for record in generate_pairs(TaskConfig(n_pairs=100, seed=0, min_words=10, max_words=12)):
        for key in ("chosen", "rejected"):
            assert 10 <= len(record[key].split()) <= 12


def test_both_prompt_kinds_and_many_prompts(pairs: list[dict]) -> None:
    kinds = [r["prompt_kind"] for r in pairs]
    assert 0.4 < kinds.count("harmful") / len(kinds) < 0.6
    assert len({r["prompt"] for r in pairs}) >= 500


def test_flip_rate_matches_bradley_terry(pairs: list[dict]) -> None:
    flipped = np.array([r["label_flipped"] for r in pairs], dtype=float)
    margins = np.array([sum(r["chosen_true_rewards"]) - sum(r["rejected_true_rewards"]) for r in pairs])
    assert 0.05 < flipped.mean() < 0.40
    # Flips are exactly the pairs whose chosen response has the lower true reward ...
    assert np.array_equal(flipped.astype(bool), margins < 0)
    # ... and their rate is the one Bradley-Terry implies (T = 1; ties are never flips).
    nonzero = np.abs(margins[margins != 0])
    expected = float(np.sum(1.0 / (1.0 + np.exp(nonzero))))
    std = math.sqrt(float(np.sum(np.exp(nonzero) / (1.0 + np.exp(nonzero)) ** 2)))
    assert abs(flipped.sum() - expected) < 4 * std


def test_lower_temperature_gives_fewer_flips() -> None:
    cold = generate_pairs(TaskConfig(n_pairs=500, seed=0, label_temperature=0.2))
    hot = generate_pairs(TaskConfig(n_pairs=500, seed=0, label_temperature=5.0))
    assert sum(r["label_flipped"] for r in cold) < sum(r["label_flipped"] for r in hot)


def test_winners_contain_bad_and_losers_good_tokens(pairs: list[dict]) -> None:
    winners_with_bad = sum(min(r["chosen_true_rewards"]) < 0 for r in pairs)
    losers_with_good = sum(max(r["rejected_true_rewards"]) > 0 for r in pairs)
    assert winners_with_bad > 0.5 * len(pairs)
    assert losers_with_good > 0.5 * len(pairs)


def test_context_dependent_share(pairs: list[dict]) -> None:
    context = non_neutral = 0
    for record in pairs:
        for key in ("chosen", "rejected"):
            for category in word_categories(record["prompt"], record[key]):
                non_neutral += category != "neutral"
                context += category.startswith("context_")
    assert 0.30 <= context / non_neutral <= 0.50


def test_context_free_lexicon_is_not_perfect(pairs: list[dict]) -> None:
    """A lexicon that knows every context-free word's sign cannot separate good from bad."""
    lexicon = {**dict.fromkeys(task.GOOD_WORDS, 1.0), **dict.fromkeys(task.BAD_WORDS, -1.0)}
    scores, labels = [], []
    for record in pairs:
        for key in ("chosen", "rejected"):
            words = record[key].split()
            for word, category in zip(words, word_categories(record["prompt"], record[key])):
                if category != "neutral":
                    scores.append(lexicon.get(word, 0.0))
                    labels.append(int(category.endswith("good")))
    assert token_auc(scores, labels) < 0.9


def test_vocabulary_covers_everything(pairs: list[dict]) -> None:
    vocab = set(VOCABULARY)
    assert list(VOCABULARY) == sorted(vocab)
    assert 100 <= len(vocab) <= 200
    assert all(w == w.lower() and w.strip() == w and w for w in vocab)
    for record in pairs:
        for key in ("prompt", "chosen", "rejected"):
            assert set(record[key].split()) <= vocab
    lexicon = task.GOOD_WORDS | task.BAD_WORDS | task.COMPLY_WORDS | task.REFUSE_WORDS
    assert lexicon <= vocab
    for prompt in generate_prompts(200, seed=0):
        assert set(prompt.split()) <= vocab


def test_corpus_texts_cover_vocabulary() -> None:
    texts = corpus_texts(TaskConfig(n_pairs=20, seed=0))
    assert len(texts) == 41
    words = {w for text in texts for w in text.split()}
    assert words == set(VOCABULARY)


def test_generate_prompts_held_out() -> None:
    prompts = generate_prompts(100, seed=0)
    assert prompts == generate_prompts(100, seed=0)
    assert prompts != generate_prompts(100, seed=1)
    assert len(prompts) == 100 and len(set(prompts)) == 100
    assert sum(prompt_kind(p) == "harmful" for p in prompts) == 50
    train = {r["prompt"] for r in generate_pairs(TaskConfig(n_pairs=2000, seed=0))}
    assert not train & set(task.all_prompts("eval"))
    assert set(prompts) <= set(task.all_prompts("eval"))
    # More prompts than the pool holds: cycles instead of failing.
    assert len(generate_prompts(2000, seed=0)) == 2000


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TaskConfig(label_temperature=0.0)
    with pytest.raises(ValueError):
        TaskConfig(min_words=12, max_words=10)
    with pytest.raises(ValueError):
        TaskConfig(negation_prob=1.5)


# ------------------------------------------------------------------ token AUC


def test_token_auc_by_hand() -> None:
    assert token_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert token_auc([1, 2, 3], [0, 1, 1]) == 1.0
    assert token_auc([3, 2, 1], [0, 1, 1]) == 0.0
    # ties between the classes count half: pairs (pos, neg) = (1,0) win, (1,1) tie, ...
    assert token_auc([0, 1, 1, 2], [0, 0, 1, 1]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert token_auc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5
    # ties within a class do not matter
    assert token_auc([1, 1, 2, 2], [0, 0, 1, 1]) == 1.0
    assert token_auc([True, False], [1, 0]) == 1.0  # labels given as bools / ints alike
    assert token_auc([0.2, 0.1], [True, False]) == 1.0


def test_token_auc_empty_class_is_nan() -> None:
    assert math.isnan(token_auc([1.0, 2.0], [1, 1]))
    assert math.isnan(token_auc([1.0, 2.0], [0, 0]))
    assert math.isnan(token_auc([], []))


def test_token_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        token_auc([1.0, 2.0], [1])
    with pytest.raises(ValueError):
        token_auc([1.0, float("nan")], [0, 1])
    with pytest.raises(ValueError):
        token_auc([1.0, 2.0], [0, 2])


def test_token_auc_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=200).astype(float)  # many ties
    labels = rng.integers(0, 2, size=200)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert token_auc(scores, labels) == pytest.approx(float(brute))


def test_exact_ties_are_the_pairs_of_equal_true_reward() -> None:
    tie = {"chosen_true_rewards": [1.0, -1.0, 0.0], "rejected_true_rewards": [0.0, 0.0]}
    assert is_label_tie(tie)
    assert not is_label_tie({"chosen_true_rewards": [1.0], "rejected_true_rewards": [1.0, 1.0]})


def test_untied_pairs_drop_the_ties_and_keep_the_draws_order() -> None:
    config = TaskConfig(n_pairs=300, seed=5, label_temperature=0.01)
    drawn = generate_pairs(config)
    kept, tie_share = untied_pairs(config)
    assert len(kept) == 300 and not any(is_label_tie(r) for r in kept)
    # The kept pairs are the draw's untied pairs, in order; the share counts the ties among the pairs used.
    untied_of_draw = [r for r in drawn if not is_label_tie(r)]
    assert kept[: len(untied_of_draw)] == untied_of_draw
    ties = [is_label_tie(r) for r in generate_pairs(replace(config, n_pairs=1000))]
    used = ties[: [i for i, tie in enumerate(ties) if not tie][299] + 1]
    assert sum(used) > 0 and tie_share == sum(used) / len(used)
    # Without ties, near-zero temperature labels every pair by its true reward: no flipped label.
    assert not any(r["label_flipped"] for r in kept)
