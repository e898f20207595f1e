"""The real-model sentiment study (``tisdpo demo --real-study``): VADER's gold reward, the token oracle, the
pair labelling, the missing-package message, and a miniature study end to end on a tiny chat model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tests.conftest import read_jsonl, run_cli
from tisdpo.demo.sentiment import task, vader
from tisdpo.demo.sentiment.oracle import completion_token_rewards, spread_over_tokens
from tisdpo.demo.sentiment.vader import Word, word_attributions
from tisdpo.demo.study.layout import finished_results
from tisdpo.errors import UserError

vader_module = pytest.importorskip("vaderSentiment.vaderSentiment")


def test_gold_reward_is_vader_compound_with_the_direction_sign():
    reference = vader_module.SentimentIntensityAnalyzer()
    texts = ["The food was great and the staff were lovely!", "Awful service. I hated it.", "It is a chair."]
    expected = [reference.polarity_scores(t)["compound"] for t in texts]
    assert expected[0] > 0.5 and expected[1] < -0.5 and expected[2] == 0.0
    assert vader.gold_rewards(texts, "positive") == expected
    assert vader.gold_rewards(texts, "negative") == [-v for v in expected]
    assert vader.negative_reward(["p"] * 3, texts) == [-v for v in expected]
    with pytest.raises(UserError, match="direction"):
        vader.gold_rewards(texts, "sideways")


def test_rule_attributions_sum_to_vaders_own_score():
    """The `rules` valences are VADER's per-word terms: with the punctuation emphasis they give its compound."""
    analyzer = vader.analyzer()
    for text in (
        "The food was not good, but the staff were VERY kind!",
        "I hate it \N{GRINNING FACE} really",
        "kind of great",
        "Terrible, terrible, terrible.",
    ):
        total = sum(w.valence for w in word_attributions(text, "rules"))
        emphasis = analyzer._punctuation_emphasis(text)
        total += emphasis if total > 0 else -emphasis if total < 0 else 0.0
        assert round(vader_module.normalize(total), 4) == vader.compound(text)


def test_rules_follow_negation_and_but_where_the_lexicon_does_not():
    text = "The food was not good, but the staff were kind"
    rules = {text[w.start : w.end]: w.valence for w in word_attributions(text, "rules")}
    lexicon = {text[w.start : w.end]: w.valence for w in word_attributions(text, "lexicon")}
    assert lexicon["good,"] == pytest.approx(1.9) and rules["good,"] < 0  # negated, then halved before "but"
    assert rules["kind"] == pytest.approx(1.5 * lexicon["kind"])  # after "but": 1.5x
    assert lexicon["food"] == 0.0 and rules["food"] == 0.0  # outside the lexicon
    spans = [(w.start, w.end) for w in word_attributions("  two  words ")]
    assert spans == [(2, 5), (7, 12)]


def test_a_word_valence_is_shared_by_its_tokens_and_punctuation_only_tokens_get_nothing():
    words = [Word(0, 5, 3.0), Word(6, 9, 0.0), Word(10, 14, -2.0)]  # "great din nice" style spans
    offsets = [(0, 2), (2, 5), (5, 6), (6, 9), (10, 14), (14, 15), (15, 15)]
    rewards = spread_over_tokens(words, offsets)
    assert rewards == [1.5, 1.5, 0.0, 0.0, -2.0, 0.0, 0.0]
    assert sum(rewards) == pytest.approx(1.0)


