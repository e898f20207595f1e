"""Trainer-level checks, through the command line, of what sets this project apart.

Each test runs ``tisdpo train`` / ``tisdpo evaluate`` / ``tisdpo weights`` on a tiny model and compares what
the trainer logs with an independent computation done here in plain torch: one full forward per sequence,
a full ``log_softmax``, a gather, and the formulas of docs/objectives.md. The policy differs from
the reference (both are noisy copies of the tiny model), so margins and KL terms are far from 0, and each
test also asserts that the plausible regression (a weight applied one token late, the score ignored or not
clamped, the KL in the other direction, the KL term off or its stop-gradient on the wrong side, a stale
reference cache) would give a value far outside the tolerance.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    NO_TQDM,
    QUIET_FLAGS,
    log_history,
    prompt_weights_args,
    read_jsonl,
    toy_pairs,
    train_argv,
    write_jsonl,
)
from conftest import evaluate as evaluate_cli
from conftest import run_cli as run
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tisdpo.data.tokenize import PairTokenizer
from tisdpo.modeling import load_tokenizer
from tisdpo.trainer import PreferenceTrainer

BETA = 0.5
MAX_LENGTH = 64  # QUIET_FLAGS's --max_length
REL = 1e-4  # fp32 trainer against a float64 computation
COMMON = ["--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16", *QUIET_FLAGS]
COMMON += ["--beta", str(BETA), *NO_TQDM]
ONE_FIXED_STEP = ["--learning_rate", "0", "--max_steps", "1", "--logging_steps", "1"]  # the policy stays as it is


def evaluate(policy: str, ref: str, data: str, out: Path, *extra) -> dict:
    return evaluate_cli(policy, ref, data, out, *COMMON, *extra)


def train(policy: str, data: str, out: Path, *extra) -> list[dict]:
    assert run(*train_argv(policy, data, out, *COMMON, *extra)) == 0
    return log_history(out)


def logsig(x: float) -> float:
    return float(F.logsigmoid(torch.tensor(x, dtype=torch.float64)))


def far(value: float, expected: float) -> bool:
    """``value`` is outside the test tolerance around ``expected`` by a wide margin (100x)."""
    return abs(value - expected) > 100 * REL * max(abs(expected), 1e-3)


# -- models and the independent computation ------------------------------------------------------------------
def noisy_copy(source: str, target: Path, seed: int, scale: float) -> str:
    """``source`` with Gaussian noise on every weight (10x on the embeddings and the LM head), saved to ``target``."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            factor = 10.0 if ("lm_head" in name or "embed" in name) else 1.0
            param.add_(torch.randn(param.shape, generator=generator) * scale * factor)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return str(target)


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory) -> tuple[str, str]:
    """(reference, policy): the reference is a noisy copy of the tiny model, the policy a noisy copy of it."""
    root = tmp_path_factory.mktemp("objective-models")
    ref = noisy_copy(tiny_model_dir, root / "ref", seed=1, scale=0.03)
    policy = noisy_copy(ref, root / "policy", seed=2, scale=0.03)
    return ref, policy


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return toy_pairs(6, seed=11)


@dataclass
class Side:
    ids: list[int]  # completion token ids (response + EOS)
    logps: torch.Tensor  # log pi_theta(y_t), float64
    ref_logps: torch.Tensor  # log pi_ref(y_t)
    kl: torch.Tensor  # KL(pi_ref || pi_theta) at each completion position
    reverse_kl: torch.Tensor  # KL(pi_theta || pi_ref), the wrong direction

    @property
    def d(self) -> torch.Tensor:
        return self.logps - self.ref_logps


def pair_tokenizer(model_dir: str) -> PairTokenizer:
    return PairTokenizer(load_tokenizer(model_dir), max_length=MAX_LENGTH)


