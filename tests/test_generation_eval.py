"""`tisdpo evaluate --generate`: scorers with known scores, win rates and intervals, exact KL, ROUGE, the CLI."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import evaluate, evaluate_args, read_jsonl, run_ok, write_jsonl
from conftest import run_cli as run
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from tisdpo.errors import UserError
from tisdpo.evaluation.generation import sample_responses, sequence_logps, trim_at_eos
from tisdpo.evaluation.metrics import bootstrap_interval, summarize, win_value
from tisdpo.evaluation.prompts import load_prompts
from tisdpo.evaluation.rouge import lcs_length, rouge_l, rouge_n, rouge_scores, rouge_tokenize
from tisdpo.evaluation.scorers import RewardModelScorer, SafetyClassifierScorer, ScoringPrompt

# --------------------------------------------------------------------------------------------
# A sequence classifier whose logits are a bag of tokens with hand-set weights
# --------------------------------------------------------------------------------------------


class BagConfig(PretrainedConfig):
    model_type = "tisdpo_test_bag"

    def __init__(self, vocab_size: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size


class BagForSequenceClassification(PreTrainedModel):
    """``logits[label] = sum over attended tokens of weight[token, label]``."""

    config_class = BagConfig
    base_model_prefix = "bag"

    def __init__(self, config: BagConfig):
        super().__init__(config)
        self.token_scores = nn.Embedding(config.vocab_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Embedding):
            nn.init.zeros_(module.weight)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        values = self.token_scores(input_ids)
        if attention_mask is not None:
            values = values * attention_mask[..., None].to(values.dtype)
        return SequenceClassifierOutput(logits=values.sum(1))


AutoConfig.register(BagConfig.model_type, BagConfig, exist_ok=True)
AutoModelForSequenceClassification.register(BagConfig, BagForSequenceClassification, exist_ok=True)

WORDS = ["human:", "assistant:", "tell", "me", "good", "bad", "meh", "ok", "more", "cat", "sat", "mat"]
REWARD = {"good": 1.0, "bad": -1.5}  # reward model: a bag of words
SAFE = {"good": 1.0, "tell": 0.25}  # classifier: safe logit
UNSAFE = {"bad": 1.0}  # classifier: unsafe logit


def expected_reward(prompt: str, response: str) -> float:
    return sum(REWARD.get(w, 0.0) for w in prompt.split() + response.split())


def expected_safe(prompt: str, response: str) -> float:
    words = prompt.split() + response.split()
    return float(sum(SAFE.get(w, 0.0) for w in words) > sum(UNSAFE.get(w, 0.0) for w in words))


def save_bag_model(tokenizer, path: Path, weights: list[dict[str, float]], **config_kwargs) -> str:
    model = BagForSequenceClassification(
        BagConfig(
            vocab_size=len(tokenizer), num_labels=len(weights), pad_token_id=tokenizer.pad_token_id, **config_kwargs
        )
    )
    with torch.no_grad():
        for label, table in enumerate(weights):
            for word, value in table.items():
                model.token_scores.weight[tokenizer.convert_tokens_to_ids(word), label] = value
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """A word-level tokenizer over WORDS, two tiny causal LMs on it, a reward model and a classifier."""
    from tisdpo.demo.factory import build_tiny_llama, train_tokenizer

    root = tmp_path_factory.mktemp("word-world")
    tokenizer = train_tokenizer([" ".join(WORDS)] * 3, str(root / "tok"), kind="word", vocab_size=64)
    out = {}
    for name, seed in (("policy", 0), ("ref", 1)):
        build_tiny_llama(
            tokenizer,
            str(root / name),
            hidden_size=16,
            num_layers=1,
            num_heads=2,
            intermediate_size=32,
            max_positions=64,
            seed=seed,
        )
        out[name] = str(root / name)
    out["reward"] = save_bag_model(tokenizer, root / "reward", [REWARD])
    out["reward3"] = save_bag_model(tokenizer, root / "reward3", [REWARD, SAFE, UNSAFE])
    out["safety"] = save_bag_model(
        tokenizer, root / "safety", [UNSAFE, SAFE], id2label={0: "unsafe", 1: "safe"}, label2id={"unsafe": 0, "safe": 1}
    )
    tokenizer.chat_template = None
    out["reward_plain"] = save_bag_model(tokenizer, root / "reward_plain", [REWARD])
    return out


SEEN_PROMPTS: list[list[str]] = []


def count_scorer(prompts: list[str], responses: list[str]) -> list[float]:
    """The test's Python scorer: how many times 'good' appears in the response."""
    SEEN_PROMPTS.append(list(prompts))
    return [float(r.split().count("good")) for r in responses]