def test_completion_token_rewards_on_a_real_tokenizer(tiny_model_dir):
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.modeling import load_tokenizer

    pair_tokenizer = PairTokenizer(load_tokenizer(tiny_model_dir), 256, 128)
    chosen, rejected = "Wonderful!! A truly delightful xqzv place.", "Horrible place, sadly."
    row = {
        "prompt": [{"role": "user", "content": "Review it."}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }
    tokenized = pair_tokenizer.tokenize(row)
    rewards = completion_token_rewards(pair_tokenizer, row, "positive", "lexicon")
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        values, ids = rewards[f"{side}_token_rewards"], getattr(tokenized, f"{side}_ids")
        assert len(values) == len(ids)
        expected_total = sum(w.valence for w in word_attributions(text, "lexicon"))
        assert sum(values) == pytest.approx(expected_total)
        structural = getattr(tokenized, f"{side}_structural")
        assert structural and all(values[p] == 0.0 for p in structural)
    chosen_values = rewards["chosen_token_rewards"]
    # "delightful" is several tokens of this small vocabulary: they share its valence equally.
    pieces = pair_tokenizer.tokenizer.convert_ids_to_tokens(tokenized.chosen_ids)
    assert sum(1 for v in chosen_values if v > 0) > 2, pieces
    negative = completion_token_rewards(pair_tokenizer, row, "negative", "lexicon")["chosen_token_rewards"]
    assert negative == [-v for v in chosen_values]


def records(golds: list[tuple[float, float]]) -> list[dict]:
    return [
        {"pair_id": i, "prompt": f"p{i}", "response_a": f"a{i}", "response_b": f"b{i}", "gold_a": a, "gold_b": b}
        for i, (a, b) in enumerate(golds)
    ]


def test_labels_follow_bradley_terry_and_drop_exact_ties():
    assert task.a_chosen_probability(0.3, 0.1, 0.1) == pytest.approx(1 / (1 + math.exp(-2)))
    golds = [(0.6, 0.2)] * 2000 + [(0.5, 0.5)] * 10
    rows, stats = task.label_pairs(records(golds), 0.2, seed=3)
    assert stats["pairs"] == 2000 and stats["dropped_ties"] == 10
    expected_flips = 1 - task.a_chosen_probability(0.6, 0.2, 0.2)  # 0.119
    assert abs(stats["flipped_share"] - expected_flips) < 0.03  # 2000 draws: sd 0.007
    again, _ = task.label_pairs(records(golds), 0.2, seed=3)
    other, _ = task.label_pairs(records(golds), 0.2, seed=4)
    assert again == rows and other != rows
    for row in rows[:50]:
        winner = "a" if row["a_chosen"] else "b"
        assert row["chosen"][0]["content"] == f"{winner}{row['pair_id']}"
        assert row["chosen_gold"] == (0.6 if row["a_chosen"] else 0.2)


def test_swap_sides_exchanges_every_side_column():
    row = {"pair_id": 1, "a_chosen": True, "chosen": 1, "rejected": 2, "chosen_token_ids": [3], "rejected_weights": [4]}
    assert task.swap_sides(row) == {
        "pair_id": 1,
        "a_chosen": False,
        "rejected": 1,
        "chosen": 2,
        "rejected_token_ids": [3],
        "chosen_weights": [4],
    }


def test_a_missing_vader_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    vader.analyzer.cache_clear()
    try:
        with pytest.raises(UserError, match="pip install vaderSentiment"):
            vader.analyzer()
        assert run_cli("demo", "--real-study", "--quick", "--output_dir", tmp_path / "out") != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pip install vaderSentiment" in err[0]
    finally:
        vader.analyzer.cache_clear()


def test_nothing_else_imports_vader():
    import subprocess

    code = (
        "import sys, tisdpo, tisdpo.api, tisdpo.demo.sentiment.study, tisdpo.demo.sentiment.report;"
        "print('vaderSentiment' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.fixture(scope="module")
def mini_study(tiny_model_dir, tmp_path_factory) -> Path:
    """A miniature study on the tiny chat model: every step of the real one, in about a minute."""
    root = tmp_path_factory.mktemp("real-study")
    config = root / "mini.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\n"
        "direction: positive\nn_train_prompts: 48\nn_eval_prompts: 16\neval_prompts: 8\nmax_new_tokens: 8\n"
        "sample_batch_size: 16\nseeds: [0, 1]\nbetas: [0.1]\nworkers: 1\n"
        "train: {learning_rate: 0.01, per_device_train_batch_size: 2, num_train_epochs: 1, save_steps: 2,"
        " lr_scheduler_type: constant, use_peft: false}\n",
        encoding="utf-8",
    )
    out = root / "out"
    assert run_cli("demo", "--real-study", "--study_config", config, "--output_dir", out) == 0
    return out


def test_the_miniature_study_writes_every_product(mini_study):
    study = json.loads((mini_study / "study.json").read_text(encoding="utf-8"))
    arms = study["comparison"]["arms"]
    assert set(arms) == {"dpo", "tisdpo_oracle", "tisdpo_D", "tisdpo_P", "tisdpo_random"}
    assert all(arms[a]["seeds"] == [0, 1] for a in arms)
    assert set(study["weight_quality"]) == {"D", "P"}
    assert set(study["oracle_ranking"]) == {"rules", "lexicon"}
    assert (mini_study / "frontier.png").stat().st_size > 0
    text = (mini_study / "study.md").read_text(encoding="utf-8")
    assert "tisdpo_oracle minus DPO" in text and "length (tokens)" in text and "Within DPO's KL range" in text
    inside = study["comparison"]["within_dpo_range"]
    dpo_reach = arms["dpo"]["max_kl"]["mean"]
    assert inside["kl_levels"][-1] == pytest.approx(dpo_reach, abs=1e-3)  # 2 seeds: median reach = mean reach
    assert inside["kl_levels"][-1] <= max(study["comparison"]["kl_levels"])
    assert set(inside["arms"]) == set(arms)


def test_samples_hold_vaders_score_of_each_response(mini_study):
    reference = vader_module.SentimentIntensityAnalyzer()
    samples = read_jsonl(mini_study / "samples.jsonl")
    points = [len(r["points"]) for r in finished_results(str(mini_study / "arms"))]
    assert len(points) == 5 * 2 and min(points) >= 2  # every run: a checkpoint and its final model
    assert len(samples) == 8 * (2 + sum(points))  # 8 prompts: the start (2 seeds) and every evaluated point
    assert {s["arm"] for s in samples} == {"start", "dpo", "tisdpo_oracle", "tisdpo_D", "tisdpo_P", "tisdpo_random"}
    for sample in samples:
        assert sample["gold_reward"] == reference.polarity_scores(sample["response"])["compound"]


def test_each_seed_trains_on_its_own_labels(mini_study):
    orientation = {row["pair_id"]: row for row in read_jsonl(mini_study / "models" / "weights_P" / "weights.jsonl")}
    for seed in (0, 1):
        labelled = read_jsonl(mini_study / "task" / f"s{seed}" / "train.jsonl")
        for source in ("P", "oracle", "random"):
            rows = read_jsonl(mini_study / "weights" / f"s{seed}" / f"{source}.jsonl")
            assert [r["pair_id"] for r in rows] == [r["pair_id"] for r in labelled]
            for row, label in zip(rows, labelled):
                scored = orientation[row["pair_id"]]
                side = "chosen" if label["a_chosen"] else "rejected"
                assert row["chosen_token_ids"] == scored[f"{side}_token_ids"]
                assert row["chosen"] == label["chosen"]
                structural = row["chosen_structural_positions"]
                assert structural and all(row["chosen_weights"][p] == 1.0 for p in structural)


def test_a_second_run_redoes_nothing(mini_study, tiny_model_dir, capsys):
    config = mini_study.parent / "mini.yaml"
    assert run_cli("demo", "--real-study", "--study_config", config, "--output_dir", mini_study) == 0
    out = capsys.readouterr().out
    assert "arms: 10 of 10 units finished earlier" in out and "sampling" not in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("direction: up\n", "field 'direction': must be one of positive, negative, got 'up'"),
        ("bogus: 1\n", "unknown study key 'bogus'"),
        ("eval_prompts: 300\n", "field 'eval_prompts': must be at most n_eval_prompts=256, got 300"),
        ("attribution: loo\n", "field 'attribution': must be one of rules, lexicon, got 'loo'"),
        ("train: {lora_r: -1}\n", "field 'train.lora_r': must be >= 1 (got -1)"),
        ("sources: [oracle, Q]\n", "unknown weight source 'Q'"),
    ],
)
def test_bad_study_settings_stop_with_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text, encoding="utf-8")
    assert run_cli("demo", "--real-study", "--dry_run", "--study_config", config, "--output_dir", tmp_path) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(config) in err[0]