def completion_distributions(model, prompt: list[int], completion: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each completion token, full log-distribution at each completion position), in float64."""
    ids = prompt + completion
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)[len(prompt) - 1 : len(ids) - 1]
    return logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1), logp


def independent(policy_dir: str, ref_dir: str, pairs: list[dict]) -> list[dict[str, Side]]:
    """Per pair and side: policy and reference token log-probs and per-token KL, each sequence on its own."""
    tokenizer = pair_tokenizer(policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
    out = []
    for row in pairs:
        pair = tokenizer.tokenize(row)
        assert pair.chosen_ids == pair.chosen_full_ids and pair.rejected_ids == pair.rejected_full_ids  # no truncation
        sides = {}
        for side in ("chosen", "rejected"):
            ids = getattr(pair, f"{side}_ids")
            logps, policy_dist = completion_distributions(policy, pair.prompt_ids, ids)
            ref_logps, ref_dist = completion_distributions(ref, pair.prompt_ids, ids)
            kl = (ref_dist.exp() * (ref_dist - policy_dist)).sum(-1)
            reverse_kl = (policy_dist.exp() * (policy_dist - ref_dist)).sum(-1)
            sides[side] = Side(ids, logps, ref_logps, kl, reverse_kl)
        out.append(sides)
    return out


@pytest.fixture(scope="module")
def values(models, rows) -> list[dict[str, Side]]:
    ref, policy = models
    return independent(policy, ref, rows)


def mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs)


# -- TIS-DPO with non-unit weights ----------------------------------------------------------------------------
def position_weights(count: int, pair: int, side: str) -> list[float]:
    """Distinct, position-dependent, non-symmetric weights (all positive): a one-token shift changes every sum."""
    if side == "chosen":
        return [0.2 + 0.45 * ((t + pair) % 5) + 0.01 * t for t in range(count)]
    return [2.0 - 0.35 * ((2 * t + pair) % 6) + 0.013 * t for t in range(count)]


@pytest.fixture(scope="module")
def weights_file(models, rows, values, tmp_path_factory) -> str:
    out = []
    for index, (row, sides) in enumerate(zip(rows, values)):
        row = dict(row)
        for side in ("chosen", "rejected"):
            row[f"{side}_token_ids"] = sides[side].ids
            row[f"{side}_weights"] = position_weights(len(sides[side].ids), index, side)
        out.append(row)
    return str(write_jsonl(tmp_path_factory.mktemp("weights") / "weights.jsonl", out))


def file_weights(path: str) -> list[dict[str, torch.Tensor]]:
    return [
        {side: torch.tensor(row[f"{side}_weights"], dtype=torch.float64) for side in ("chosen", "rejected")}
        for row in read_jsonl(Path(path))
    ]


def shift_late(w: torch.Tensor) -> torch.Tensor:
    """Every weight applied one token late (the first token gets weight 1)."""
    return torch.cat([torch.ones(1, dtype=w.dtype), w[:-1]])


def tisdpo_expected(values, weights, kl_coef: float = 0.0, shift=None, kl_field: str = "kl") -> dict[str, float]:
    losses, chosen, rejected = [], [], []
    for sides, w in zip(values, weights):
        wc, wr = w["chosen"], w["rejected"]
        if shift is not None:
            wc, wr = shift(wc), shift(wr)
        u_c = float((wc * sides["chosen"].d).sum())
        u_r = float((wr * sides["rejected"].d).sum())
        kl_c = float((wc * getattr(sides["chosen"], kl_field)).sum())
        kl_r = float((wr * getattr(sides["rejected"], kl_field)).sum())
        eta = kl_coef * BETA * (kl_r - kl_c)
        losses.append(-logsig(BETA * (u_c - u_r) - eta))
        chosen.append(BETA * u_c)
        rejected.append(BETA * u_r)
    return {
        "eval_loss": mean(losses),
        "eval_weighted_rewards/chosen": mean(chosen),
        "eval_weighted_rewards/rejected": mean(rejected),
        "eval_weighted_rewards/margins": mean(c - r for c, r in zip(chosen, rejected)),
    }


def test_tisdpo_non_unit_weights_match_hand_computation(models, values, weights_file, tmp_path):
    ref, policy = models
    result = evaluate(policy, ref, weights_file, tmp_path / "eval", "--loss_type", "tisdpo")
    weights = file_weights(weights_file)
    expected = tisdpo_expected(values, weights)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=REL), key
    # the unweighted rewards stay unweighted (comparable with DPO runs)
    assert result["eval_rewards/chosen"] == pytest.approx(mean(BETA * s["chosen"].d.sum() for s in values), rel=REL)
    assert result["eval_rewards/rejected"] == pytest.approx(mean(BETA * s["rejected"].d.sum() for s in values), rel=REL)
    for side in ("chosen", "rejected"):  # a token-level mean of the file's weights
        total = sum(float(w[side].sum()) for w in weights)
        count = sum(len(w[side]) for w in weights)
        assert result[f"eval_weights/{side}_mean"] == pytest.approx(total / count, rel=1e-6)

    # A trainer that applies every weight one token late, or ignores the weights, is far off.
    shifted = tisdpo_expected(values, weights, shift=shift_late)
    early = tisdpo_expected(values, weights, shift=lambda w: torch.cat([w[1:], torch.ones(1, dtype=w.dtype)]))
    unit = tisdpo_expected(values, [{k: torch.ones_like(v) for k, v in w.items()} for w in weights])
    for wrong in (shifted, early, unit):
        for key in ("eval_loss", "eval_weighted_rewards/chosen", "eval_weighted_rewards/rejected"):
            assert far(result[key], wrong[key]), (key, result[key], wrong[key])

    # The training step computes the same values (learning rate 0: the policy stays fixed).
    history = train(
        policy,
        weights_file,
        tmp_path / "train",
        "--ref_model_name_or_path",
        ref,
        "--loss_type",
        "tisdpo",
        *ONE_FIXED_STEP,
    )
    step = next(e for e in history if "weighted_rewards/margins" in e)
    for key in ("weighted_rewards/chosen", "weighted_rewards/rejected", "weighted_rewards/margins"):
        assert step[key] == pytest.approx(expected["eval_" + key], rel=REL), key
    assert step["loss"] == pytest.approx(expected["eval_loss"], abs=1e-4)  # transformers rounds the loss it logs


# -- DLMA ------------------------------------------------------------------------------------------------------
def test_dlma_margin_uses_the_clamped_score(models, rows, values, tmp_path):
    ref, policy = models
    scores = [3.0, -7.5, 60.0, -100.0, 0.4, 25.0]  # two beyond the clamp (30)
    gamma, clamp = 0.3, 30.0
    data = write_jsonl(tmp_path / "dlma.jsonl", [dict(row, dlma_score=s) for row, s in zip(rows, scores)])
    result = evaluate(
        policy, ref, data, tmp_path / "eval", "--loss_type", "dlma", "--dlma_gamma", gamma, "--dlma_clamp", clamp
    )
    u = [float(s["chosen"].d.sum() - s["rejected"].d.sum()) for s in values]

    def loss(margins):
        return mean(-logsig(BETA * (x - m)) for x, m in zip(u, margins))

    expected = loss([gamma * max(-clamp, min(clamp, r)) for r in scores])
    assert result["eval_loss"] == pytest.approx(expected, rel=REL)
    assert result["eval_rewards/margins"] == pytest.approx(mean(BETA * x for x in u), rel=REL)
    for wrong in (loss([0.0] * len(u)), loss([gamma * r for r in scores]), loss([-gamma * r for r in scores])):
        assert far(result["eval_loss"], wrong), (result["eval_loss"], wrong)  # ignored, unclamped, wrong sign


# -- TDPO ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["tdpo1", "tdpo2"])
def test_tdpo_kl_direction_and_loss(variant, models, rows, values, tmp_path):
    ref, policy = models
    alpha = 0.7
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = evaluate(policy, ref, data, tmp_path / "eval", "--loss_type", variant, "--tdpo_alpha", alpha)
    for side in ("chosen", "rejected"):
        forward = mean(s[side].kl.sum() for s in values)
        reverse = mean(s[side].reverse_kl.sum() for s in values)
        assert forward > 0.05
        assert result[f"eval_kl/{side}"] == pytest.approx(forward, rel=REL), side
        assert far(result[f"eval_kl/{side}"], reverse), (side, forward, reverse)  # KL(ref||policy), not the reverse

    def loss(kl_field: str) -> float:
        out = []
        for s in values:
            u = float(s["chosen"].d.sum() - s["rejected"].d.sum())
            kl_w, kl_l = float(getattr(s["chosen"], kl_field).sum()), float(getattr(s["rejected"], kl_field).sum())
            delta = kl_l - kl_w if variant == "tdpo1" else alpha * (kl_l - kl_w)
            out.append(-logsig(BETA * (u - delta)))
        return mean(out)

    assert result["eval_loss"] == pytest.approx(loss("kl"), rel=REL)
    assert far(result["eval_loss"], loss("reverse_kl"))


# -- TIS-DPO's KL term -----------------------------------------------------------------------------------------
KL_COEF = 0.8


def test_tisdpo_kl_term_value(models, values, weights_file, tmp_path):
    ref, policy = models
    result = evaluate(
        policy, ref, weights_file, tmp_path / "eval", "--loss_type", "tisdpo", "--tisdpo_kl_coef", KL_COEF
    )
    weights = file_weights(weights_file)
    expected = tisdpo_expected(values, weights, kl_coef=KL_COEF)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=REL), key
    for side in ("chosen", "rejected"):  # the unweighted sequential KL is logged too
        assert result[f"eval_kl/{side}"] == pytest.approx(mean(s[side].kl.sum() for s in values), rel=REL)
    wrong = (
        tisdpo_expected(values, weights),  # the term never used
        tisdpo_expected(values, weights, kl_coef=-KL_COEF),  # the reference code's sign
        tisdpo_expected(values, weights, kl_coef=KL_COEF, kl_field="reverse_kl"),  # KL(policy || ref)
        tisdpo_expected(values, weights, kl_coef=KL_COEF, shift=lambda w: torch.ones_like(w)),  # unweighted KL
    )
    for other in wrong:
        assert far(result["eval_loss"], other["eval_loss"]), (result["eval_loss"], other["eval_loss"])


def tokenized(model_dir: str, pairs: list[dict]) -> list[tuple[list[int], list[int], list[int]]]:
    tokenizer = pair_tokenizer(model_dir)
    return [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in map(tokenizer.tokenize, pairs)]


def kl_term_gradient(
    policy_dir: str, ref_dir: str, pairs, weights, kl_coef: float, stopgrad: str | None = "chosen", reverse=False
) -> dict[str, torch.Tensor]:
    """Gradient of the mean TIS-DPO loss with its KL term, by autograd on a float64 copy of the policy."""
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float64)
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float64).eval()
    total = torch.zeros((), dtype=torch.float64)
    for (prompt, *completions), w in zip(tokenized(policy_dir, pairs), weights):
        u, kl = {}, {}
        for side, completion in zip(("chosen", "rejected"), completions):
            ids = torch.tensor([prompt + completion])
            positions = slice(len(prompt) - 1, len(prompt) + len(completion) - 1)
            logp = torch.log_softmax(policy(ids).logits[0, positions], -1)
            with torch.no_grad():
                ref_logp = torch.log_softmax(ref(ids).logits[0, positions], -1)
            labels = torch.tensor(completion)[:, None]
            d = (logp.gather(-1, labels) - ref_logp.gather(-1, labels)).squeeze(-1)
            if reverse:
                token_kl = (logp.exp() * (logp - ref_logp)).sum(-1)
            else:
                token_kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
            u[side] = (w[side] * d).sum()
            kl[side] = (w[side] * token_kl).sum()
            if side == stopgrad:
                kl[side] = kl[side].detach()
        eta = kl_coef * BETA * (kl["rejected"] - kl["chosen"])
        total = total - F.logsigmoid(BETA * (u["chosen"] - u["rejected"]) - eta)
    (total / len(pairs)).backward()
    return {name: p.grad.detach().clone() for name, p in policy.named_parameters()}


def weighted_rejected_kl(policy_dir: str, ref_dir: str, pairs, weights) -> float:
    """Mean over pairs of SeqKL_w(y_l) = sum_t w_t KL(pi_ref || pi_theta)_t."""
    return mean(
        (w["rejected"] * s["rejected"].kl).sum() for s, w in zip(independent(policy_dir, ref_dir, pairs), weights)
    )


def test_tisdpo_kl_term_gradient_one_sgd_step(models, rows, weights_file, tmp_path):
    """One plain SGD step with the KL term moves the policy by exactly -lr * gradient of docs/objectives.md's formula
    (stop-gradient on the chosen side, KL(ref || policy)), and lowers the losing response's weighted KL
    more than the same step without the term."""
    ref, policy = models
    lr = 0.05
    sgd = ["--optim", "sgd", "--learning_rate", lr, "--lr_scheduler_type", "constant", "--max_grad_norm", "0"]
    sgd += ["--weight_decay", "0", "--max_steps", "1", "--ref_model_name_or_path", ref, "--loss_type", "tisdpo"]
    for name, coef in (("on", KL_COEF), ("off", 0.0)):
        train(policy, weights_file, tmp_path / name, *sgd, "--tisdpo_kl_coef", coef)
    weights = file_weights(weights_file)
    start = load_file(Path(policy) / "model.safetensors")
    moved = load_file(tmp_path / "on" / "model.safetensors")
    names = sorted(start)

    def flat(tensors) -> torch.Tensor:
        return torch.cat([tensors[n].double().reshape(-1) for n in names])

    step = flat(moved) - flat(start)
    expected = -lr * flat(kl_term_gradient(policy, ref, rows, weights, KL_COEF))
    scale = float(expected.norm())
    assert scale > 1e-3
    assert float((step - expected).norm()) / scale < 1e-3
    wrong = {
        "no term": kl_term_gradient(policy, ref, rows, weights, 0.0),
        "stop-gradient on the rejected side": kl_term_gradient(policy, ref, rows, weights, KL_COEF, "rejected"),
        "no stop-gradient": kl_term_gradient(policy, ref, rows, weights, KL_COEF, None),
        "KL(policy || ref)": kl_term_gradient(policy, ref, rows, weights, KL_COEF, reverse=True),
    }
    for what, grad in wrong.items():
        assert float((step + lr * flat(grad)).norm()) / scale > 0.05, what

    # docs/objectives.md: with the term on, minimizing the loss lowers the weighted KL of the losing response.
    kl_on = weighted_rejected_kl(str(tmp_path / "on"), ref, rows, weights)
    kl_off = weighted_rejected_kl(str(tmp_path / "off"), ref, rows, weights)
    assert kl_off - kl_on > 0.1, (kl_on, kl_off)  # here: 17.6 against 19.1


# -- --group_by_length ------------------------------------------------------------------------------------------
GROUPED = ["--train_sampling_strategy", "group_by_length"]  # transformers 5's name for group_by_length


@pytest.fixture
def batches_seen(monkeypatch) -> dict[str, list[list[int]]]:
    """The pair indices of every batch the trainer computes a loss on, for training and for evaluation."""
    seen: dict[str, list[list[int]]] = {"train": [], "eval": []}
    original = PreferenceTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen["train" if self.model.training else "eval"].append(inputs["pair_index"].tolist())
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(PreferenceTrainer, "compute_loss", spy)
    return seen


@pytest.fixture(scope="module")
def varied_data(tmp_path_factory) -> str:
    """16 pairs of varied lengths."""
    return str(write_jsonl(tmp_path_factory.mktemp("varied") / "pairs.jsonl", toy_pairs(16, seed=5)))


def metric_keys(results: dict) -> list[str]:
    # rewards/accuracies is left out: the sign of each margin is not what this test is about
    return sorted(k for k in results if (k == "eval_loss" or "/" in k) and k != "eval_rewards/accuracies")


def test_group_by_length_leaves_evaluation_metrics_unchanged(models, varied_data, tmp_path, batches_seen):
    ref, policy = models
    small = ["--per_device_eval_batch_size", "3"]  # 16 pairs: the last batch holds one pair, a different one
    plain = evaluate(policy, ref, varied_data, tmp_path / "plain", *small)
    plain_order, batches_seen["eval"][:] = list(batches_seen["eval"]), []
    grouped = evaluate(policy, ref, varied_data, tmp_path / "grouped", *small, *GROUPED)
    grouped_order = batches_seen["eval"]
    assert sorted(sum(plain_order, [])) == sorted(sum(grouped_order, [])) == list(range(16))
    assert plain_order != grouped_order  # the batches really differ
    assert metric_keys(plain) == metric_keys(grouped) and "eval_logps/chosen" in metric_keys(plain)
    for key in metric_keys(plain):
        assert grouped[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7), key


def test_group_by_length_full_batch_step_is_identical(models, varied_data, tmp_path, batches_seen):
    """One full-batch SGD step: the order of the pairs inside the batch must not change the result."""
    ref, policy = models
    args = ["--ref_model_name_or_path", ref, "--optim", "sgd", "--learning_rate", "0.05", "--max_steps", "1"]
    train(policy, varied_data, tmp_path / "plain", *args)
    plain_order, batches_seen["train"][:] = list(batches_seen["train"]), []
    train(policy, varied_data, tmp_path / "grouped", *args, *GROUPED)
    assert len(plain_order) == len(batches_seen["train"]) == 1
    assert sorted(plain_order[0]) == sorted(batches_seen["train"][0]) == list(range(16))
    assert plain_order != batches_seen["train"]
    start = load_file(Path(policy) / "model.safetensors")
    plain, grouped = (load_file(tmp_path / name / "model.safetensors") for name in ("plain", "grouped"))
    assert not torch.equal(plain["lm_head.weight"], start["lm_head.weight"])
    for name in plain:
        torch.testing.assert_close(grouped[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_group_by_length_sees_every_pair_once_per_epoch(models, varied_data, tmp_path, batches_seen):
    ref, policy = models
    args = ["--ref_model_name_or_path", ref, "--learning_rate", "0", "--num_train_epochs", "2"]
    train(policy, varied_data, tmp_path / "grouped", *args, "--per_device_train_batch_size", "2", *GROUPED)
    batches = batches_seen["train"]
    assert len(batches) == 16 and all(len(b) == 2 for b in batches)
    epochs = [sum(batches[:8], []), sum(batches[8:], [])]
    for epoch in epochs:
        assert sorted(epoch) == list(range(16))
    assert epochs[0] != epochs[1]  # reshuffled between epochs


def test_readme_group_by_length_flag_is_accepted(models, varied_data, tmp_path, monkeypatch):
    """docs/objectives.md documents ``--group_by_length true``: it must be accepted and group by length."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    samplers = []
    original = PreferenceTrainer._get_train_sampler

    def spy(self, *args, **kwargs):
        samplers.append(original(self, *args, **kwargs))
        return samplers[-1]

    monkeypatch.setattr(PreferenceTrainer, "_get_train_sampler", spy)
    args = ["--ref_model_name_or_path", models[0], "--learning_rate", "0", "--max_steps", "1"]
    train(models[1], varied_data, tmp_path / "o", *args, "--group_by_length", "true")
    assert samplers and all(isinstance(sampler, LengthGroupedSampler) for sampler in samplers)


