"""SparsePO: masks, the loss with fixed masks against hand computation, and a learned mask that trains."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import evaluate, log_history, read_jsonl, run_cli, train_argv
from transformers import AutoModelForCausalLM

from tisdpo import losses, sparsepo
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.modeling import load_tokenizer


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def tokenized_pairs(model_dir: str, data_file: str, count: int) -> list:
    """The first ``count`` pairs of a file, tokenized as the trainer does (max_length 64)."""
    tokenizer = PairTokenizer(load_tokenizer(model_dir), max_length=64)
    rows = read_jsonl(data_file)[:count]
    return [tokenizer.tokenize(row) for row in rows]


def train_sparsepo(model_dir: str, data_file: str, out, *extra: str) -> list[dict]:
    """`tisdpo train --loss_type sparsepo` with EXTRA, batches of 8 logged every step: the logged sparsity entries."""
    flags = [
        "--per_device_train_batch_size",
        "8",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--max_length",
        "64",
    ]
    assert run_cli(*train_argv(model_dir, data_file, out, "--loss_type", "sparsepo", *extra, *flags)) == 0
    return log_history(out, "sparsity/chosen")


def head_inputs_and_logps(model, prompt: list[int], completion: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent forward: the LM head's input predicting each completion token, and each token's log-prob."""
    captured = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0].double()
    finally:
        hook.remove()
    positions = slice(len(prompt) - 1, len(prompt) + len(completion) - 1)
    logps = torch.log_softmax(logits, -1)[positions].gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
    return captured[0][0, positions], logps


def test_reference_masks_threshold_and_sparsity():
    ref_logps = torch.log(torch.tensor([[0.5, 0.01, 0.2, 0.9]]))
    mask = torch.tensor([[True, True, True, False]])
    masks = sparsepo.reference_masks(ref_logps, mask, threshold=0.1)
    assert masks.tolist()[0] == pytest.approx([0.5, 0.0, 0.2, 0.0])
    assert sparsepo.sparsity(masks, mask).item() == pytest.approx(1 / 3)


def test_sparsepo_loss_with_fixed_masks_hand_computed():
    d_c, d_r = torch.tensor([[0.4, -0.2, 0.3]]), torch.tensor([[0.1, 0.5, 0.0]])
    m_c, m_r = torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[0.0, 1.0, 1.0]])
    full = torch.ones(1, 3, dtype=torch.bool)
    out = losses.sparsepo_loss(d_c, d_r, m_c, m_r, full, full, beta=0.2).losses
    u = (0.4 + 0.5 * 0.3) - 0.5
    assert out.item() == pytest.approx(-logsig(0.2 * u), rel=1e-6)
    kl_c, kl_r = torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[0.4, 0.5, 0.6]])
    out = losses.sparsepo_loss(
        d_c, d_r, m_c, m_r, full, full, beta=0.2, kl_coef=0.5, chosen_token_kl=kl_c, rejected_token_kl=kl_r
    ).losses
    delta = 0.5 * 0.2 * ((0.5 + 0.6) - (0.1 + 0.5 * 0.3))
    assert out.item() == pytest.approx(-logsig(0.2 * u - delta), rel=1e-6)


def test_mask_head_starts_at_one_and_learns():
    torch.manual_seed(0)
    head = sparsepo.MaskHead(8)
    hidden = torch.randn(20, 8)
    mask = torch.ones(4, 5, dtype=torch.bool)
    assert torch.all(sparsepo.learned_masks(head, hidden, mask) == 1.0)
    before = [p.detach().clone() for p in head.parameters()]
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    target = (hidden[:, 0] > 0).float()  # learn to switch off half the tokens
    for _ in range(200):
        optimizer.zero_grad()
        values = head(hidden)
        ((values - target) ** 2).mean().backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, head.parameters()))
    masks = sparsepo.learned_masks(head, hidden, mask)
    assert sparsepo.sparsity(masks, mask).mean().item() > 0.2  # exact zeros appear