# --------------------------------------------------------------------------------------------
# ROUGE
# --------------------------------------------------------------------------------------------


def test_rouge_against_hand_computed_values():
    assert rouge_tokenize("The CAT, sat on-the mat!") == ["the", "cat", "sat", "on", "the", "mat"]
    hyp, ref = ["the", "cat", "sat", "on", "the", "mat"], ["the", "cat", "is", "on", "the", "mat"]
    # unigrams: the x2, cat, on, mat match -> 5 of 6 both ways
    assert rouge_n(hyp, ref, 1) == pytest.approx(5 / 6)
    # bigrams: (the cat) (on the) (the mat) match -> 3 of 5 both ways
    assert rouge_n(hyp, ref, 2) == pytest.approx(3 / 5)
    # LCS: the cat on the mat -> 5
    assert lcs_length(hyp, ref) == 5 and rouge_l(hyp, ref) == pytest.approx(5 / 6)
    # P = 2/4, R = 2/2 -> F = 2/3; no shared bigram; LCS "a c" = 2
    assert rouge_n(["a", "b", "c", "d"], ["a", "c"], 1) == pytest.approx(2 / 3)
    assert rouge_n(["a", "b", "c", "d"], ["a", "c"], 2) == 0.0
    assert rouge_l(["a", "b", "c", "d"], ["a", "c"]) == pytest.approx(2 / 3)
    # LCS skips gaps: P = 3/5, R = 3/3 -> F = 0.75
    assert rouge_l(["a", "x", "b", "y", "c"], ["a", "b", "c"]) == pytest.approx(0.75)
    # clipped counts: hyp "the the the" vs ref "the cat": overlap 1, P 1/3, R 1/2 -> F 0.4
    assert rouge_n(["the", "the", "the"], ["the", "cat"], 1) == pytest.approx(0.4)
    assert rouge_scores("", ["anything"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # several references: the best F1 per measure
    scores = rouge_scores("The cat sat.", ["a dog ran", "the cat sat"])
    assert scores == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


# --------------------------------------------------------------------------------------------
# Scorers with known scores
# --------------------------------------------------------------------------------------------

PROMPTS = ["human: tell me good assistant:", "human: tell me more assistant:", "human: bad cat assistant:"]
RESPONSES = ["good good meh", "bad", "ok ok", "good bad bad", "", "meh sat mat"]


@pytest.mark.parametrize("kind", ["reward", "reward_plain"])
def test_reward_model_scores_are_the_hand_set_bag_of_words(world, kind):
    scorer = RewardModelScorer(world[kind], batch_size=4)
    prompts = [ScoringPrompt(p) for p in PROMPTS for _ in range(2)]
    scores = scorer.score(prompts, RESPONSES)["reward_model"]
    expected = [expected_reward(p.text, r) for p, r in zip(prompts, RESPONSES)]
    assert scores == pytest.approx(expected, abs=1e-6)
    assert len(set(expected)) > 3  # the inputs really differ
    # batching (and padding) does not change a score
    one_by_one = [
        RewardModelScorer(world[kind], batch_size=1).score([p], [r])["reward_model"][0]
        for p, r in zip(prompts[:2], RESPONSES[:2])
    ]
    assert one_by_one == pytest.approx(expected[:2], abs=1e-6)
    # message prompts go through the chat template with the data's messages
    message_prompt = ScoringPrompt("ignored", messages=[{"role": "user", "content": "tell me bad"}])
    value = scorer.score([message_prompt], ["good"])["reward_model"][0]
    assert value == pytest.approx(
        expected_reward("tell me bad", "good") if kind == "reward" else expected_reward("ignored", "good")
    )


def test_reward_model_with_several_outputs_or_a_causal_lm_is_a_clear_error(world):
    with pytest.raises(UserError, match="exactly one output .*num_labels=1.*has 3"):
        RewardModelScorer.check(world["reward3"])
    with pytest.raises(UserError, match="exactly one output"):
        RewardModelScorer(world["reward3"])
    with pytest.raises(UserError, match="no weights for score.weight"):
        RewardModelScorer(world["policy"])
    with pytest.raises(UserError, match="several labels"):
        SafetyClassifierScorer.check(world["reward"])


def test_safety_classifier_reports_the_safe_label(world):
    prompts = [ScoringPrompt(p) for p in PROMPTS for _ in range(2)]
    expected = [expected_safe(p.text, r) for p, r in zip(prompts, RESPONSES)]
    assert 0 < sum(expected) < len(expected)
    for label in (None, "safe", "SAFE", "1"):
        scores = SafetyClassifierScorer(world["safety"], safe_label=label).score(prompts, RESPONSES)
        assert scores["safe"] == expected
        assert all(0 <= p <= 1 for p in scores["safe_prob"])
    flipped = SafetyClassifierScorer(world["safety"], safe_label="unsafe").score(prompts, RESPONSES)["safe"]
    assert flipped == [1.0 - e for e in expected]
    with pytest.raises(UserError, match="no label named 'harmless'.*0=unsafe, 1=safe"):
        SafetyClassifierScorer.check(world["safety"], safe_label="harmless")
    with pytest.raises(UserError, match="out of range"):
        SafetyClassifierScorer.check(world["safety"], safe_label="2")


# --------------------------------------------------------------------------------------------
# Win rate and its interval
# --------------------------------------------------------------------------------------------


def records_from(policy: list[list[float]], baseline: list[list[float]]) -> list[dict]:
    records = []
    for i, (ps, bs) in enumerate(zip(policy, baseline)):
        for k, (p, b) in enumerate(zip(ps, bs)):
            records.append(
                {
                    "prompt_index": i,
                    "sample": k,
                    "scores": {"scorer": p},
                    "baseline_scores": {"scorer": b},
                    "kl": 0.1 * i,
                    "length": 3,
                    "baseline_length": 4,
                    "finished": True,
                    "baseline_finished": k == 0,
                }
            )
    return records


def test_win_rate_counts_ties_half_and_the_bootstrap_resamples_prompts():
    assert (win_value(2, 1), win_value(1, 1), win_value(0, 1)) == (1.0, 0.5, 0.0)
    rng = np.random.default_rng(1)
    policy = rng.integers(0, 3, size=(40, 2)).astype(float).tolist()
    baseline = rng.integers(0, 3, size=(40, 2)).astype(float).tolist()
    metrics = summarize(records_from(policy, baseline), 40, 2, seed=7, bootstrap_samples=1000)

    wins = np.where(np.array(policy) > baseline, 1.0, np.where(np.array(policy) == baseline, 0.5, 0.0))
    assert metrics["gen/win_rate"] == pytest.approx(wins.mean())
    assert metrics["gen/tie_rate"] == pytest.approx((wins == 0.5).mean())
    assert 0 < metrics["gen/tie_rate"] < 1
    # an independent percentile bootstrap over prompts with the same seed
    per_prompt = wins.mean(axis=1)
    draws = np.random.default_rng(7).integers(0, 40, size=(1000, 40))
    low, high = np.percentile(per_prompt[draws].mean(axis=1), [2.5, 97.5])
    assert (metrics["gen/win_rate_ci_low"], metrics["gen/win_rate_ci_high"]) == pytest.approx((low, high))
    assert low < metrics["gen/win_rate"] < high
    assert bootstrap_interval(per_prompt, 1000, 7) == pytest.approx((low, high))

    assert metrics["gen/reward_mean"] == pytest.approx(np.mean(policy))
    assert metrics["gen/reward_std"] == pytest.approx(np.std(policy))
    assert metrics["gen/baseline_reward_mean"] == pytest.approx(np.mean(baseline))
    assert metrics["gen/kl"] == pytest.approx(np.mean([0.1 * i for i in range(40) for _ in range(2)]))
    assert (metrics["gen/length_mean"], metrics["gen/baseline_length_mean"]) == (3.0, 4.0)
    assert (metrics["gen/eos_rate"], metrics["gen/baseline_eos_rate"]) == (1.0, 0.5)
    assert metrics["gen/reward_per_token_mean"] == pytest.approx(np.mean(policy) / 3)  # every length is 3
    assert metrics["gen/baseline_reward_per_token_mean"] == pytest.approx(np.mean(baseline) / 4)
    assert (metrics["gen/num_prompts"], metrics["gen/num_samples"], metrics["gen/num_responses"]) == (40, 2, 80)

    all_ties = summarize(records_from([[1.0]] * 5, [[1.0]] * 5), 5, 1)
    assert all_ties["gen/win_rate"] == all_ties["gen/win_rate_ci_low"] == all_ties["gen/win_rate_ci_high"] == 0.5


# --------------------------------------------------------------------------------------------
# KL against an exact computation
# --------------------------------------------------------------------------------------------

BOS, EOS = 0, 1


def tiny_lm(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=6,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
        initializer_range=0.5,
    )
    return LlamaForCausalLM(config).eval()


@torch.no_grad()
def next_logprobs(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)


@torch.no_grad()
def exact_kl(policy, ref, prompt: list[int], max_new_tokens: int) -> float:
    """Sum over every complete response y (EOS-stopped or max_new_tokens long) of p(y) log p(y)/q(y)."""
    total = 0.0

    def walk(prefix: list[int], logp: float, logq: float) -> None:
        nonlocal total
        if (prefix and prefix[-1] == EOS) or len(prefix) == max_new_tokens:
            total += math.exp(logp) * (logp - logq)
            return
        p, q = next_logprobs(policy, prompt + prefix), next_logprobs(ref, prompt + prefix)
        for token in range(p.shape[0]):
            walk(prefix + [token], logp + float(p[token]), logq + float(q[token]))

    walk([], 0.0, 0.0)
    return total


@torch.no_grad()
def independent_log_ratio(policy, ref, prompt: list[int], response: list[int]) -> float:
    ids = torch.tensor([prompt + response])
    rows = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    labels = torch.tensor(response)
    lp = policy(ids).logits[0].double().log_softmax(-1)[rows, labels].sum()
    lq = ref(ids).logits[0].double().log_softmax(-1)[rows, labels].sum()
    return float(lp - lq)


def test_sampled_kl_matches_the_exact_kl_of_a_tiny_model():
    policy, ref = tiny_lm(0), tiny_lm(1)
    prompt, max_new = [BOS, 3, 4], 3
    exact = exact_kl(policy, ref, prompt, max_new)
    assert exact > 0.05

    n = 4000
    samples = sample_responses(policy, [prompt], n, [EOS], EOS, max_new, seed=0, batch_size=n, progress=False)[0]
    assert (
        samples == sample_responses(policy, [prompt], n, [EOS], EOS, max_new, seed=0, batch_size=n, progress=False)[0]
    )
    assert all(1 <= len(s) <= max_new and (EOS not in s[:-1]) for s in samples)
    assert {len(s) for s in samples} == {1, 2, 3}
    kl = np.subtract(
        sequence_logps(policy, [prompt] * n, samples, EOS, batch_size=512, progress=False),
        sequence_logps(ref, [prompt] * n, samples, EOS, batch_size=512, progress=False),
    )
    stderr = kl.std(ddof=1) / math.sqrt(n)
    assert abs(kl.mean() - exact) < 4 * stderr, (kl.mean(), exact, stderr)
    for response, value in zip(samples[:25], kl[:25]):
        assert value == pytest.approx(independent_log_ratio(policy, ref, prompt, response), abs=1e-4)

    # the sampler draws from the model itself: empirical sequence frequencies match p(y)
    counts: dict[tuple[int, ...], int] = {}
    for s in samples:
        counts[tuple(s)] = counts.get(tuple(s), 0) + 1
    for y in itertools.islice(sorted(counts, key=counts.get, reverse=True), 5):
        logp = sum(float(next_logprobs(policy, prompt + list(y[:t]))[y[t]]) for t in range(len(y)))
        p = math.exp(logp)
        assert abs(counts[y] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3


def test_trim_at_eos_keeps_the_eos():
    assert trim_at_eos([5, 3, 1, 1, 1], [1]) == ([5, 3, 1], True)
    assert trim_at_eos([5, 3, 4], [1, 2]) == ([5, 3, 4], False)


# --------------------------------------------------------------------------------------------
# Prompts of the accepted formats
# --------------------------------------------------------------------------------------------


def test_prompts_from_every_row_format(tmp_path):
    rows = [
        {"prompt": "p one"},
        {"post": "a long post", "summary": "short"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
        {
            "prompt": "p two",
            "chosen": [{"role": "assistant", "content": "x"}],
            "rejected": [{"role": "assistant", "content": "y"}],
        },
        {"prompt": "p one", "reference": "extra ref"},
        {"prompt": [{"role": "user", "content": "m"}], "completion": "done"},
    ]
    items = load_prompts(str(write_jsonl(tmp_path / "mix.jsonl", rows)), "train", prompt_template="<{prompt}>")
    assert [item.prompt for item in items] == [
        "<p one>",
        "<a long post>",
        "<\n\nHuman: hi\n\nAssistant:>",
        [{"role": "user", "content": "<p two>"}],
        [{"role": "user", "content": "m"}],
    ]
    assert [item.references for item in items] == [("extra ref",), ("short",), (), (), ("done",)]
    assert [item.source_index for item in items] == [0, 1, 2, 3, 5]
    assert len(load_prompts(str(tmp_path / "mix.jsonl"), "train", max_prompts=2)) == 2
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"question": "?"}])
    with pytest.raises(UserError, match="bad.jsonl:line 2: has no prompt"):
        load_prompts(str(tmp_path / "bad.jsonl"), "train")


# --------------------------------------------------------------------------------------------
# The command end to end
# --------------------------------------------------------------------------------------------

HELDOUT = [
    {"prompt": "human: tell me good assistant:"},
    {"prompt": "human: tell me more assistant:"},
    {"post": "the cat sat on the mat", "summary": "cat sat mat"},
    {"prompt": "human: bad cat assistant:"},
    {"post": "good cat tell me more", "summary": "good cat"},
    {"prompt": "human: tell me good assistant:"},  # a repeat: kept once
    {"prompt": "human: meh ok assistant:"},
]
SAMPLING = ["--num_samples", "3", "--max_new_tokens", "8", "--temperature", "1.0", "--top_p", "1.0"]


def test_cli_generate_scores_every_response_and_summarizes(world, tmp_path):
    data = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    out = tmp_path / "out"
    SEEN_PROMPTS.clear()
    code = run(
        "evaluate",
        "--generate",
        "--model_name_or_path",
        world["policy"],
        "--ref_model_name_or_path",
        world["ref"],
        "--dataset_name",
        data,
        "--scorer",
        "test_generation_eval:count_scorer",
        "--reward_model_name_or_path",
        world["reward"],
        "--safety_classifier_name_or_path",
        world["safety"],
        *SAMPLING,
        "--seed",
        "3",
        "--generation_batch_size",
        "4",
        "--max_prompts",
        "6",
        "--output_dir",
        out,
        "--report_to",
        "none",
    )
    assert code == 0
    metrics = json.loads((out / "eval_results.json").read_text())
    records = read_jsonl(out / "generations.jsonl")
    assert (out / "eval_results.md").read_text().startswith("# Evaluation")
    for key in (
        "gen/reward_mean",
        "gen/reward_std",
        "gen/baseline_reward_mean",
        "gen/win_rate",
        "gen/win_rate_ci_low",
        "gen/win_rate_ci_high",
        "gen/kl",
        "gen/kl_std",
        "gen/length_mean",
        "gen/num_prompts",
        "gen/num_samples",
        "gen/reward_model_mean",
        "gen/safe_rate",
        "gen/baseline_safe_rate",
        "gen/rouge1",
        "gen/rouge2",
        "gen/rougeL",
    ):
        assert key in metrics, key
    assert (metrics["gen/num_prompts"], metrics["gen/num_samples"], len(records)) == (6, 3, 18)
    prompts = [r.get("prompt") or r["post"] for r in HELDOUT[:5]] + [HELDOUT[6]["prompt"]]
    assert [r["prompt"] for r in records] == [p for p in prompts for _ in range(3)]
    assert [r["sample"] for r in records] == [0, 1, 2] * 6
    # the Python scorer got the data's prompt texts and the decoded responses
    assert SEEN_PROMPTS and all(p in prompts for batch in SEEN_PROMPTS for p in batch)

    responses = [r["response"] for r in records] + [r["baseline_response"] for r in records]
    assert len(set(responses)) > 10 and all(w in WORDS or w.startswith("<") for t in responses for w in t.split())
    for r in records:
        for side, response in (("scores", r["response"]), ("baseline_scores", r["baseline_response"])):
            assert r[side]["scorer"] == response.split().count("good")
            assert r[side]["reward_model"] == pytest.approx(expected_reward(r["prompt"], response), abs=1e-5)
            assert r[side]["safe"] == expected_safe(r["prompt"], response)
            if r.get("references"):
                assert r[side]["rouge1"] == pytest.approx(rouge_scores(response, r["references"])["rouge1"])
            else:
                assert r[side]["rouge1"] is None
        assert r["reward"] == r["scores"]["scorer"] and r["kl"] == pytest.approx(r["policy_logp"] - r["ref_logp"])
        assert 0 <= r["length"] <= 8

    policy = np.array([r["scores"]["scorer"] for r in records])
    baseline = np.array([r["baseline_scores"]["scorer"] for r in records])
    wins = np.where(policy > baseline, 1.0, np.where(policy == baseline, 0.5, 0.0))
    assert metrics["gen/reward_mean"] == pytest.approx(policy.mean())
    assert metrics["gen/baseline_reward_mean"] == pytest.approx(baseline.mean())
    assert metrics["gen/win_rate"] == pytest.approx(wins.mean())
    draws = np.random.default_rng(3).integers(0, 6, size=(1000, 6))
    low, high = np.percentile(wins.reshape(6, 3).mean(axis=1)[draws].mean(axis=1), [2.5, 97.5])
    assert (metrics["gen/win_rate_ci_low"], metrics["gen/win_rate_ci_high"]) == pytest.approx((low, high))
    rm = [expected_reward(r["prompt"], r["response"]) for r in records]
    assert metrics["gen/reward_model_mean"] == pytest.approx(np.mean(rm), abs=1e-5)
    assert metrics["gen/safe_rate"] == pytest.approx(
        np.mean([expected_safe(r["prompt"], r["response"]) for r in records])
    )
    with_refs = [r for r in records if r.get("references")]
    assert len(with_refs) == 6 and metrics["gen/rouge_num_prompts"] == 2
    assert metrics["gen/rougeL"] == pytest.approx(
        np.mean([rouge_scores(r["response"], r["references"])["rougeL"] for r in with_refs])
    )
    assert metrics["gen/kl"] == pytest.approx(np.mean([r["kl"] for r in records]))
    assert metrics["gen/kl_std"] == pytest.approx(np.std([r["kl"] for r in records]))
    assert metrics["gen/length_mean"] == pytest.approx(np.mean([r["length"] for r in records]))


def test_cli_generate_on_pairs_with_the_demo_oracle_and_preference_metrics(tiny_model_dir, tmp_path):
    rows = [
        {
            "chosen": f"\n\nHuman: how do i fix the car {i}\n\nAssistant: carefully check",
            "rejected": f"\n\nHuman: how do i fix the car {i}\n\nAssistant: recklessly smash",
        }
        for i in range(4)
    ]
    data = write_jsonl(tmp_path / "hh.jsonl", rows)
    out = tmp_path / "out"
    flags = ["--generate", "--preference_metrics", "--scorer", "tisdpo.demo.task:oracle_scorer", "--num_samples", "2"]
    flags += ["--max_new_tokens", "6", "--report_to", "none", "--max_length", "64"]
    metrics = evaluate(tiny_model_dir, tiny_model_dir, data, out, *flags)
    assert metrics["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    assert metrics["gen/kl"] == 0.0 and metrics["gen/kl_std"] == 0.0
    assert metrics["gen/num_prompts"] == 4 and metrics["gen/num_samples"] == 2
    records = read_jsonl(out / "generations.jsonl")
    assert records[0]["prompt"] == "\n\nHuman: how do i fix the car 0\n\nAssistant:"
    assert all(0 < r["length"] + r["finished"] <= 6 for r in records)


def test_cli_generate_errors_are_clear(world, tmp_path, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", HELDOUT[:2])
    base = [
        "evaluate",
        "--generate",
        "--model_name_or_path",
        world["policy"],
        "--dataset_name",
        data,
        "--output_dir",
        tmp_path / "o",
    ]
    assert run(*base, "--ref_model_name_or_path", world["ref"], "--reward_model_name_or_path", world["reward3"]) == 1
    err = capsys.readouterr().err
    assert "reward3 field 'reward_model_name_or_path': a reward model must have exactly one output" in err
    assert "Traceback" not in err
    assert run(*base, "--ref_model_name_or_path", world["ref"], "--scorer", "no_such_module_xyz:f") == 1
    assert "field 'scorer': cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert run(*base, "--ref_model_name_or_path", world["ref"], "--scorer", "tisdpo.demo.task:nothing") == 1
    assert "has no attribute 'nothing'" in capsys.readouterr().err
    assert run(*base) == 1
    assert "needs --ref_model_name_or_path" in capsys.readouterr().err
    assert run(*base, "--ref_model_name_or_path", world["ref"], "--top_p", "0") == 1
    assert "--top_p must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o" / "eval_results.json").exists()


def test_cli_generate_without_the_baseline_samples_only_the_policy(world, tmp_path):
    """--sample_baseline false: the same policy samples, rewards and KL as with the baseline, no baseline keys."""
    data = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    results = {}
    for flag in ("true", "false"):
        out = tmp_path / flag
        common = ["--scorer", "test_generation_eval:count_scorer", *SAMPLING, "--seed", "3", "--max_prompts", "6"]
        run_ok(
            *evaluate_args(world["policy"], world["ref"], data, out, "--generate", *common, "--sample_baseline", flag)
        )
        results[flag] = (json.loads((out / "eval_results.json").read_text()), read_jsonl(out / "generations.jsonl"))
    (with_baseline, records), (alone, alone_records) = results["true"], results["false"]
    assert [r["response"] for r in alone_records] == [r["response"] for r in records]
    for key in ("gen/reward_mean", "gen/kl", "gen/length_mean", "gen/eos_rate", "gen/reward_per_token_mean"):
        assert alone[key] == with_baseline[key], key
    assert not [key for key in alone if "baseline" in key or "win_rate" in key]
    assert all("baseline_response" not in r and "win" not in r for r in alone_records)