def test_weights_max_batch_tokens_gives_the_same_file(models, varied_data, tmp_path, monkeypatch):
    """``tisdpo weights --max_batch_tokens N`` batches differently (at most N padded tokens a batch) and writes
    the same file: same ids, rewards within 1e-5."""
    from tisdpo import scoring

    batch_widths: list[list[int]] = []
    original = scoring.length_sorted_batches

    def spy(lengths, batch_size, max_tokens=None):
        batches = original(lengths, batch_size, max_tokens)
        batch_widths.append([max(lengths[i] for i in b) * len(b) for b in batches])
        return batches

    monkeypatch.setattr(scoring, "length_sorted_batches", spy)
    assert run(*prompt_weights_args(models[1], varied_data, tmp_path / "plain.jsonl", "--batch_size", "8")) == 0
    plain_batches, batch_widths[:] = list(batch_widths), []
    capped_args = prompt_weights_args(models[1], varied_data, tmp_path / "capped.jsonl", "--batch_size", "8")
    assert run(*capped_args, "--max_batch_tokens", "200") == 0
    assert all(width <= 200 for widths in batch_widths for width in widths)
    assert sum(map(len, batch_widths)) > sum(map(len, plain_batches))  # really batched differently
    assert max(w for widths in plain_batches for w in widths) > 200
    plain, capped = read_jsonl(tmp_path / "plain.jsonl"), read_jsonl(tmp_path / "capped.jsonl")
    assert len(plain) == len(capped) == 16
    assert max(abs(r) for row in plain for r in row["chosen_token_rewards"]) > 0.1  # rewards far from 0
    for a, b in zip(plain, capped):
        for side in ("chosen", "rejected"):
            assert a[f"{side}_token_ids"] == b[f"{side}_token_ids"]
            assert b[f"{side}_token_rewards"] == pytest.approx(a[f"{side}_token_rewards"], abs=1e-5)
            assert b[f"{side}_weights"] == pytest.approx(a[f"{side}_weights"], rel=1e-5, abs=1e-6)