def test_learned_mask_trains_with_the_policy_and_reports_sparsity(tiny_model_dir, toy_data_files, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "sparsepo"
    flags = ["--sparsepo_mask", "learned", "--max_steps", "8", "--learning_rate", "5e-2"]
    flags += ["--eval_dataset_name", toy_data_files[1], "--max_eval_samples", "8", "--per_device_eval_batch_size", "8"]
    history = train_sparsepo(tiny_model_dir, toy_data_files[0], out, *flags)
    weights = load_file(out / "model.safetensors")
    assert (
        weights["sparsepo_mask_head.proj.bias"].item() != 1.0
        or weights["sparsepo_mask_head.proj.weight"].abs().sum() > 0
    )
    assert len(history) >= 8
    # The head starts at w = 0, b = 1: every mask is exactly 1 at the first step.
    for side in ("chosen", "rejected"):
        assert history[0][f"sparsity/{side}"] == 0.0 and history[0][f"masks/{side}_mean"] == 1.0
    assert 0.0 < history[-1]["masks/chosen_mean"] <= 1.0

    # The final evaluation's sparsity and mask means, from an independent forward of the saved model and head:
    # m_t = min(relu(w . h_t + b), 1) on the LM head's input h_t; sparsity = share of completion tokens with m_t = 0.
    results = json.loads((out / "all_results.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out).eval()  # the head's weights are read from the file below
    w, b = weights["sparsepo_mask_head.proj.weight"].double(), weights["sparsepo_mask_head.proj.bias"].double()
    pairs = tokenized_pairs(tiny_model_dir, toy_data_files[1], 8)
    for side in ("chosen", "rejected"):
        shares, mask_sum, tokens = [], 0.0, 0
        for pair in pairs:
            hidden, _ = head_inputs_and_logps(model, pair.prompt_ids, getattr(pair, f"{side}_ids"))
            z = (hidden.double() @ w.T + b).squeeze(-1)
            assert float(z.abs().min()) > 1e-4  # no mask is decided by rounding
            masks = z.clamp(min=0.0, max=1.0)
            shares.append(float((masks == 0).double().mean()))
            mask_sum, tokens = mask_sum + float(masks.sum()), tokens + len(masks)
        assert results[f"eval_sparsity/{side}"] == pytest.approx(sum(shares) / len(shares), rel=1e-6, abs=1e-9), side
        assert results[f"eval_masks/{side}_mean"] == pytest.approx(mask_sum / tokens, rel=1e-4), side


def test_reference_masks_train_and_report_sparsity(tiny_model_dir, toy_data_files, tmp_path):
    out = tmp_path / "sparsepo_ref"
    # threshold: the untrained model's p_ref are near 1/400: this one splits them (with 0.01 every mask is 0);
    # 8 samples: one batch of all 8 pairs per step
    flags = ["--sparsepo_threshold", "0.0025", "--max_steps", "2", "--max_samples", "8"]
    history = train_sparsepo(tiny_model_dir, toy_data_files[0], out, *flags)
    assert history
    for side in ("chosen", "rejected"):  # some masks are 0, some are not
        assert 0.0 < history[0][f"sparsity/{side}"] < 1.0 and history[0][f"masks/{side}_mean"] > 0.0

    # Step 1, against an independent forward of the reference (the starting model): m_t = p_ref(y_t), 0 below
    # the threshold; sparsity = mean over pairs of the share of completion tokens with p_ref below it.
    threshold = 0.0025
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pairs = tokenized_pairs(tiny_model_dir, toy_data_files[0], 8)
    for side in ("chosen", "rejected"):
        shares, mask_sum, tokens = [], 0.0, 0
        for pair in pairs:
            _, logps = head_inputs_and_logps(reference, pair.prompt_ids, getattr(pair, f"{side}_ids"))
            probs = logps.exp()
            assert float(((probs - threshold).abs() / threshold).min()) > 1e-4  # none decided by rounding
            shares.append(float((probs < threshold).double().mean()))
            mask_sum, tokens = mask_sum + float(torch.where(probs >= threshold, probs, 0.0).sum()), tokens + len(probs)
        assert history[0][f"sparsity/{side}"] == pytest.approx(sum(shares) / len(shares), rel=1e-6, abs=1e-9), side
        assert history[0][f"masks/{side}_mean"] == pytest.approx(mask_sum / tokens, rel=1e-4), side


def test_evaluate_uses_the_saved_mask_head(tiny_model_dir, toy_data_files, tmp_path):
    """A learned mask head is saved with the model; evaluating that model must use it (not a fresh head, whose
    masks are all 1): sparsity and mask means against an independent computation with the saved head."""
    from safetensors.torch import load_file

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    head = sparsepo.attach_mask_head(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # masks of every kind: 0, strictly between 0 and 1, and clamped at 1
        head.proj.weight.copy_(torch.randn(head.proj.weight.shape, generator=generator) * 0.5)
        head.proj.bias.fill_(0.3)
    saved = tmp_path / "with_head"
    model.save_pretrained(saved)
    load_tokenizer(tiny_model_dir).save_pretrained(saved)
    weights = load_file(saved / "model.safetensors")
    assert "sparsepo_mask_head.proj.weight" in weights

    out = tmp_path / "eval"
    flags = ["--max_samples", "8", "--per_device_eval_batch_size", "8"]
    flags += ["--loss_type", "sparsepo", "--sparsepo_mask", "learned", "--max_length", "64"]
    results = evaluate(str(saved), tiny_model_dir, toy_data_files[1], out, *flags)

    w, b = weights["sparsepo_mask_head.proj.weight"].double(), weights["sparsepo_mask_head.proj.bias"].double()
    policy = AutoModelForCausalLM.from_pretrained(saved).eval()
    zeros = between = 0
    for side in ("chosen", "rejected"):
        shares, mask_sum, tokens = [], 0.0, 0
        for pair in tokenized_pairs(tiny_model_dir, toy_data_files[1], 8):
            hidden, _ = head_inputs_and_logps(policy, pair.prompt_ids, getattr(pair, f"{side}_ids"))
            z = (hidden.double() @ w.T + b).squeeze(-1)
            assert float(z.abs().min()) > 1e-4 and float((z - 1).abs().min()) > 1e-4  # none decided by rounding
            masks = z.clamp(min=0.0, max=1.0)
            zeros += int((masks == 0).sum())
            between += int(((masks > 0) & (masks < 1)).sum())
            shares.append(float((masks == 0).double().mean()))
            mask_sum, tokens = mask_sum + float(masks.sum()), tokens + len(masks)
        assert results[f"eval_sparsity/{side}"] == pytest.approx(sum(shares) / len(shares), rel=1e-6, abs=1e-9), side
        assert results[f"eval_masks/{side}_mean"] == pytest.approx(mask_sum / tokens, rel=1e-4), side
    assert zeros > 0 and between > 0