# -- the reference log-prob cache ------------------------------------------------------------------------------
def test_reference_cache_is_reused_and_invalidated(models, rows, tmp_path, caplog):
    """Runs sharing one ``--ref_logps_cache_dir``: an unchanged rerun reads the cache (a tampered cache shows in
    the logged rewards); a changed reference model, changed data, another log-prob path or dtype each make a new
    cache file, and their logged rewards match a fresh computation (not the tampered cache)."""
    caplog.set_level(logging.INFO)
    ref_source, policy = models
    ref = tmp_path / "ref"
    shutil.copytree(ref_source, ref)
    cache = tmp_path / "cache"
    runs = iter(range(100))

    def go(data: Path, *extra) -> tuple[dict, bool]:
        caplog.clear()
        flags = ["--ref_model_name_or_path", ref, "--ref_logps_cache_dir", cache, *ONE_FIXED_STEP, *extra]
        history = train(policy, data, tmp_path / f"run{next(runs)}", *flags)
        reused = any("reusing cached reference log-probs" in r.getMessage() for r in caplog.records)
        return next(e for e in history if "rewards/chosen" in e), reused

    def cache_files() -> list[Path]:
        return sorted(cache.glob("*.safetensors"))

    def matches_fresh(step: dict, pairs: list[dict], offset: float = 0.0) -> None:
        fresh = independent(policy, str(ref), pairs)
        for side in ("chosen", "rejected"):
            rewards = mean(BETA * (s[side].d.sum() - offset * len(s[side].ids)) for s in fresh)
            assert step[f"rewards/{side}"] == pytest.approx(rewards, rel=REL), side
            assert step[f"logps/{side}"] == pytest.approx(mean(s[side].logps.sum() for s in fresh), rel=REL), side

    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    step, reused = go(data)
    assert not reused and len(cache_files()) == 1
    matches_fresh(step, rows)

    # Tamper with the cache (every reference log-prob + 1): an unchanged rerun must read it back.
    (path,) = cache_files()
    tensors = load_file(path)
    save_file({"logps": tensors["logps"] + 1.0, "offsets": tensors["offsets"]}, path)
    step, reused = go(data)
    assert reused and cache_files() == [path]
    matches_fresh(step, rows, offset=1.0)

    # (a) the reference model's weights file is rewritten (same size): a new cache entry, fresh values.
    before = (ref / "model.safetensors").stat()
    noisy_copy(str(ref), ref, seed=3, scale=0.01)
    after = (ref / "model.safetensors").stat()
    assert after.st_size == before.st_size and after.st_mtime_ns != before.st_mtime_ns
    step, reused = go(data)
    assert not reused and len(cache_files()) == 2
    matches_fresh(step, rows)

    # (b) other data (one response changed, so the ids change)
    changed = [dict(row) for row in rows]
    changed[2]["chosen"] = " kind honest careful thing"
    other = write_jsonl(tmp_path / "other.jsonl", changed)
    step, reused = go(other)
    assert not reused and len(cache_files()) == 3
    matches_fresh(step, changed)

    # (c) another log-prob path; (d) another dtype
    step, reused = go(data, "--logprob_path", "logits")
    assert not reused and len(cache_files()) == 4
    matches_fresh(step, rows)
    step, reused = go(data, "--dtype", "bfloat16")
    assert not reused and len(cache_files()) == 5

    # and the same settings again reuse their own entry
    step, reused = go(data, "--logprob_path", "logits")
    assert reused and len(cache_files()) == 5
    matches_fresh(step, rows)
